"""Coordinated workers: memberships, published generations, their slots and history.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.mysql import MEDIUMTEXT

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")
LONG_TEXT = sa.Text().with_variant(MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    # New tables only: the rows of 0001-0003 are not touched.
    op.create_table(
        "fs_coord_members",
        sa.Column("worker_key", sa.String(255), nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("joined_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("worker_key", "nonce", name="fs_coord_members_pk"),
        mysql_engine="InnoDB",
    )
    op.create_index("fs_coord_members_nonce", "fs_coord_members", ["nonce"])
    op.create_index("fs_coord_members_expires", "fs_coord_members", ["expires_at"])
    op.create_table(
        "fs_coord_state",
        sa.Column("worker_key", sa.String(255), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("slot_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("published_at", sa.Double),
        sa.Column("claim", sa.String(32)),
        mysql_engine="InnoDB",
    )
    op.create_table(
        "fs_coord_assignments",
        sa.Column("worker_key", sa.String(255), nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("nonce", sa.String(64), nullable=False),
        sa.Column("node_id", sa.String(200), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("slot_index", sa.Integer),
        sa.PrimaryKeyConstraint("worker_key", "generation", "nonce",
                                name="fs_coord_assignments_pk"),
        mysql_engine="InnoDB",
    )
    op.create_table(
        "fs_coord_slots",
        sa.Column("worker_key", sa.String(255), nullable=False),
        sa.Column("slot_index", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("holder_node", sa.String(200)),
        sa.Column("holder_group", sa.String(200)),
        sa.Column("holder_pid", sa.Integer),
        sa.Column("holder_nonce", sa.String(64)),
        sa.Column("claim", sa.String(32)),
        sa.Column("acquired_at", sa.Double),
        sa.Column("expires_at", sa.Double, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("worker_key", "slot_index", name="fs_coord_slots_pk"),
        mysql_engine="InnoDB",
    )
    op.create_table(
        "fs_coord_generations",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("worker_key", sa.String(255), nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("slot_count", sa.Integer, nullable=False),
        sa.Column("members", LONG_TEXT, nullable=False),
        sa.Column("published_at", sa.Double, nullable=False),
        sa.Column("ended_at", sa.Double),
        # one row per generation number: a second publisher of the same number fails
        sa.UniqueConstraint("worker_key", "generation", name="fs_coord_generations_gen"),
        mysql_engine="InnoDB",
    )
    op.create_index("fs_coord_generations_ended", "fs_coord_generations", ["ended_at"])


def downgrade() -> None:
    op.drop_table("fs_coord_generations")
    op.drop_table("fs_coord_slots")
    op.drop_table("fs_coord_assignments")
    op.drop_table("fs_coord_state")
    op.drop_table("fs_coord_members")
