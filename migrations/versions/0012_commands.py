"""setpoint commands: desired value, state, and what the gateway reported

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('twin_commands',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('prop', sa.String(length=64), nullable=False),
    sa.Column('gateway', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.Column('previous', sa.Float(), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('actor', sa.String(length=160), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('confirmed_by', sa.String(length=160), nullable=True),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.Column('sent_at', sa.BigInteger(), nullable=True),
    sa.Column('ended_at', sa.BigInteger(), nullable=True),
    sa.Column('outcome', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('reported', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_twin_commands'))
    )
    with op.batch_alter_table('twin_commands', schema=None) as batch_op:
        batch_op.create_index('ix_twin_commands_node_prop', ['node_id', 'prop', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_twin_commands_gateway'), ['gateway'], unique=False)
        batch_op.create_index(batch_op.f('ix_twin_commands_state'), ['state'], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('twin_commands')
