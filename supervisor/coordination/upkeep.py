"""The node sync's schema checks and history upkeep.

At start the node upgrades the schema (retrying, backing off, while the database is not
ready). A schema that needs a later release (`SchemaNewer`) is not this release's to
touch: the node then coordinates nothing, holds nothing and reports not ready
(`SyncState.refused`), while its every-node workers run on, and it keeps looking, since
an operator may roll the schema back. Every upkeep pass looks again, because a newer
release may migrate the schema under a running node (a rolling upgrade): it carries on
if the schema still admits this release, and stops coordinating if not.

Upkeep proper closes terms and runs of dead holders and prunes history older than
`history_keep`, in small batches, every 30 s (or two lease TTLs if shorter) with
jitter, so a dead node's run shows as lost soon after it expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from supervisor.errors import SchemaNewer, StoreError
from supervisor.spec import CoordinationSpec
from supervisor.store import CoordinationStore

if TYPE_CHECKING:
    from supervisor.store.compat import SchemaState

log = logging.getLogger("supervisor")

_UPGRADE_BACKOFF = (0.5, 15.0)
_SCHEMA_RECHECK = 30.0  # seconds between looks at a schema that refuses this release
_MAINTAIN_EVERY = 30.0  # seconds between history upkeep passes, or two lease TTLs if shorter


@dataclass
class SyncState:
    """What `/readyz` and tests read: is the database answering this node?"""

    last_success: float | None = None  # monotonic
    failures: int = 0
    # Why this node coordinates nothing (the schema needs a later release), else None.
    refused: str | None = None


class Upkeep:
    """Schema upgrade and refusal, and history upkeep, for one node sync."""

    def __init__(self, store: CoordinationStore, timing: CoordinationSpec, state: SyncState,
                 call: Callable[..., Awaitable[Any]], history_keep: float) -> None:
        self._store = store
        self._timing = timing
        self._state = state
        self._call = call  # the node sync's bounded call
        self._history_keep = history_keep
        self._next_upkeep = 0.0
        self._told_newer = False

    async def upgrade(self) -> None:
        """Upgrade the schema, retrying until the database answers and admits it."""
        delay = _UPGRADE_BACKOFF[0]
        while True:
            try:
                found = await self._call(self._store.upgrade, within=60.0)
            except SchemaNewer as exc:
                # Not for this release to touch: hold nothing, keep asking (an operator
                # may roll the schema back); every-node workers run on meanwhile.
                self._refuse(exc)
                await asyncio.sleep(_SCHEMA_RECHECK)
                continue
            except StoreError as exc:
                log.warning("database not ready (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(_UPGRADE_BACKOFF[1], delay * 2)
                continue
            self._accept(found)
            return

    async def now_and_then(self) -> None:
        """Now and then: close terms of dead holders, prune old history (small batches)."""
        now = asyncio.get_running_loop().time()
        if now < self._next_upkeep:
            return
        every = min(_MAINTAIN_EVERY, 2 * self._timing.lease_ttl)
        self._next_upkeep = now + every * (1 + random.random())
        # A newer release may have migrated the schema under this node (a rolling
        # upgrade): carry on if it admits this release, else stop coordinating.
        try:
            self._accept(await self._call(self._store.schema_state,
                                          within=self._timing.renew_deadline))
        except SchemaNewer as exc:
            self._refuse(exc)
            return
        except StoreError:
            pass
        with contextlib.suppress(StoreError):
            await self._call(self._store.maintain, self._history_keep,
                             within=self._timing.renew_deadline)

    def _refuse(self, exc: SchemaNewer) -> None:
        if self._state.refused is None:
            log.error("%s. Until then this node coordinates nothing: its leader, cron and"
                      " coordinated workers do not run, its every-node workers run on, and"
                      " /readyz reports not ready", exc)
        self._state.refused = str(exc)

    def _accept(self, found: SchemaState | None) -> None:
        if self._state.refused is not None:
            log.info("the database schema is usable again; coordinating")
            self._state.refused = None
        if found is not None and found.newer and not self._told_newer:
            self._told_newer = True
            log.info("the database schema is newer than this supervisor (%s); this release"
                     " can still use it", found.describe())
