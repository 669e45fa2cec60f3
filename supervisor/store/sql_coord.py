"""Coordinated workers on SQL: memberships and generations (part of SqlStore; the slots
are store/sql_coord_slots.py's).

A worker key (`worker`, or `worker/group` for scope group) has a membership row per
supervisor process, renewed in node_sync; a state row holding its published generation;
the assignment of that generation (who has which index); a slot row per index, held
like a lease; and a history row per generation. Invariants, each enforced by the
database in the transaction that decides:

- one generation per number, and numbers only grow: `coord_publish` is a guarded UPDATE
  of the state row from `expected` to `expected + 1`, stamped with a claim and read
  back; the history is unique on (worker_key, generation) besides. The assignment, the
  slot rows and the history row are written in the same transaction. A state row
  deleted by hand comes back at the highest generation recorded, never at 0; a slot
  row deleted by hand is created again when its assigned member takes it.
- a publish and a slot's acquisition of the same key queue for each other on the key's
  state row (the barrier, store/sql_coord_slots.py).
- a membership is renewed by node_sync; an expired one is a rejoin, and `maintain`
  deletes it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, delete, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from supervisor.model import per_group_prefix
from supervisor.store import (
    CoordAssigned,
    CoordGeneration,
    CoordMember,
    CoordSlot,
    CoordStatus,
    CoordView,
    Holder,
)
from supervisor.store.database import Database
from supervisor.store.dialect import clock, new_claim
from supervisor.store.records import publish_indexes
from supervisor.store.refusals import Apart
from supervisor.store.schema import (
    coord_assignments,
    coord_generations,
    coord_members,
    coord_slots,
    coord_state,
)
from supervisor.store.sql_coord_slots import CoordSlotSql, SlotKey

_m, _s, _a, _sl, _g = (coord_members.c, coord_state.c, coord_assignments.c, coord_slots.c,
                       coord_generations.c)


class CoordSql:
    """The coordinated part of SqlStore, on the database it is given."""

    def __init__(self, db: Database, slots: CoordSlotSql) -> None:
        self._db = db
        self._sql = db.dialect
        self._slots = slots  # renewed in node_sync with the memberships

    # --- generations -----------------------------------------------------------------------

    def coord_publish(
        self,
        worker_key: str,
        *,
        expected: int,
        members: Sequence[Holder],
        count: int,
        indexes: Sequence[int | None] | None = None,
        now: float | None = None,
    ) -> int | None:
        indexes = publish_indexes(expected, members, count, indexes)
        if expected == 0:
            # In a transaction of its own, as lease_acquire does: on MariaDB an INSERT
            # IGNORE and the UPDATE in one transaction deadlock against a competitor.
            self._db.run(lambda conn: self._coord_ensure_state(conn, worker_key))
        return self._db.run(lambda conn: self._coord_publish(conn, worker_key, expected,
                                                          members, indexes, count, now))

    def _coord_ensure_state(self, conn: Connection, key: str) -> None:
        """Create the key's state row if absent. One that vanished (deleted by hand) is
        restored at the highest generation its history or its slot rows record, with that
        generation's count, so generation numbers only grow: never one published twice
        (the history's unique key would refuse it), never a slot's generation above the
        key's (the barrier would not see it as older)."""
        if conn.execute(select(_s.worker_key).where(_s.worker_key == key)).first() is not None:
            return
        row: dict[str, Any] = {"worker_key": key, "generation": 0, "slot_count": 0}
        recorded = [conn.execute(select(func.max(column)).where(key_column == key)).scalar()
                    for column, key_column in ((_g.generation, _g.worker_key),
                                               (_sl.generation, _sl.worker_key))]
        generation = max((int(value) for value in recorded if value is not None), default=0)
        if generation:
            last = conn.execute(select(_g.slot_count, _g.published_at).where(
                _g.worker_key == key, _g.generation == generation)).first()
            row.update(generation=generation, slot_count=0 if last is None else last.slot_count,
                       published_at=None if last is None else last.published_at)
        self._sql.insert_if_absent(conn, coord_state, [row])

    def _coord_publish(self, conn: Connection, key: str, expected: int,
                       members: Sequence[Holder], indexes: Sequence[int | None], count: int,
                       now: float | None) -> int | None:
        claim = new_claim()
        new = expected + 1
        stmt = (update(coord_state)
                .where(_s.worker_key == key, _s.generation == expected)
                .values(generation=new, slot_count=count, published_at=clock(now), claim=claim))
        rows = self._sql.read_back(conn, stmt, [_s.published_at],  # our own write: no lock
                                   [_s.worker_key == key, _s.claim == claim])
        if not rows:
            return None  # the current generation is not `expected`: someone published first
        published_at = float(rows[0].published_at)
        conn.execute(delete(coord_assignments).where(_a.worker_key == key, _a.generation < new))
        if members:
            conn.execute(insert(coord_assignments), [
                {"worker_key": key, "generation": new, "nonce": h.nonce, "node_id": h.node_id,
                 "group_name": h.group, "pid": h.pid, "position": i,
                 "slot_index": indexes[i]} for i, h in enumerate(members)])
        if count:
            self._sql.insert_if_absent(conn, coord_slots, [
                {"worker_key": key, "slot_index": i, "generation": 0, "expires_at": 0.0}
                for i in range(count)])
        conn.execute(update(coord_generations)
                     .where(_g.worker_key == key, _g.generation < new, _g.ended_at.is_(None))
                     .values(ended_at=published_at))
        conn.execute(insert(coord_generations).values(
            worker_key=key, generation=new, slot_count=count, published_at=published_at,
            members=json.dumps([[h.node_id, h.group, h.pid, h.nonce, index]
                                for h, index in zip(members, indexes, strict=True)],
                               separators=(",", ":"))))
        return new

    def coord_generations(
        self, *, worker_key: str | None = None, limit: int = 100
    ) -> list[CoordGeneration]:
        query = (select(coord_generations)
                 .order_by(_g.published_at.desc(), _g.id.desc()).limit(limit))
        if worker_key is not None:  # the key itself, or its per-group keys "key/group"
            query = query.where(or_(_g.worker_key == worker_key,
                                    self._sql.starts_with(_g.worker_key,
                                                          per_group_prefix(worker_key))))

        def work(conn: Connection) -> list[CoordGeneration]:
            found = []
            for r in conn.execute(query):
                # [node, group, pid, nonce, index]; rows written before indexes were
                # recorded have four items and the default assignment
                rows = json.loads(r.members)
                count = int(r.slot_count)
                found.append(CoordGeneration(
                    r.worker_key, int(r.generation), count,
                    tuple(Holder(m[0], m[1], int(m[2]), m[3]) for m in rows),
                    float(r.published_at), None if r.ended_at is None else float(r.ended_at),
                    tuple(m[4] if len(m) > 4 else (i if i < count else None)
                          for i, m in enumerate(rows))))
            return found

        return self._db.run(work)

    # --- in node_sync ----------------------------------------------------------------------

    def sync(
        self, conn: Connection, apart: Apart | None, holder: Holder, keys: Sequence[str],
        watch: Sequence[str] | None, slots: Sequence[CoordSlot], ttl: float,
        now: float | None,
    ) -> tuple[dict[str, CoordView], dict[SlotKey, CoordSlot]]:
        """`_coord_sync` with the rest of node_sync, or apart: each key, its membership and
        its slots, on its own (a refused key loses its slots, the others are renewed)."""
        if apart is None:
            views, kept, _ = self._coord_sync(conn, holder, keys, watch, slots, ttl, now)
            return views, kept
        views, kept = {}, {}
        for key in dict.fromkeys([*keys, *(slot.worker_key for slot in slots)]):
            with apart.part(conn, "coord", key):
                seen, renewed, _ = self._coord_sync(
                    conn, holder, [key] if key in keys else [],
                    None if watch is None else [k for k in watch if k == key],
                    [slot for slot in slots if slot.worker_key == key], ttl, now)
                views.update(seen)
                kept.update(renewed)
        return views, kept

    def _coord_sync(
        self, conn: Connection, holder: Holder, keys: Sequence[str],
        watch: Sequence[str] | None, slots: Sequence[CoordSlot], ttl: float,
        now: float | None,
    ) -> tuple[dict[str, CoordView], dict[SlotKey, CoordSlot], tuple[SlotKey, ...]]:
        """Membership renewal, views and slot renewal: a few statements however many keys."""
        keys = list(dict.fromkeys(keys))
        views: dict[str, CoordView] = {}
        if keys:
            self._coord_join(conn, holder, keys, ttl, now)
            wanted = set(keys if watch is None else watch)
            watched = [key for key in keys if key in wanted]
            live = self._coord_live_members(conn, watched, now)
            views = self._coord_views(conn, holder, keys, live)
        kept = self._slots.renew(conn, holder, slots, ttl, now)
        lost = tuple(key for key in dict.fromkeys((s.worker_key, s.index) for s in slots)
                     if key not in kept)
        return views, kept, lost

    def _coord_join(self, conn: Connection, holder: Holder, keys: list[str], ttl: float,
                    now: float | None) -> None:
        """Upsert this holder's membership of each key. An unexpired row keeps its
        joined_at; an expired one is a rejoin and starts again (from the inserted row's
        clock, so both columns come from one reading)."""
        at = clock(now)
        rows = [{"worker_key": key, "nonce": holder.nonce, "node_id": holder.node_id,
                 "group_name": holder.group, "pid": holder.pid, "joined_at": at,
                 "expires_at": at + ttl} for key in keys]
        self._sql.upsert(conn, coord_members, rows, ["worker_key", "nonce"], lambda new: [
            # in this order: MySQL assigns left to right, so joined_at sees the old expiry
            ("joined_at", case((_m.expires_at <= new.joined_at, new.joined_at),
                               else_=_m.joined_at)),
            ("expires_at", new.expires_at)])

    def _coord_live_members(self, conn: Connection, keys: Sequence[str],
                            now: float | None) -> dict[str, list[CoordMember]]:
        live: dict[str, list[CoordMember]] = {key: [] for key in keys}
        if not keys:
            return live
        rows = conn.execute(
            select(coord_members)
            .where(_m.worker_key.in_(keys), _m.expires_at > clock(now))
            .order_by(_m.worker_key, _m.joined_at, _m.nonce))
        for r in rows:
            live[r.worker_key].append(CoordMember(
                Holder(r.node_id, r.group_name, int(r.pid), r.nonce),
                float(r.joined_at), float(r.expires_at)))
        return live

    def _coord_views(self, conn: Connection, holder: Holder, keys: list[str],
                     live: dict[str, list[CoordMember]]) -> dict[str, CoordView]:
        mine = and_(_a.worker_key == _s.worker_key, _a.generation == _s.generation,
                    _a.nonce == holder.nonce)
        rows = conn.execute(
            select(_s.worker_key, _s.generation, _s.slot_count, _s.published_at,
                   _a.slot_index)
            .select_from(coord_state.outerjoin(coord_assignments, mine))
            .where(_s.worker_key.in_(keys)))
        state = {r.worker_key: r for r in rows}
        views = {}
        for key in keys:
            members = tuple(live[key]) if key in live else None
            r = state.get(key)
            if r is None:
                views[key] = CoordView(key, 0, 0, None, None, members)
                continue
            views[key] = CoordView(
                key, int(r.generation), int(r.slot_count),
                None if r.slot_index is None else int(r.slot_index),
                None if r.published_at is None else float(r.published_at), members)
        return views

    def leave_all(self, conn: Connection, holder: Holder) -> None:
        conn.execute(delete(coord_members).where(_m.nonce == holder.nonce))

    def coord_leave(self, worker_key: str, holder: Holder) -> None:
        self._db.run(lambda conn: conn.execute(delete(coord_members).where(
            _m.worker_key == worker_key, _m.nonce == holder.nonce)))

    # --- status and upkeep -----------------------------------------------------------------

    def coord_view(self, worker_key: str, *, now: float | None = None) -> CoordStatus:
        def work(conn: Connection) -> CoordStatus:
            db_now = float(conn.execute(select(clock(now))).scalar_one())
            state = conn.execute(select(coord_state).where(_s.worker_key == worker_key)).first()
            generation = 0 if state is None else int(state.generation)
            assigned = tuple(CoordAssigned(
                Holder(r.node_id, r.group_name, int(r.pid), r.nonce),
                None if r.slot_index is None else int(r.slot_index),
            ) for r in conn.execute(select(coord_assignments).where(
                _a.worker_key == worker_key, _a.generation == generation)
                .order_by(_a.position)))
            slots = tuple(CoordSlot(
                r.worker_key, int(r.slot_index), int(r.generation),
                Holder(r.holder_node, r.holder_group, int(r.holder_pid), r.holder_nonce),
                float(r.expires_at),
            ) for r in conn.execute(select(coord_slots).where(
                _sl.worker_key == worker_key, _sl.holder_nonce.is_not(None))
                .order_by(_sl.slot_index)))
            members = tuple(self._coord_live_members(conn, [worker_key], now)[worker_key])
            return CoordStatus(
                worker_key, db_now, generation, 0 if state is None else int(state.slot_count),
                None if state is None or state.published_at is None
                else float(state.published_at),
                assigned, members, slots)

        return self._db.run(work)

    def maintain(self, conn: Connection, keep: float, now: float | None,
                        batch: int) -> int:
        """Drop expired memberships; delete up to `batch` generations superseded more than
        `keep` seconds ago (the current one has no end, so it stays). How many deleted."""
        at = clock(now)
        conn.execute(delete(coord_members).where(_m.expires_at <= at))
        old = conn.execute(
            select(_g.id).where(_g.ended_at.is_not(None), _g.ended_at < at - keep)
            .limit(batch)
        ).scalars().all()
        if old:
            conn.execute(delete(coord_generations).where(_g.id.in_(old)))
        return len(old)

