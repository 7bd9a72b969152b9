"""`factory-twin db`."""

from __future__ import annotations

import click


@click.group()
def db() -> None:
    """db (not built yet)."""
