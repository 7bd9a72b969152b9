"""History at scale: rollup tables; on PostgreSQL a TimescaleDB hypertable or native range partitions.

On PostgreSQL, twin_history becomes a TimescaleDB hypertable when ``CREATE EXTENSION timescaledb`` succeeds,
otherwise a table partitioned by range on ``ts`` with its partitions in the schema ``twin_partitions`` (see
twin/history.py). Existing rows are kept. SQLite keeps the plain table. The storage chosen is recorded in
``twin_history_state``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "twin_partitions"
DAY_US = 86_400_000_000
MAX_INITIAL_PARTITIONS = 400  # older rows than this many days stay in the DEFAULT partition
AHEAD = 3

_COLUMNS = """
    property_id integer NOT NULL,
    ts bigint NOT NULL,
    value_num double precision,
    value_text text,
    quality smallint NOT NULL,
    CONSTRAINT pk_twin_history PRIMARY KEY (property_id, ts),
    CONSTRAINT fk_twin_history_property_id_twin_properties FOREIGN KEY (property_id)
        REFERENCES twin_properties (id) ON DELETE CASCADE
"""


def _rollup(name: str) -> None:
    op.create_table(
        name,
        sa.Column("property_id", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=False),
        sa.Column("vmax", sa.Float(), nullable=False),
        sa.Column("vmean", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("vlast", sa.Float(), nullable=True),
        sa.Column("last_ts", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["property_id"], ["twin_properties.id"],
                                name=op.f(f"fk_{name}_property_id_twin_properties"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("property_id", "bucket", name=op.f(f"pk_{name}")),
    )


def upgrade() -> None:
    """Create the rollups and state; on PostgreSQL move twin_history to a hypertable or partitions."""
    _rollup("twin_history_1m")
    _rollup("twin_history_1h")
    op.create_table(
        "twin_history_state",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("note", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_twin_history_state")),
    )
    bind = op.get_bind()
    storage = "plain"
    if bind.dialect.name == "postgresql":
        storage = "timescaledb" if _timescale(bind) else "partitioned"
        if storage == "partitioned":
            _partition(bind)
    bind.execute(sa.text("INSERT INTO twin_history_state (name, value, note) VALUES ('storage', 0, :s)"),
                 {"s": storage})


def _timescale(bind: sa.Connection) -> bool:
    """Make twin_history a hypertable if the extension can be created; False (nothing changed) if not."""
    savepoint = bind.begin_nested()
    try:
        bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS timescaledb"))
        bind.execute(sa.text(
            "SELECT create_hypertable('twin_history', 'ts', chunk_time_interval => CAST(:c AS bigint), "
            "migrate_data => true)"), {"c": DAY_US})
    except sa.exc.DBAPIError:
        savepoint.rollback()
        return False
    savepoint.commit()
    return True


def _partition(bind: sa.Connection) -> None:
    """Rebuild twin_history as a range-partitioned table, keeping its rows."""
    x = bind.execute
    x(sa.text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
    x(sa.text("ALTER TABLE twin_history RENAME TO twin_history_unpartitioned"))
    x(sa.text("ALTER TABLE twin_history_unpartitioned RENAME CONSTRAINT pk_twin_history TO pk_twin_history_old"))
    x(sa.text("ALTER TABLE twin_history_unpartitioned RENAME CONSTRAINT "
              "fk_twin_history_property_id_twin_properties TO fk_twin_history_old"))
    x(sa.text(f"CREATE TABLE twin_history ({_COLUMNS}) PARTITION BY RANGE (ts)"))
    x(sa.text(f"CREATE TABLE {SCHEMA}.twin_history_default PARTITION OF twin_history DEFAULT"))
    lo, hi = x(sa.text("SELECT min(ts), max(ts) FROM twin_history_unpartitioned")).one()
    now = int(x(sa.text("SELECT extract(epoch FROM now()) * 1000000")).scalar())
    start = now if lo is None else max(int(lo), now - MAX_INITIAL_PARTITIONS * DAY_US)
    end = max(now, int(hi or 0)) + AHEAD * DAY_US
    day = start - start % DAY_US
    while day <= end:
        name = "twin_history_p" + _stamp(day)
        x(sa.text(f"CREATE TABLE {SCHEMA}.{name} PARTITION OF twin_history FOR VALUES FROM ({day}) TO ({day + DAY_US})"))
        day += DAY_US
    x(sa.text("INSERT INTO twin_history SELECT property_id, ts, value_num, value_text, quality "
              "FROM twin_history_unpartitioned"))
    x(sa.text("DROP TABLE twin_history_unpartitioned"))


def _stamp(us: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(us / 1e6, UTC).strftime("%Y%m%d%H")


def downgrade() -> None:
    """Back to one plain twin_history table (rows kept), rollups and state dropped."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        x = bind.execute
        x(sa.text("ALTER TABLE twin_history RENAME TO twin_history_scaled"))
        x(sa.text("ALTER TABLE twin_history_scaled RENAME CONSTRAINT pk_twin_history TO pk_twin_history_scaled"))
        x(sa.text("ALTER TABLE twin_history_scaled RENAME CONSTRAINT "
                  "fk_twin_history_property_id_twin_properties TO fk_twin_history_scaled"))
        x(sa.text(f"CREATE TABLE twin_history ({_COLUMNS})"))
        x(sa.text("INSERT INTO twin_history SELECT property_id, ts, value_num, value_text, quality "
                  "FROM twin_history_scaled"))
        x(sa.text("DROP TABLE twin_history_scaled CASCADE"))
        x(sa.text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
    op.drop_table("twin_history_state")
    op.drop_table("twin_history_1h")
    op.drop_table("twin_history_1m")
