"""Leases on SQL: a row per lease, a history row per term (part of SqlStore).

Invariants, each enforced by the database in the transaction that decides:

- every write that can lose (acquire, renew, release) is one guarded UPDATE that stamps
  a fresh claim and is read back (`Dialect.read_back`); row counts are never trusted;
- expiry is judged by the database's clock, in the statement itself;
- fencing tokens only grow, and survive rows deleted or set back by hand: a term granted
  is above the history's highest for the lease too, a vanished row is restored from the
  history (`lease_ensure`), and pruning keeps each lease's newest term;
- a term is closed "released" by its holder, "expired" by the next acquire or by
  `maintain`; a release is heard at once by the nodes that LISTEN (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    and_,
    case,
    delete,
    exists,
    func,
    insert,
    inspect,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.engine import Connection

from supervisor.errors import StoreError, StoreRefused
from supervisor.model import per_group_prefix
from supervisor.store import Holder, Lease, LeaseState, TermRecord
from supervisor.store.classify import refusal_cause, refusal_reason
from supervisor.store.database import Database
from supervisor.store.dialect import clock, new_claim
from supervisor.store.refusals import Apart, RowRefused, guarded, in_parts
from supervisor.store.schema import leases, terms

_TERM_MAX = 2**63 - 1  # BIGINT: a fencing token must fit every database's column
_NO_HOLDER: dict[str, Any] = dict.fromkeys(
    ("holder_node", "holder_group", "holder_pid", "holder_nonce", "claim", "acquired_at",
     "renewed_at"))
_READ = (leases.c.name, leases.c.term, leases.c.expires_at)


# fs_terms as every admitted schema has it (0010 added child_pid): what a node reads
# before its own upgrade, e.g. when it restores a lease row
_BEFORE_0010 = [column for column in terms.c if column.name != "child_pid"]

class LeaseSql:
    """The lease part of SqlStore, on the database it is given."""

    def __init__(self, db: Database, secret: str | None) -> None:
        self._db = db
        self._sql = db.dialect
        self._secret = secret  # what a refusal's reason must never show

    def lease_ensure(self, names: Sequence[str], *, now: float | None = None) -> None:
        if not names:
            return
        try:
            self._db.run(lambda conn: self._ensure(conn, names, now))
        except StoreError as exc:
            cause = refusal_cause(exc)
            if cause is None:
                raise
            raise StoreRefused(
                f"database {self._db.masked_url} refused the rows of leases"
                f" {', '.join(names)}: {refusal_reason(cause, self._secret)}") from exc

    def _ensure(self, conn: Connection, names: Sequence[str], now: float | None) -> None:
        """Insert the rows of `names` that are missing: one SELECT when none is.

        A row that vanished is restored from the history (see `lease_ensure`): its last
        term, and unless that term was released its holder, with `renewed_at` and
        `expires_at` now and no claim, which `_acquire` reads as held for one more TTL."""
        have = set(conn.execute(select(leases.c.name).where(leases.c.name.in_(names))).scalars())
        rows = {name: {"name": name, "term": 0, "expires_at": 0.0, **_NO_HOLDER}
                for name in names if name not in have}
        if not rows:
            return
        last = (select(terms.c.lease, func.max(terms.c.term).label("term"))
                .where(terms.c.lease.in_(list(rows))).group_by(terms.c.lease).subquery())
        found = conn.execute(select(*_BEFORE_0010).join(
            last, and_(terms.c.lease == last.c.lease, terms.c.term == last.c.term))).all()
        at = float(conn.execute(select(clock(now))).scalar_one()) if found else 0.0
        for r in found:
            row = rows[r.lease]
            row["term"] = int(r.term)
            if r.outcome != "released":  # it may still run: its renewal fails, then it stops
                row.update(holder_node=r.holder_node, holder_group=r.holder_group,
                           holder_pid=r.holder_pid, holder_nonce=r.holder_nonce,
                           acquired_at=r.acquired_at, renewed_at=at, expires_at=at)
        self._sql.insert_if_absent(conn, leases, list(rows.values()))

    def lease_acquire(
        self, name: str, holder: Holder, ttl: float, *, now: float | None = None
    ) -> Lease | None:
        # The row is created in a transaction of its own: on MariaDB an INSERT IGNORE and
        # the UPDATE in one transaction deadlock against a competitor doing the same.
        self.lease_ensure([name], now=now)
        return self._db.run(lambda conn: self.acquire(conn, [name], holder, ttl, now)).get(name)

    def acquire(
        self, conn: Connection, names: Sequence[str], holder: Holder, ttl: float,
        now: float | None,
    ) -> dict[str, Lease]:
        claim = new_claim()
        at = clock(now)
        # A row `_ensure` restored (a holder, no claim) is held until a TTL after that.
        restored_over = or_(leases.c.claim.is_not(None),
                            func.coalesce(leases.c.renewed_at, 0.0) + ttl <= at)
        # The next term is above the history's too (evaluated only for rows taken here):
        # a row set back or re-created by hand never grants a term twice.
        recorded = func.coalesce(select(func.max(terms.c.term))
                                 .where(terms.c.lease == leases.c.name).scalar_subquery(), 0)
        stmt = (
            update(leases)
            .where(leases.c.name.in_(names))
            .where(or_(leases.c.holder_nonce.is_(None),
                       and_(leases.c.expires_at <= at, restored_over)))
            .values(
                term=case((recorded > leases.c.term, recorded), else_=leases.c.term) + 1,
                holder_node=holder.node_id, holder_group=holder.group,
                holder_pid=holder.pid, holder_nonce=holder.nonce, claim=claim,
                acquired_at=at, renewed_at=at, expires_at=at + ttl,
            )
        )
        rows = self._written(conn, stmt, claim)
        for row in rows:
            if type(row.term) is not int or row.term > _TERM_MAX:  # SQLite overflows to REAL
                raise RowRefused(f"the term of lease {row.name} is out of range ({row.term})")
        won = {row.name: Lease(row.name, holder, int(row.term), float(row.expires_at))
               for row in rows}
        for lease in won.values():
            self._record_term(conn, lease, now)
        return won

    def _record_term(self, conn: Connection, lease: Lease, now: float | None) -> None:
        at = clock(now)
        conn.execute(
            update(terms)
            .where(terms.c.lease == lease.name, terms.c.term < lease.term,
                   terms.c.ended_at.is_(None))
            .values(ended_at=at, outcome="expired", reason="lease expired")
        )
        h = lease.holder
        conn.execute(insert(terms).values(
            lease=lease.name, term=lease.term, holder_node=h.node_id, holder_group=h.group,
            holder_pid=h.pid, holder_nonce=h.nonce, acquired_at=at,
        ))

    def _written(self, conn: Connection, stmt: Any, claim: str) -> list[Any]:
        """The lease rows a claim-stamping UPDATE really changed (re-selected FOR UPDATE
        where there is no RETURNING)."""
        return self._sql.read_back(conn, stmt, _READ, [leases.c.claim == claim], lock=True)

    def lease_renew(self, lease: Lease, ttl: float, *, now: float | None = None) -> Lease | None:
        held = {lease.name: lease.term}
        return self._db.run(lambda conn: self.renew(conn, lease.holder, held, ttl, now)).get(
            lease.name)

    def renew(
        self, conn: Connection, holder: Holder, held: dict[str, int], ttl: float,
        now: float | None,
    ) -> dict[str, Lease]:
        if not held:
            return {}
        claim = new_claim()
        at = clock(now)
        stmt = (
            update(leases)
            .where(tuple_(leases.c.name, leases.c.term).in_(list(held.items())),
                   leases.c.holder_nonce == holder.nonce, leases.c.expires_at > at)
            .values(claim=claim, renewed_at=at, expires_at=at + ttl)
        )
        rows = self._written(conn, stmt, claim)
        return {row.name: Lease(row.name, holder, int(row.term), float(row.expires_at))
                for row in rows}

    def lease_release(
        self, lease: Lease, *, reason: str = "released", now: float | None = None
    ) -> bool:
        """Only an unexpired lease can be released: an expired one was lost, not given back
        (its term is closed as "expired" by `maintain` or the next acquire)."""
        return self._db.run(lambda conn: self._release(conn, lease, reason, now))

    def _release(self, conn: Connection, lease: Lease, reason: str, now: float | None) -> bool:
        claim = new_claim()
        at = clock(now)
        stmt = (
            update(leases)
            .where(leases.c.name == lease.name, leases.c.term == lease.term,
                   leases.c.holder_nonce == lease.holder.nonce, leases.c.expires_at > at)
            .values(holder_node=None, holder_group=None, holder_pid=None,
                    holder_nonce=None, claim=claim, expires_at=at)
        )
        if not self._written(conn, stmt, claim):
            return False
        conn.execute(
            update(terms)
            .where(terms.c.lease == lease.name, terms.c.term == lease.term,
                   terms.c.ended_at.is_(None))
            .values(ended_at=at, outcome="released", reason=reason[:255])
        )
        self._sql.notify_released(conn, lease.name)
        return True

    def sync(
        self, conn: Connection, apart: Apart | None, holder: Holder, held: Sequence[Lease],
        wanted: Sequence[str], ttl: float, now: float | None,
    ) -> tuple[dict[str, Lease], dict[str, Lease]]:
        """In node_sync: renew `held` and try `wanted`, one statement each, or apart one
        per lease."""
        kept: dict[str, Lease] = {}
        for part in in_parts(held, apart):
            with guarded(apart, conn, "lease", part[0].name):
                kept.update(self.renew(conn, holder, {lease.name: lease.term for lease in part},
                                       ttl, now))
        acquired: dict[str, Lease] = {}
        for names in in_parts(wanted, apart):
            with guarded(apart, conn, "lease", names[0]):
                acquired.update(self.acquire(conn, names, holder, ttl, now))
        return kept, acquired

    # --- reading and upkeep ----------------------------------------------------------------

    def leases(self, *, now: float | None = None) -> list[LeaseState]:
        with self._db.txn() as conn:
            left = (leases.c.expires_at - clock(now)).label("left")
            rows = conn.execute(select(leases, left).order_by(leases.c.name))
            return [LeaseState(
                r.name, int(r.term),
                Holder(r.holder_node, r.holder_group, r.holder_pid, r.holder_nonce)
                if r.holder_nonce is not None else None,
                float(r.expires_at), float(r.left),
            ) for r in rows]

    def terms(self, *, lease: str | None = None, limit: int = 100) -> list[TermRecord]:
        if not getattr(self, "_since_0010", False):  # a schema before 0010: no child_pid
            with self._db.txn() as conn:
                self._since_0010 = "child_pid" in {
                    c["name"] for c in inspect(conn).get_columns(terms.name)}
        columns = [c for c in terms.c if self._since_0010 or c.name != "child_pid"]
        query = (select(*columns).order_by(terms.c.acquired_at.desc(), terms.c.id.desc())
                 .limit(limit))
        if lease is not None:  # the lease itself, or its per-group leases "lease/group"
            query = query.where(or_(terms.c.lease == lease,
                                    self._sql.starts_with(terms.c.lease,
                                                          per_group_prefix(lease))))
        with self._db.txn() as conn:
            rows = conn.execute(query)
            return [TermRecord(
                r.lease, int(r.term),
                Holder(r.holder_node, r.holder_group, r.holder_pid, r.holder_nonce),
                float(r.acquired_at), None if r.ended_at is None else float(r.ended_at),
                r.outcome, r.reason, r._mapping.get("child_pid"),
            ) for r in rows]

    def lease_child_pid(self, lease: Lease, pid: int) -> None:
        """Record the pid of the child the holder of `lease` started, on its term."""
        with self._db.txn() as conn:
            conn.execute(update(terms).where(terms.c.lease == lease.name,
                                             terms.c.term == lease.term,
                                             terms.c.holder_nonce == lease.holder.nonce)
                         .values(child_pid=pid))

    def maintain(self, conn: Connection, keep: float, now: float | None, batch: int) -> int:
        """Close terms whose holder stopped renewing (outcome "expired"); delete up to
        `batch` terms that ended more than `keep` seconds ago. How many deleted."""
        at = clock(now)
        current = leases.alias("current")
        same_term = and_(current.c.name == terms.c.lease, current.c.term == terms.c.term)
        conn.execute(
            update(terms)
            .where(terms.c.ended_at.is_(None))
            .where(~exists().where(same_term, current.c.holder_nonce.is_not(None),
                                   current.c.expires_at > at))
            .values(
                ended_at=func.coalesce(
                    select(current.c.expires_at).where(same_term).scalar_subquery(), at),
                outcome="expired", reason="the holder stopped renewing",
            )
        )
        # Never a lease's newest term: a lease row that vanished is restored from it
        # (lease_ensure), so its fencing tokens go on growing after any pruning.
        newer = terms.alias("newer")
        old = conn.execute(
            select(terms.c.id).where(terms.c.ended_at.is_not(None),
                                     terms.c.ended_at < at - keep,
                                     exists().where(newer.c.lease == terms.c.lease,
                                                    newer.c.term > terms.c.term))
            .limit(batch)
        ).scalars().all()
        if old:
            conn.execute(delete(terms).where(terms.c.id.in_(old)))
        return len(old)
