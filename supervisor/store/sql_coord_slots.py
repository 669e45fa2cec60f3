"""Coordinated slots on SQL: a row per index of a worker key, held like a lease (part of
SqlStore, beside store/sql_coord.py).

Invariants, each enforced by the database in the transaction that decides:

- the barrier: `coord_acquire_slot` locks the key's state row (FOR UPDATE), so that it
  and a publish of the key queue for each other, then locks every held slot row of an
  older generation (FOR UPDATE, expiry judged after the lock on the row's latest
  version: a renewal still in flight is waited for, never missed), and takes the slot
  only if none of them is unexpired. So a slot of generation g + 1 is taken only after
  every slot of g was released or had expired by the database's clock.
- a slot is taken only by the member its generation's assignment gives the index to; a
  slot row deleted by hand is created again when that member takes it.
- a slot is renewed by node_sync only for its holder, in its generation, while
  unexpired: once expired (judged by the barrier as free) it is never revived.
- every write stamps a claim and is read back (`Dialect.read_back`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, tuple_, update
from sqlalchemy.engine import Connection

from supervisor.store import CoordSlot, Holder
from supervisor.store.database import Database
from supervisor.store.dialect import clock, new_claim
from supervisor.store.schema import coord_assignments, coord_slots, coord_state

SlotKey = tuple[str, int]
_s, _a, _sl = coord_state.c, coord_assignments.c, coord_slots.c


class CoordSlotSql:
    """The coordinated slots of SqlStore, on the database it is given."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sql = db.dialect

    def coord_acquire_slot(
        self,
        worker_key: str,
        index: int,
        generation: int,
        holder: Holder,
        ttl: float,
        *,
        now: float | None = None,
    ) -> CoordSlot | None:
        def work(conn: Connection) -> CoordSlot | None:
            current = conn.execute(select(_s.generation).where(_s.worker_key == worker_key)
                                   .with_for_update()).scalar()
            if current is None or int(current) != generation:
                return None
            assigned = conn.execute(select(_a.slot_index).where(
                _a.worker_key == worker_key, _a.generation == generation,
                _a.nonce == holder.nonce)).first()
            if assigned is None or assigned.slot_index != index:
                return None
            if self._older_slot_live(conn, worker_key, generation, now):
                return None
            slot = self._take_slot(conn, worker_key, index, generation, holder, ttl, now)
            if slot is None and conn.execute(select(_sl.slot_index).where(
                    _sl.worker_key == worker_key, _sl.slot_index == index)).first() is None:
                # Its row vanished (deleted by hand): this holder alone has the index in
                # this generation, and the key's state row, locked above, queues the rest.
                self._sql.insert_if_absent(conn, coord_slots, [
                    {"worker_key": worker_key, "slot_index": index, "generation": 0,
                     "expires_at": 0.0}])
                slot = self._take_slot(conn, worker_key, index, generation, holder, ttl,
                                             now)
            return slot

        return self._db.run(work)

    def _older_slot_live(self, conn: Connection, key: str, generation: int,
                               now: float | None) -> bool:
        """The barrier: whether a slot of an older generation is held and unexpired.

        Every held older row is locked, whatever its expiry, and its expiry is compared
        after the lock: a row whose renewal is in flight looks expired in the snapshot
        but is not once that renewal commits."""
        live = conn.execute(
            select((_sl.expires_at > clock(now)).label("live"))
            .where(_sl.worker_key == key, _sl.generation < generation,
                   _sl.holder_nonce.is_not(None))
            .with_for_update()
        ).scalars().all()
        return any(bool(value) for value in live)

    def _take_slot(self, conn: Connection, key: str, index: int, generation: int,
                         holder: Holder, ttl: float, now: float | None) -> CoordSlot | None:
        claim = new_claim()
        at = clock(now)
        stmt = (
            update(coord_slots)
            .where(_sl.worker_key == key, _sl.slot_index == index,
                   or_(_sl.holder_nonce.is_(None), _sl.expires_at <= at,
                       and_(_sl.holder_nonce == holder.nonce, _sl.generation == generation)))
            .values(generation=generation, holder_node=holder.node_id,
                    holder_group=holder.group, holder_pid=holder.pid,
                    holder_nonce=holder.nonce, claim=claim, acquired_at=at,
                    expires_at=at + ttl)
        )
        rows = self._written(conn, stmt, claim, [(key, index)])
        if not rows:
            return None
        return CoordSlot(key, index, generation, holder, float(rows[0].expires_at))

    def _written(self, conn: Connection, stmt: Any, claim: str,
                             keys: list[SlotKey]) -> list[Any]:
        """Run a claim-stamping UPDATE of the slots `keys` and read back the rows it really
        changed (without RETURNING: a re-select of those rows by claim, by primary key, so
        it reads only rows this transaction locked or did not change)."""
        cols = (_sl.worker_key, _sl.slot_index, _sl.generation, _sl.expires_at)
        return self._sql.read_back(conn, stmt, cols, [
            tuple_(_sl.worker_key, _sl.slot_index).in_(keys), _sl.claim == claim])

    def coord_release_slot(self, slot: CoordSlot, *, now: float | None = None) -> bool:
        claim = new_claim()

        def work(conn: Connection) -> bool:
            at = clock(now)
            stmt = (update(coord_slots)
                    .where(_sl.worker_key == slot.worker_key, _sl.slot_index == slot.index,
                           _sl.generation == slot.generation,
                           _sl.holder_nonce == slot.holder.nonce, _sl.expires_at > at)
                    .values(holder_node=None, holder_group=None, holder_pid=None,
                            holder_nonce=None, claim=claim, expires_at=at))
            return bool(self._written(conn, stmt, claim,
                                                  [(slot.worker_key, slot.index)]))

        return self._db.run(work)

    def renew(self, conn: Connection, holder: Holder, slots: Sequence[CoordSlot],
              ttl: float, now: float | None) -> dict[SlotKey, CoordSlot]:
        """In node_sync: renew the holder's `slots` that are still its own, in their
        generation and unexpired; those renewed, by (worker key, index)."""
        if not slots:
            return {}
        claim = new_claim()
        at = clock(now)
        stmt = (
            update(coord_slots)
            .where(tuple_(_sl.worker_key, _sl.slot_index, _sl.generation).in_(
                       [(s.worker_key, s.index, s.generation) for s in slots]),
                   _sl.holder_nonce == holder.nonce, _sl.expires_at > at)
            .values(claim=claim, expires_at=at + ttl)
        )
        keys = [(s.worker_key, s.index) for s in slots]
        return {(r.worker_key, int(r.slot_index)): CoordSlot(
            r.worker_key, int(r.slot_index), int(r.generation), holder, float(r.expires_at))
            for r in self._written(conn, stmt, claim, keys)}

