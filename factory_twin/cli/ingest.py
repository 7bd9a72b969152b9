"""`factory-twin ingest`: the uplink messages ingest could not store (dead letters), and their replay after a fix."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from twin.config import TwinSettings

_DATA_DIR = click.option("--data-dir", type=click.Path(path_type=Path), default=None,
                         help="Data directory of the twin's SQLite file (TWIN_DATA_DIR; the demo's is var/demo).")
_DATABASE_URL = click.option("--database-url", default=None, help="The twin's database (TWIN_DATABASE_URL).")
_AGO = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


@click.group()
def ingest() -> None:
    """Inspect and replay the uplink messages ingest could not store (dead letters)."""


def _settings(data_dir: Path | None, database_url: str | None) -> TwinSettings:
    from twin.config import TwinSettings

    given = {"data_dir": data_dir, "database_url": database_url}
    return TwinSettings(**{k: v for k, v in given.items() if v is not None})  # type: ignore[arg-type]


def _since_us(since: str | None) -> int | None:
    """``30m``, ``2h``, ``1d`` ago, or an ISO 8601 time (UTC when it names no zone), as µs."""
    if since is None:
        return None
    from plant.wire import now_us, to_us

    ago = _AGO.match(since)
    if ago:
        return now_us() - int(float(ago[1]) * _UNIT_S[ago[2]] * 1_000_000)
    try:
        return to_us(datetime.fromisoformat(since))
    except ValueError:
        hint = "give a time (2026-12-06T10:00) or an age (30m, 2h, 1d)"
        raise click.BadParameter(hint, param_hint="--since") from None


@ingest.command("dead-letters")
@click.option("--reason", default=None, help="Only this reason (too_large, undecodable, bad_gateway, ...).")
@click.option("--since", default=None, help="Received since this time (ISO 8601) or age (30m, 2h, 1d).")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@_DATA_DIR
@_DATABASE_URL
def dead_letters(reason: str | None, since: str | None, limit: int, as_json: bool, data_dir: Path | None,
                 database_url: str | None) -> None:
    """List dead letters, newest first: reason, gateway, topic, size and the payload's first bytes."""
    from plant.wire import from_us
    from twin.db import make_engine
    from twin.dead_letters import DeadLetters

    engine = make_engine(_settings(data_dir, database_url).db_url)
    try:
        rows = DeadLetters(engine).recent(reason, _since_us(since), limit)
    finally:
        engine.dispose()
    for r in rows:
        if as_json:
            click.echo(json.dumps(r.as_dict()))
            continue
        when = from_us(r.received_at).isoformat(timespec="seconds")
        state = f"replayed {from_us(r.replayed_at).isoformat(timespec='seconds')}" if r.replayed_at else (
            "replayable" if r.replayable else "head only")
        click.echo(f"{r.id:>7}  {when}  {r.reason:<16}  gateway {r.gateway or '-'}  {r.size} bytes  {state}\n"
                   f"         topic {r.topic}\n         {r.detail}\n"
                   f"         head {r.head[:120].decode('utf-8', 'backslashreplace')}")
    if not rows and not as_json:
        click.echo("no dead letters", err=True)


@ingest.command()
@click.argument("ids", nargs=-1, type=int, required=True)
@_DATA_DIR
@_DATABASE_URL
def replay(ids: tuple[int, ...], data_dir: Path | None, database_url: str | None) -> None:
    """Submit dead letters IDS again through the ingest path; each one stored is marked replayed."""
    from twin.db import make_engine
    from twin.dead_letters import DeadLetters
    from twin.intake import Intake
    from twin.store import TwinStore
    from twin.uplink_checks import WireLimits

    settings = _settings(data_dir, database_url)
    engine = make_engine(settings.db_url)
    failed = 0
    try:
        dead = DeadLetters(engine)
        store = TwinStore(engine, settings)
        limits = WireLimits(settings.ingest_max_payload_bytes, settings.ingest_max_string)
        for dead_id in ids:
            held = dead.payload(dead_id)
            if held is None or held[1] is None:
                click.echo(f"{dead_id}: " + ("no such dead letter" if held is None else
                                             "too large: only its first bytes were kept, it cannot be replayed"))
                failed += 1
                continue
            root = held[0].rsplit("/", 2)[0]  # the root it was sent under, whatever this process's setting
            outcome = Intake(store, dead, root, limits).handle(held[0], held[1], record=False)
            if outcome.stored and outcome.ack is not None:
                dead.mark_replayed(dead_id)
                a = outcome.ack
                click.echo(f"{dead_id}: stored (accepted {a.accepted}, duplicates {a.duplicates}, "
                           f"rejected {len(a.rejected)})")
            else:
                failed += 1
                why = outcome.dead_letter or (outcome.ack.error if outcome.ack else "") or "not stored"
                click.echo(f"{dead_id}: not stored: {why}: {outcome.detail}")
    finally:
        engine.dispose()
    if failed:
        sys.exit(1)
