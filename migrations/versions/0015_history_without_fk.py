"""twin_history without its foreign key: a trigger deletes a property's history with the property instead

The foreign key's check ran once per stored row and nearly doubled the database's cost of a value; the store
writes only ids of properties it knows, and properties are retired, not deleted. Deleting a property (by
hand) still deletes its history, now through a trigger that costs nothing on insert.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 03:15:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_twin_history_property_id_twin_properties"
TRIGGER = "twin_properties_delete_history"

# (as twin/tables.py HISTORY_CASCADE at this revision)
_TRIGGERS: dict[str, tuple[str, ...]] = {
    "sqlite": (
        "CREATE TRIGGER twin_properties_delete_history BEFORE DELETE ON twin_properties "
        "BEGIN DELETE FROM twin_history WHERE property_id = OLD.id; END",
    ),
    "postgresql": (
        """CREATE OR REPLACE FUNCTION twin_properties_delete_history() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM twin_history WHERE property_id = OLD.id;
    RETURN OLD;
END $$""",
        "CREATE TRIGGER twin_properties_delete_history BEFORE DELETE ON twin_properties "
        "FOR EACH ROW EXECUTE FUNCTION twin_properties_delete_history()",
    ),
}


def upgrade() -> None:
    """Drop the foreign key, add the trigger."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(FK, "twin_history", type_="foreignkey")
    else:
        with op.batch_alter_table("twin_history") as batch:
            batch.drop_constraint(FK, type_="foreignkey")
    for sql in _TRIGGERS[op.get_bind().dialect.name]:
        op.execute(sa.text(sql))


def downgrade() -> None:
    """Drop the trigger, add the foreign key back."""
    on = " ON twin_properties" if op.get_bind().dialect.name == "postgresql" else ""
    op.execute(sa.text(f"DROP TRIGGER IF EXISTS {TRIGGER}{on}"))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(sa.text("DROP FUNCTION IF EXISTS twin_properties_delete_history()"))
        op.create_foreign_key(FK, "twin_history", "twin_properties", ["property_id"], ["id"], ondelete="CASCADE")
        return
    with op.batch_alter_table("twin_history") as batch:
        batch.create_foreign_key(FK, "twin_properties", ["property_id"], ["id"], ondelete="CASCADE")
