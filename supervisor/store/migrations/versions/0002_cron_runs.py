"""Cron runs: one leased row per claimed slot of a tick, plus tick-level records.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "fs_cron_runs",
        sa.Column("token", ID, primary_key=True, autoincrement=True),
        sa.Column("worker", sa.String(100), nullable=False),
        sa.Column("tick", sa.Double, nullable=False),
        sa.Column("slot", sa.Integer, nullable=False),
        sa.Column("node_slot", sa.Integer),
        sa.Column("holder_node", sa.String(200)),
        sa.Column("holder_group", sa.String(200)),
        sa.Column("holder_pid", sa.Integer),
        sa.Column("holder_nonce", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("claim", sa.String(32)),
        sa.Column("claimed_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double),
        sa.Column("ended_at", sa.Double),
        sa.Column("exit_code", sa.Integer),
        sa.Column("reason", sa.String(255)),
        sa.UniqueConstraint("worker", "tick", "slot", name="fs_cron_runs_slot"),
        # max_per_node held by the database itself: a node's n-th run of a tick
        sa.UniqueConstraint("worker", "tick", "holder_node", "node_slot",
                            name="fs_cron_runs_node_slot"),
        mysql_engine="InnoDB",
        # The token must only grow, even after every row was pruned: SQLite reuses
        # rowids unless told AUTOINCREMENT (PostgreSQL sequences and InnoDB never do).
        sqlite_autoincrement=True,
    )
    op.create_index("fs_cron_runs_state", "fs_cron_runs", ["worker", "state"])
    op.create_index("fs_cron_runs_holder", "fs_cron_runs", ["holder_nonce"])


def downgrade() -> None:
    op.drop_table("fs_cron_runs")
