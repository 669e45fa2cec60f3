"""Heartbeats that cost one heap tuple: no index on the columns each heartbeat changes.

Every node rewrites its fs_members row (and each coordinated membership row) once per renew
interval. An index on `expires_at` made every one of those updates a non-HOT update on
PostgreSQL (a new entry in every index of the table, 0 % HOT at 50 to 200 nodes in
bench/scale.py), and on MariaDB a secondary-index write. Both tables hold live rows only
(expired ones are deleted by `maintain`), so a scan for the live ones is cheap and the
indexes go.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("fs_members_expires", table_name="fs_members")
    op.drop_index("fs_coord_members_expires", table_name="fs_coord_members")


def downgrade() -> None:
    op.create_index("fs_coord_members_expires", "fs_coord_members", ["expires_at"])
    op.create_index("fs_members_expires", "fs_members", ["expires_at"])
