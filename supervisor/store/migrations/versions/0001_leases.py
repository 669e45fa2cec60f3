"""Leases, members and the history of leadership terms.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def upgrade() -> None:
    op.create_table(
        "fs_leases",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("term", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("holder_node", sa.String(200)),
        sa.Column("holder_group", sa.String(200)),
        sa.Column("holder_pid", sa.Integer),
        sa.Column("holder_nonce", sa.String(64)),
        sa.Column("claim", sa.String(32)),
        sa.Column("acquired_at", sa.Double),
        sa.Column("renewed_at", sa.Double),
        sa.Column("expires_at", sa.Double, nullable=False, server_default="0"),
        mysql_engine="InnoDB",
    )
    op.create_index("fs_leases_holder", "fs_leases", ["holder_nonce"])
    op.create_table(
        "fs_members",
        sa.Column("nonce", sa.String(64), primary_key=True),
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Double, nullable=False),
        sa.Column("heartbeat_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        mysql_engine="InnoDB",
    )
    op.create_index("fs_members_expires", "fs_members", ["expires_at"])
    op.create_table(
        "fs_terms",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("lease", sa.String(255), nullable=False),
        sa.Column("term", sa.BigInteger, nullable=False),
        sa.Column("holder_node", sa.String(200), nullable=False),
        sa.Column("holder_group", sa.String(200), nullable=False),
        sa.Column("holder_pid", sa.Integer, nullable=False),
        sa.Column("holder_nonce", sa.String(64), nullable=False),
        sa.Column("acquired_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double),
        sa.Column("outcome", sa.String(16)),
        sa.Column("reason", sa.String(255)),
        sa.UniqueConstraint("lease", "term", name="fs_terms_lease_term"),
        mysql_engine="InnoDB",
    )
    op.create_index("fs_terms_acquired", "fs_terms", ["acquired_at"])


def downgrade() -> None:
    op.drop_table("fs_terms")
    op.drop_table("fs_members")
    op.drop_table("fs_leases")
