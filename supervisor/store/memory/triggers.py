"""Cron triggers in memory, as store/sql_triggers.py keeps them: a request per
(worker, key), its runs rows of the cron table with tick -id, keyed apart from every
schedule tick; `max_run`, `max_per_node`, grace and overlap as for a tick (see
sql_triggers.py for the contracts). Each call runs whole under MemoryStore's lock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from supervisor.store import ClaimOutcome, CronTrigger, Holder, TriggerRequest
from supervisor.store.memory.cron import CronTables, RunRow
from supervisor.store.memory.leases import REASON_MAX
from supervisor.store.records import (
    DECIDED_RESULT,
    MISSED_REASON,
    RUNNING,
    TRIGGER_FORBIDDEN_REASON,
)


class TriggerTables:
    """The trigger rows, by id, and which are closed (decided)."""

    def __init__(self, cron: CronTables) -> None:
        self._cron = cron
        self.rows: dict[int, CronTrigger] = {}
        self.closed: dict[int, float] = {}  # id -> closed_at
        self._next_id = 1

    def request(self, worker: str, key: str, actor_user: str, actor_host: str,
                reason: str | None, grace: float, clock: float) -> TriggerRequest:
        for trigger in self.rows.values():
            if trigger.worker == worker and trigger.key == key:
                return TriggerRequest(trigger, False)
        trigger = CronTrigger(self._next_id, worker, key, clock, grace, actor_user[:200],
                              actor_host[:255], None if reason is None else reason[:REASON_MAX])
        self.rows[trigger.id] = trigger
        self._next_id += 1
        return TriggerRequest(trigger, True)

    def pending(self, workers: Sequence[str], clock: float) -> tuple[CronTrigger, ...]:
        wanted = set(workers)
        return tuple(t for _, t in sorted(self.rows.items())
                     if t.id not in self.closed and t.worker in wanted
                     and t.requested_at + t.grace > clock)

    def claim(self, trigger_id: int, holder: Holder, *, max_run: int, max_per_node: int,
              ttl: float, forbid_overlap: bool, replace_earlier: bool,
              clock: float) -> ClaimOutcome:
        if forbid_overlap and replace_earlier:
            raise ValueError("overlap is either forbidden or replaced, not both")
        trigger = self.rows.get(trigger_id)
        if trigger is None:
            return ClaimOutcome("missed")
        cron, worker, tick = self._cron, trigger.worker, -float(trigger.id)
        if clock < trigger.requested_at:
            return ClaimOutcome("early")
        if clock >= trigger.requested_at + trigger.grace:
            self._record(trigger, "missed", MISSED_REASON, clock)
            return ClaimOutcome("missed")
        decided = cron._tick_state(worker, tick)
        if decided is not None:
            return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
        if forbid_overlap and self.blocking(worker, trigger_id, clock):
            self._record(trigger, "skipped", TRIGGER_FORBIDDEN_REASON, clock)
            return ClaimOutcome("overlap")
        got = cron._take_slot(worker, tick, holder, max_run, max_per_node, ttl, clock)
        if got is None:
            if len(cron._runs_of(worker, tick)) >= max_run:
                self.closed.setdefault(trigger.id, clock)
            return ClaimOutcome("full")
        cron.rows[got.token].trigger_id = trigger.id
        replaced: tuple[int, ...] = ()
        if replace_earlier:
            stopping = self._others(worker, tick, clock)
            for row in stopping:
                row.stop_requested = True
            replaced = tuple(sorted(r.token for r in stopping))
        if len(cron._runs_of(worker, tick)) >= max_run:
            self.closed.setdefault(trigger.id, clock)
        run = replace(got, tick=trigger.requested_at, trigger=trigger.id)
        return ClaimOutcome("acquired", run, replaced)

    def blocking(self, worker: str, trigger_id: int, clock: float) -> int:
        return len(self._others(worker, -float(trigger_id), clock))

    def _others(self, worker: str, tick: float, clock: float) -> list[RunRow]:
        return [r for r in self._cron.rows.values()
                if r.worker == worker and r.tick != tick and r.state == RUNNING
                and r.expires_at > clock]

    def _record(self, trigger: CronTrigger, state: str, reason: str, clock: float) -> None:
        if self._cron.record_tick(trigger.worker, -float(trigger.id), state, reason, clock):
            row = max(self._cron.rows.values(), key=lambda r: r.token)
            row.trigger_id = trigger.id
        self.closed.setdefault(trigger.id, clock)

    def maintain(self, keep: float, clock: float, batch: int) -> int:
        late = [t for _, t in sorted(self.rows.items())
                if t.id not in self.closed and t.requested_at + t.grace <= clock][:batch]
        for trigger in late:
            self._record(trigger, "missed", MISSED_REASON, clock)
        old = [tid for tid, at in self.closed.items() if at < clock - keep][:batch]
        for tid in old:
            del self.closed[tid]
            del self.rows[tid]
        return len(old)
