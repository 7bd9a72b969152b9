"""`factory-twin serve`: the platform — ingest workers and the REST API, together or as separate services.

Every process that ingests and has a site (TWIN_SITE_FILE) also stands for alert evaluation: one of them leads
and evaluates everything stored, the others take over when it stops (twin/alerts/evaluator.py).
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Literal

import click

from factory_twin.logs import configure_logging

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from twin.broker import BrokerAccess
    from twin.config import TwinSettings


@click.command()
@click.option("--role", type=click.Choice(["all", "api", "ingest"]), default="all", show_default=True,
              help="Run the API, the ingest workers, or both (scale them apart in production).")
@click.option("--host", default=None, help="API address (TWIN_HTTP_HOST).")
@click.option("--port", type=int, default=None, help="API port (TWIN_HTTP_PORT).")
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Ingest workers sharing the uplink topics (TWIN_INGEST_WORKERS).")
def serve(role: Literal["all", "api", "ingest"], host: str | None, port: int | None,
          workers: int | None) -> None:
    """Run the platform. Refuses an outdated database schema: run `factory-twin db upgrade` first."""
    from twin.config import TwinSettings
    from twin.errors import TwinError

    given = {"http_host": host, "http_port": port, "ingest_workers": workers}
    overrides = {k: v for k, v in given.items() if v}
    settings = TwinSettings(**overrides)  # type: ignore[arg-type]
    configure_logging(settings.log_json)
    try:
        _serve(settings, role)
    except TwinError as exc:
        click.echo(f"factory-twin serve: {exc}", err=True)
        sys.exit(2)


def _serve(settings: object, role: str) -> None:
    import structlog
    import uvicorn

    from migrations.check import check_schema
    from plant.site import load_site
    from twin.api.app import create_app
    from twin.broker import EmbeddedBroker
    from twin.config import TwinSettings
    from twin.db import make_engine
    from twin.metrics import platform_collectors, registry_of, serve_metrics
    from twin.platform import Platform

    assert isinstance(settings, TwinSettings)
    log = structlog.get_logger("factory_twin.serve")
    check_schema(settings.db_url)
    engine = make_engine(settings.db_url)
    broker = None
    platform = None
    metrics = None
    try:
        if role in ("all", "ingest"):
            mqtt_url = settings.mqtt_url
            if mqtt_url is None:
                broker = EmbeddedBroker(settings.embedded_mqtt_host, settings.embedded_mqtt_port,
                                        access=_broker_access(settings, engine)).start()
                mqtt_url = broker.platform_url
            site = load_site(settings.site_file) if settings.site_file is not None else None
            platform = Platform(settings, engine, site, mqtt_url).start()
            if settings.metrics_port >= 0:
                metrics = serve_metrics(registry_of(platform_collectors(platform)), settings.metrics_host,
                                        settings.metrics_port)
        if role in ("all", "api"):
            app = create_app(settings, engine)
            app.state.ingestor = platform.ingestor if platform is not None else None  # /healthz reports it
            for collector in platform_collectors(platform) if platform is not None else ():
                app.state.metrics.register(collector)  # --role all: GET /metrics shows the platform's too
            log.info("api_listening", url=f"http://{settings.http_host}:{settings.http_port}")
            # uvicorn raises the signal it stopped on again once it is done; with the default handler that
            # kills the process before the ingest workers below finish their batch: make it a no-op
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: None)
            uvicorn.run(app, host=settings.http_host, port=settings.http_port, log_config=None,
                        access_log=False, timeout_graceful_shutdown=5)
        else:
            _wait_for_signal()
    finally:
        if metrics is not None:
            metrics.shutdown()
        if platform is not None:
            platform.stop(leave=settings.ingest_leave_on_stop)
        if broker is not None:
            broker.stop()
        engine.dispose()


def _broker_access(settings: TwinSettings, engine: Engine) -> BrokerAccess | None:
    """Gateway logins and topic rules for the embedded broker once a gateway is registered; else none."""
    import structlog

    from twin.broker import BrokerAccess
    from twin.gateways import active_credentials
    from twin.topic_access import TopicRules

    if not active_credentials(engine):
        structlog.get_logger("factory_twin.serve").warning(
            "no_gateways_registered", effect="the embedded broker lets any client publish any uplink",
            hint="`factory-twin gateways add NAME` gives each gateway its login (restart to enforce)")
        return None
    return BrokerAccess(TopicRules(settings.mqtt_topic_root), lambda: active_credentials(engine))


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
