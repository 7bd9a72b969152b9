"""dead letters: uplink messages that could not be stored, with reason, gateway, topic, size and payload

Revision ID: 0010
Revises: 0008
Create Date: 2026-12-06 23:55:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('twin_dead_letters',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('gateway', sa.String(length=64), nullable=False),
    sa.Column('topic', sa.String(length=256), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('head', sa.LargeBinary(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=True),
    sa.Column('replayed_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_twin_dead_letters'))
    )
    op.create_index('ix_twin_dead_letters_received_at', 'twin_dead_letters', ['received_at'], unique=False)
    op.create_index('ix_twin_dead_letters_reason', 'twin_dead_letters', ['reason'], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    op.drop_index('ix_twin_dead_letters_reason', table_name='twin_dead_letters')
    op.drop_index('ix_twin_dead_letters_received_at', table_name='twin_dead_letters')
    op.drop_table('twin_dead_letters')
