"""Cron claims on SQL: a leased row per claimed slot of a tick (part of SqlStore).

Invariants, each enforced by the database in the claim's own transaction:
- at most `max_run` runs per (worker, tick): a row per slot, unique on
  (worker, tick, slot), inserted only if absent and read back; at most
  `max_per_node` per node: unique on (worker, tick, node, node_slot), so even
  several supervisors of one node claiming at once cannot exceed it;
- a claim is made only while the tick is due and inside misfire_grace by the
  database's clock; a tick nobody claimed in time is recorded `missed` (slot -1),
  once, and never run late;
- a tick-level record (missed, skipped) is final and never stands beside a run: its
  writer holds the tick's slot-0 key (`_hold_tick`) before it looks for runs, and a
  claim looks again for a tick-level record after inserting its run, so whichever of
  the two commits second sees the other;
- overlap = replace: the claim that acquires a slot asks the worker's earlier running
  runs to stop (`stop_requested`), in its own transaction; their holders read it back
  when they renew them in node_sync;
- a run is a lease: renewed in the node's sync, marked `lost` by `maintain` once
  it expires, never left `running` for ever; its token (the row id) only grows;
- every write of a run stamps a claim and is read back by re-selecting that claim, on
  every database alike (not `Dialect.read_back`'s RETURNING: the statements per claim,
  finish and renewal are what bench/cron.py counts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import delete, func, inspect, null, select, update
from sqlalchemy.engine import Connection

from supervisor.store import (
    ClaimOutcome,
    CronRecorded,
    CronRun,
    CronRunRecord,
    CronTrigger,
    Holder,
)
from supervisor.store.database import Database
from supervisor.store.dialect import clock, new_claim
from supervisor.store.records import (
    DECIDED_RESULT,
    FORBIDDEN_REASON,
    LOST_REASON,
    MISSED_REASON,
    RUNNING,
    SUPERSEDED_REASON,
    require_final,
)
from supervisor.store.refusals import Apart, guarded, in_parts
from supervisor.store.schema import cron_runs, cron_triggers

OVERLAP_KEY = -0.5  # ticks are >= 0, a trigger's runs at -id <= -1: see `hold_overlap`


def trigger_of(r: Mapping[Any, Any]) -> CronTrigger:
    """A fs_cron_triggers row (store/sql_triggers.py) as a record."""
    return CronTrigger(int(r["id"]), r["worker"], r["trigger_key"], float(r["requested_at"]),
                       float(r["grace"]), r["actor_user"], r["actor_host"], r["reason"])


_SINCE_0010 = ("child_pid", "trigger_id", "id", "t_worker", "trigger_key", "requested_at",
               "grace", "actor_user", "actor_host", "t_reason")


TICK_STATES = ("missed", "skipped")  # what cron_record_missed may record


class CronSql:
    """The cron part of SqlStore, on the database it is given."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sql = db.dialect
        self._since_0010 = False

    def since_0010(self, conn: Connection) -> bool:
        """Whether the schema has migration 0010's triggers and pids (once it has, it
        keeps them: only the answer True is remembered)."""
        if not self._since_0010:
            self._since_0010 = inspect(conn).has_table(cron_triggers.name)
        return self._since_0010

    def cron_claim(
        self,
        worker: str,
        tick: float,
        *,
        holder: Holder,
        max_run: int,
        max_per_node: int = 1,
        ttl: float,
        grace: float,
        forbid_overlap: bool = False,
        replace_earlier: bool = False,
        now: float | None = None,
    ) -> ClaimOutcome:
        if forbid_overlap and replace_earlier:
            raise ValueError("overlap is either forbidden or replaced, not both")

        def work(conn: Connection) -> ClaimOutcome:
            db_now = float(conn.execute(select(clock(now))).scalar_one())
            if db_now < tick:
                return ClaimOutcome("early")
            if db_now >= tick + grace:
                self._record_tick(conn, worker, tick, "missed", MISSED_REASON, now)
                return ClaimOutcome("missed")
            decided = self._tick_state(conn, worker, tick)
            if decided is not None:  # missed or skipped is final: never run late
                return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
            if forbid_overlap:  # a trigger's claim may be checking at this very moment
                self.hold_overlap(conn, worker)
            if forbid_overlap and self._earlier_running(conn, worker, tick, now):
                self._record_tick(conn, worker, tick, "skipped",
                                  FORBIDDEN_REASON,
                                  now)
                return ClaimOutcome("overlap")
            if replace_earlier and self._later_ran(conn, worker, tick):
                self._record_tick(conn, worker, tick, "skipped", SUPERSEDED_REASON, now)
                return ClaimOutcome("overlap")
            outcome = self._take_slot(conn, worker, tick, holder, max_run, max_per_node, ttl,
                                      now)
            if outcome.run is None:
                return outcome
            return self._confirm(conn, outcome.run, replace_earlier, now)

        return self._db.run(work)

    def _confirm(self, conn: Connection, run: CronRun, replace_earlier: bool,
                 now: float | None) -> ClaimOutcome:
        """The claim of `run`, just inserted, looked at again: a fresh statement sees what
        others committed while the insert waited on them (a tick-level record, see
        `_record_tick`; a later tick's run). Undone then, never run."""
        worker, tick = run.worker, run.tick
        decided = self._tick_state(conn, worker, tick)
        if decided is not None:
            conn.execute(delete(cron_runs).where(cron_runs.c.token == run.token))
            return ClaimOutcome(DECIDED_RESULT.get(decided, "overlap"))
        if replace_earlier and self._later_ran(conn, worker, tick):
            conn.execute(delete(cron_runs).where(cron_runs.c.token == run.token))
            self._record_tick(conn, worker, tick, "skipped", SUPERSEDED_REASON, now)
            return ClaimOutcome("overlap")
        if replace_earlier:
            return ClaimOutcome("acquired", run, self._request_stop(conn, worker, tick, now))
        return ClaimOutcome("acquired", run)

    def _later_ran(self, conn: Connection, worker: str, tick: float) -> bool:
        """Whether a later tick of the worker has runs: replacing, this tick is superseded."""
        return conn.execute(
            select(cron_runs.c.token).where(cron_runs.c.worker == worker,
                                            cron_runs.c.tick > tick, cron_runs.c.slot >= 0)
            .limit(1)
        ).first() is not None

    def _request_stop(self, conn: Connection, worker: str, tick: float,
                      now: float | None) -> tuple[int, ...]:
        """Ask every running, unexpired run of an earlier tick to stop; their tokens."""
        claim = new_claim()
        conn.execute(
            update(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick < tick,
                   cron_runs.c.state == RUNNING, cron_runs.c.expires_at > clock(now))
            .values(stop_requested=1, claim=claim)
        )
        return tuple(sorted(int(token) for token in conn.execute(
            select(cron_runs.c.token)
            .where(cron_runs.c.worker == worker, cron_runs.c.claim == claim)
        ).scalars()))

    def cron_earlier_running(self, worker: str, tick: float, *,
                             now: float | None = None) -> int:
        return self._db.run(lambda conn: self._earlier_running(conn, worker, tick, now))

    def _take_slot(
        self, conn: Connection, worker: str, tick: float, holder: Holder, max_run: int,
        max_per_node: int, ttl: float, now: float | None,
    ) -> ClaimOutcome:
        rows = conn.execute(
            select(cron_runs.c.slot, cron_runs.c.holder_node, cron_runs.c.node_slot)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick == tick, cron_runs.c.slot >= 0)
        ).all()
        taken = {r.slot for r in rows}
        mine = {r.node_slot for r in rows if r.holder_node == holder.node_id}
        for node_slot in range(max_per_node):
            if node_slot in mine:
                continue
            for slot in range(max_run):
                if slot in taken:
                    continue
                run = self._insert_run(conn, worker, tick, slot, node_slot, holder, ttl, now)
                if run is not None:
                    return ClaimOutcome("acquired", run)
                if self._node_slot_taken(conn, worker, tick, holder, node_slot):
                    break  # another supervisor of this node took it meanwhile
                taken.add(slot)
        return ClaimOutcome("full")

    def _node_slot_taken(self, conn: Connection, worker: str, tick: float, holder: Holder,
                         node_slot: int) -> bool:
        return conn.execute(
            select(cron_runs.c.token).where(
                cron_runs.c.worker == worker, cron_runs.c.tick == tick,
                cron_runs.c.holder_node == holder.node_id, cron_runs.c.node_slot == node_slot)
        ).first() is not None

    def _insert_run(
        self, conn: Connection, worker: str, tick: float, slot: int, node_slot: int,
        holder: Holder, ttl: float, now: float | None,
    ) -> CronRun | None:
        """Insert the slot's row if absent; the run if this holder's insert made it."""
        claim = new_claim()
        at = clock(now)
        row = {
            "worker": worker, "tick": tick, "slot": slot, "node_slot": node_slot,
            "holder_node": holder.node_id, "holder_group": holder.group,
            "holder_pid": holder.pid, "holder_nonce": holder.nonce, "state": RUNNING,
            "claim": claim, "claimed_at": at, "expires_at": at + ttl,
        }
        self._sql.insert_if_absent(conn, cron_runs, [row])
        got = conn.execute(
            select(cron_runs.c.token, cron_runs.c.expires_at)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick == tick,
                   cron_runs.c.slot == slot, cron_runs.c.claim == claim)
        ).first()
        if got is None:
            return None
        return CronRun(int(got.token), worker, tick, slot, holder, float(got.expires_at))

    def _tick_state(self, conn: Connection, worker: str, tick: float) -> str | None:
        """The tick-level record's state (missed, skipped), if any."""
        state = conn.execute(
            select(cron_runs.c.state)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick == tick, cron_runs.c.slot == -1)
        ).scalar()
        return None if state is None else str(state)

    def _tick_ran(self, conn: Connection, worker: str, tick: float) -> bool:
        found = conn.execute(
            select(func.count()).select_from(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick == tick, cron_runs.c.slot >= 0)
        ).scalar_one()
        return int(found) > 0

    def _earlier_running(self, conn: Connection, worker: str, tick: float,
                         now: float | None) -> int:
        found = conn.execute(
            select(func.count()).select_from(cron_runs)
            .where(cron_runs.c.worker == worker, cron_runs.c.tick < tick,
                   cron_runs.c.state == RUNNING, cron_runs.c.expires_at > clock(now))
        ).scalar_one()
        return int(found)

    def _record_tick(self, conn: Connection, worker: str, tick: float, state: str,
                     reason: str, now: float | None) -> bool:
        """A tick-level record (slot -1): missed or skipped, written once per tick and never
        beside a run. True if this call wrote it.

        A claim decides by the clock before it inserts, and commits later: checking for
        runs alone could miss one still being inserted. `_hold_tick` serialises this
        transaction with any claim inserting the tick's first run, so either the check
        below sees that run, or that claim's re-check sees this record and undoes itself.
        """
        if self._tick_state(conn, worker, tick) is not None or self._tick_ran(conn, worker,
                                                                               tick):
            return False
        self._hold_tick(conn, worker, tick)
        if self._tick_ran(conn, worker, tick):
            return False
        claim = new_claim()
        at = clock(now)
        self._sql.insert_if_absent(conn, cron_runs, [{
            "worker": worker, "tick": tick, "slot": -1, "state": state,
            "reason": reason[:255], "claim": claim, "claimed_at": at, "ended_at": at,
        }])
        return conn.execute(
            select(cron_runs.c.token).where(cron_runs.c.worker == worker,
                                            cron_runs.c.tick == tick, cron_runs.c.slot == -1,
                                            cron_runs.c.claim == claim)
        ).first() is not None

    def hold_overlap(self, conn: Connection, worker: str) -> None:
        """overlap = forbid: take the worker's overlap key until commit (`_hold_tick` of
        OVERLAP_KEY, a tick no schedule and no trigger has), so that a tick's claim and a
        trigger's claim (store/sql_triggers.py), which may come at any instant, queue:
        whichever goes second sees the other's run in its check for one running."""
        self._hold_tick(conn, worker, OVERLAP_KEY)

    def _hold_tick(self, conn: Connection, worker: str, tick: float) -> None:
        """Take the tick's slot-0 key until commit: insert a placeholder there if absent and
        delete it again. Every run of a tick is in slot 0 or came after a committed slot 0,
        so a claim inserting the tick's first run and this transaction wait for each other
        on the unique key, and whichever goes second sees what the first committed.
        (`Dialect.insert_and_hold`: on MariaDB that takes the exclusive lock.)"""
        claim = new_claim()
        row = {"worker": worker, "tick": tick, "slot": 0, "state": "placeholder",
               "claim": claim, "claimed_at": 0.0}
        self._sql.insert_and_hold(conn, cron_runs, [row], touch="claim")
        conn.execute(delete(cron_runs).where(cron_runs.c.worker == worker,
                                             cron_runs.c.tick == tick, cron_runs.c.slot == 0,
                                             cron_runs.c.claim == claim))

    def cron_recorded(self, worker: str, since: float) -> CronRecorded:
        def work(conn: Connection) -> CronRecorded:
            schedule = cron_runs.c.trigger_id.is_(None)  # a triggered run is no tick
            first = conn.execute(
                select(func.min(cron_runs.c.tick)).where(cron_runs.c.worker == worker, schedule)
            ).scalar()
            ticks = conn.execute(
                select(cron_runs.c.tick).distinct()
                .where(cron_runs.c.worker == worker, cron_runs.c.tick > since, schedule)
            ).scalars()
            return CronRecorded(None if first is None else float(first),
                                frozenset(float(tick) for tick in ticks))

        return self._db.run(work)

    def cron_record_missed(
        self,
        worker: str,
        ticks: Sequence[float],
        *,
        grace: float,
        reason: str,
        state: str = "missed",
        now: float | None = None,
    ) -> list[float]:
        if state not in TICK_STATES:
            raise ValueError(f"a tick-level record is one of {TICK_STATES}, not {state!r}")

        def work(conn: Connection) -> list[float]:
            db_now = float(conn.execute(select(clock(now))).scalar_one())
            # In tick order, so that callers with overlapping lists queue, never deadlock.
            return [tick for tick in sorted(set(ticks))
                    if db_now >= tick + grace  # the claim's own test for "past grace"
                    and self._record_tick(conn, worker, tick, state, reason, now)]

        return self._db.run(work)

    def cron_finish(
        self,
        run: CronRun,
        state: str,
        *,
        exit_code: int | None = None,
        reason: str | None = None,
        child_pid: int | None = None,
        now: float | None = None,
    ) -> bool:
        require_final(state)
        claim = new_claim()

        def work(conn: Connection) -> bool:
            conn.execute(
                update(cron_runs)
                .where(cron_runs.c.token == run.token, cron_runs.c.state == RUNNING,
                       cron_runs.c.holder_nonce == run.holder.nonce)
                .values(state=state, ended_at=clock(now), exit_code=exit_code,
                        reason=None if reason is None else reason[:255], claim=claim,
                        child_pid=child_pid)
            )
            return conn.execute(
                select(cron_runs.c.token).where(cron_runs.c.token == run.token,
                                                cron_runs.c.claim == claim)
            ).first() is not None

        return self._db.run(work)

    def sync(self, conn: Connection, apart: Apart | None, holder: Holder,
                   runs: Sequence[CronRun], ttl: float, now: float | None
                   ) -> tuple[dict[int, CronRun], tuple[int, ...]]:
        """In node_sync: `_renew_runs`, one statement for all runs, or apart one per run."""
        kept: dict[int, CronRun] = {}
        stop: list[int] = []
        for part in in_parts(runs, apart):
            with guarded(apart, conn, "run", str(part[0].token)):
                renewed, stopping = self._renew_runs(conn, holder, part, ttl, now)
                kept.update(renewed)
                stop.extend(stopping)
        return kept, tuple(sorted(stop))

    def _renew_runs(self, conn: Connection, holder: Holder, runs: Sequence[CronRun],
                    ttl: float, now: float | None
                    ) -> tuple[dict[int, CronRun], tuple[int, ...]]:
        """Renew the holder's running, unexpired runs: those renewed, and of them the
        tokens whose stop a later tick requested (overlap = replace)."""
        if not runs:
            return {}, ()
        claim = new_claim()
        at = clock(now)
        conn.execute(
            update(cron_runs)
            .where(cron_runs.c.token.in_([r.token for r in runs]),
                   cron_runs.c.holder_nonce == holder.nonce, cron_runs.c.state == RUNNING,
                   cron_runs.c.expires_at > at)
            .values(expires_at=at + ttl, claim=claim)
        )
        by_token = {r.token: r for r in runs}
        rows = conn.execute(
            select(cron_runs.c.token, cron_runs.c.expires_at, cron_runs.c.stop_requested)
            .where(cron_runs.c.holder_nonce == holder.nonce, cron_runs.c.claim == claim)
        ).all()
        kept = {int(r.token): CronRun(
            int(r.token), by_token[int(r.token)].worker, by_token[int(r.token)].tick,
            by_token[int(r.token)].slot, holder, float(r.expires_at),
            by_token[int(r.token)].trigger) for r in rows}
        return kept, tuple(sorted(int(r.token) for r in rows if r.stop_requested))

    def close_lost(self, conn: Connection, now: float | None) -> None:
        conn.execute(
            update(cron_runs)
            .where(cron_runs.c.state == RUNNING, cron_runs.c.expires_at <= clock(now))
            .values(state="lost", ended_at=cron_runs.c.expires_at,
                    reason=LOST_REASON)
        )

    def prune(self, conn: Connection, keep: float, now: float | None, batch: int) -> int:
        old = conn.execute(
            # Both ended and ticked more than `keep` ago: with keep > misfire_grace
            # (config validation) a pruned tick can no longer be claimed again.
            select(cron_runs.c.token).where(cron_runs.c.ended_at.is_not(None),
                                            cron_runs.c.ended_at < clock(now) - keep,
                                            cron_runs.c.tick < clock(now) - keep)
            .limit(batch)
        ).scalars().all()
        if old:
            conn.execute(cron_runs.delete().where(cron_runs.c.token.in_(old)))
        return len(old)

    def cron_runs(self, *, worker: str | None = None, limit: int = 100) -> list[CronRunRecord]:
        c, t = cron_runs.c, cron_triggers.c  # the columns history shows
        old = (select(c.token, c.worker, c.tick, c.slot, c.holder_node, c.holder_group,
                      c.holder_pid, c.holder_nonce, c.state, c.claimed_at, c.ended_at,
                      c.exit_code, c.reason, *(null().label(n) for n in _SINCE_0010))
               .order_by(c.tick.desc(), c.slot, c.token).limit(limit))
        new = (select(c.token, c.worker, c.tick, c.slot, c.holder_node, c.holder_group,
                      c.holder_pid, c.holder_nonce, c.state, c.claimed_at, c.ended_at,
                      c.exit_code, c.reason, c.child_pid, c.trigger_id, t.id,
                      t.worker.label("t_worker"), t.trigger_key, t.requested_at, t.grace,
                      t.actor_user, t.actor_host, t.reason.label("t_reason"))
               .select_from(cron_runs.outerjoin(cron_triggers, c.trigger_id == t.id))
               .limit(limit))
        if worker is not None:
            old, new = old.where(c.worker == worker), new.where(c.worker == worker)
        # Two reads an index serves (not one sorted by request time): the ticks newest
        # first, and the triggered runs (tick -id) newest first; merged below.
        ticks = new.where(c.tick >= 0).order_by(c.tick.desc(), c.slot, c.token)
        triggered = new.where(c.tick < 0).order_by(c.tick, c.slot, c.token)

        def trigger(r: Any) -> CronTrigger | None:
            if r.id is None:
                return None
            return trigger_of({**r._mapping, "worker": r.t_worker, "reason": r.t_reason})

        def work(conn: Connection) -> list[CronRunRecord]:
            # readable before and after upgrades: a schema before 0010 has no triggers
            if not self.since_0010(conn):
                return records(conn.execute(old))
            found = records(conn.execute(ticks)) + records(conn.execute(triggered))
            found.sort(key=lambda r: (-r.tick, r.slot, r.token))
            return found[:limit]

        def records(rows: Any) -> list[CronRunRecord]:
            return [CronRunRecord(
                int(r.token), r.worker,
                float(r.tick) if r.requested_at is None else float(r.requested_at),
                int(r.slot),
                None if r.holder_nonce is None else Holder(
                    r.holder_node, r.holder_group, r.holder_pid, r.holder_nonce),
                r.state, float(r.claimed_at), None if r.ended_at is None else float(r.ended_at),
                r.exit_code, r.reason, r.child_pid, trigger(r),
            ) for r in rows]

        return self._db.run(work)

