"""`factory-twin simulate`: replay public data sets as live telemetry over OPC-UA and MQTT.

Serves exactly the signals the site file binds: OPC-UA bindings from an asyncua server at their source's
endpoint, MQTT bindings as JSON messages (timestamp ``ts`` in epoch milliseconds) on their topics. See
``factory_twin.simulator`` for the data sets and the wire formats.

    factory-twin simulate                          # the example plant, until Ctrl-C
    factory-twin simulate --for 30 --speed 5 --json
    factory-twin simulate --fault mill-1.torque:high@10 --clock-skew plant-mqtt=-90 --bad-clock cell-opcua
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from pathlib import Path

import click

from factory_twin.logs import configure_logging
from factory_twin.simulator import examples
from factory_twin.simulator.errors import SimulatorError
from factory_twin.simulator.faults import parse_fault
from factory_twin.simulator.run import (
    ALL_SOURCES,
    Simulator,
    SimulatorConfig,
    SimulatorStats,
    default_mqtt_url,
)
from plant.errors import SiteError
from plant.site import OpcUaSource, Site, load_site


async def _serve(sim: Simulator, duration: float | None) -> SimulatorStats:
    """Run for ``duration`` or until SIGINT/SIGTERM; either way stop cleanly and return the counts."""
    loop = asyncio.get_running_loop()
    async with sim:
        run = asyncio.create_task(sim.run(duration))
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows' event loop
                loop.add_signal_handler(sig, run.cancel)
        try:
            await run
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # we were cancelled ourselves, not by a signal
                raise
        return sim.stats


def _pairs(values: tuple[str, ...], what: str) -> dict[str, str]:
    """``SOURCE=VALUE`` items as a dict; a bare ``VALUE`` applies to every source (key ``*``)."""
    out: dict[str, str] = {}
    for item in values:
        source, sep, value = item.partition("=")
        if not sep or "://" in source:  # no SOURCE= in front (a URL's query may hold '=')
            source, value = ALL_SOURCES, item
        if not source or not value:
            raise click.BadParameter(f"{item!r}: expected [SOURCE=]{what}")
        out[source] = value
    return out


def _skews(values: tuple[str, ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, text in _pairs(values, "SECONDS").items():
        try:
            out[key] = float(text)
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a number of seconds", param_hint="--clock-skew"
            ) from None
    return out


def _endpoints(site: Site, values: tuple[str, ...]) -> dict[str, str]:
    given = _pairs(values, "URL")
    if ALL_SOURCES not in given:
        return given
    opcua = [name for name, src in site.sources.items() if isinstance(src, OpcUaSource)]
    if len(opcua) != 1:
        raise click.BadParameter(
            f"the site has {len(opcua)} OPC-UA sources; say which: SOURCE=URL", param_hint="--opcua-endpoint"
        )
    url = given.pop(ALL_SOURCES)
    return {opcua[0]: url, **given}


@click.command()
@click.option(
    "--site",
    "site_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Site file whose bindings say what to serve [default: the example plant, examples/plant.yaml].",
)
@click.option(
    "--mqtt-url", default=None, help="Broker to publish to [default: the site's, else mqtt://127.0.0.1:1883]."
)
@click.option(
    "--opcua-endpoint",
    multiple=True,
    metavar="[SOURCE=]URL",
    help="Serve an OPC-UA source here instead of at the site's endpoint (repeatable).",
)
@click.option("--speed", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Rows per second per machine (C-MAPSS: cycles per second).")  # fmt: skip
@click.option("--for", "duration", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop after this many seconds [default: run until Ctrl-C].")  # fmt: skip
@click.option(
    "--fault",
    "--faults",
    "faults",
    multiple=True,
    metavar="NODE.PROP:KIND[@SECONDS]",
    help="Inject a fault: KIND high or low (leave the range) or stale (stop sending), from SECONDS on.",
)
@click.option(
    "--clock-skew",
    multiple=True,
    metavar="[SOURCE=]SECONDS",
    help="Shift a source's timestamps by SECONDS (negative: behind); bare SECONDS for every source.",
)
@click.option(
    "--bad-clock",
    multiple=True,
    metavar="SOURCE",
    help="Stamp a source's values from 2000-01-01, like a PLC clock after power loss ('*' for all).",
)
@click.option("--topic-prefix", default="", help="Put this in front of every MQTT topic.")
@click.option(
    "--machine", "machines", multiple=True, metavar="NODE", help="Simulate only this machine (repeatable)."
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Directory of the data slices [default: examples/data].",
)
@click.option(
    "--json", "as_json", is_flag=True, help="At the end, print the run's counts as one JSON object."
)
@click.option("--log-level", default="INFO", show_default=True, help="Log level (logs go to stderr).")
def simulate(
    site_path: Path | None,
    mqtt_url: str | None,
    opcua_endpoint: tuple[str, ...],
    speed: float,
    duration: float | None,
    faults: tuple[str, ...],
    clock_skew: tuple[str, ...],
    bad_clock: tuple[str, ...],
    topic_prefix: str,
    machines: tuple[str, ...],
    data_dir: Path | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Replay public data sets as live plant telemetry over OPC-UA and MQTT."""
    try:
        # Options are checked before logging is set up: a typo gets one clear line, nothing else.
        site = load_site(site_path or examples.example_site_path())
        config = SimulatorConfig(
            site=site,
            data_dir=data_dir or examples.data_dir(),
            mqtt_url=mqtt_url or default_mqtt_url(site),
            opcua_endpoints=_endpoints(site, opcua_endpoint),
            speed=speed,
            topic_prefix=topic_prefix,
            clock_skew_s=_skews(clock_skew),
            bad_clock=frozenset(ALL_SOURCES if b in ("all", ALL_SOURCES) else b for b in bad_clock),
            faults=tuple(parse_fault(f) for f in faults),
            machines=frozenset(machines) if machines else None,
        )
        sim = Simulator(config)  # loads the data and checks machines, faults and clocks
        configure_logging(level=log_level)
        stats = asyncio.run(_serve(sim, duration))
    except (SimulatorError, SiteError) as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # Ctrl-C while starting, before the signal handlers are in place
        raise SystemExit(130) from None
    if as_json:
        click.echo(json.dumps(stats.as_dict()))
    else:
        click.echo(
            f"{stats.ticks} ticks, {stats.rows} rows: {stats.opcua_values} OPC-UA values written, "
            f"{stats.mqtt_messages} MQTT messages sent ({stats.mqtt_acked} acknowledged, "
            f"{stats.mqtt_dropped} dropped)"
        )
