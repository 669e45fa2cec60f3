"""Coordinated workers in memory: memberships, generations and slots, as store/sql_coord.py
keeps them.

A worker key has a membership row per supervisor process (renewed by node_sync), a state
(its published generation and count), the assignment of that generation, a slot per
index held like a lease, and a history row per generation. Every call runs whole under
MemoryStore's lock, which stands for SQL's row locks; the invariants are SQL's:
- a generation number is published once and numbers only grow (`publish` is a
  compare-and-set from `expected`);
- the barrier: a slot of generation g is taken only while no slot of an older
  generation of the key is held and unexpired;
- a slot is renewed only for its holder, in its generation, while unexpired: once
  expired it is lost for good, even before anyone takes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.store import (
    CoordAssigned,
    CoordGeneration,
    CoordMember,
    CoordSlot,
    CoordStatus,
    CoordView,
    Holder,
)
from supervisor.store.memory.leases import bare, matches_key

SlotKey = tuple[str, int]


@dataclass
class KeyState:
    generation: int = 0
    count: int = 0
    published_at: float | None = None
    assigned: tuple[CoordAssigned, ...] = ()  # the current generation's, in order


@dataclass
class SlotRow:
    generation: int = 0
    holder: Holder | None = None
    expires_at: float = 0.0


@dataclass
class GenerationRow:
    id: int
    worker_key: str
    generation: int
    count: int
    members: tuple[Holder, ...]
    indexes: tuple[int | None, ...]
    published_at: float
    ended_at: float | None = None


class CoordTables:
    """Per worker key: memberships, state and assignment, slots, and the history."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, CoordMember]] = {}  # key -> nonce -> member
        self.states: dict[str, KeyState] = {}
        self.slots: dict[SlotKey, SlotRow] = {}
        self.generations: list[GenerationRow] = []  # in insertion (id) order
        self._next_id = 1

    # --- generations -----------------------------------------------------------------------

    def publish(self, key: str, expected: int, members: Sequence[Holder], count: int,
                indexes: Sequence[int | None], clock: float) -> int | None:
        state = self.states.get(key, KeyState())
        if state.generation != expected:
            return None  # someone published first
        new = expected + 1
        holders = tuple(bare(member) for member in members)
        self.states[key] = KeyState(new, count, clock, tuple(
            CoordAssigned(h, i) for h, i in zip(holders, indexes, strict=True)))
        for index in range(count):
            self.slots.setdefault((key, index), SlotRow())
        for row in self.generations:
            if row.worker_key == key and row.generation < new and row.ended_at is None:
                row.ended_at = clock
        self.generations.append(GenerationRow(self._next_id, key, new, count, holders,
                                              tuple(indexes), clock))
        self._next_id += 1
        return new

    def history(self, worker_key: str | None, limit: int) -> list[CoordGeneration]:
        rows = [r for r in self.generations
                if worker_key is None or matches_key(r.worker_key, worker_key)]
        rows.sort(key=lambda r: (r.published_at, r.id), reverse=True)
        return [CoordGeneration(r.worker_key, r.generation, r.count, r.members,
                                r.published_at, r.ended_at, r.indexes) for r in rows[:limit]]

    # --- slots -----------------------------------------------------------------------------

    def acquire_slot(self, key: str, index: int, generation: int, holder: Holder,
                     ttl: float, clock: float) -> CoordSlot | None:
        state = self.states.get(key)
        if state is None or state.generation != generation:
            return None
        if self._index_of(state, holder) != index:
            return None
        if any(k == key and row.generation < generation and row.holder is not None
               and row.expires_at > clock for (k, _), row in self.slots.items()):
            return None  # the barrier: an older generation may still run
        row = self.slots.setdefault((key, index), SlotRow())
        mine = (row.holder is not None and row.holder.nonce == holder.nonce
                and row.generation == generation)
        if row.holder is not None and row.expires_at > clock and not mine:
            return None
        row.generation, row.holder, row.expires_at = generation, bare(holder), clock + ttl
        return CoordSlot(key, index, generation, holder, row.expires_at)

    @staticmethod
    def _index_of(state: KeyState, holder: Holder) -> int | None:
        return next((a.index for a in state.assigned if a.holder.nonce == holder.nonce), None)

    def release_slot(self, slot: CoordSlot, clock: float) -> bool:
        row = self.slots.get((slot.worker_key, slot.index))
        if not self._held(row, slot.holder, slot.generation, clock) or row is None:
            return False
        row.holder, row.expires_at = None, clock
        return True

    @staticmethod
    def _held(row: SlotRow | None, holder: Holder, generation: int, clock: float) -> bool:
        return (row is not None and row.holder is not None and row.generation == generation
                and row.holder.nonce == holder.nonce and row.expires_at > clock)

    # --- in node_sync ----------------------------------------------------------------------

    def sync(self, holder: Holder, keys: Sequence[str], watch: Sequence[str] | None,
             slots: Sequence[CoordSlot], ttl: float,
             clock: float) -> tuple[dict[str, CoordView], dict[SlotKey, CoordSlot]]:
        """Renew the holder's memberships of `keys` and its `slots`; the views of `keys`
        (live members listed for the watched ones) and the slots renewed."""
        keys = list(dict.fromkeys(keys))
        for key in keys:
            self._join(key, holder, ttl, clock)
        wanted = set(keys if watch is None else watch)
        views = {key: self._view(key, holder, self.live(key, clock) if key in wanted else None)
                 for key in keys}
        kept: dict[SlotKey, CoordSlot] = {}
        for slot in slots:
            row = self.slots.get((slot.worker_key, slot.index))
            if not self._held(row, holder, slot.generation, clock) or row is None:
                continue
            row.expires_at = clock + ttl
            kept[(slot.worker_key, slot.index)] = CoordSlot(
                slot.worker_key, slot.index, row.generation, holder, row.expires_at)
        return views, kept

    def _join(self, key: str, holder: Holder, ttl: float, clock: float) -> None:
        """An unexpired membership keeps its joined_at; an expired one rejoins at `clock`."""
        rows = self.members.setdefault(key, {})
        old = rows.get(holder.nonce)
        joined = clock if old is None or old.expires_at <= clock else old.joined_at
        rows[holder.nonce] = CoordMember(bare(holder) if old is None else old.holder, joined,
                                         clock + ttl)

    def _view(self, key: str, holder: Holder,
              members: list[CoordMember] | None) -> CoordView:
        listed = None if members is None else tuple(members)
        state = self.states.get(key)
        if state is None:
            return CoordView(key, 0, 0, None, None, listed)
        return CoordView(key, state.generation, state.count, self._index_of(state, holder),
                         state.published_at, listed)

    def live(self, key: str, clock: float) -> list[CoordMember]:
        """Unexpired members of the key, by joined_at then nonce."""
        return sorted((m for m in self.members.get(key, {}).values() if m.expires_at > clock),
                      key=lambda m: (m.joined_at, m.holder.nonce))

    def leave(self, holder: Holder, key: str | None = None) -> None:
        """End the holder's membership of `key`, or of every key."""
        for worker_key, rows in self.members.items():
            if key is None or worker_key == key:
                rows.pop(holder.nonce, None)

    # --- status and upkeep -----------------------------------------------------------------

    def status(self, key: str, clock: float) -> CoordStatus:
        state = self.states.get(key, KeyState())
        slots = tuple(CoordSlot(key, index, row.generation, row.holder, row.expires_at)
                      for (k, index), row in sorted(self.slots.items())
                      if k == key and row.holder is not None)
        return CoordStatus(key, clock, state.generation, state.count, state.published_at,
                           state.assigned, tuple(self.live(key, clock)), slots)

    def maintain(self, keep: float, clock: float, batch: int) -> int:
        """Drop expired memberships; prune up to `batch` generations superseded more than
        `keep` ago (the current one has no end, so it stays). How many were pruned."""
        for rows in self.members.values():
            for nonce in [n for n, m in rows.items() if m.expires_at <= clock]:
                del rows[nonce]
        old = {r.id for r in self.generations
               if r.ended_at is not None and r.ended_at < clock - keep}
        old = set(sorted(old)[:batch])
        self.generations = [r for r in self.generations if r.id not in old]
        return len(old)
