"""users and keys an admin can run (key expiry, owner, rotation; password change time), and the audit trail

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 23:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The audit trail refuses UPDATE, and DELETE of rows not older than a retention purge's cutoff
# (as twin/tables.py AUDIT_TRIGGERS at this revision).
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER twin_audit_no_update BEFORE UPDATE ON twin_audit "
        "BEGIN SELECT RAISE(ABORT, 'twin_audit is append-only: UPDATE refused'); END",
        "CREATE TRIGGER twin_audit_no_delete BEFORE DELETE ON twin_audit "
        "WHEN OLD.at >= COALESCE((SELECT MAX(before) FROM twin_audit_purge), 0) "
        "BEGIN SELECT RAISE(ABORT, 'twin_audit is append-only: DELETE refused (retention purge only)'); END",
    ),
    "postgresql": (
        """CREATE OR REPLACE FUNCTION twin_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.at < COALESCE((SELECT MAX(before) FROM twin_audit_purge), 0) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
        MESSAGE = 'twin_audit is append-only: ' || TG_OP || ' refused (retention purge only)';
END $$""",
        "CREATE TRIGGER twin_audit_append_only BEFORE UPDATE OR DELETE ON twin_audit "
        "FOR EACH ROW EXECUTE FUNCTION twin_audit_append_only()",
        "CREATE TRIGGER twin_audit_no_truncate BEFORE TRUNCATE ON twin_audit "
        "FOR EACH STATEMENT EXECUTE FUNCTION twin_audit_append_only()",
    ),
}


def upgrade() -> None:
    """Apply this revision."""
    op.create_table('twin_audit',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=160), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('target', sa.String(length=256), nullable=False),
    sa.Column('before', sa.JSON(), nullable=True),
    sa.Column('after', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_twin_audit'))
    )
    with op.batch_alter_table('twin_audit', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_twin_audit_action'), ['action'], unique=False)
        batch_op.create_index(batch_op.f('ix_twin_audit_actor'), ['actor'], unique=False)
        batch_op.create_index(batch_op.f('ix_twin_audit_at'), ['at'], unique=False)
        batch_op.create_index(batch_op.f('ix_twin_audit_target'), ['target'], unique=False)

    op.create_table('twin_audit_purge',
    sa.Column('before', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('before', name=op.f('pk_twin_audit_purge'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('expires_at', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('owner', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('rotated_to', sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f('ix_api_keys_owner'), ['owner'], unique=False)

    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('password_changed_at', sa.BigInteger(), nullable=True))

    # sessions were named for their user before keys had an owner
    op.execute("UPDATE api_keys SET owner = substr(name, 9) WHERE name LIKE 'session:%'")
    for statement in _TRIGGERS.get(op.get_bind().dialect.name, ()):
        op.execute(statement)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('password_changed_at')

    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_owner'))
        batch_op.drop_column('rotated_to')
        batch_op.drop_column('owner')
        batch_op.drop_column('expires_at')

    op.drop_table('twin_audit_purge')
    op.drop_table('twin_audit')  # its triggers go with it
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS twin_audit_append_only()")
