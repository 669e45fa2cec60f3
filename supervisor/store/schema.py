"""The tables, as SQLAlchemy Core metadata for queries. Migrations own the DDL.

Times are DOUBLE epoch seconds on the database's clock: one representation that
all three databases compute, compare and subtract in SQL the same way, with
microseconds. Table names carry the prefix `fs_` so the schema can share a
database with an application's own tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Double,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
)

metadata = MetaData()

ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only

leases = Table(
    "fs_leases",
    metadata,
    Column("name", String(255), primary_key=True),
    Column("term", BigInteger, nullable=False, default=0),
    Column("holder_node", String(200)),
    Column("holder_group", String(200)),
    Column("holder_pid", Integer),
    Column("holder_nonce", String(64)),
    Column("claim", String(32)),  # set by each successful write, to read the outcome back
    Column("acquired_at", Double),
    Column("renewed_at", Double),
    Column("expires_at", Double, nullable=False, default=0.0),
)

members = Table(
    "fs_members",
    metadata,
    Column("nonce", String(64), primary_key=True),
    Column("node_id", String(200), nullable=False),
    Column("group_name", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("started_at", Double, nullable=False),
    Column("heartbeat_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

terms = Table(
    "fs_terms",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("lease", String(255), nullable=False),
    Column("term", BigInteger, nullable=False),
    Column("holder_node", String(200), nullable=False),
    Column("holder_group", String(200), nullable=False),
    Column("holder_pid", Integer, nullable=False),
    Column("holder_nonce", String(64), nullable=False),
    Column("acquired_at", Double, nullable=False),
    Column("ended_at", Double),
    Column("outcome", String(16)),
    Column("reason", String(255)),
)

cron_runs = Table(
    "fs_cron_runs",
    metadata,
    Column("token", ID, primary_key=True, autoincrement=True),
    Column("worker", String(100), nullable=False),
    Column("tick", Double, nullable=False),
    Column("slot", Integer, nullable=False),  # -1: a tick-level record (missed, skipped)
    Column("node_slot", Integer),  # 0 <= node_slot < max_per_node, unique per node and tick
    Column("holder_node", String(200)),
    Column("holder_group", String(200)),
    Column("holder_pid", Integer),
    Column("holder_nonce", String(64)),
    Column("state", String(16), nullable=False),
    Column("claim", String(32)),  # set by each write that can lose, to read the outcome back
    Column("claimed_at", Double, nullable=False),
    Column("expires_at", Double),
    Column("ended_at", Double),
    Column("exit_code", Integer),
    Column("reason", String(255)),
    # 1: a later tick replaces this run (overlap = replace); its holder stops the child
    Column("stop_requested", SmallInteger, nullable=False, server_default="0"),
    sqlite_autoincrement=True,  # tokens only grow, even after history was pruned
)
