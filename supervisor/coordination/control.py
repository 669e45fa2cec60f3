"""Fleet control as this node sees it: pauses, drains and handovers from the database.

An operator's `supervisor pause|resume|handover|drain|undrain` writes a control row
(store `control_set` / `control_clear`); every node reads the rows with its one sync
(`node_sync` with `control_since`: only when their version moved) and hands them here
(`synced`). Nothing polls per worker. What the rows mean on this node:

- a lease is *blocked* (leases.py neither tries nor keeps it) while this node drains,
  while the worker it is for is paused on this node's group (or on every group), and
  for a handover asked of this very process (its nonce), until the hold-out the row
  carries ends by the database's clock. A held lease that becomes blocked has its grant
  revoked within leader_stop_grace and stays renewed until the worker's loop has
  stopped the child and given it up (guarantee 4: released only once the child is dead);
- a coordinated worker paused or drained here leaves its membership and takes no slot
  (coordinated.py), so the others rebalance;
- a cron worker paused or drained here claims no tick; paused on every group, each of
  its ticks is recorded `skipped` ("paused") as it comes, so nothing claims it and
  catch_up does not replay it; with `stop_running` its runs in progress are stopped.

Until the first sync has read the rows (`known`), every lease is blocked and no cron
tick claimed: a worker paused before the whole fleet restarted stays paused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from supervisor.coordination import Grant
from supervisor.model import FleetControlSeen, parse_leader_lease
from supervisor.store import ControlEntry, ControlState, CronRun, Holder, NodeReport

if TYPE_CHECKING:
    from supervisor.coordination.hold import HeldTable

log = logging.getLogger("supervisor")

NOT_READ = "fleet control not read yet"


def describe(entry: ControlEntry) -> str:
    """`paused by alice@ops-1: migration`, for reasons and logs."""
    verb = {"pause": "paused", "drain": "draining", "handover": "handed over"}[entry.kind]
    why = f": {entry.reason}" if entry.reason else ""
    return f"{verb} by {entry.actor_user}@{entry.actor_host}{why}"


class FleetControl:
    """The control rows as of this node's last sync, judged for this process."""

    def __init__(self, holder: Holder) -> None:
        self._holder = holder
        self._state = ControlState(-1)
        self._db_now = 0.0
        self._listeners: list[Callable[[], None]] = []
        self.known = False

    @property
    def version(self) -> int:
        """What the next sync passes as `control_since` (-1: never read)."""
        return self._state.version

    @property
    def entries(self) -> tuple[ControlEntry, ...]:
        return self._state.entries

    def synced(self, state: ControlState | None, db_now: float) -> bool:
        """A sync answered with `state` (None: unchanged); True when the rows changed,
        after telling every listener."""
        self._db_now = db_now
        if state is None:
            return False
        first = not self.known
        self.known = True
        changed = first or state.entries != self._state.entries
        before, self._state = self._state, state
        if changed and (before.entries or state.entries):
            self._tell()
        if changed:
            for listener in list(self._listeners):
                listener()
        return changed

    def _tell(self) -> None:
        seen = self.seen()
        drain = self.draining()
        log.info("fleet control (version %d): paused here: %s; %s", self.version,
                 ", ".join(sorted(seen.paused)) or "none",
                 f"this node is {describe(drain)}" if drain is not None else "not draining")

    def watch(self, listener: Callable[[], None]) -> None:
        """Call `listener` after each sync that changed the rows (once, however often
        it is watched)."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    def unwatch(self, listener: Callable[[], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # --- judged for this process -----------------------------------------------------------

    def pause_of(self, worker: str) -> ControlEntry | None:
        """The pause that stands for `worker` on this node's group (every group first)."""
        found = [e for e in self._state.entries if e.kind == "pause" and e.target == worker
                 and e.group in ("", self._holder.group)]
        return min(found, key=lambda e: e.group != "", default=None)

    def seen(self) -> FleetControlSeen:
        """The event that tells metrics and logs what holds for this node now."""
        paused = frozenset(e.target for e in self._state.entries
                           if e.kind == "pause" and e.group in ("", self._holder.group))
        return FleetControlSeen("", paused, self.draining() is not None)

    def draining(self) -> ControlEntry | None:
        return next((e for e in self._state.entries
                     if e.kind == "drain" and e.target == self._holder.node_id), None)

    def handover_of(self, lease: str) -> ControlEntry | None:
        """A handover of leader lease `lease` asked of this process, still holding out."""
        parsed = parse_leader_lease(lease)
        if parsed is None:
            return None
        worker, group = parsed
        return next((e for e in self._state.entries
                     if e.kind == "handover" and e.target == worker and e.group == (group or "")
                     and e.holder_nonce == self._holder.nonce
                     and e.until is not None and self._db_now < e.until), None)

    def blocked(self, lease: str, worker: str) -> str | None:
        """Why this node must neither try nor keep `lease` (of `worker`) now; None: free."""
        if not self.known:
            return NOT_READ
        for entry in (self.draining(), self.pause_of(worker), self.handover_of(lease)):
            if entry is not None:
                return describe(entry)
        return None

    def cron_blocked(self, worker: str) -> tuple[str, bool] | None:
        """(why, record the tick skipped) when cron worker `worker` claims no tick here:
        recorded only for a pause of every group (a pause of one group leaves the tick to
        the other groups' nodes)."""
        if not self.known:
            return NOT_READ, False
        pause = self.pause_of(worker)
        if pause is not None and pause.group == "":  # paused everywhere: even if draining
            return describe(pause), True
        drain = self.draining()
        if drain is not None:
            return describe(drain), False
        return None if pause is None else (describe(pause), False)

    def stop_running(self, worker: str) -> ControlEntry | None:
        """A pause of `worker` here that also stops its cron runs in progress."""
        pause = self.pause_of(worker)
        return pause if pause is not None and pause.stop_running else None

    def drain_state(self, holding: bool) -> str:
        """What this node reports: "" not draining, "acknowledged", or "drained"."""
        if self.draining() is None:
            return ""
        return "acknowledged" if holding else "drained"


# --- what the node sync does with it (a few lines there, the rest here) ----------------------

def control_sync_args(fleet: FleetControl, reported: NodeReport | None,
                      report: NodeReport) -> dict[str, Any]:
    """The node_sync arguments of fleet control: the version seen, and the node's report
    when it differs from what its row last got."""
    args: dict[str, Any] = {"control_since": fleet.version}
    if report != reported:
        args["report"] = report
    return args


def stop_paused_runs(fleet: FleetControl, runs: HeldTable[int, CronRun]) -> None:
    """After a sync: stop the cron runs in progress of a worker paused with
    stop_running (as a later tick replacing them would)."""
    for run in runs.items():
        pause = fleet.stop_running(run.worker)
        held = runs.get(run.token)
        if pause is not None and held is not None and not _revoked(held.hold.grant):
            held.hold.hurry(describe(pause))


def _revoked(grant: Grant | None) -> bool:
    return grant is None or grant.revoked.is_set()


# --- what the node publishes of its workers ----------------------------------------------------

SUMMARY_LIMIT = 16_000  # characters: a summary longer than this is cut to counts by state


def summarize(states: dict[str, str], fleet: FleetControl) -> str:
    """The node's workers' states as compact JSON (`{"web":"running",...}`), a worker that
    waits while paused here shown as "paused"; cut to counts by state when too long."""
    shown = {name: "paused" if state == "waiting" and fleet.pause_of(name) is not None
             else state for name, state in sorted(states.items())}
    text = json.dumps(shown, separators=(",", ":"))
    if len(text) <= SUMMARY_LIMIT:
        return text
    counts: dict[str, int] = {}
    for state in shown.values():
        counts[state] = counts.get(state, 0) + 1
    return json.dumps({"(workers)": counts}, separators=(",", ":"))
