"""`factory-twin demo`: simulator, edge agent, platform and embedded broker together, on embedded defaults."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from factory_twin.logs import configure_logging

if TYPE_CHECKING:
    from factory_twin.stack import Stack


@click.command()
@click.option("--for", "duration", type=click.FloatRange(min=1), default=None,
              help="Run this many seconds, print a summary and exit (non-zero if no data reached the twin).")
@click.option("--json", "as_json", is_flag=True, help="With --for: print the summary as one JSON object.")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path("var/demo"), show_default=True,
              help="Where the demo keeps its SQLite database and the agent's outbox.")
@click.option("--fresh", is_flag=True, help="Start from an empty database and outbox.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="REST API port (0, or a taken port, picks a free one).")
@click.option("--speed", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Times the demo's pace: at 1 a milling process every 10 s (a tool lasts some 17 minutes), "
                   "an engine cycle every 5 s, a pump sample every second.")
@click.option("--database-url", default=None, help="Use this database instead of the SQLite default.")
@click.option("--mqtt-url", default=None, help="Use this broker instead of the embedded one.")
def demo(duration: float | None, as_json: bool, data_dir: Path, fresh: bool, port: int, speed: float,
         database_url: str | None, mqtt_url: str | None) -> None:
    """Run the demo plant: three machines replaying public data sets into a live digital twin."""
    from factory_twin.datadir import DataDirBusy, DataDirLock
    from factory_twin.stack import Stack, StackConfig, port_free

    configure_logging(level="WARNING" if as_json else "INFO")
    logging.getLogger("twin.ingest").setLevel(logging.WARNING)  # a status line every 10 s instead of every batch
    lock = DataDirLock(data_dir)
    try:
        lock.acquire()  # before --fresh: never delete what another run is using
    except DataDirBusy as exc:
        raise click.ClickException(str(exc)) from None
    if fresh:
        lock.clear()
    if port and not port_free(port):
        port = 0
    stack = Stack(StackConfig(data_dir=data_dir, database_url=database_url, mqtt_url=mqtt_url,
                              http_port=port, speed=speed, paced=True))
    started = time.monotonic()
    try:
        stack.start_platform()
        lock.note(dashboard=f"{stack.api_url}/")
        _banner(stack, quiet=as_json)
        asyncio.run(stack.run_edge(duration, status_every=10.0))
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop_platform()
        lock.release()
    if stack.ingestor is None:
        sys.exit(1)
    summary = stack.summary(time.monotonic() - started)
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
    else:
        first = "none" if summary.first_alert_s is None else f"after {summary.first_alert_s} s"
        click.echo(f"\nvalues ingested {summary.values_ingested}, nodes updated {summary.nodes_updated}, "
                   f"rejected {summary.rejected}, batches {summary.batches} in {summary.seconds} s; "
                   f"alerts raised {summary.alerts_raised} (first {first}), flapping {summary.alerts_flapping}"
                   + (f"; dead letters {summary.dead_letters} (factory-twin ingest dead-letters --data-dir "
                      f"{data_dir})" if summary.dead_letters else ""))
    if summary.values_ingested == 0:
        click.echo("no data reached the twin: see the log above for the part that failed", err=True)
        sys.exit(1)


def _banner(stack: Stack, quiet: bool) -> None:
    """What a person needs to start: where the dashboard is and how to log in. On stderr, as plain text, never
    as a log event: a key must not end up in a log collector."""
    if quiet:
        return
    cfg = stack.config
    where = "" if cfg.data_dir == Path("var/demo") else f" --data-dir {cfg.data_dir}"
    if cfg.database_url:
        from sqlalchemy.engine import make_url

        where = f" --database-url '{make_url(cfg.database_url).render_as_string(hide_password=True)}'"
    creds = stack.credentials
    saved = ""
    if creds is not None:
        saved = f"{'new, saved' if creds.new else 'the same as last run, from'} {creds.path} (mode 0600)"
    rule = "=" * 78
    click.echo(
        f"\n{rule}\n"
        "factory-twin demo plant is running (Ctrl-C stops it)\n"
        f"  dashboard  {stack.api_url}/\n"
        f"  admin key  {stack.admin_key}\n"
        f"             {saved}\n"
        f"  log in     paste the admin key, or as a named user: create one while the demo runs with\n"
        f"               factory-twin users create alice --role technician{where}\n"
        f"  REST API   {stack.api_url}/api/v1/nodes   (OpenAPI: {stack.api_url}/docs)\n"
        f"  try        curl -H 'Authorization: Bearer {stack.admin_key}' \\\n"
        f"                  {stack.api_url}/api/v1/nodes/engine-1\n"
        f"  MQTT       {stack.mqtt_url}\n"
        f"{rule}\n",
        err=True,
    )
