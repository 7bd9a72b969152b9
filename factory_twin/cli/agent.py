"""`factory-twin agent`."""

from __future__ import annotations

import click


@click.group()
def agent() -> None:
    """agent (not built yet)."""
