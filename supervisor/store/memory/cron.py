"""Cron runs in memory: a row per claimed slot of a tick, as store/sql_cron.py keeps them.

Each call runs whole under MemoryStore's lock, so the re-checks SQL needs between its
statements (a recorder and a claimer committing at once) have nothing to catch here; the
outcomes are the same:
- at most `max_run` runs per (worker, tick), at most `max_per_node` per node;
- a claim only while the tick is due and inside its grace; a tick past it is recorded
  `missed` (slot -1) once, and a tick-level record (missed, skipped) is final and never
  stands beside a run;
- overlap = forbid records the tick `skipped` while an earlier run goes on; overlap =
  replace asks the earlier running runs to stop, and a tick earlier than one with runs
  is superseded;
- tokens only grow, across every worker and after any pruning.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from supervisor.store import (
    ClaimOutcome,
    CronRecorded,
    CronRun,
    CronRunRecord,
    CronTrigger,
    Holder,
)
from supervisor.store.memory.leases import REASON_MAX, bare
from supervisor.store.records import (
    DECIDED_RESULT,
    FORBIDDEN_REASON,
    LOST_REASON,
    MISSED_REASON,
    RUNNING,
    SUPERSEDED_REASON,
)


@dataclass
class RunRow:
    worker: str
    tick: float
    slot: int  # -1: a tick-level record
    state: str
    claimed_at: float
    holder: Holder | None = None
    node_slot: int = 0
    expires_at: float = 0.0
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    stop_requested: bool = False
    token: int = 0  # given on insert
    trigger_id: int | None = None  # a triggered run (tick -trigger_id): memory/triggers.py
    child_pid: int | None = None


class CronTables:
    """The cron_runs rows, by token, and the token counter (never reset)."""

    def __init__(self) -> None:
        self.rows: dict[int, RunRow] = {}
        self._next_token = 1

    def claim(self, worker: str, tick: float, holder: Holder, *, max_run: int,
              max_per_node: int, ttl: float, grace: float, forbid_overlap: bool,
              replace_earlier: bool, clock: float) -> ClaimOutcome:
        if clock < tick:
            return ClaimOutcome("early")
        if clock >= tick + grace:
            self.record_tick(worker, tick, "missed", MISSED_REASON, clock)
            return ClaimOutcome("missed")
        decided = self._tick_state(worker, tick)
        if decided is not None:  # missed or skipped is final: never run late
            return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
        if forbid_overlap and self.earlier_running(worker, tick, clock):
            self.record_tick(worker, tick, "skipped", FORBIDDEN_REASON, clock)
            return ClaimOutcome("overlap")
        if replace_earlier and self._later_ran(worker, tick):
            self.record_tick(worker, tick, "skipped", SUPERSEDED_REASON, clock)
            return ClaimOutcome("overlap")
        run = self._take_slot(worker, tick, holder, max_run, max_per_node, ttl, clock)
        if run is None:
            return ClaimOutcome("full")
        if replace_earlier:
            return ClaimOutcome("acquired", run, self._request_stop(worker, tick, clock))
        return ClaimOutcome("acquired", run)

    def _runs_of(self, worker: str, tick: float) -> list[RunRow]:
        return [r for r in self.rows.values()
                if r.worker == worker and r.tick == tick and r.slot >= 0]

    def _take_slot(self, worker: str, tick: float, holder: Holder, max_run: int,
                   max_per_node: int, ttl: float, clock: float) -> CronRun | None:
        """The lowest free slot, on the lowest node slot this node has not taken."""
        rows = self._runs_of(worker, tick)
        taken = {r.slot for r in rows}
        mine = {r.node_slot for r in rows
                if r.holder is not None and r.holder.node_id == holder.node_id}
        node_slot = next((n for n in range(max_per_node) if n not in mine), None)
        slot = next((s for s in range(max_run) if s not in taken), None)
        if node_slot is None or slot is None:
            return None
        row = self._insert(RunRow(worker, tick, slot, RUNNING, clock, bare(holder),
                                  node_slot, expires_at=clock + ttl))
        return CronRun(row.token, worker, tick, slot, holder, row.expires_at)

    def _insert(self, row: RunRow) -> RunRow:
        """Insert `row` with the next token: tokens only grow, whatever was pruned."""
        row.token = self._next_token
        self.rows[row.token] = row
        self._next_token += 1
        return row

    def _later_ran(self, worker: str, tick: float) -> bool:
        return any(r.worker == worker and r.tick > tick and r.slot >= 0
                   for r in self.rows.values())

    def _request_stop(self, worker: str, tick: float, clock: float) -> tuple[int, ...]:
        stopping = [r for r in self.rows.values()
                    if r.worker == worker and r.tick < tick and r.state == RUNNING
                    and r.expires_at > clock]
        for row in stopping:
            row.stop_requested = True
        return tuple(sorted(r.token for r in stopping))

    def _tick_state(self, worker: str, tick: float) -> str | None:
        return next((r.state for r in self.rows.values()
                     if r.worker == worker and r.tick == tick and r.slot == -1), None)

    def earlier_running(self, worker: str, tick: float, clock: float) -> int:
        return sum(1 for r in self.rows.values()
                   if r.worker == worker and r.tick < tick and r.state == RUNNING
                   and r.expires_at > clock)

    def record_tick(self, worker: str, tick: float, state: str, reason: str,
                    clock: float) -> bool:
        """A tick-level record, once per tick and never beside a run; True if written."""
        if self._tick_state(worker, tick) is not None or self._runs_of(worker, tick):
            return False
        self._insert(RunRow(worker, tick, -1, state, clock, ended_at=clock,
                            reason=reason[:REASON_MAX]))
        return True

    def record_missed(self, worker: str, ticks: Sequence[float], grace: float, reason: str,
                      clock: float, state: str = "missed") -> list[float]:
        return [tick for tick in sorted(set(ticks))
                if clock >= tick + grace  # the claim's own test for "past grace"
                and self.record_tick(worker, tick, state, reason, clock)]

    def recorded(self, worker: str, since: float) -> CronRecorded:
        ticks = [r.tick for r in self.rows.values()
                 if r.worker == worker and r.trigger_id is None]  # a triggered run is no tick
        return CronRecorded(min(ticks, default=None),
                            frozenset(tick for tick in ticks if tick > since))

    def finish(self, run: CronRun, state: str, exit_code: int | None, reason: str | None,
               clock: float, child_pid: int | None = None) -> bool:
        row = self.rows.get(run.token)
        if (row is None or row.state != RUNNING or row.holder is None
                or row.holder.nonce != run.holder.nonce):
            return False
        row.state, row.ended_at, row.exit_code = state, clock, exit_code
        row.reason = None if reason is None else reason[:REASON_MAX]
        row.child_pid = child_pid
        return True

    def renew(self, holder: Holder, runs: Sequence[CronRun], ttl: float,
              clock: float) -> tuple[dict[int, CronRun], tuple[int, ...]]:
        """Renew the holder's running, unexpired runs: those renewed, and of them the
        tokens whose stop a later tick requested (overlap = replace)."""
        kept: dict[int, CronRun] = {}
        stop: list[int] = []
        for run in {r.token: r for r in runs}.values():
            row = self.rows.get(run.token)
            if (row is None or row.holder is None or row.holder.nonce != holder.nonce
                    or row.state != RUNNING or row.expires_at <= clock):
                continue
            row.expires_at = clock + ttl
            kept[run.token] = CronRun(run.token, run.worker, run.tick, run.slot, holder,
                                      row.expires_at, run.trigger)
            if row.stop_requested:
                stop.append(run.token)
        return kept, tuple(sorted(stop))

    def history(self, worker: str | None, limit: int,
                triggers: Mapping[int, CronTrigger] | None = None) -> list[CronRunRecord]:
        """Newest first; a triggered run at the time it was requested (`triggers`)."""
        known = triggers or {}

        def at(r: RunRow) -> float:
            trigger = None if r.trigger_id is None else known.get(r.trigger_id)
            return r.tick if trigger is None else trigger.requested_at

        rows = sorted((r for r in self.rows.values() if worker is None or r.worker == worker),
                      key=lambda r: (-at(r), r.slot, r.token))
        return [CronRunRecord(r.token, r.worker, at(r), r.slot, r.holder, r.state,
                              r.claimed_at, r.ended_at, r.exit_code, r.reason, r.child_pid,
                              None if r.trigger_id is None else known.get(r.trigger_id))
                for r in rows[:limit]]

    def maintain(self, keep: float, clock: float, batch: int) -> int:
        """Mark expired running runs lost; prune up to `batch` runs both ended and ticked
        more than `keep` ago. How many were pruned."""
        for row in self.rows.values():
            if row.state == RUNNING and row.expires_at <= clock:
                row.state, row.ended_at, row.reason = "lost", row.expires_at, LOST_REASON
        old = [token for token, r in self.rows.items()
               if r.ended_at is not None and r.ended_at < clock - keep
               and r.tick < clock - keep][:batch]
        for token in old:
            del self.rows[token]
        return len(old)
