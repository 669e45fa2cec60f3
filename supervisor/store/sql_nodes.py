"""Node membership on SQL: a row per live supervisor process (part of SqlStore).

Invariants:

- a process's row is upserted by its every node_sync (its heartbeat), which also reads
  the database's clock for the node; its facts (release, time-zone data) go in with the
  insert only, so a heartbeat writes nothing more than before;
- the table keeps live processes only: `maintain` deletes the rows whose process stopped
  heartbeating (killed, crashed), so it stays small and needs no index on expires_at.
"""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.engine import Connection

from supervisor.store import Holder, NodeFacts, NodeMember
from supervisor.store.database import Database
from supervisor.store.dialect import clock
from supervisor.store.refusals import fit
from supervisor.store.schema import members

_FACT_WIDTH = 32  # fs_members' String(32) for release, tz_source and tz_version


class NodeSql:
    """The membership part of SqlStore, on the database it is given."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._sql = db.dialect

    def heartbeat(self, conn: Connection, holder: Holder, ttl: float,
                  now: float | None) -> float:
        """Upsert this process's membership row; returns the database clock it used."""
        at = clock(now)
        facts = holder.facts or NodeFacts()
        row = {"nonce": holder.nonce, "node_id": holder.node_id, "group_name": holder.group,
               "pid": holder.pid, "started_at": at, "heartbeat_at": at, "expires_at": at + ttl,
               "release": _fits(facts.release), "tz_source": _fits(facts.tz_source),
               "tz_version": _fits(facts.tz_version)}
        fit(members, [row])
        (written,) = self._sql.upsert(
            conn, members, [row], ["nonce"],
            lambda new: [("heartbeat_at", new.heartbeat_at), ("expires_at", new.expires_at)],
            read=[members.c.heartbeat_at])
        return float(written.heartbeat_at)

    def leave(self, conn: Connection, holder: Holder) -> None:
        conn.execute(delete(members).where(members.c.nonce == holder.nonce))

    def members(self, *, now: float | None = None) -> list[NodeMember]:
        with self._db.txn() as conn:
            rows = conn.execute(
                select(members).where(members.c.expires_at > clock(now))
                .order_by(members.c.node_id, members.c.started_at)
            )
            return [NodeMember(Holder(r.node_id, r.group_name, r.pid, r.nonce),
                           float(r.started_at), float(r.expires_at),
                           r.release, r.tz_source, r.tz_version, r.drain_state or "",
                           r.summary) for r in rows]

    def prune(self, conn: Connection, now: float | None) -> None:
        """Delete the rows of processes that stopped heartbeating."""
        conn.execute(delete(members).where(members.c.expires_at <= clock(now)))


def _fits(fact: str | None) -> str | None:
    """A node fact cut to its column's width: a strict MariaDB refuses a longer value,
    and a fact is worth less than the node's heartbeat."""
    return None if fact is None else fact[:_FACT_WIDTH]
