"""The edge side of the cascade: unsure windows go to the platform's teacher; without an answer in time the
student's verdict stands, marked edge_fallback.

The platform is a small HTTP server on loopback that speaks the cascade route's contract (POST
/api/v1/cascade, Bearer key, the wire Diagnosis back), answering, answering late, refusing or answering for
another window, as a test asks.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from edge_agent import metrics
from edge_agent.cascade_client import CascadeClient
from edge_agent.config import AgentSettings
from edge_agent.diagnostics.diagnose import Diagnoser
from edge_agent.diagnostics.model_slots import PACKAGE_REGISTRY
from edge_agent.outbox import DIAGNOSIS, Outbox
from plant.platform_api import CascadeRequest
from plant.site import Site
from plant.wire import Diagnosis, DiagnosisSource
from tests.edge.test_diagnose import HEALTHY_MILL, T0, copy_model, example_site, frame, site_of

KEY = "ft-agent-key-for-tests"


class Platform:
    """The cascade route on loopback. ``mode``: answer, slow, refuse (503), other (another window), garbage."""

    def __init__(self, mode: str = "answer", delay_s: float = 1.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.requests: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> Platform:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                path = line.decode().split()[1]
                headers: dict[str, str] = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = json.loads(await reader.readexactly(int(headers.get("content-length", "0"))))
                self.requests.append((path, headers, body))
                status, payload = await self._answer(body)
                head = f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(payload)}\r\n"
                writer.write(head.encode() + b"\r\n")
                for i in range(0, len(payload), 8 if self.mode == "trickle" else len(payload)):
                    writer.write(payload[i : i + 8] if self.mode == "trickle" else payload[i:])
                    await writer.drain()
                    if self.mode == "trickle":  # each read is quick, the whole answer is not
                        await asyncio.sleep(0.1)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _answer(self, body: dict[str, Any]) -> tuple[str, bytes]:
        if self.mode == "refuse":
            return "503 Service Unavailable", b'{"detail": "no teacher for faults"}'
        if self.mode == "garbage":
            return "200 OK", b'{"node": 1}'
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        ask = CascadeRequest.model_validate(body)  # the contract's request, as the platform reads it
        ts = ask.ts + (1 if self.mode == "other" else 0)
        d = Diagnosis(node=ask.node, task=ask.task, ts=ts, model=ask.model, version=ask.version,
                      source=DiagnosisSource.PLATFORM, confidence=0.97, label="none", probability=0.97)  # fmt: skip
        return "200 OK", d.model_dump_json().encode()


def _registry(tmp_path: Path, threshold: float | None) -> Path:
    """The faults model under a local registry, its manifest's cascade threshold set (or removed)."""

    def edit(m: dict[str, Any]) -> None:
        m.pop("cascade", None)
        if threshold is not None:
            m["cascade"] = {"confidence_threshold": threshold}

    copy_model(PACKAGE_REGISTRY / "faults" / "1.0.0", tmp_path / "reg" / "faults", "5.0.0", edit)
    return tmp_path / "reg"


async def _diagnose_once(
    tmp_path: Path, url: str, threshold: float | None, site: Site | None = None, **settings: Any
) -> tuple[Diagnoser, list[Any]]:
    """One frame per mill through a Diagnoser with a cascade client and an outbox; the diagnoses stored."""
    s = AgentSettings(**{"data_dir": tmp_path / "agent", "platform_url": url, "platform_key": KEY, **settings})
    outbox = await Outbox.open(tmp_path / "outbox.sqlite")
    site = site or example_site()
    mills = [n.id for n in site.assets() if n.type == "cnc_mill"]
    d = Diagnoser(site, s, _registry(tmp_path, threshold), cascade=CascadeClient.from_settings(s), outbox=outbox)
    try:
        d.observe([frame(m, 0, HEALTHY_MILL) for m in mills])
        await d.step()
        await d.close()
        chunks = await outbox.take(1000)
    finally:
        await outbox.close()
    stored = [item for c in chunks if c.kind == DIAGNOSIS for item in json.loads(b"[" + c.body + b"]")]
    return d, stored


def test_an_unsure_window_goes_to_the_teacher_which_records_the_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with Platform() as platform:
            d, stored = await _diagnose_once(tmp_path, platform.url, threshold=1.0)
        assert stored == []  # the platform recorded the teacher's answer itself
        ((path, headers, body),) = platform.requests
        assert path == "/api/v1/cascade"
        assert headers["authorization"] == f"Bearer {KEY}"
        assert (body["node"], body["task"], body["ts"], body["version"]) == ("mill-1", "faults", T0, "5.0.0")
        assert body["window"]["product_type"] == ["M"]
        assert body["window"]["torque"] == [40.0]
        assert body["units"]["torque"] == "N·m"
        assert d.latest[("mill-1", "faults")].source == DiagnosisSource.PLATFORM

    asyncio.run(main())


@pytest.mark.parametrize("mode", ["slow", "trickle", "refuse", "other", "garbage"])
def test_without_an_answer_in_time_the_students_verdict_stands(tmp_path: Path, mode: str) -> None:
    async def main() -> None:
        async with Platform(mode) as platform:
            started = time.monotonic()
            _, stored = await _diagnose_once(tmp_path, platform.url, threshold=1.0, cascade_timeout_s=0.3)
            assert time.monotonic() - started < 3.0
        assert len(platform.requests) == 1
        (d,) = stored
        assert (d["node"], d["task"], d["ts"], d["source"]) == ("mill-1", "faults", T0, "edge_fallback")
        assert d["label"] == "none"
        assert d["version"] == "5.0.0"

    asyncio.run(main())


def test_an_unreachable_platform_is_not_asked_for_a_while(tmp_path: Path) -> None:
    async def main() -> None:
        async with Platform("refuse") as platform:
            client = CascadeClient(platform.url, KEY, timeout_s=0.3, open_after=3, cooldown_s=60)
            window = {"torque": [40.0]}
            answers = [await client.ask("mill-1", "faults", T0 + i, "m", "1", window, {}) for i in range(5)]
            await client.aclose()
        assert answers == [None] * 5
        assert len(platform.requests) == 3  # then paused: answered at once, without a request
        assert metrics.CASCADE.labels("faults", "paused")._value.get() >= 2

    asyncio.run(main())


def test_windows_beyond_the_inflight_limit_are_not_asked(tmp_path: Path) -> None:
    site = Site.model_validate(site_of({"mill-a": "cnc_mill", "mill-b": "cnc_mill", "mill-c": "cnc_mill"}))

    async def main() -> None:
        async with Platform() as platform:
            _, stored = await _diagnose_once(tmp_path, platform.url, 1.0, site, cascade_max_inflight=2)
        assert len(platform.requests) == 2
        assert [d["source"] for d in stored] == ["edge_fallback"]  # the third: the student's answer stands

    asyncio.run(main())


def test_a_closed_port_is_a_fallback_too(tmp_path: Path) -> None:
    async def main() -> None:
        async with Platform() as platform:
            url = platform.url
        _, stored = await _diagnose_once(tmp_path, url, threshold=1.0)  # nothing listens there any more
        assert [d["source"] for d in stored] == ["edge_fallback"]

    asyncio.run(main())


@pytest.mark.parametrize(("manifest", "setting", "asked"), [(0.0, 1.0, False), (None, 1.0, True), (None, 0.0, False)])
def test_the_manifests_threshold_wins_over_the_setting(
    tmp_path: Path, manifest: float | None, setting: float, asked: bool
) -> None:
    async def main() -> None:
        async with Platform() as platform:
            _, stored = await _diagnose_once(tmp_path, platform.url, manifest, cascade_thresholds={"faults": setting})
        assert len(platform.requests) == int(asked)
        assert [d["source"] for d in stored] == ([] if asked else ["edge"])

    asyncio.run(main())


@pytest.mark.slow
def test_the_platforms_teacher_answers_and_the_twin_records_it(tmp_path: Path) -> None:
    """The whole cascade: the real platform API (SQLite, embedded broker) runs its teacher on the window."""
    import httpx

    from factory_twin.stack import Stack, StackConfig
    from twin.auth import Role, create_key
    from twin.db import make_sessionmaker

    stack = Stack(StackConfig(data_dir=tmp_path / "platform", http_port=0, gateway_id="cascade-test"))
    stack.start_platform()
    try:
        assert stack.engine is not None
        with make_sessionmaker(stack.engine).begin() as session:
            key = create_key(session, Role.AGENT, "gateway cascade-test")

        async def main() -> tuple[Diagnoser, list[Any]]:
            return await _diagnose_once(tmp_path, stack.api_url, threshold=1.0, platform_key=key,
                                        cascade_timeout_s=10.0)  # fmt: skip

        d, stored = asyncio.run(main())
        assert stored == []
        answer = d.latest[("mill-1", "faults")]
        assert answer.source == DiagnosisSource.PLATFORM
        assert answer.ts == T0
        headers = {"Authorization": f"Bearer {stack.admin_key}"}
        with httpx.Client(base_url=stack.api_url, headers=headers, timeout=10) as api:
            state = api.get("/api/v1/nodes/mill-1").raise_for_status().json()
        (diagnosis,) = state["diagnoses"]
        assert (diagnosis["task"], diagnosis["source"]) == ("faults", "platform")
        assert diagnosis["payload"]["label"] == answer.label
    finally:
        stack.stop_platform()


def test_overlapping_stores_write_each_diagnosis_once(tmp_path: Path) -> None:
    """The step's and the cascade answers' stores share the diagnoses a failed write left: whichever write
    runs takes them, the other does not write them again."""

    def diagnosis(i: int) -> Diagnosis:
        return Diagnosis(node="mill-1", task="faults", ts=T0 + i, model="ai4i-faults", version="1.0.0",
                         source=DiagnosisSource.EDGE, confidence=0.9, label="none", probability=0.9)  # fmt: skip

    async def main() -> list[int]:
        outbox = await Outbox.open(tmp_path / "outbox.sqlite")
        d = Diagnoser(example_site(), AgentSettings(data_dir=tmp_path / "agent"), PACKAGE_REGISTRY, outbox=outbox)
        try:
            db = outbox.db._db  # a full disk, as SQLite sees it: no page beyond those in use
            db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
            await d._store_diagnoses([diagnosis(i) for i in range(500)])  # fails: kept for the next write
            assert len(d._unsaved) == 500
            db.execute("PRAGMA max_page_count = 1000000")
            await asyncio.gather(d._store_diagnoses([diagnosis(500)]), d._store_diagnoses([diagnosis(501)]))
            assert d._unsaved == []
            chunks = await outbox.take(10_000)
        finally:
            await d.close()
            await outbox.close()
        return [item["ts"] - T0 for c in chunks if c.kind == DIAGNOSIS for item in json.loads(b"[" + c.body + b"]")]

    assert sorted(asyncio.run(main())) == list(range(502))
