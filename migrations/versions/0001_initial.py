"""Initial schema: twin nodes, properties, history, frames, diagnoses, ingest rejections, API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-23 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _fk(cols: list[str], target: list[str], name: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(cols, target, name=op.f(name), ondelete="CASCADE")


def upgrade() -> None:
    """Create the tables."""
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("last_used_at", sa.BigInteger(), nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("prefix", name=op.f("uq_api_keys_prefix")),
    )
    op.create_table(
        "ingest_rejections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("batch", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingest_rejections")),
    )
    op.create_index("ix_ingest_rejections_at", "ingest_rejections", ["at"], unique=False)
    op.create_table(
        "twin_nodes",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("parent_id", sa.String(length=64), nullable=True),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=True),
        sa.Column("criticality", sa.String(length=8), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("retired_at", sa.BigInteger(), nullable=True),
        _fk(["parent_id"], ["twin_nodes.id"], "fk_twin_nodes_parent_id_twin_nodes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_twin_nodes")),
    )
    op.create_index(op.f("ix_twin_nodes_parent_id"), "twin_nodes", ["parent_id"], unique=False)
    op.create_index(op.f("ix_twin_nodes_path"), "twin_nodes", ["path"], unique=False)
    op.create_table(
        "twin_diagnoses",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        _fk(["node_id"], ["twin_nodes.id"], "fk_twin_diagnoses_node_id_twin_nodes"),
        sa.PrimaryKeyConstraint("node_id", "task", "ts", name=op.f("pk_twin_diagnoses")),
    )
    op.create_table(
        "twin_frames",
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=False),
        _fk(["node_id"], ["twin_nodes.id"], "fk_twin_frames_node_id_twin_nodes"),
        sa.PrimaryKeyConstraint("node_id", "ts", name=op.f("pk_twin_frames")),
    )
    op.create_table(
        "twin_properties",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("node_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("unit", sa.String(length=32), nullable=False),
        sa.Column("dtype", sa.String(length=8), nullable=False),
        sa.Column("range_low", sa.Float(), nullable=True),
        sa.Column("range_high", sa.Float(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("ts", sa.BigInteger(), nullable=True),
        sa.Column("server_ts", sa.BigInteger(), nullable=True),
        sa.Column("recv_ts", sa.BigInteger(), nullable=True),
        sa.Column("stored_ts", sa.BigInteger(), nullable=True),
        sa.Column("quality", sa.SmallInteger(), nullable=True),
        sa.Column("flags", sa.String(length=128), nullable=False),
        sa.Column("retired_at", sa.BigInteger(), nullable=True),
        _fk(["node_id"], ["twin_nodes.id"], "fk_twin_properties_node_id_twin_nodes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_twin_properties")),
        sa.UniqueConstraint("node_id", "name", name=op.f("uq_twin_properties_node_id")),
    )
    op.create_table(
        "twin_history",
        sa.Column("property_id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("quality", sa.SmallInteger(), nullable=False),
        _fk(["property_id"], ["twin_properties.id"], "fk_twin_history_property_id_twin_properties"),
        sa.PrimaryKeyConstraint("property_id", "ts", name=op.f("pk_twin_history")),
    )


def downgrade() -> None:
    """Drop the tables, dependants first."""
    op.drop_table("twin_history")
    op.drop_table("twin_properties")
    op.drop_table("twin_frames")
    op.drop_table("twin_diagnoses")
    op.drop_index(op.f("ix_twin_nodes_path"), table_name="twin_nodes")
    op.drop_index(op.f("ix_twin_nodes_parent_id"), table_name="twin_nodes")
    op.drop_table("twin_nodes")
    op.drop_index("ix_ingest_rejections_at", table_name="ingest_rejections")
    op.drop_table("ingest_rejections")
    op.drop_table("api_keys")
