"""`factory-twin agent`: run the edge agent on a gateway, or browse an OPC-UA server to write a site model."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from factory_twin.cli.agent_browse import browse


@click.group()
def agent() -> None:
    """The edge agent: ingest PLC telemetry, align it, store and forward it to the platform."""


@agent.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="EDGE_CONFIG",
    help="YAML settings file (EDGE_* variables override it)",
)
@click.option("--site", "site_file", type=click.Path(dir_okay=False, path_type=Path), help="site model YAML")
@click.option("--gateway", "gateway_id", help="this gateway's id on the wire")
@click.option("--broker", "broker_url", help="platform broker, mqtt[s]://user:pass@host:port")
@click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), help="outbox and dead-letter folder"
)
@click.option("--metrics-port", type=int, help="Prometheus port (0: any free port, -1: off)")
@click.option("--for", "duration", type=float, default=None, help="stop after this many seconds")
def run(
    config_file: Path | None,
    site_file: Path | None,
    gateway_id: str | None,
    broker_url: str | None,
    data_dir: Path | None,
    metrics_port: int | None,
    duration: float | None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (or --for SECONDS); SIGHUP reloads the site and settings."""
    from edge_agent.agent import Agent
    from edge_agent.errors import AgentError
    from factory_twin.logs import configure_logging

    async def main() -> None:
        a = Agent(
            config_file,
            site_file=site_file,
            gateway_id=gateway_id,
            broker_url=broker_url,
            data_dir=data_dir,
            metrics_port=metrics_port,
        )
        configure_logging(a.settings.log_json)
        await a.run(duration)

    try:
        asyncio.run(main())
    except AgentError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # a second Ctrl-C during the graceful stop
        raise SystemExit(130) from None


agent.add_command(browse)
