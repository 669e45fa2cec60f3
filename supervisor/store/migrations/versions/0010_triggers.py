"""Cron triggers (`supervisor trigger`) and the children's pids in the history.

- fs_cron_triggers: one row per request to run a cron worker once now, unique on
  (worker, trigger_key), the idempotency key the client sends, so a retried command
  never runs twice; who asked (user and host as the client declares them) and why.
  `closed_at` is set once the trigger is decided (all its slots taken, skipped, or past
  its grace); until then node_sync delivers it to the nodes that run the worker.
- fs_cron_runs.trigger_id: the trigger a run belongs to (NULL: a schedule tick). A
  triggered run's `tick` is minus the trigger's id, so its rows are keyed apart from
  every schedule tick by the existing unique keys, and count as earlier than any tick
  for overlap (forbid skips a tick while it runs, replace stops it).
- fs_cron_runs.child_pid, fs_terms.child_pid: the pid of the run's child, of a term's
  latest child (the supervisor's own pid stays in holder_pid).

Only adds (nullable columns, a new table); older releases go on as they are.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

MARIADB_COLLATION = "utf8mb4_nopad_bin"  # as 0008: names compare byte for byte
MYSQL_COLLATION = "utf8mb4_0900_bin"


def _table_options() -> dict[str, Any]:
    conn = op.get_bind()
    if conn.dialect.name not in ("mysql", "mariadb"):
        return {}
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar_one())
    collation = MARIADB_COLLATION if "mariadb" in version.lower() else MYSQL_COLLATION
    return {"mysql_charset": "utf8mb4", "mysql_collate": collation}


def upgrade() -> None:
    op.create_table(
        "fs_cron_triggers",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("trigger_key", sa.String(64), nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("grace", sa.Double, nullable=False),
        sa.Column("actor_user", sa.String(200), nullable=False),
        sa.Column("actor_host", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(255)),
        sa.Column("claim", sa.String(32)),
        sa.Column("closed_at", sa.Double),
        sa.UniqueConstraint("worker", "trigger_key", name="uq_fs_cron_triggers_key"),
        sqlite_autoincrement=True,
        **_table_options(),
    )
    op.create_index("ix_fs_cron_triggers_open", "fs_cron_triggers", ["closed_at", "worker"])
    op.add_column("fs_cron_runs", sa.Column("trigger_id", sa.BigInteger, nullable=True))
    op.add_column("fs_cron_runs", sa.Column("child_pid", sa.Integer, nullable=True))
    op.add_column("fs_terms", sa.Column("child_pid", sa.Integer, nullable=True))


def downgrade() -> None:
    op.drop_column("fs_terms", "child_pid")
    op.drop_column("fs_cron_runs", "child_pid")
    op.drop_column("fs_cron_runs", "trigger_id")
    op.drop_index("ix_fs_cron_triggers_open", "fs_cron_triggers")
    op.drop_table("fs_cron_triggers")
