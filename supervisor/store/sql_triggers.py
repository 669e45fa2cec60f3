"""Cron triggers on SQL: `supervisor trigger`, a run of a cron worker now (part of SqlStore).

A trigger is a row of fs_cron_triggers, unique on (worker, trigger_key): the client sends
an idempotency key, and a second request with the same key finds the first one's row
and runs nothing. Its runs are rows of fs_cron_runs like a tick's, with `trigger_id` set
and `tick` = -id: keyed apart from every schedule tick by the same unique keys, so
`max_run` and `max_per_node` hold per trigger exactly as per tick (sql_cron.py's
`_take_slot`), and a tick-level record (missed, skipped) of a trigger is final as a
tick's is. A triggered run counts as earlier than every schedule tick: overlap = forbid
skips a tick while it runs, overlap = replace stops it.

Invariants:
- a claim of a trigger is made only inside its grace (`requested_at + grace`, database
  time); a trigger nobody ran in time is recorded `missed`, by the claim that came late
  or by `maintain`;
- overlap = forbid: while another run of the worker (a tick's or another trigger's) is
  running and unexpired, the trigger is recorded `skipped`; a tick's claim and a
  trigger's claim under forbid queue on the worker's overlap key (`CronSql.hold_overlap`),
  so two that come at once never both start; replace: the claim that
  acquires a slot asks every other running run of the worker to stop, and the run
  starts once `blocking` is 0;
- a trigger is open (delivered by node_sync) until it is decided: `closed_at` is set
  when its last slot is taken, when it is skipped or missed, or past its grace.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, update
from sqlalchemy.engine import Connection

from supervisor.store import ClaimOutcome, CronRun, CronTrigger, Holder, TriggerRequest
from supervisor.store.database import Database
from supervisor.store.dialect import clock, new_claim
from supervisor.store.records import (
    DECIDED_RESULT,
    MISSED_REASON,
    RUNNING,
    TRIGGER_FORBIDDEN_REASON,
)
from supervisor.store.schema import cron_runs, cron_triggers
from supervisor.store.sql_cron import CronSql, trigger_of

_COLUMNS = (cron_triggers.c.id, cron_triggers.c.worker, cron_triggers.c.trigger_key,
            cron_triggers.c.requested_at, cron_triggers.c.grace, cron_triggers.c.actor_user,
            cron_triggers.c.actor_host, cron_triggers.c.reason)


class TriggerSql:
    """The trigger part of SqlStore; its runs go through CronSql's slots and records."""

    def __init__(self, db: Database, cron: CronSql) -> None:
        self._db = db
        self._sql = db.dialect
        self._cron = cron

    def cron_trigger(self, worker: str, key: str, *, actor_user: str, actor_host: str,
                     reason: str | None, grace: float, now: float | None = None
                     ) -> TriggerRequest:
        claim = new_claim()

        def work(conn: Connection) -> TriggerRequest:
            self._sql.insert_if_absent(conn, cron_triggers, [{
                "worker": worker, "trigger_key": key, "requested_at": clock(now),
                "grace": grace, "actor_user": actor_user[:200], "actor_host": actor_host[:255],
                "reason": None if reason is None else reason[:255], "claim": claim,
            }])
            row = conn.execute(
                select(*_COLUMNS, cron_triggers.c.claim)
                .where(cron_triggers.c.worker == worker, cron_triggers.c.trigger_key == key)
            ).one()
            return TriggerRequest(trigger_of(row._mapping), row.claim == claim)

        return self._db.run(work)

    def pending(self, conn: Connection, workers: Sequence[str],
                now: float | None) -> tuple[CronTrigger, ...]:
        """In node_sync: the open triggers of `workers`, inside their grace, oldest first
        (one indexed read: open triggers are few)."""
        if not workers:
            return ()
        rows = conn.execute(
            select(*_COLUMNS)
            .where(cron_triggers.c.closed_at.is_(None),
                   cron_triggers.c.worker.in_(sorted(set(workers))),
                   cron_triggers.c.requested_at + cron_triggers.c.grace > clock(now))
            .order_by(cron_triggers.c.id)
        ).all()
        return tuple(trigger_of(row._mapping) for row in rows)

    def cron_claim_trigger(
        self, trigger_id: int, *, holder: Holder, max_run: int, max_per_node: int = 1,
        ttl: float, forbid_overlap: bool = False, replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        if forbid_overlap and replace_earlier:
            raise ValueError("overlap is either forbidden or replaced, not both")
        cron = self._cron

        def work(conn: Connection) -> ClaimOutcome:
            db_now = float(conn.execute(select(clock(now))).scalar_one())
            row = conn.execute(select(*_COLUMNS).where(cron_triggers.c.id == trigger_id)
                               ).first()
            if row is None:
                return ClaimOutcome("missed")  # pruned long ago
            trigger = trigger_of(row._mapping)
            worker, tick = trigger.worker, -float(trigger.id)
            if db_now < trigger.requested_at:
                return ClaimOutcome("early")
            if db_now >= trigger.requested_at + trigger.grace:
                self._record(conn, trigger, "missed", MISSED_REASON, now)
                return ClaimOutcome("missed")
            decided = cron._tick_state(conn, worker, tick)
            if decided is not None:
                return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
            if forbid_overlap:  # queue with a tick's claim checking at this moment
                cron.hold_overlap(conn, worker)
            if forbid_overlap and self._others_running(conn, worker, tick, now):
                self._record(conn, trigger, "skipped", TRIGGER_FORBIDDEN_REASON, now)
                return ClaimOutcome("overlap")
            outcome = cron._take_slot(conn, worker, tick, holder, max_run, max_per_node, ttl,
                                      now)
            if outcome.run is None:
                if self._taken(conn, worker, tick) >= max_run:
                    self._close(conn, trigger.id, now)
                return outcome
            got = outcome.run
            conn.execute(update(cron_runs).where(cron_runs.c.token == got.token)
                         .values(trigger_id=trigger.id))
            # Looked at again (a fresh statement): a record or, forbidding, another run
            # committed while the insert waited. Undone then, never run.
            decided = cron._tick_state(conn, worker, tick)
            if decided is None and forbid_overlap and self._others_running(conn, worker, tick,
                                                                           now):
                decided = "skipped"
            if decided is not None:
                conn.execute(delete(cron_runs).where(cron_runs.c.token == got.token))
                if decided == "skipped":
                    self._record(conn, trigger, "skipped", TRIGGER_FORBIDDEN_REASON, now)
                return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
            replaced = self._request_stop(conn, worker, tick, now) if replace_earlier else ()
            if self._taken(conn, worker, tick) >= max_run:
                self._close(conn, trigger.id, now)
            run = CronRun(got.token, worker, trigger.requested_at, got.slot, holder,
                          got.expires_at, trigger=trigger.id)
            return ClaimOutcome("acquired", run, replaced)

        return self._db.run(work)

    def cron_trigger_blocking(self, worker: str, trigger_id: int, *,
                              now: float | None = None) -> int:
        return self._db.run(
            lambda conn: self._others_running(conn, worker, -float(trigger_id), now))

    def _others_running(self, conn: Connection, worker: str, tick: float,
                        now: float | None) -> int:
        """Running, unexpired runs of the worker other than those of `tick`."""
        return int(conn.execute(
            select(func.count()).select_from(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick != tick,
                   cron_runs.c.state == RUNNING, cron_runs.c.expires_at > clock(now))
        ).scalar_one())

    def _request_stop(self, conn: Connection, worker: str, tick: float,
                      now: float | None) -> tuple[int, ...]:
        claim = new_claim()
        conn.execute(
            update(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick != tick,
                   cron_runs.c.state == RUNNING, cron_runs.c.expires_at > clock(now))
            .values(stop_requested=1, claim=claim))
        return tuple(sorted(int(token) for token in conn.execute(
            select(cron_runs.c.token)
            .where(cron_runs.c.worker == worker, cron_runs.c.claim == claim)).scalars()))

    def _taken(self, conn: Connection, worker: str, tick: float) -> int:
        return int(conn.execute(
            select(func.count()).select_from(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick == tick,
                   cron_runs.c.slot >= 0)).scalar_one())

    def _record(self, conn: Connection, trigger: CronTrigger, state: str, reason: str,
                now: float | None) -> None:
        """The trigger's record (missed, skipped: once, never beside a run), and closed."""
        tick = -float(trigger.id)
        if self._cron._record_tick(conn, trigger.worker, tick, state, reason, now):
            conn.execute(update(cron_runs)
                         .where(cron_runs.c.worker == trigger.worker, cron_runs.c.tick == tick,
                                cron_runs.c.slot == -1)
                         .values(trigger_id=trigger.id))
        self._close(conn, trigger.id, now)

    def _close(self, conn: Connection, trigger_id: int, now: float | None) -> None:
        conn.execute(update(cron_triggers)
                     .where(cron_triggers.c.id == trigger_id, cron_triggers.c.closed_at.is_(None))
                     .values(closed_at=clock(now)))

    def maintain(self, conn: Connection, keep: float, now: float | None, batch: int) -> int:
        """Close the open triggers past their grace (recorded `missed` when nobody ran
        them); delete up to `batch` closed more than `keep` ago. How many were deleted."""
        late = conn.execute(
            select(*_COLUMNS)
            .where(cron_triggers.c.closed_at.is_(None),
                   cron_triggers.c.requested_at + cron_triggers.c.grace <= clock(now))
            .order_by(cron_triggers.c.id).limit(batch)
        ).all()
        for row in late:
            self._record(conn, trigger_of(row._mapping), "missed", MISSED_REASON, now)
        old = conn.execute(
            select(cron_triggers.c.id)
            .where(cron_triggers.c.closed_at.is_not(None),
                   cron_triggers.c.closed_at < clock(now) - keep)
            .limit(batch)).scalars().all()
        if old:
            conn.execute(delete(cron_triggers).where(cron_triggers.c.id.in_(old)))
        return len(old)

