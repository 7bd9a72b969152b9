"""site scopes: the sites a user or an API key may see and change (NULL: every site); each site file's model

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 03:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.add_column('api_keys', sa.Column('sites', sa.JSON(), nullable=True))
    op.add_column('users', sa.Column('sites', sa.JSON(), nullable=True))
    op.create_table('twin_sites',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('model', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_twin_sites'))
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('twin_sites')
    op.drop_column('users', 'sites')
    op.drop_column('api_keys', 'sites')
