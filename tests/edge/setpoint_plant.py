"""The plant of the setpoint tests and benchmark: one pump whose speed is a writable OPC-UA variable on a real
asyncua server, the site file that binds it (the node owned by one gateway), and a twin database of that site."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from sqlalchemy import Engine

from plant.site import parse_site
from twin.auth import Role, create_key
from twin.db import make_engine, make_sessionmaker
from twin.store import TwinStore
from twin.tables import Base

SPEED_ON_UA = 'speed: {source: ua, node_id: "ns=2;s=speed"}'  # the pump's speed on the source ``ua``


def pump_site(gateway: str, source: str, bindings: str, properties: str = "") -> str:
    """A site of one pump ``p1`` (plant/area/p1) owned by ``gateway``, its speed writable (0 to 3000 rpm, by a
    technician). ``source``: the one source entry; ``bindings``: p1's bindings as a YAML flow mapping's content;
    ``properties``: more properties of the pump type, each a flow entry on one line."""
    return f"""
site: {{id: plant}}
sources:
  {source}
asset_types:
  pump:
    properties:
      speed: {{unit: rpm, writable: {{limits: [0, 3000], role: technician}}}}
      {properties}
nodes:
  - id: plant
    kind: site
    gateway: {gateway}
    children:
      - id: area
        kind: area
        children:
          - {{id: p1, kind: machine, type: pump, bindings: {{{bindings}}}}}
"""


class PlcServer:
    """An asyncua server with one writable variable, on its own thread and loop.

    With ``holding`` set, a client's write is carried out and its answer held until ``release`` is set:
    ``written`` tells the test the value has reached the variable.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/plc/"
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.var: Any = None
        self.holding = False
        self.written = threading.Event()
        self.release = threading.Event()
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.run_until_complete(self._settle())
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    async def _settle(self) -> None:
        """End what the server left running (connection handlers) and let the sockets it closed go."""
        pending = asyncio.all_tasks() - {asyncio.current_task()}
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.sleep(0.05)

    async def _main(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        idx = await server.register_namespace("urn:factory-twin:test")
        obj = await server.nodes.objects.add_object(idx, "Plant")
        self.var = await obj.add_variable(ua.NodeId("speed", idx), f"{idx}:speed", 0.0)
        await self.var.set_writable()
        server.subscribe_server_callback(CallbackType.PostWrite, self._after_write)
        self._stop = asyncio.Event()
        async with server:
            self.ready.set()
            await self._stop.wait()

    async def _after_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        if self.holding and event.is_external:  # a client's write: done, its answer held
            self.written.set()
            await asyncio.get_running_loop().run_in_executor(None, self.release.wait, 60)

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def value(self) -> float:
        return float(self.call(self.var.read_value()))

    def set(self, value: float) -> None:
        self.call(self.var.write_value(value))

    def __enter__(self) -> PlcServer:
        self.thread.start()
        assert self.ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.release.set()
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)


def site_text(plc: PlcServer, gateway: str) -> str:
    """The site file for ``plc``, its pump owned by ``gateway``."""
    return pump_site(gateway, f'ua: {{kind: opcua, endpoint: "{plc.endpoint}"}}', SPEED_ON_UA)


@dataclass
class PlantTwin:
    """The site file of a ``PlcServer`` and a SQLite twin database holding that site, with a technician's key."""

    site_file: Path
    engine: Engine
    store: TwinStore
    key: str


def plant_twin(plc: PlcServer, gateway: str, folder: Path, key_name: str) -> PlantTwin:
    """Write ``plc``'s site file (its pump owned by ``gateway``) and a twin database of it into ``folder``."""
    site_file = folder / "site.yaml"
    site_file.write_text(site_text(plc, gateway))
    engine = make_engine(f"sqlite:///{folder / 'twin.db'}")
    Base.metadata.create_all(engine)
    store = TwinStore(engine)
    store.sync_site(parse_site(site_file.read_text()))
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.TECHNICIAN, key_name)
    return PlantTwin(site_file, engine, store, key)
