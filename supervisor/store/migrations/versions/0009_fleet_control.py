"""Fleet control: pauses, drains, handovers, the control log, and what nodes report.

New tables only, and two nullable columns on fs_members (a node of an older release
leaves them NULL and keeps working): `drain_state` (the node's drain acknowledgement)
and `summary` (its workers' states). fs_control holds the standing requests,
fs_control_version one number bumped by every control write (a node's sync reads the
requests only when it changed), fs_control_log every action, append-only. On
MariaDB/MySQL the new tables name the binary NO PAD collation themselves (migration 0008
made it the default of the tables that existed then only).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")


def _binary() -> dict[str, Any]:
    """Table options: on MariaDB/MySQL the byte-exact collation 0008 chose."""
    conn = op.get_bind()
    if conn.dialect.name not in ("mysql", "mariadb"):
        return {}
    version = str(conn.execute(sa.text("SELECT VERSION()")).scalar_one()).lower()
    collation = "utf8mb4_nopad_bin" if "mariadb" in version else "utf8mb4_0900_bin"
    return {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4",
            "mysql_collate": collation}


def upgrade() -> None:
    options = _binary()
    op.add_column("fs_members", sa.Column("drain_state", sa.String(16), nullable=True))
    op.add_column("fs_members", sa.Column("summary", sa.Text, nullable=True))
    op.create_table(
        "fs_control",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("actor_user", sa.String(200), nullable=False),
        sa.Column("actor_host", sa.String(255), nullable=False),
        sa.Column("requested_at", sa.Double, nullable=False),
        sa.Column("stop_running", sa.SmallInteger, nullable=False, server_default="0"),
        sa.Column("until_at", sa.Double),
        sa.Column("holder_nonce", sa.String(64)),
        sa.PrimaryKeyConstraint("kind", "target", "group_name", name="fs_control_pk"),
        **options,
    )
    op.create_table(
        "fs_control_version",
        sa.Column("id", sa.SmallInteger, primary_key=True, autoincrement=False),
        sa.Column("version", sa.BigInteger, nullable=False, server_default="0"),
        **options,
    )
    op.execute("INSERT INTO fs_control_version (id, version) VALUES (1, 0)")
    op.create_table(
        "fs_control_log",
        sa.Column("id", ID, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Double, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("target", sa.String(255), nullable=False),
        sa.Column("group_name", sa.String(200), nullable=False),
        sa.Column("actor_user", sa.String(200), nullable=False),
        sa.Column("actor_host", sa.String(255), nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        **options,
    )


def downgrade() -> None:
    op.drop_table("fs_control_log")
    op.drop_table("fs_control_version")
    op.drop_table("fs_control")
    op.drop_column("fs_members", "summary")
    op.drop_column("fs_members", "drain_state")
