"""The schema says which releases can use it: `fs_schema_info`, with "min_release".

A fleet is upgraded node by node, so old and new supervisors share one database for a
while, and the first new node migrates the schema under the old ones. Migrations only add
(tables, nullable columns, indexes), so an older release keeps working on a newer schema;
a migration that ever breaks that raises "min_release" to the oldest release that still
works with it, and an older node reads it and refuses to coordinate instead of guessing
(supervisor/store/compat.py).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# Every release since 0.1.0 (schema 0005) works on this schema.
MIN_RELEASE = "0.1.0"


def upgrade() -> None:
    info = op.create_table(
        "fs_schema_info",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.bulk_insert(info, [{"name": "min_release", "value": MIN_RELEASE}])


def downgrade() -> None:
    op.drop_table("fs_schema_info")
