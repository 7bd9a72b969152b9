"""Two sites side by side on one platform: each with its own site file, gateway and agent, on the embedded broker
with gateway logins; values stored under their own site, one alert leader judging both, and a person limited to
one site seeing only that one."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from edge_agent.agent import Agent
from plant.site import load_site
from tests.mqtt_peer import MqttPeer
from twin.api import create_app
from twin.auth import Role, create_key
from twin.broker import BrokerAccess, EmbeddedBroker
from twin.config import TwinSettings
from twin.db import make_engine, make_sessionmaker
from twin.gateways import active_credentials, new_credential, set_credential
from twin.platform import Platform, PlatformParts
from twin.store import TwinStore
from twin.tables import Alert, Base, TwinNode, TwinProperty
from twin.topic_access import TopicRules
from twin.users import create_user

PASSWORD = "correct horse battery"
SITES = ("north", "south")


def _site_file(tmp: Path, name: str, plant_url: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(f"""
site: {{id: {name}}}
sources:
  plc: {{kind: mqtt, format: json, url: "{plant_url}", client_id: plc-{name}, protocol: "3.1.1"}}
asset_types:
  pump:
    alignment: {{grid_ms: 1000, tolerance_ms: 3000, watermark_ms: 1000}}
    properties:
      temp: {{unit: C}}
    alerts:
      - {{id: temp-hi, kind: limit, property: temp, hi: 80, severity: high}}
nodes:
  - id: {name}
    kind: site
    gateway: gw-{name}
    children:
      - id: {name}-hall
        kind: area
        children:
          - id: {name}-pump
            kind: machine
            type: pump
            bindings:
              temp: {{source: plc, topic: {name}/pump, path: temp}}
""", encoding="utf-8")
    return path


async def _run_agents(agents: list[Agent], host: str, port: int, done: object) -> None:
    tasks = [asyncio.create_task(a.run()) for a in agents]
    await asyncio.wait_for(asyncio.gather(*(a.ready.wait() for a in agents)), 15)
    ends = asyncio.get_running_loop().time() + 20
    with MqttPeer(host, port) as plc:
        while not done() and asyncio.get_running_loop().time() < ends:  # type: ignore[operator]
            for name in SITES:
                payload = {"ts": time.time(), "temp": 95.0 if name == "north" else 91.0}
                plc.publish(f"{name}/pump", json.dumps(payload))
            await asyncio.sleep(0.3)
    for a in agents:
        a.stop()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)


def test_two_sites_with_their_own_agents_side_by_side(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'twin.db'}")
    Base.metadata.create_all(engine)
    settings = TwinSettings(data_dir=tmp_path, mqtt_client_id="ingest-two-sites", metrics_port=-1,
                            alert_sweep_s=0.5, alert_tick_s=0.5)
    access = BrokerAccess(TopicRules(settings.mqtt_topic_root), lambda: active_credentials(engine), refresh_s=0.0)
    credentials = {name: new_credential() for name in SITES}
    with make_sessionmaker(engine)() as s:
        for name in SITES:
            set_credential(s, f"gw-{name}", credentials[name])
    with EmbeddedBroker(port=0, access=access) as broker:
        files = {name: _site_file(tmp_path, name, broker.url) for name in SITES}
        # north's platform process runs ingest and alerts; south's site file is loaded into the same twin
        platform = Platform(settings, engine, load_site(files["north"]), broker.platform_url,
                            PlatformParts(webhooks=False)).start()
        TwinStore(engine).sync_site(load_site(files["south"]))
        with make_sessionmaker(engine)() as s:  # a person's sites name loaded sites
            create_user(s, "nora", PASSWORD, "viewer", sites=["north"])
            create_user(s, "sven", PASSWORD, "viewer", sites=["south"])
        try:
            agents = [Agent(site_file=files[name], gateway_id=f"gw-{name}", data_dir=tmp_path / f"agent-{name}",
                            broker_url=broker.url_for(f"gw-{name}", credentials[name]), metrics_port=0,
                            diagnose=False) for name in SITES]

            def both_alerted() -> bool:
                with Session(engine) as s:
                    return len(set(s.scalars(select(Alert.node_id)))) == 2

            asyncio.run(_run_agents(agents, broker.host, broker.port, both_alerted))
        finally:
            platform.stop()
    with Session(engine) as s:
        temps = {n: v for n, v in s.execute(select(TwinProperty.node_id, TwinProperty.value_num)
                                            .where(TwinProperty.name == "temp"))}
        paths = {n.id: n.path for n in s.scalars(select(TwinNode).where(TwinNode.kind == "machine"))}
        alerts = {a.node_id: a.node_path for a in s.scalars(select(Alert))}
    assert temps == {"north-pump": 95.0, "south-pump": 91.0}  # each gateway's values, under its own site
    assert paths == {"north-pump": "/north/north-hall/north-pump/", "south-pump": "/south/south-hall/south-pump/"}
    assert alerts == paths  # one leader judged both sites

    with TestClient(create_app(settings, engine)) as client:
        for name, other in (("nora", "south"), ("sven", "north")):
            with make_sessionmaker(engine)() as s:  # a key of theirs: it sees what they see
                auth = {"Authorization": f"Bearer {create_key(s, Role.VIEWER, 'wallboard', owner=name)}"}
            own = "north" if other == "south" else "south"
            nodes = client.get("/api/v1/nodes", headers=auth).json()
            assert [n["id"] for n in nodes["items"]] == [own]
            listed = client.get("/api/v1/alerts", headers=auth).json()
            assert [a["node"] for a in listed["items"]] == [f"{own}-pump"]
            assert client.get(f"/api/v1/nodes/{other}-pump", headers=auth).status_code == 403
            history = client.get(f"/api/v1/nodes/{own}-pump/properties/temp/history", headers=auth)
            assert history.status_code == 200
            assert history.json()["items"]
    engine.dispose()
