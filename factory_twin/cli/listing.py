"""How the list commands print: one JSON object a line with ``--json``, else a line for people a row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click

Listed = tuple[dict[str, Any], str]  # a row's fields (the JSON object) and its line for people


def echo_rows(rows: Sequence[Listed], as_json: bool, empty: str) -> None:
    """Print each row as JSON or as its line; ``empty`` on stderr when there is none and no JSON was asked for."""
    for fields, line in rows:
        click.echo(json.dumps(fields) if as_json else line)
    if not rows and not as_json:
        click.echo(empty, err=True)
