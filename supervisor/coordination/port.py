"""The port through which the modes ask for, keep and give up what they hold.

The leader, cron and coordinated modes never touch the store or the node sync's
insides: they talk to a `NodePort` (the node sync, `node_sync.NodeSync`, is the one in
production; tests may script their own). Every call here that reaches the database is
bounded (by renew_deadline) and runs in the node's one database lane after any node
sync waiting there; one that gives something back goes before the other mode calls.
Calls that fail raise `StoreError`.

What a mode holds is trusted as hold.py says: to keep a cron run or a coordinated slot,
take a `stamp()` just before the call that claims it, and pass it to `keep_run` /
`keep_slot`; from then on each node sync renews it, and its grant is revoked when it
is lost, when trust runs out, or (a run) when a later tick replaces it. `drop_run` /
`drop_slot` stop renewing it once its child has stopped. A lease is simpler: `wait_for`
returns the grant once the node holds it, and `give_up` hands it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from supervisor.coordination import Grant
from supervisor.coordination.control import FleetControl
from supervisor.coordination.hold import Stamp
from supervisor.spec import CoordinationSpec
from supervisor.store import (
    ClaimOutcome,
    CoordSlot,
    CoordStatus,
    CoordView,
    CronRecorded,
    CronRun,
    CronTrigger,
    Holder,
)

# Hears what each node sync saw of a coordinated key: (view, the sync's send time).
OnView = Callable[[CoordView, float], None]
# Hears the open triggers of a cron worker that each node sync read.
OnTriggers = Callable[[Sequence[CronTrigger]], None]


class NodePort(Protocol):
    """What a mode may ask of its node."""

    @property
    def timing(self) -> CoordinationSpec: ...

    # --- the database clock ------------------------------------------------------------------

    async def clock_ready(self) -> None:
        """Wait until one sync has measured the database clock."""

    def db_time(self) -> float:
        """The database's clock now (no call; after clock_ready)."""

    def loop_time_of(self, db_time: float) -> float:
        """The loop (monotonic) time at which the database's clock reads `db_time`."""

    def stamp(self) -> Stamp:
        """(loop time, boot time) now: take it just before sending a claim."""

    # --- leases --------------------------------------------------------------------------------

    async def wait_for(self, name: str, worker: str, group: str) -> Grant:
        """Wait until this node holds lease `name`; the grant is revoked when it stops
        holding it."""

    async def give_up(self, name: str, reason: str) -> None:
        """The worker's child has stopped: release the lease at once (or let it expire)."""

    async def lease_child(self, name: str, pid: int) -> None:
        """The holder of lease `name` started a child: record its pid on the term."""

    # --- cron runs -----------------------------------------------------------------------------

    async def claim_run(self, worker: str, tick: float, *, max_run: int, max_per_node: int,
                        grace: float, forbid_overlap: bool, replace_earlier: bool
                        ) -> ClaimOutcome:
        """Claim a slot of `tick` for this node (see store.CoordinationStore.cron_claim)."""

    def keep_run(self, run: CronRun, grant: Grant, sent: Stamp) -> None:
        """Renew `run` in every sync from now on, trusted from `sent`."""

    def drop_run(self, token: int) -> None:
        """Stop renewing the run (it has been recorded as ended)."""

    async def finish_run(self, run: CronRun, state: str, *, exit_code: int | None,
                         reason: str | None, child_pid: int | None = None) -> bool:
        """Record how the run ended (and its child's pid); False if it had already been
        marked lost."""

    def cron_triggers(self, worker: str, on_triggers: OnTriggers | None) -> None:
        """From the next sync on, hear the open triggers of `worker` (`supervisor
        trigger`) that each sync reads (None: stop hearing them)."""

    async def claim_trigger(self, trigger_id: int, *, max_run: int, max_per_node: int,
                            forbid_overlap: bool, replace_earlier: bool) -> ClaimOutcome:
        """Claim a slot of a trigger's run (see store.CoordinationStore.cron_claim_trigger)."""

    async def runs_besides(self, worker: str, trigger_id: int) -> int:
        """How many runs of `worker` other than the trigger's are still going fleet-wide."""

    async def runs_before(self, worker: str, tick: float) -> int:
        """How many runs of ticks before `tick` are still going fleet-wide."""

    async def runs_recorded(self, worker: str, since: float) -> CronRecorded:
        """The ticks of `worker` recorded since `since` (database time)."""

    async def record_missed(self, worker: str, ticks: Sequence[float], *, grace: float,
                            reason: str, state: str = "missed") -> list[float]:
        """Record the ticks nobody ran as missed (or, paused, as skipped); the ticks
        recorded."""

    # --- fleet control -------------------------------------------------------------------------

    def control(self) -> FleetControl:
        """The pauses, drains and handovers as of the last sync (read-only; `watch` it to
        hear each change)."""

    # --- coordinated workers -------------------------------------------------------------------

    def coord_join(self, key: str, on_view: OnView) -> None:
        """Be a member of `key` from the next sync on; `on_view` hears each sync's view."""

    def coord_watch(self, key: str, watch: bool) -> None:
        """Read the key's whole membership in each sync (only its publisher needs it)."""

    def coord_leave(self, key: str) -> None:
        """No longer a member of `key` in the syncs from now on."""

    async def coord_remove(self, key: str) -> None:
        """Delete this node's membership row of `key` now."""

    async def coord_view(self, key: str) -> CoordStatus:
        """A fresh read of the key's generation and whole membership."""

    async def coord_publish(self, key: str, *, expected: int, members: Sequence[Holder],
                            indexes: Sequence[int | None], count: int) -> int | None:
        """Publish the next generation if `expected` still stands; its number, or None."""

    async def claim_slot(self, key: str, index: int, generation: int) -> CoordSlot | None:
        """Take slot `index` of `generation`; None while an older generation's is held."""

    def keep_slot(self, slot: CoordSlot, grant: Grant, sent: Stamp) -> None:
        """Renew `slot` in every sync from now on, trusted from `sent`."""

    def drop_slot(self, slot: CoordSlot) -> None:
        """Stop renewing the slot."""

    async def release_slot(self, slot: CoordSlot) -> None:
        """Give the slot back now (before other mode calls)."""
