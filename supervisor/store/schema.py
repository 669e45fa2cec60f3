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
    Text,
)
from sqlalchemy.dialects.mysql import MEDIUMTEXT

metadata = MetaData()

ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER only
LONG_TEXT = Text().with_variant(MEDIUMTEXT(), "mysql", "mariadb")  # TEXT is 64 KiB there

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
    # What the node computes with (migration 0007; NULL from nodes of older releases): its
    # release, and the time-zone data its cron schedules use: where they were loaded from
    # ("system" files or the "tzdata" package) and their version.
    Column("release", String(32)),
    Column("tz_source", String(32)),
    Column("tz_version", String(32)),
    # What the node reports with its sync, written only when it changed (migration 0009):
    # its drain acknowledgement ("acknowledged", "drained"; NULL or "": not draining) and
    # a compact JSON summary of its workers' states.
    Column("drain_state", String(16)),
    Column("summary", Text),
)

# Facts about the schema itself (migration 0007), name -> value. "min_release": the oldest
# release of the supervisor that can still use this schema; a node older than that refuses
# to coordinate instead of guessing.
schema_info = Table(
    "fs_schema_info",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
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
    Column("child_pid", Integer),  # the latest child of the term (migration 0010)
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
    # Migration 0010: the trigger of a triggered run (its tick is then -trigger_id), and
    # the run's child's pid.
    Column("trigger_id", BigInteger),
    Column("child_pid", Integer),
    sqlite_autoincrement=True,  # tokens only grow, even after history was pruned
)

cron_triggers = Table(  # `supervisor trigger`: a request to run a cron worker once now
    "fs_cron_triggers",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("worker", String(100), nullable=False),
    Column("trigger_key", String(64), nullable=False),  # unique per worker: idempotency
    Column("requested_at", Double, nullable=False),
    Column("grace", Double, nullable=False),
    Column("actor_user", String(200), nullable=False),
    Column("actor_host", String(255), nullable=False),
    Column("reason", String(255)),
    Column("claim", String(32)),
    Column("closed_at", Double),  # decided: all slots taken, skipped, or past its grace
    sqlite_autoincrement=True,
)

# --- coordinated workers: a worker key is `worker`, or `worker/group` for scope group ---

coord_members = Table(  # one row per (worker key, supervisor process), renewed in node_sync
    "fs_coord_members",
    metadata,
    Column("worker_key", String(255), primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("node_id", String(200), nullable=False),
    Column("group_name", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("joined_at", Double, nullable=False),
    Column("expires_at", Double, nullable=False),
)

coord_state = Table(  # the published generation of each key: a compare-and-set target
    "fs_coord_state",
    metadata,
    Column("worker_key", String(255), primary_key=True),
    Column("generation", BigInteger, nullable=False, default=0),  # only grows
    Column("slot_count", Integer, nullable=False, default=0),  # the generation's count
    Column("published_at", Double),
    Column("claim", String(32)),
)

coord_assignments = Table(  # the current generation's members and indexes
    "fs_coord_assignments",
    metadata,
    Column("worker_key", String(255), primary_key=True),
    Column("generation", BigInteger, primary_key=True),
    Column("nonce", String(64), primary_key=True),
    Column("node_id", String(200), nullable=False),
    Column("group_name", String(200), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("position", Integer, nullable=False),  # in the published member list
    Column("slot_index", Integer),  # None: stands by
)

coord_slots = Table(  # index i of a key, held like a lease by one generation's member
    "fs_coord_slots",
    metadata,
    Column("worker_key", String(255), primary_key=True),
    Column("slot_index", Integer, primary_key=True),
    Column("generation", BigInteger, nullable=False, default=0),
    Column("holder_node", String(200)),
    Column("holder_group", String(200)),
    Column("holder_pid", Integer),
    Column("holder_nonce", String(64)),
    Column("claim", String(32)),
    Column("acquired_at", Double),
    Column("expires_at", Double, nullable=False, default=0.0),
)

coord_generations = Table(  # history: one row per published generation
    "fs_coord_generations",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("worker_key", String(255), nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("slot_count", Integer, nullable=False),
    Column("members", LONG_TEXT, nullable=False),  # JSON [[node, group, pid, nonce], ...]
    Column("published_at", Double, nullable=False),
    Column("ended_at", Double),  # when the next generation was published
)

# Fleet control (migration 0009): the standing requests, one row per (kind, target, group).
control = Table(
    "fs_control",
    metadata,
    Column("kind", String(16), primary_key=True),  # pause | drain | handover
    Column("target", String(255), primary_key=True),  # worker, or node id (drain)
    Column("group_name", String(200), primary_key=True),  # "" every group
    Column("reason", String(255), nullable=False),
    Column("actor_user", String(200), nullable=False),
    Column("actor_host", String(255), nullable=False),
    Column("requested_at", Double, nullable=False),
    Column("stop_running", SmallInteger, nullable=False, default=0),
    Column("until_at", Double),  # handover: the old holder stays out until then
    Column("holder_nonce", String(64)),  # handover: the holder asked to hand over
)

# One row (id 1): a number every control write bumps, so a node's sync reads the
# control rows only when they changed since it last did.
control_version = Table(
    "fs_control_version",
    metadata,
    Column("id", SmallInteger, primary_key=True),
    Column("version", BigInteger, nullable=False, default=0),
)

control_log = Table(  # history: append-only, one row per control action
    "fs_control_log",
    metadata,
    Column("id", ID, primary_key=True, autoincrement=True),
    Column("at", Double, nullable=False),
    Column("action", String(16), nullable=False),
    Column("target", String(255), nullable=False),
    Column("group_name", String(200), nullable=False),
    Column("actor_user", String(200), nullable=False),
    Column("actor_host", String(255), nullable=False),
    Column("reason", String(255), nullable=False),
)
