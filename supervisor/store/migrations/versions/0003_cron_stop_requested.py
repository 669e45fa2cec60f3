"""Cron runs: a stop request, set on earlier runs when a later tick replaces them.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on all three (SQLite takes NOT NULL with a constant default),
    # so existing rows keep their tokens and SQLite keeps AUTOINCREMENT: no table copy.
    op.add_column(
        "fs_cron_runs",
        sa.Column("stop_requested", sa.SmallInteger, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("fs_cron_runs", "stop_requested")  # SQLite >= 3.35 drops in place
