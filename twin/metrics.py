"""Prometheus metrics of every platform process.

- An ingest process (``serve --role ingest``) serves them on TWIN_METRICS_HOST:TWIN_METRICS_PORT: ingest
  counters, the rollup lag, and whether it is the alert leader (with the evaluation lag).
- The API (``serve --role api`` or ``all``) serves ``GET /metrics`` unless TWIN_METRICS_ACCESS is ``off``;
  by default (``key``) only to a key of the viewer role or above (Prometheus sends it from a credentials
  file; ``open`` needs none): requests by route and status, their durations, open live streams, failed
  credential checks and lock-outs; with ``--role all`` the ingest and alert metrics too.

The parts' counters are read at scrape time (custom collectors), so the hot path pays nothing; the request
counters are the exception, one increment per request.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from plant.wire import now_us
from twin.alerts.evaluator import AlertEvaluator
from twin.errors import ConfigError
from twin.history import HistoryJob
from twin.ingest import Ingestor

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from twin.config import TwinSettings
    from twin.platform import Platform


class IngestCollector(Collector):
    """Counters of one ingestor and the state of the history job.

    Args:
        ingestor: the process's ingestor.
        history: its history job, for the rollup lag.
    """

    def __init__(self, ingestor: Ingestor, history: HistoryJob | None = None) -> None:
        self.ingestor = ingestor
        self.history = history

    def collect(self) -> Iterator[Any]:
        """The metrics, read now."""
        s = self.ingestor.stats()
        for name, value, doc in (
            ("messages", s.messages, "uplink messages that ended (stored, answered or dead-lettered), acknowledged"),
            ("batches", s.batches, "uplink batches stored"),
            ("values", s.values, "values newly stored"),
            ("duplicates", s.duplicates, "items received again (redelivered or resent), stored once"),
            ("undecodable", s.undecodable, "payloads that were not an uplink batch"),
            ("failed", s.failed, "batches the database failed to store (answered stored=false)"),
        ):
            yield CounterMetricFamily(f"twin_ingest_{name}", doc, value=value)
        rejected = CounterMetricFamily("twin_ingest_rejected", "items refused, by reason", labels=["reason"])
        for reason, n in sorted(s.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        over = CounterMetricFamily("twin_ingest_over_budget", "batches refused over the gateway's budget, by gateway",
                                   labels=["gateway"])
        for gateway, n in sorted(self.ingestor.budget.refused_batches().items()):
            over.add_metric([gateway], n)
        yield over
        dead = CounterMetricFamily("twin_ingest_dead_letters", "uplink messages dead-lettered, by reason",
                                   labels=["reason"])
        for reason, n in sorted(s.dead_letters.items()):
            dead.add_metric([reason], n)
        yield dead
        yield CounterMetricFamily("twin_ingest_worker_restarts", "ingest workers restarted after their thread died",
                                  value=s.worker_restarts)
        yield GaugeMetricFamily(
            "twin_ingest_workers", "ingest workers (MQTT clients) in this process", value=self.ingestor.workers
        )
        yield GaugeMetricFamily(
            "twin_ingest_workers_consuming", "ingest workers taking messages now (thread alive, subscribed)",
            value=self.ingestor.consuming(),
        )
        if self.history is not None and self.history.last is not None:
            lag = max(0.0, (now_us() - self.history.last.rollup_to) / 1e6)
            yield GaugeMetricFamily(
                "twin_history_rollup_lag_seconds", "how far the 1-minute rollup is behind now", value=lag
            )


class AlertCollector(Collector):
    """Leadership and progress of the process's alert evaluator.

    Args:
        evaluator: the process's alert evaluator (a candidate for the lead).
    """

    def __init__(self, evaluator: AlertEvaluator) -> None:
        self.evaluator = evaluator

    def collect(self) -> Iterator[Any]:
        """The metrics, read now."""
        s = self.evaluator.stats()
        yield GaugeMetricFamily(
            "twin_alert_leader", "1 in the process that evaluates the alerts (one per database)", value=s.leader
        )
        yield CounterMetricFamily("twin_alert_leader_terms", "times this process became the alert leader", s.terms)
        yield CounterMetricFamily(
            "twin_alert_evaluation_passes", "reads of stored changes judged by the rules", s.passes
        )
        yield CounterMetricFamily(
            "twin_alert_feed_batches", "stored batches judged by the alert rules (alert feed rows consumed)", s.batches
        )
        yield CounterMetricFamily("twin_alert_transitions", "alert transitions written by this process", s.written)
        yield CounterMetricFamily(
            "twin_alert_evaluation_seconds", "time spent reading and judging (rate: how busy the leader is)", s.busy_s
        )
        if s.leader:
            yield GaugeMetricFamily(
                "twin_alert_evaluation_lag_seconds",
                "stored → judged by the alert rules, of the oldest new value of the last pass",
                value=s.lag_s,
            )


def platform_collectors(platform: Platform) -> list[Collector]:
    """Collectors of the parts a platform runs (ingest, history, alert evaluation)."""
    out: list[Collector] = []
    if platform.ingestor is not None:
        out.append(IngestCollector(platform.ingestor, platform.history))
    if platform.evaluator is not None:
        out.append(AlertCollector(platform.evaluator))
    return out


def registry_of(collectors: list[Collector]) -> CollectorRegistry:
    """A registry with these collectors and the process's own figures (CPU, memory, open files)."""
    registry = CollectorRegistry()
    registry.register(PROCESS_COLLECTOR)
    for c in collectors:
        registry.register(c)
    return registry


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> Any:
    """Serve a registry over HTTP on a daemon thread; returns the server (``shutdown()`` stops it)."""
    try:
        server, _thread = start_http_server(port, host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port} (TWIN_METRICS_HOST/PORT): {exc.strerror}") from exc
    return server


# ---- the API's GET /metrics --------------------------------------------------------------------------------


class LiveCollector(Collector):
    """Open live streams (server-sent events) of one API app.

    Args:
        app: the API application.
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        """The metrics, read now."""
        yield GaugeMetricFamily(
            "twin_api_live_streams", "open live subscriptions", value=self.app.state.live.subscribers
        )


class RequestMetrics:
    """ASGI middleware counting requests by method, route template and status, and timing them.

    Args:
        app: the wrapped application.
        registry: where the counters live (one registry per API app).
    """

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "twin_api_requests", "API requests answered", ["method", "route", "status"], registry=registry
        )
        self.seconds = Histogram(
            "twin_api_request_seconds", "API request durations", ["method", "route"], registry=registry
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = route_template(scope)
            method = scope["method"] if scope["method"] in HTTP_METHODS else "OTHER"  # any token is a method
            self.requests.labels(method, route, str(status)).inc()
            self.seconds.labels(method, route).observe(time.perf_counter() - start)


HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # as metric labels


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/v1/nodes/{node_id}``), so the label set stays small.

    The route object knows its path within its router only; the router's prefix is what precedes it in the
    request's path (prefixes here have no parameters).
    """
    route = getattr(scope.get("route"), "path", None)
    if not isinstance(route, str):
        return "unmatched"
    if ":path}" in route:  # a parameter that spans segments: the route alone
        return route
    path = str(scope.get("path", ""))
    keep = path.count("/") - route.count("/")
    return ("/".join(path.split("/")[: keep + 1]) if keep > 0 else "") + route


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def get_metrics(request: Request) -> Response:
    """Prometheus metrics of this API process."""
    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


class AuthCollector(Collector):
    """Failed credential checks and lock-outs of one API app (twin/throttle.py).

    Args:
        app: the API application (its ``state.throttle``).
    """

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        """The metrics, read now."""
        s = self.app.state.throttle.stats()
        failures = CounterMetricFamily("twin_auth_failures", "passwords and keys that matched nothing", labels=["kind"])
        for kind, n in s.failures.items():
            failures.add_metric([kind.value], n)
        yield failures
        refused = CounterMetricFamily(
            "twin_auth_refused", "credential checks refused with 429 (locked out or out of attempts)", labels=["scope"]
        )
        lockouts = CounterMetricFamily("twin_auth_lockouts", "lock-outs begun", labels=["scope"])
        locked = GaugeMetricFamily("twin_auth_locked", "addresses and user names locked out now", labels=["scope"])
        for scope in s.refused:
            refused.add_metric([scope.value], s.refused[scope])
            lockouts.add_metric([scope.value], s.lockouts[scope])
            locked.add_metric([scope.value], s.locked[scope])
        yield from (refused, lockouts, locked)


def instrument(app: FastAPI, settings: TwinSettings) -> None:
    """Give the app its registry (``app.state.metrics``) and, unless TWIN_METRICS_ACCESS is off, GET /metrics
    (who may read it: twin/api/exposure.py)."""
    app.state.metrics = registry_of([LiveCollector(app), AuthCollector(app)])
    if settings.metrics_access != "off":
        app.add_middleware(RequestMetrics, registry=app.state.metrics)
        app.include_router(router)
