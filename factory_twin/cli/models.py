"""`factory-twin models`."""

from __future__ import annotations

import click


@click.group()
def models() -> None:
    """models (not built yet)."""
