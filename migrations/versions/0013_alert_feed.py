"""the alert feed: the history keys each stored batch added, until the alert evaluator has judged them

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-07 01:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('alert_feed',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('property_ids', postgresql.ARRAY(sa.Integer()).with_variant(sa.Text(), 'sqlite'), nullable=False),
    sa.Column('ts', postgresql.ARRAY(sa.BigInteger()).with_variant(sa.Text(), 'sqlite'), nullable=False),
    sa.Column('stored_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_feed'))
    )


def downgrade() -> None:
    """Revert this revision."""
    op.drop_table('alert_feed')
