"""The demo plant closes the loop: a technician writes the pump's speed through the public API, the demo's agent
writes it to the simulator's OPC-UA server and reads it back, the twin shows it reported, the pump's flow
follows the new speed, and the logbook has the request and its outcome. Embedded defaults (amqtt + SQLite), as
``factory-twin demo`` runs; the plant is the package's running one (no stack of its own)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from factory_twin.simulator.datasets import PUMP
from factory_twin.simulator.examples import data_dir, example_site_path
from plant.site import load_site
from tests.dashboard.conftest import PASSWORD, Plant

pytestmark = pytest.mark.slow

NOMINAL = PUMP.setpoints["speed"].nominal
SLOWER = 2500.0  # within the limits; back to nominal is a step the maximum rate allows 4 s later
SETTLED_S = 4.0  # the pump's speed follows a written one with a 1 s time constant: within 2 % after 4 s


@pytest.fixture
def tess(plant: Plant) -> Iterator[httpx.Client]:
    """The API as the demo's technician, logged in with her password."""
    with httpx.Client(base_url=plant.url, timeout=10) as api:
        r = api.post("/api/v1/session", json={"username": "tess", "password": PASSWORD})
        assert r.status_code == 201, r.text
        api.headers["Authorization"] = f"Bearer {r.json()['token']}"
        yield api


def _max_rate() -> float:
    writable = load_site(example_site_path()).asset_types["pump"].properties["speed"].writable
    assert writable is not None
    assert writable.max_rate is not None
    return writable.max_rate


def _until(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def _write(api: httpx.Client, value: float, reason: str) -> dict[str, Any]:
    r = api.post("/api/v1/nodes/pump-1/properties/speed/desired", json={"value": value, "reason": reason})
    assert r.status_code == 202, r.text
    cid = r.json()["id"]
    return dict(_until(f"command {cid} applied", lambda: _applied(api, cid)))


def _applied(api: httpx.Client, cid: str) -> dict[str, Any] | None:
    cmd = api.get(f"/api/v1/commands/{cid}").raise_for_status().json()
    assert cmd["state"] in ("pending", "sent", "applied"), cmd
    return dict(cmd) if cmd["state"] == "applied" else None


def _shown(api: httpx.Client) -> dict[str, Any]:
    return dict(api.get("/api/v1/nodes/pump-1/properties/speed/desired").raise_for_status().json())


def _flows_since(api: httpx.Client, since: datetime) -> list[float]:
    page = api.get("/api/v1/nodes/pump-1/properties/flow_rate/history",
                   params={"start": since.isoformat(), "limit": 1000}).raise_for_status().json()
    return [float(p["value"]) for p in page["items"]]


def _scaled_by(value: float, ratio: float, data: set[float]) -> bool:
    """Whether ``value`` is one of the data set's flows times ``ratio`` (2 %: the lag's remainder, rounding)."""
    return any(abs(value - x * ratio) <= 0.02 * value for x in data)


def test_a_speed_written_through_the_api_reaches_the_pump_and_moves_its_flow(plant: Plant,
                                                                               tess: httpx.Client) -> None:
    flows = {float(r[PUMP.columns["flow_rate"]]) for r in PUMP.load(data_dir())}
    # the simulated drive starts at the data set's speed
    _until("the pump's speed in the twin", lambda: _shown(tess)["reported"] == NOMINAL, 30)

    cmd = _write(tess, SLOWER, "bearing noise: run slower until the bearing is replaced")
    assert cmd["reported"] == SLOWER  # read back from the simulator's OPC-UA server by the agent
    assert cmd["gateway"] == plant.stack.config.gateway_id
    requested_at = datetime.fromisoformat(cmd["created_at"])
    shown = _until("the twin to show the speed measured", lambda: (s := _shown(tess))["in_sync"] and s)
    assert (shown["desired"], shown["reported"]) == (SLOWER, SLOWER)

    # the flow follows the speed (∝ n): once settled every value is a data set's flow times the ratio, none the
    # data set's own
    settled = datetime.fromtimestamp(requested_at.timestamp() + SETTLED_S, tz=requested_at.tzinfo)
    after = _until("flow values after the speed settled", lambda: _flows_since(tess, settled))
    assert all(_scaled_by(v, SLOWER / NOMINAL, flows) for v in after), after
    assert not any(_scaled_by(v, 1.0, flows) for v in after), after

    logbook = tess.get("/api/v1/logbook", params={"node": "pump-1", "source": "setpoints"}).raise_for_status().json()
    lines = {(e["kind"], e["actor"]) for e in logbook["items"] if e["ref"] == f"command/{cmd['id']}"}
    assert lines == {("requested", "tess"), ("applied", f"gateway {cmd['gateway']}")}, logbook["items"]

    # back to nominal for the package's other tests, once the maximum rate allows the step
    time.sleep(max(0.0, requested_at.timestamp() + (NOMINAL - SLOWER) / _max_rate() + 0.5 - time.time()))
    assert _write(tess, NOMINAL, "bearing replaced")["reported"] == NOMINAL
