"""Leases, their terms and node memberships in memory: the tables behind MemoryStore.

Mirrors `SqlStore` (store/sql.py) row for row, without SQL. Every method runs under
MemoryStore's one lock and gets the time it decides by (`clock`) from there, so each call
is one atomic step, as one transaction is on a database. Invariants kept here:

- a term only grows: granted one above the row's. Rows here are never deleted or set
  back (nobody edits them by hand, and maintain keeps them), so the row's term is the
  highest ever granted, and SqlStore's restoring of vanished rows from the history
  has nothing to do;
- a lease is free when it has no holder or `expires_at <= clock`;
- renew and release are scoped to name, term and holder, and only while unexpired;
- the newest term of a lease is never pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.model import per_group_prefix
from supervisor.store import Holder, Lease, LeaseState, NodeFacts, NodeMember, TermRecord

REASON_MAX = 255  # the history's reason column: a longer reason is cut, as on SQL


def bare(holder: Holder) -> Holder:
    """The holder as a row keeps it: identity only, facts None (as read back from SQL)."""
    return Holder(holder.node_id, holder.group, holder.pid, holder.nonce)


def matches_key(key: str, wanted: str) -> bool:
    """`key` is `wanted` itself or one of its per-group forms (`wanted/group`), literally."""
    return key == wanted or key.startswith(per_group_prefix(wanted))


@dataclass
class LeaseRow:
    name: str
    term: int = 0
    holder: Holder | None = None
    expires_at: float = 0.0


@dataclass
class TermRow:
    id: int
    lease: str
    term: int
    holder: Holder
    acquired_at: float
    ended_at: float | None = None
    outcome: str | None = None
    reason: str | None = None
    child_pid: int | None = None


@dataclass
class MemberRow:
    holder: Holder
    started_at: float
    expires_at: float
    facts: NodeFacts
    drain: str = ""  # what the node reports (fleet control; memory/control.py)
    summary: str | None = None


class LeaseTables:
    """The lease rows, the term history and the membership rows of the nodes."""

    def __init__(self) -> None:
        self.rows: dict[str, LeaseRow] = {}
        self.terms: list[TermRow] = []  # in insertion (id) order
        self.members: dict[str, MemberRow] = {}  # by nonce
        self._next_term_id = 1

    # --- leases ----------------------------------------------------------------------------

    def ensure(self, names: Sequence[str]) -> None:
        """Create the missing rows, free at term 0."""
        for name in names:
            self.rows.setdefault(name, LeaseRow(name))

    def acquire(self, names: Sequence[str], holder: Holder, ttl: float,
                clock: float) -> dict[str, Lease]:
        """Take each existing, free row of `names` with the next term; record the terms."""
        won: dict[str, Lease] = {}
        for name in dict.fromkeys(names):
            row = self.rows.get(name)
            if row is None or (row.holder is not None and row.expires_at > clock):
                continue
            row.term += 1
            row.holder, row.expires_at = bare(holder), clock + ttl
            won[name] = Lease(name, holder, row.term, row.expires_at)
            self._record_term(name, row.term, holder, clock)
        return won

    def _record_term(self, name: str, term: int, holder: Holder, clock: float) -> None:
        for record in self.terms:
            if record.lease == name and record.term < term and record.ended_at is None:
                record.ended_at, record.outcome = clock, "expired"
                record.reason = "lease expired"
        self.terms.append(TermRow(self._next_term_id, name, term, bare(holder), clock))
        self._next_term_id += 1

    def renew(self, holder: Holder, held: dict[str, int], ttl: float,
              clock: float) -> dict[str, Lease]:
        """Extend each row of `held` (name -> term) still this holder's term, unexpired."""
        kept: dict[str, Lease] = {}
        for name, term in held.items():
            row = self.rows.get(name)
            if (row is None or row.term != term or row.holder is None
                    or row.holder.nonce != holder.nonce or row.expires_at <= clock):
                continue
            row.expires_at = clock + ttl
            kept[name] = Lease(name, holder, row.term, row.expires_at)
        return kept

    def release(self, lease: Lease, reason: str, clock: float) -> bool:
        row = self.rows.get(lease.name)
        if (row is None or row.term != lease.term or row.holder is None
                or row.holder.nonce != lease.holder.nonce or row.expires_at <= clock):
            return False
        row.holder, row.expires_at = None, clock
        for record in self.terms:
            if record.lease == lease.name and record.term == lease.term \
                    and record.ended_at is None:
                record.ended_at, record.outcome = clock, "released"
                record.reason = reason[:REASON_MAX]
        return True

    def states(self, clock: float) -> list[LeaseState]:
        return [LeaseState(row.name, row.term, row.holder, row.expires_at,
                           row.expires_at - clock)
                for row in sorted(self.rows.values(), key=lambda r: r.name)]

    def term_records(self, lease: str | None, limit: int) -> list[TermRecord]:
        found = [r for r in self.terms if lease is None or matches_key(r.lease, lease)]
        found.sort(key=lambda r: (r.acquired_at, r.id), reverse=True)
        return [TermRecord(r.lease, r.term, r.holder, r.acquired_at, r.ended_at, r.outcome,
                           r.reason, r.child_pid) for r in found[:limit]]

    def child_pid(self, lease: Lease, pid: int) -> None:
        for row in self.terms:
            if (row.lease == lease.name and row.term == lease.term
                    and row.holder.nonce == lease.holder.nonce):
                row.child_pid = pid

    # --- membership ------------------------------------------------------------------------

    def heartbeat(self, holder: Holder, ttl: float, clock: float) -> None:
        """Upsert the process's row: its start time and facts are written once."""
        row = self.members.get(holder.nonce)
        if row is None:
            self.members[holder.nonce] = MemberRow(bare(holder), clock, clock + ttl,
                                                   holder.facts or NodeFacts())
        else:
            row.expires_at = clock + ttl

    def leave(self, holder: Holder) -> None:
        self.members.pop(holder.nonce, None)

    def live_members(self, clock: float) -> list[NodeMember]:
        rows = sorted((r for r in self.members.values() if r.expires_at > clock),
                      key=lambda r: (r.holder.node_id, r.started_at))
        return [NodeMember(r.holder, r.started_at, r.expires_at, r.facts.release,
                           r.facts.tz_source, r.facts.tz_version, r.drain, r.summary)
                for r in rows]

    # --- upkeep ----------------------------------------------------------------------------

    def maintain(self, keep: float, clock: float, batch: int) -> int:
        """Close terms whose holder stopped renewing, drop expired members, and prune up
        to `batch` terms ended before `clock - keep` (never a lease's newest)."""
        for record in self.terms:
            if record.ended_at is not None:
                continue
            row = self.rows.get(record.lease)
            same = row is not None and row.term == record.term
            if same and row is not None and row.holder is not None and row.expires_at > clock:
                continue
            record.ended_at = row.expires_at if same and row is not None else clock
            record.outcome, record.reason = "expired", "the holder stopped renewing"
        newest = {r.lease: r.term for r in self.terms}
        for r in self.terms:
            newest[r.lease] = max(newest[r.lease], r.term)
        old = [r.id for r in self.terms
               if r.ended_at is not None and r.ended_at < clock - keep
               and r.term < newest[r.lease]][:batch]
        gone = set(old)
        self.terms = [r for r in self.terms if r.id not in gone]
        self.members = {nonce: r for nonce, r in self.members.items() if r.expires_at > clock}
        return len(old)
