"""gateways with broker credentials, and which gateway owns each node

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-06 23:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('twin_gateways',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('revoked_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_twin_gateways'))
    )
    with op.batch_alter_table('twin_nodes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('gateway', sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('twin_nodes', schema=None) as batch_op:
        batch_op.drop_column('gateway')
    op.drop_table('twin_gateways')
