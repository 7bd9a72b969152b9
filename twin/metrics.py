"""Prometheus metrics of an ingest process (``factory-twin serve --role ingest``), on TWIN_METRICS_PORT.

Read from the ingestor's counters at scrape time (a custom collector), so the hot path pays nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from plant.wire import now_us
from twin.history import HistoryJob
from twin.ingest import Ingestor


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
        yield GaugeMetricFamily("twin_ingest_workers", "ingest workers (MQTT clients) in this process",
                                value=self.ingestor.workers)
        if self.history is not None and self.history.last is not None:
            lag = max(0.0, (now_us() - self.history.last.rollup_to) / 1e6)
            yield GaugeMetricFamily("twin_history_rollup_lag_seconds",
                                    "how far the 1-minute rollup is behind now", value=lag)


def serve_metrics(ingestor: Ingestor, history: HistoryJob | None, host: str, port: int) -> Any:
    """Serve the ingest metrics over HTTP on a daemon thread; returns the server (``shutdown()`` stops it)."""
    registry = CollectorRegistry()
    registry.register(IngestCollector(ingestor, history))
    server, _thread = start_http_server(port, host, registry=registry)
    return server
