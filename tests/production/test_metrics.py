"""Prometheus metrics of the platform processes: GET /metrics of the API (and of ``--role all``, with the
platform's alert leadership), the setting that turns it off, and a metrics port already taken."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from tests.conftest import migrated_engine
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.errors import ConfigError
from twin.metrics import platform_collectors, registry_of, serve_metrics
from twin.platform import Platform, PlatformParts

from .helpers import alert_site


@pytest.fixture
def engine(sqlite_url: str) -> Iterator[Engine]:
    with migrated_engine(sqlite_url) as e:
        yield e


def _values(body: str) -> dict[str, float]:
    return {
        line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
        for line in body.splitlines()
        if line and not line.startswith("#")
    }


def _viewer_key(engine: Engine) -> dict[str, str]:
    with make_sessionmaker(engine)() as s:
        return {"Authorization": f"Bearer {create_key(s, Role.VIEWER, 'prometheus')}"}


def test_api_serves_request_metrics_by_route_template_to_a_key(engine: Engine, tmp_path: Path) -> None:
    settings = TwinSettings(data_dir=tmp_path)
    scraper = _viewer_key(engine)
    with TestClient(create_app(settings, engine)) as client:
        assert client.get("/api/v1/nodes/p1").status_code == 401
        assert client.get("/api/v1/nodes/p2").status_code == 401
        assert client.get("/no/such/page").status_code == 404
        for junk in ("FOO", "BAR1", "X-PROBE"):  # a client may send any token as its method
            client.request(junk, "/no/such/page")
        assert client.get("/metrics").status_code == 401  # TWIN_METRICS_ACCESS=key by default
        response = client.get("/metrics", headers=scraper)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        got = _values(response.text)
    # one series per route template, not per node
    assert got['twin_api_requests_total{method="GET",route="/api/v1/nodes/{node_id}",status="401"}'] == 2.0
    assert got['twin_api_requests_total{method="GET",route="unmatched",status="404"}'] == 1.0
    # unknown methods share one label value: a scanner cannot grow the series without bound
    assert [k for k in got if "FOO" in k or "BAR1" in k] == []
    assert sum(v for k, v in got.items() if k.startswith('twin_api_requests_total{method="OTHER"')) == 3.0
    assert got['twin_api_request_seconds_count{method="GET",route="/api/v1/nodes/{node_id}"}'] == 2.0
    assert got["twin_api_live_streams"] == 0.0
    assert "process_cpu_seconds_total" in got
    assert "twin_alert_leader" not in got  # an API-only process does not evaluate alerts


def test_api_metrics_can_be_turned_off(engine: Engine, tmp_path: Path) -> None:
    settings = TwinSettings(data_dir=tmp_path, api_metrics=False)
    with TestClient(create_app(settings, engine)) as client:
        assert client.get("/metrics").status_code == 404


def test_role_all_shows_the_platforms_alert_leadership_on_the_api(engine: Engine, tmp_path: Path) -> None:
    settings = TwinSettings(data_dir=tmp_path, alert_tick_s=0.2)
    platform = Platform(settings, engine, alert_site(), None, PlatformParts(ingest=False, webhooks=False)).start()
    try:
        app = create_app(settings, engine)
        for collector in platform_collectors(platform):  # as `serve --role all` does
            app.state.metrics.register(collector)
        with TestClient(app) as client:
            got = _values(client.get("/metrics", headers=_viewer_key(engine)).text)
        assert got["twin_alert_leader"] == 1.0  # SQLite: the only process leads
        assert got["twin_alert_leader_terms_total"] == 1.0
        assert got["twin_alert_evaluation_lag_seconds"] >= 0.0
    finally:
        platform.stop()
    assert platform.evaluator is not None
    assert not platform.evaluator.leading  # stopped: the lock is released


def test_a_metrics_port_already_taken_is_a_clear_error(engine: Engine, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{port}"):
            serve_metrics(registry_of([]), "127.0.0.1", port)
