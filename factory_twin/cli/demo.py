"""`factory-twin demo`."""

from __future__ import annotations

import click


@click.group()
def demo() -> None:
    """demo (not built yet)."""
