"""The thin path end to end: simulator → OPC-UA + MQTT → agent → broker → ingest → database → REST.

Once on the embedded defaults (amqtt + SQLite, as `factory-twin demo` runs) and once on the machine's Mosquitto
and PostgreSQL. Nothing is faked: every hop crosses real TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from factory_twin.stack import Stack, StackConfig
from tests.twin.alerts.receiver import Received, Receiver

pytestmark = pytest.mark.slow

MACHINES = {"engine-1": "t24", "mill-1": "torque", "pump-1": "pressure"}


@dataclass
class Outcome:
    """What a run left in the twin, read over REST, and the webhooks the plant's receiver got."""

    stack: Stack
    states: dict[str, dict[str, object]]
    history: dict[str, object]
    alerts: list[dict[str, object]]
    webhooks: list[Received] = field(default_factory=list)


def _run(config: StackConfig, prop: str = MACHINES["engine-1"], webhook: Receiver | None = None) -> Outcome:
    """The stack until what the checks read has reached the twin (and the webhook the receiver), or 90 s."""
    stack = Stack(config)
    stack.start_platform()
    try:
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as api:
            if webhook is not None:
                api.post("/api/v1/webhooks", json={"name": "maintenance", "url": webhook.url}).raise_for_status()
            asyncio.run(_edge_until(stack, lambda: _arrived(api, prop, webhook), limit_s=90))
            states = {node: api.get(f"/api/v1/nodes/{node}").raise_for_status().json() for node in MACHINES}
            history = api.get(f"/api/v1/nodes/engine-1/properties/{prop}/history",
                              params={"limit": 5}).raise_for_status().json()
            alerts = api.get("/api/v1/alerts", params={"subtree": "pump-1"}).raise_for_status().json()["items"]
            assert api.get("/api/v1/nodes", headers={"Authorization": "Bearer nope"}).status_code == 401
    finally:
        stack.stop_platform()
    return Outcome(stack, states, history, alerts)


async def _edge_until(stack: Stack, arrived: Callable[[], bool], limit_s: float) -> None:
    """Simulator and agent until ``arrived()`` holds or ``limit_s`` pass; then the agent stops as on Ctrl-C
    (flushing its outbox), and the checks judge what the twin holds."""

    async def stop_on_arrival() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit_s):
                while not await asyncio.to_thread(arrived):  # noqa: ASYNC110  (a poll over REST, as a person looks)
                    await asyncio.sleep(0.5)
        stack.stop_edge()

    watcher = asyncio.create_task(stop_on_arrival())
    try:
        await stack.run_edge()
    finally:
        watcher.cancel()


def _arrived(api: httpx.Client, prop: str, webhook: Receiver | None) -> bool:
    """Whether every value and verdict the checks read is in the twin: each machine's signal, the mill's fault
    verdict, ``prop`` on the engine with two points of history; with a webhook, the pump's alert delivered."""
    names = {node: {p["name"]: p for p in api.get(f"/api/v1/nodes/{node}").json().get("properties", [])}
             for node in MACHINES}  # fmt: skip
    wanted = [*MACHINES.items(), ("mill-1", "diag.faults.label"), ("engine-1", prop)]
    if any(names[node].get(name, {}).get("value") is None for node, name in wanted):
        return False
    history = api.get(f"/api/v1/nodes/engine-1/properties/{prop}/history", params={"limit": 5}).json()
    if len(history.get("items", [])) < 2:
        return False
    return webhook is None or any("motor-current" in str(r.json()) for r in webhook.requests)


def _latest(state: dict[str, object], prop: str) -> dict[str, object]:
    props = state["properties"]
    assert isinstance(props, list)
    return next(p for p in props if p["name"] == prop)


def _check(outcome: Outcome) -> None:
    states, history = outcome.states, outcome.history
    for node, prop in MACHINES.items():
        latest = _latest(states[node], prop)
        assert latest["value"] is not None, f"{node}.{prop} never reached the twin"
        assert latest["quality"] == "good"
    # the pump's pressure is published in bar and stored in kPa, as the site model says
    pressure = _latest(states["pump-1"], "pressure")
    assert pressure["unit"] == "kPa"
    items = history["items"]
    assert isinstance(items, list)
    assert len(items) >= 2
    # on-device diagnostics: the mill's fault model judges every grid point; its verdict is a property of the node
    assert _latest(states["mill-1"], "diag.faults.label")["value"] in ("none", "TWF", "HDF", "PWF", "OSF", "RNF")
    assert 0 <= float(_latest(states["mill-1"], "diag.faults.probability")["value"]) <= 1  # type: ignore[arg-type]
    diagnoses = states["mill-1"]["diagnoses"]
    assert isinstance(diagnoses, list)
    assert [(d["task"], d["model"], d["source"]) for d in diagnoses] == [("faults", "ai4i-faults", "edge")]
    summary = outcome.stack.summary(0)
    assert outcome.stack.engine is not None  # a stopped stack's summary was counted at the stop: no new connection
    assert outcome.stack.engine.pool.checkedin() == 0
    assert summary.values_ingested > 0
    assert summary.rejected == 0
    assert summary.nodes_updated == 3


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """One run on the embedded defaults, shared by the tests below: until the engine's RUL model has spoken (15
    cycles, one per grid point), with a motor-current fault on the pump from the start and a webhook to the
    plant's receiver."""
    with pytest.MonkeyPatch.context() as monkeypatch, Receiver() as receiver:
        # the receiver is the plant's own, on loopback
        monkeypatch.setenv("TWIN_WEBHOOK_ALLOW_PRIVATE", '["127.0.0.1"]')
        config = StackConfig(data_dir=tmp_path_factory.mktemp("embedded"), http_port=0, speed=2.0,
                             gateway_id=f"e2e-{uuid.uuid4().hex[:8]}", faults=("pump-1.current:high@0",))
        outcome = _run(config, prop="diag.rul.rul", webhook=receiver)
        outcome.webhooks = list(receiver.requests)
    return outcome


def test_embedded_broker_and_sqlite(embedded: Outcome) -> None:
    """The engine's RUL verdict reaches the twin with its interval and history."""
    _check(embedded)
    states = embedded.states
    rul = _latest(states["engine-1"], "diag.rul.rul")
    assert rul["unit"] == "cycle"
    assert 0 <= float(rul["value"]) <= 125  # type: ignore[arg-type]
    low, high = (float(_latest(states["engine-1"], f"diag.rul.rul_{b}")["value"]) for b in ("low", "high"))  # type: ignore[arg-type]
    assert low <= float(rul["value"]) <= high  # type: ignore[arg-type]
    (diagnosis,) = states["engine-1"]["diagnoses"]  # type: ignore[misc]
    assert diagnosis["task"] == "rul"
    assert diagnosis["payload"]["rul_high"] == high


@pytest.mark.postgres
@pytest.mark.mosquitto
def test_mosquitto_and_postgresql(tmp_path: Path, pg_url: str, mqtt_broker: tuple[str, int], topic_prefix: str) -> None:
    """On the shared Mosquitto under a topic root of its own: no other run's gateways reach this platform."""
    host, port = mqtt_broker
    config = StackConfig(data_dir=tmp_path, database_url=pg_url, mqtt_url=f"mqtt://{host}:{port}", http_port=0,
                         speed=2.0, gateway_id=f"e2e-{uuid.uuid4().hex[:8]}", topic_root=topic_prefix)
    _check(_run(config))


def test_a_fault_raises_one_alert_and_its_webhook(embedded: Outcome) -> None:
    """A simulated motor-current fault on the pump → the site's rule → one alert → one signed webhook."""
    current = [a for a in embedded.alerts if a["rule"] == "motor-current"]
    assert len(current) == 1, embedded.alerts
    assert current[0]["state"] == "active_unack"
    bodies = [r.json() for r in embedded.webhooks]
    assert any("motor-current" in str(b) for b in bodies), bodies
    assert all(r.headers.get("x-factorytwin-signature", "").startswith("sha256=") for r in embedded.webhooks)
