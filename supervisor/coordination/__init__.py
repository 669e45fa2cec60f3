"""Coordination modes: each decides whether this node may run a worker, and with what.

The supervisor asks a worker's mode for a `Grant` before starting its child and
obeys it: a grant carries the extra environment for the child, when the child must be
dead unless the mode renews it (its trust), and an event the mode sets when the node
loses the right to run it (coordination decides, runners obey). `every-node` grants at
once, is not trusted (no deadline) and never revokes; the leader, coordinated and cron
modes build on the store in `supervisor.store`.

Deadlines in a grant are instants on the boot clock (`supervisor.clock.boottime`), the
clock the trust watchdog kills by; a deadline set on a grant only ever tightens, except
that a renewal moves the trust deadline on.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from supervisor.model import Mode


@dataclass(eq=False)
class Grant:
    """The right to run one instance of a worker, until `revoked` is set.

    Trust: a trusted grant (`trust_until` set) may start a child only before
    `trust_until`, and its child must be dead by `trust_until + trust_grace` unless a
    renewal moves `trust_until` on first. Revocation: the child must be dead by
    `kill_by` (or, without one, `stop_grace` seconds after the revocation, or its
    stop_timeout). `changed` is set whenever any of this moves.
    """

    env: Mapping[str, str] = field(default_factory=dict)
    revoked: asyncio.Event = field(default_factory=asyncio.Event)
    # After revocation without a kill_by: dead within this many seconds (None: stop_timeout).
    stop_grace: float | None = None
    reason: str = ""  # why it was revoked (the first reason stands)
    kill_by: float | None = None  # boot clock: dead by then, once revoked
    trust_until: float | None = None  # boot clock: no start after this unless renewed
    trust_grace: float = 0.0  # the child dies this long after trust_until at the latest
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def trusted(self) -> bool:
        return self.trust_until is not None

    def trust_deadline(self) -> float:
        """The instant its child must be dead by if no renewal comes (inf: untrusted)."""
        return math.inf if self.trust_until is None else self.trust_until + self.trust_grace

    def deadline(self) -> float:
        """The instant its child must be dead by, from what the mode said so far (inf: none)."""
        return min(self.trust_deadline(), math.inf if self.kill_by is None else self.kill_by)

    def renew(self, trust_until: float) -> None:
        """A renewal that succeeded: trusted on until `trust_until` (+ trust_grace)."""
        self.trust_until = trust_until
        self.changed.set()

    def revoke(self, reason: str, *, kill_by: float | None = None,
               now: float | None = None) -> None:
        """Take the right away. The first reason stands; a later revocation can only
        bring the kill deadline forward (a stop in progress obeys a tighter one)."""
        if not self.revoked.is_set():
            self.reason = reason
            self.revoked.set()
        if kill_by is not None and (self.kill_by is None or kill_by < self.kill_by):
            self.kill_by = kill_by
            if now is not None:
                self.stop_grace = max(0.0, kill_by - now)
        self.changed.set()


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
