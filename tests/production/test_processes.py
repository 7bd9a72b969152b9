"""The compose services' commands as real processes on the machine's Mosquitto and PostgreSQL.

``factory-twin db upgrade``, ``serve --role ingest --workers 2`` (a shared subscription) and ``serve --role
api``, as compose.yaml runs them: health check, a stream of batches stored exactly once, the API serving it,
the ingest metrics; then one worker process killed with SIGKILL mid-stream and restarted, another stopped
gracefully mid-stream (SIGTERM, leaving its session): every batch is stored, once.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

from plant.wire import now_us
from tests.mqtt_peer import forget_sessions

from .helpers import (
    SEC,
    Proc,
    Sender,
    free_port,
    history_rows,
    latest_ts,
    make_batches,
    prepare,
    serve_env,
)

pytestmark = [pytest.mark.postgres, pytest.mark.mosquitto, pytest.mark.slow]


def test_serve_roles_as_processes(pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str,
                                  tmp_path: Path) -> None:
    host, port = mqtt_broker
    up = subprocess.run([sys.executable, "-m", "factory_twin", "db", "upgrade"], capture_output=True,
                        text=True, env={**_base_env(), "TWIN_DATABASE_URL": pg_url}, timeout=60)
    assert up.returncode == 0, up.stderr
    prepare(pg_url)  # the site (already migrated: upgrade is idempotent)
    cid = f"ft-{uuid.uuid4().hex[:8]}"
    api_port, metrics_port = free_port(), free_port()
    ingest = Proc(["serve", "--role", "ingest", "--workers", "2"],
                  serve_env(pg_url, host, port, topic_prefix, cid, TWIN_METRICS_PORT=str(metrics_port)),
                  tmp_path / "ingest.log")
    api = Proc(["serve", "--role", "api", "--host", "127.0.0.1", "--port", str(api_port)],
               serve_env(pg_url, host, port, topic_prefix, cid + "-api", TWIN_METRICS_ACCESS="open"),
               tmp_path / "api.log")
    sender = None
    try:
        ingest.wait_for("ingest_started")
        api.wait_for("api_listening")
        _wait_http(f"http://127.0.0.1:{api_port}/healthz")
        sender = Sender(host, port, topic_prefix, "gw1")
        start = now_us() - 2 * 3600 * SEC
        batches = make_batches("gw1", 40, 100, start)
        sender.deliver(batches, timeout=60)
        assert history_rows(pg_url) == (4000, 4000)
        assert latest_ts(pg_url) == {"p1": start + 1999 * SEC, "p2": start + 1999 * SEC}
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert "twin_ingest_values_total 4000.0" in metrics
        assert "twin_ingest_workers 2.0" in metrics
        # the API process reads what the ingest process stored (it needs a key: 401 proves it is the API)
        assert httpx.get(f"http://127.0.0.1:{api_port}/api/v1/nodes", timeout=5).status_code == 401
        # and it has metrics of its own, at GET /metrics (open to all in this test's settings)
        api_metrics = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=5).text
        assert 'twin_api_requests_total{method="GET",route="/api/v1/nodes",status="401"} 1.0' in api_metrics
    finally:
        if sender is not None:
            sender.close()
        assert ingest.stop() == 0, ingest.output()[-2000:]
        assert api.stop() == 0, api.output()[-2000:]
        forget_sessions(host, port, [f"{cid}-0", f"{cid}-1"])
    assert "ingest_stopped" in ingest.output()


def test_workers_killed_or_stopped_mid_stream_lose_and_duplicate_nothing(
    pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str, tmp_path: Path
) -> None:
    host, port = mqtt_broker
    prepare(pg_url)
    a_id, b_id = f"fta-{uuid.uuid4().hex[:8]}", f"ftb-{uuid.uuid4().hex[:8]}"
    # two processes of one worker each on one shared subscription; A is killed and comes back
    a = Proc(["serve", "--role", "ingest"], serve_env(pg_url, host, port, topic_prefix, a_id), tmp_path / "a.log")
    b = Proc(["serve", "--role", "ingest"],
             serve_env(pg_url, host, port, topic_prefix, b_id, TWIN_INGEST_LEAVE_ON_STOP="true"), tmp_path / "b.log")
    sender = None
    try:
        a.wait_for("ingest_started")
        b.wait_for("ingest_started")
        sender = Sender(host, port, topic_prefix, "gw1")
        start = now_us() - 2 * 3600 * SEC
        batches = make_batches("gw1", 80, 100, start)
        for batch in batches[:40]:
            sender.publish(batch)
        deadline = time.monotonic() + 20
        while len(sender.stored) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        a.stop(signal.SIGKILL)  # mid-stream: batches in its hands are not acknowledged
        for batch in batches[40:60]:
            sender.publish(batch)
        a = Proc(["serve", "--role", "ingest"], serve_env(pg_url, host, port, topic_prefix, a_id),
                 tmp_path / "a2.log")
        a.wait_for("ingest_started")
        # B is scaled down gracefully mid-stream: it finishes its batch, acknowledges nothing unstored, leaves
        for batch in batches[60:]:
            sender.publish(batch)
        assert b.stop() == 0
        assert '"left": true' in b.output()
        sender.deliver(batches, timeout=60)
        time.sleep(0.5)  # redeliveries still in flight land as duplicates, not rows
        assert history_rows(pg_url) == (8000, 8000)
        assert latest_ts(pg_url) == {"p1": start + 3999 * SEC, "p2": start + 3999 * SEC}
    finally:
        if sender is not None:
            sender.close()
        a.stop()
        b.stop()
        forget_sessions(host, port, [a_id, b_id])


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("TWIN_")}


def _wait_http(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer 200")
