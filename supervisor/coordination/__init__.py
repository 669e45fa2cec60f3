"""Coordination modes: each decides whether this node may run a worker, and with what.

The supervisor asks a worker's mode for a `Grant` before starting its child and
obeys it: a grant carries the extra environment for the child and an event that
the mode sets when the node loses the right to run it (coordination decides,
runners obey). `every-node` grants at once and never revokes; the leader,
coordinated and cron modes build on the store in `supervisor.store`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.model import Mode


@dataclass
class Grant:
    """The right to run one instance of a worker, until `revoked` is set."""

    env: Mapping[str, str] = field(default_factory=dict)
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    # After revocation the child must be dead within this many seconds (None: its stop_timeout).
    stop_grace: float | None = None
    reason: str = ""  # why it was revoked
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # stop_grace was shortened


class WorkerMode(Protocol):
    mode: Mode

    async def acquire(self) -> Grant:
        """Wait until this node may run the worker; cancellable."""

    async def release(self, grant: Grant, reason: str) -> None:
        """The child of this grant has stopped; give the right back."""


class EveryNode:
    """Plain supervision: every node runs its own instance; no database involved."""

    mode = Mode.EVERY_NODE

    async def acquire(self) -> Grant:
        return Grant()

    async def release(self, grant: Grant, reason: str) -> None:
        return None
