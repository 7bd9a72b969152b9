"""`factory-twin simulate`."""

from __future__ import annotations

import click


@click.group()
def simulate() -> None:
    """simulate (not built yet)."""
