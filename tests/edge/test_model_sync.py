"""Model sync against a real platform (uvicorn in a thread) and the real Diagnoser: promoted versions pulled and
swapped in, bad downloads and bad models refused and reported, rollbacks reported, no frame lost in a swap."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, update

from edge_agent.agent import Agent
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.diagnose import Diagnoser
from edge_agent.diagnostics.model_slots import Slot
from edge_agent.diagnostics.model_sync import ModelSync
from edge_agent.outbox import Outbox
from plant.site import Site, parse_site
from plant.wire import Frame
from twin import model_registry
from twin.api import create_app
from twin.auth import Role, create_key
from twin.broker import free_port
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.tables import Base, ModelVersion

from ..api_server import serve_api
from ..model_archives import model_copy
from ..site_texts import one_pump_site

SIGNALS = {
    "accelerometer1_rms": ("g", 0.2),
    "accelerometer2_rms": ("g", 0.27),
    "current": ("A", 2.1),
    "pressure": ("kPa", 0.3),
    "temperature": ("°C", 90.0),
    "thermocouple": ("°C", 26.9),
    "voltage": ("V", 233.0),
    "flow_rate": ("l/min", 122.0),
}
T0 = 1_750_000_000_000_000
GRID_US = 1_000_000


def site_yaml() -> str:
    props = "\n".join(f"      {s}: {{unit: {u}}}" for s, (u, _) in SIGNALS.items())
    binds = "".join(f"{s}: {{source: plc, topic: p/1, path: {s}}}\n" for s in SIGNALS)
    return one_pump_site(f"""
site: {{id: s}}
sources:
  plc: {{kind: mqtt, format: json}}
asset_types:
  pump:
    models: [anomaly]
    properties:
{props}
  fan:
    properties:
      speed: {{unit: rpm}}
""", binds, site="s", area="hall")


@dataclass
class Platform:
    url: str
    engine: Engine
    agent_key: str
    models: Path  # where test model directories are made

    def publish(self, version: str, *, promote: bool = True, **copy: Any) -> Path:
        """Upload a copy of the committed anomaly model under ``version`` (and promote it for pumps)."""
        directory = model_copy(self.models / version, new_version=version, drop=("teacher",), **copy)
        with make_sessionmaker(self.engine)() as s:
            model_registry.upload(s, model_registry.pack(directory), "tests", 64 << 20)
            if promote:
                model_registry.promote(s, "anomaly", version, "pump", "tests")
        return directory

    def failures(self, version: str) -> list[dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.agent_key}"}
        items = httpx.get(f"{self.url}/api/v1/models", headers=headers).json()["items"]
        return next(m["failures"] for m in items if m["task"] == "anomaly" and m["version"] == version)


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    engine = make_engine(f"sqlite:///{tmp_path / 'twin.db'}")
    Base.metadata.create_all(engine)
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.AGENT, "gw-test")
    app = create_app(TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "no-teachers"), engine)
    with serve_api(app) as url:
        yield Platform(url, engine, key, tmp_path / "published")
    engine.dispose()


@pytest.fixture
def site() -> Site:
    return parse_site(site_yaml(), "sync-site.yaml")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """EDGE_MODEL_DIR, where the gateway starts with anomaly 1.0.0 installed."""
    model_copy(tmp_path / "models", drop=("teacher",))
    return tmp_path / "models"


def gateway(platform: Platform, model_dir: Path, tmp_path: Path) -> dict[str, Any]:
    """The agent settings of the test gateway (no per-machine baseline: the fleet's default scores at once)."""
    return {
        "gateway_id": "gw-test",
        "data_dir": tmp_path / "agent",
        "model_dir": model_dir,
        "platform_url": platform.url,
        "platform_key": platform.agent_key,
        "baseline_hours": 0,
        "model_poll_s": 1,
    }


@pytest.fixture
def settings(platform: Platform, model_dir: Path, tmp_path: Path) -> AgentSettings:
    return AgentSettings(**gateway(platform, model_dir, tmp_path))


def frame(i: int, **override: float) -> Frame:
    values = {s: v for s, (_, v) in SIGNALS.items()} | override
    return Frame(node="p1", ts=T0 + i * GRID_US, values=values)


class ThreadNoting(Diagnoser):
    """The real Diagnoser, noting which thread loads a model and which puts it in use."""

    loaded_on: int | None = None
    used_on: int | None = None

    def load_model(self, asset_type: str, task: str, model_dir: Path) -> Slot:
        self.loaded_on = threading.get_ident()
        return super().load_model(asset_type, task, model_dir)

    def use_model(self, asset_type: str, task: str, slot: Slot) -> str:
        self.used_on = threading.get_ident()
        return super().use_model(asset_type, task, slot)


def test_the_promoted_version_is_pulled_checked_and_swapped_in(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    async def main() -> None:
        diagnoser = ThreadNoting(site, settings, model_dir)
        sync = ModelSync(site, settings)
        assert diagnoser.versions() == {"pump": {"anomaly": "1.0.0"}}
        assert await sync.sync_once(diagnoser) == []  # nothing promoted yet
        platform.publish("1.1.0")
        assert await sync.sync_once(diagnoser) == [("pump", "anomaly", "1.1.0")]
        assert diagnoser.versions() == {"pump": {"anomaly": "1.1.0"}}
        # loading and probing take as long as the model is large: off the loop, so ingestion does not wait
        assert diagnoser.loaded_on is not None
        assert diagnoser.loaded_on != threading.get_ident()
        assert diagnoser.used_on == threading.get_ident()
        assert await sync.sync_once(diagnoser) == []  # in use: nothing to do
        # an older promotion is a rollback the gateway follows; the copy it has is used again, not downloaded
        with make_sessionmaker(platform.engine)() as s:
            model_registry.upload(s, model_registry.pack(model_dir / "anomaly" / "1.0.0"), "tests", 1 << 26)
            model_registry.promote(s, "anomaly", "1.0.0", "pump", "tests")
        assert await sync.sync_once(diagnoser) == [("pump", "anomaly", "1.0.0")]
        await sync.aclose()

    asyncio.run(main())
    installed = model_dir / "anomaly" / "1.1.0"
    assert json.loads((installed / "manifest.json").read_text())["version"] == "1.1.0"
    assert sorted(p.name for p in (model_dir / "anomaly").iterdir()) == ["1.0.0", "1.1.0"]  # no temporary leftovers


def test_a_sha_mismatch_is_refused_reported_and_not_pulled_again(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    platform.publish("1.1.0")
    with platform.engine.begin() as conn:  # the stored archive no longer matches its sha256
        conn.execute(update(ModelVersion).values(archive=b"\x1f\x8b tampered"))

    async def main() -> None:
        diagnoser = Diagnoser(site, settings, model_dir)
        first = ModelSync(site, settings)
        assert await first.sync_once(diagnoser) == []
        assert diagnoser.versions() == {"pump": {"anomaly": "1.0.0"}}
        await first.aclose()
        again = ModelSync(site, settings)  # a restarted agent remembers
        assert ("pump", "anomaly", "1.1.0") in again.bad
        assert await again.sync_once(diagnoser) == []
        await again.aclose()

    asyncio.run(main())
    (failure,) = platform.failures("1.1.0")
    assert (failure["gateway"], failure["asset_type"], failure["count"]) == ("gw-test", "pump", 1)
    assert "download refused: sha256 of the archive" in failure["reason"]
    assert not (model_dir / "anomaly" / "1.1.0").exists()


def test_a_model_the_gateway_cannot_run_is_reported_and_the_old_one_kept(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    def foreign_input(m: dict[str, Any]) -> None:
        m["input"]["signals"] = [s.replace("flow_rate", "flow") for s in m["input"]["signals"]]

    platform.publish("1.1.0", edit=foreign_input)  # loads on the platform; reads a signal pumps lack

    async def main() -> None:
        diagnoser = Diagnoser(site, settings, model_dir)
        sync = ModelSync(site, settings)
        assert await sync.sync_once(diagnoser) == []
        assert diagnoser.versions() == {"pump": {"anomaly": "1.0.0"}}
        platform.publish("1.2.0")  # a newer promotion replaces the bad one
        assert await sync.sync_once(diagnoser) == [("pump", "anomaly", "1.2.0")]
        await sync.aclose()

    asyncio.run(main())
    (failure,) = platform.failures("1.1.0")
    assert failure["reason"].startswith("load failed: ")
    assert "flow" in failure["reason"]
    assert not (model_dir / "anomaly" / "1.1.0").exists()


def _no_threshold(manifest: dict[str, Any]) -> None:
    for entry in manifest["variants"].values():
        entry["calibration"]["threshold"] = None


def test_a_malformed_manifest_is_reported_and_a_failed_install_tried_again_not_a_crash(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    # a field the platform's upload check does not read (it loads the variants, it does not score a window)
    platform.publish("1.1.0", edit=_no_threshold)
    in_the_way = model_dir / "anomaly" / "1.2.0"
    in_the_way.write_text("in the way")  # installing 1.2.0 fails with an OSError, as on a full disk

    async def main() -> None:
        diagnoser = Diagnoser(site, settings, model_dir)
        sync = ModelSync(site, settings)
        assert await sync.sync_once(diagnoser) == []
        assert ("pump", "anomaly", "1.1.0") in sync.bad  # the model's fault: not pulled again
        platform.publish("1.2.0")
        assert await sync.sync_once(diagnoser) == []
        assert diagnoser.versions() == {"pump": {"anomaly": "1.0.0"}}
        assert ("pump", "anomaly", "1.2.0") not in sync.bad  # the gateway's trouble, not the model's
        in_the_way.unlink()  # space freed
        assert await sync.sync_once(diagnoser) == [("pump", "anomaly", "1.2.0")]
        await sync.aclose()

    asyncio.run(main())
    (failure,) = platform.failures("1.1.0")
    assert failure["reason"].startswith("load failed: ")
    assert "TypeError" in failure["reason"]
    assert platform.failures("1.2.0") == []


def test_a_rollback_on_live_data_is_reported_and_the_version_not_pulled_again(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    platform.publish("1.1.0")

    async def main() -> None:
        sync = ModelSync(site, settings)
        diagnoser = Diagnoser(site, settings, model_dir, on_rollback=sync.on_rollback)
        running = asyncio.create_task(sync.run(diagnoser))
        await _until(lambda: diagnoser.versions()["pump"]["anomaly"] == "1.1.0")
        looping = asyncio.create_task(diagnoser.run())
        for i in range(30):  # a window whose score is not finite: out of the model's declared range
            diagnoser.observe([frame(i, current=1e30 if i == 29 else 2.1)])
        await _until(lambda: diagnoser.versions()["pump"]["anomaly"] == "1.0.0")
        await _until(lambda: not sync.unreported and ("pump", "anomaly", "1.1.0") in sync.bad)
        await asyncio.sleep(1.5)  # a poll later: still the old version, the bad one is not pulled again
        assert diagnoser.versions()["pump"]["anomaly"] == "1.0.0"
        diagnoser.stop()
        await looping
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await diagnoser.close()

    asyncio.run(main())
    (failure,) = platform.failures("1.1.0")
    assert failure["reason"] == "rolled back: out_of_range"
    state = json.loads((settings.data_dir / "model_sync.json").read_text())
    assert state["bad"] == [{"asset_type": "pump", "task": "anomaly", "version": "1.1.0", "reason": failure["reason"]}]


def test_reports_the_platform_missed_are_kept_and_sent_later(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path
) -> None:
    platform.publish("1.1.0", promote=False)
    offline = settings.model_copy(update={"platform_url": f"http://127.0.0.1:{free_port()}"})

    async def main() -> None:
        diagnoser = Diagnoser(site, offline, model_dir)
        sync = ModelSync(site, offline)
        sync.on_rollback("pump", "anomaly", "1.1.0", "out_of_range")  # as the Diagnoser calls it
        assert await sync.sync_once(diagnoser) == []  # the platform is away: the report waits
        assert [f.version for f in sync.unreported] == ["1.1.0"]
        await sync.aclose()
        restarted = ModelSync(site, settings)  # back, after a restart: the saved report goes out
        await restarted.sync_once(diagnoser)
        assert restarted.unreported == []
        await restarted.aclose()

    asyncio.run(main())
    (failure,) = platform.failures("1.1.0")
    assert failure["reason"] == "rolled back: out_of_range"


def test_no_frame_is_lost_in_a_swap(
    platform: Platform, site: Site, settings: AgentSettings, model_dir: Path, tmp_path: Path
) -> None:
    platform.publish("1.1.0")
    after_swap = 10  # frames fed after the swap is done, however long the download and load took

    async def main() -> tuple[int, list[dict[str, Any]]]:
        outbox = await Outbox.open(tmp_path / "outbox.sqlite")
        diagnoser = Diagnoser(site, settings, model_dir, outbox=outbox)
        sync = ModelSync(site, settings)
        looping = asyncio.create_task(diagnoser.run())
        swap: asyncio.Task[Any] | None = None
        i, left = 0, after_swap
        while left > 0:
            diagnoser.observe([frame(i)])
            if i >= 29:  # from the first whole window on, each grid point is diagnosed before the next frame
                await _until(lambda i=i: diagnoser.latest.get(("p1", "anomaly")) is not None
                             and diagnoser.latest[("p1", "anomaly")].ts == frame(i).ts)  # fmt: skip
            if i == 40:
                swap = asyncio.create_task(sync.sync_once(diagnoser))  # swaps while frames keep coming
            if swap is not None and swap.done():
                left -= 1
            i += 1
        assert swap is not None
        assert await swap == [("pump", "anomaly", "1.1.0")]
        diagnoser.stop()
        await looping
        await diagnoser.close()
        chunks = await outbox.take(10_000)
        await outbox.close()
        await sync.aclose()
        return i, [d for c in chunks if c.kind == 2 for d in json.loads(b"[" + c.body + b"]")]

    frames, diagnoses = asyncio.run(main())
    assert [d["ts"] for d in diagnoses] == [frame(i).ts for i in range(29, frames)]  # every grid point, once
    versions = [d["version"] for d in diagnoses]
    first_new = versions.index("1.1.0")
    assert set(versions[:first_new]) == {"1.0.0"}
    assert set(versions[first_new:]) == {"1.1.0"}  # no window skipped, none scored by a half-swapped model
    assert 41 - 29 <= first_new <= frames - 29 - after_swap + 1


def test_the_agent_syncs_models_when_a_platform_is_set(platform: Platform, model_dir: Path, tmp_path: Path) -> None:
    platform.publish("1.1.0")
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site_yaml())

    async def main() -> None:
        overrides = gateway(platform, model_dir, tmp_path)
        agent = Agent(connectors=lambda _site, _s: [], site_file=site_file, metrics_port=-1, **overrides)
        running = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        assert agent.diagnoser is not None
        await _until(
            lambda: agent.diagnoser is not None and agent.diagnoser.versions() == {"pump": {"anomaly": "1.1.0"}}
        )
        agent.stop()
        await asyncio.wait_for(running, 30)

    asyncio.run(main())


def test_without_a_model_dir_a_restarted_agent_runs_the_models_it_pulled(platform: Platform, tmp_path: Path) -> None:
    platform.publish("1.5.0")  # newer than any the package ships
    site_file = tmp_path / "site.yaml"
    site_file.write_text(site_yaml())
    settings = {k: v for k, v in gateway(platform, tmp_path / "unused", tmp_path).items() if k != "model_dir"}

    async def run(expected: str, **overrides: Any) -> None:
        agent = Agent(connectors=lambda _site, _s: [], site_file=site_file, metrics_port=-1, **settings | overrides)
        running = asyncio.create_task(agent.run())
        await asyncio.wait_for(agent.ready.wait(), 10)
        await _until(lambda: agent.diagnoser is not None and agent.diagnoser.versions()["pump"]["anomaly"] == expected)
        agent.stop()
        await asyncio.wait_for(running, 30)

    asyncio.run(run("1.5.0"))  # pulled into <data_dir>/models
    assert (tmp_path / "agent" / "models" / "anomaly" / "1.5.0" / "manifest.json").is_file()
    asyncio.run(run("1.5.0", platform_url=None, platform_key=None))  # restarted, no platform: loaded from there


async def _until(condition: Any, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)
