"""What each node computes with, in its membership row: its release and its time-zone data.

Nodes whose zone data differ compute different instants for one cron wall time (a zone
whose rules changed recently); `status` shows each node's data and warns when they differ.
Nullable columns: nodes of older releases leave them NULL and keep working.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

COLUMNS = ("release", "tz_source", "tz_version")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("fs_members", sa.Column(name, sa.String(32), nullable=True))


def downgrade() -> None:
    for name in reversed(COLUMNS):
        op.drop_column("fs_members", name)
