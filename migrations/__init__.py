"""Alembic migrations of the twin's database; run them with ``factory-twin db upgrade`` (see ``migrations.run``)."""
