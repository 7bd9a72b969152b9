"""work orders and their events, the asset types people look at, alerts with a unit, a limit and a reason

Revision ID: 0008
Revises: 0005
Create Date: 2026-12-06 20:36:03.848081
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('twin_asset_types',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_twin_asset_types'))
    )
    op.create_table('work_orders',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('node_id', sa.String(length=64), nullable=False),
    sa.Column('node_path', sa.String(length=1024), nullable=False),
    sa.Column('task', sa.String(length=200), nullable=False),
    sa.Column('task_source', sa.String(length=256), nullable=False),
    sa.Column('steps', sa.JSON(), nullable=False),
    sa.Column('priority', sa.String(length=8), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('due_at', sa.BigInteger(), nullable=True),
    sa.Column('assignee', sa.String(length=128), nullable=False),
    sa.Column('notes', sa.Text(), nullable=False),
    sa.Column('parts', sa.JSON(), nullable=False),
    sa.Column('time_spent_h', sa.Float(), nullable=True),
    sa.Column('verdict', sa.String(length=16), nullable=True),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.Column('started_at', sa.BigInteger(), nullable=True),
    sa.Column('finished_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_work_orders'))
    )
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_work_orders_node_id'), ['node_id'], unique=False)
        batch_op.create_index('ix_work_orders_state_due', ['state', 'due_at'], unique=False)

    op.create_table('work_order_alerts',
    sa.Column('work_order_id', sa.Integer(), nullable=False),
    sa.Column('alert_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['alert_id'], ['alerts.id'], name=op.f('fk_work_order_alerts_alert_id_alerts'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_work_order_alerts_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('work_order_id', 'alert_id', name=op.f('pk_work_order_alerts'))
    )
    with op.batch_alter_table('work_order_alerts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_work_order_alerts_alert_id'), ['alert_id'], unique=False)

    op.create_table('work_order_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('work_order_id', sa.Integer(), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('action', sa.String(length=16), nullable=False),
    sa.Column('from_state', sa.String(length=16), nullable=False),
    sa.Column('to_state', sa.String(length=16), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(['work_order_id'], ['work_orders.id'], name=op.f('fk_work_order_events_work_order_id_work_orders'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_work_order_events'))
    )
    with op.batch_alter_table('work_order_events', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_work_order_events_work_order_id'), ['work_order_id'], unique=False)

    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('unit', sa.String(length=32), server_default='', nullable=False))
        batch_op.add_column(sa.Column('limit_value', sa.Float(), nullable=True))
        batch_op.add_column(sa.Column('reason', sa.Text(), server_default='', nullable=False))



def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('alerts', schema=None) as batch_op:
        batch_op.drop_column('reason')
        batch_op.drop_column('limit_value')
        batch_op.drop_column('unit')

    with op.batch_alter_table('work_order_events', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_work_order_events_work_order_id'))

    op.drop_table('work_order_events')
    with op.batch_alter_table('work_order_alerts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_work_order_alerts_alert_id'))

    op.drop_table('work_order_alerts')
    with op.batch_alter_table('work_orders', schema=None) as batch_op:
        batch_op.drop_index('ix_work_orders_state_due')
        batch_op.drop_index(batch_op.f('ix_work_orders_node_id'))

    op.drop_table('work_orders')
    op.drop_table('twin_asset_types')
