"""`factory-twin serve`."""

from __future__ import annotations

import click


@click.group()
def serve() -> None:
    """serve (not built yet)."""
