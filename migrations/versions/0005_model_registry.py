"""model registry: uploaded versions, promotions per asset type, failure reports

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 18:18:37.327795
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("archive", sa.LargeBinary(), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("uploaded_at", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("task", "version", name=op.f("uq_model_versions_task")),
    )
    op.create_table(
        "model_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("gateway", sa.String(length=64), nullable=False),
        sa.Column("asset_type", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", sa.BigInteger(), nullable=False),
        sa.Column("last_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model_versions.id"],
            name=op.f("fk_model_failures_model_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_failures")),
        sa.UniqueConstraint("model_id", "gateway", "asset_type", name=op.f("uq_model_failures_model_id")),
    )
    op.create_table(
        "model_promotions",
        sa.Column("asset_type", sa.String(length=64), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("promoted_at", sa.BigInteger(), nullable=False),
        sa.Column("promoted_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["model_id"],
            ["model_versions.id"],
            name=op.f("fk_model_promotions_model_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("asset_type", "task", name=op.f("pk_model_promotions")),
    )
    with op.batch_alter_table("model_promotions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_model_promotions_model_id"), ["model_id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("model_promotions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_promotions_model_id"))

    op.drop_table("model_promotions")
    op.drop_table("model_failures")
    op.drop_table("model_versions")
