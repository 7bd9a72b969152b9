"""Setpoint commands on the gateway against a real asyncua server: applied once and read back; refused when
not ours, not writable, out of limits, expired or answered with a Bad status; a restart mid-write never writes
again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edge_agent.commands import CommandExecutor, Journal, OpcUaWriter
from plant.site import Site, parse_site
from plant.wire import Command, now_us
from tests.site_texts import one_pump_site

from .connectors.conftest import free_port, opcua_server


@pytest.fixture
def port() -> int:
    return free_port()

SITE = one_pump_site("""
site: {{id: plant}}
sources:
  ua: {{kind: opcua, endpoint: "opc.tcp://127.0.0.1:{port}/test/"}}
asset_types:
  pump:
    properties:
      speed: {{unit: rpm, writable: {{limits: [0, 3000], role: technician}}}}
      locked: {{unit: rpm, writable: {{limits: [0, 3000]}}}}
      temp: {{unit: C}}
""", """\
speed: {{source: ua, node_id: "ns=2;s=t1"}}
locked: {{source: ua, node_id: "ns=2;s=t2"}}
temp: {{source: ua, node_id: "ns=2;s=t3"}}
""", gateway="gw1")


def _cmd(value: float | str = 1200.0, *, node: str = "p1", prop: str = "speed", gateway: str = "gw1",
         expires_in_s: float = 60.0, cid: str = "c0000001") -> bytes:
    now = now_us()
    body = {"id": cid, "gateway": gateway, "node": node, "prop": prop, "value": value, "issued": now,
            "expires": now + int(expires_in_s * 1e6)}
    return Command.model_validate(body).model_dump_json().encode() if not isinstance(value, str) else (
        __import__("json").dumps(body).encode())


def _executor(site: Site, tmp_path: Path) -> tuple[CommandExecutor, OpcUaWriter]:
    writer = OpcUaWriter(site)
    return CommandExecutor(site, "gw1", Journal(tmp_path / "commands.db"), writer), writer


def test_applied_once_read_back_and_never_twice(port: int, tmp_path: Path) -> None:
    asyncio.run(_applied_once_read_back_and_never_twice(port, tmp_path))


async def _applied_once_read_back_and_never_twice(port: int, tmp_path: Path) -> None:
    site = parse_site(SITE.format(port=port))
    async with opcua_server(port) as (_server, variables):
        await variables["t1"].set_writable()
        ex, writer = _executor(site, tmp_path)
        try:
            report = await ex.handle(_cmd(1200.0))
            assert report is not None
            assert (report.state, report.value) == ("applied", 1200.0)
            assert await variables["t1"].read_value() == 1200.0
            await variables["t1"].write_value(5.0)  # someone changes it at the machine
            again = await ex.handle(_cmd(1200.0))  # the broker delivers the command a second time
            assert again is not None
            assert again.state == "applied"
            assert await variables["t1"].read_value() == 5.0  # not written again
            assert ex.applied == 1
        finally:
            await writer.close()


REFUSALS: list[tuple[dict[str, object], str, str]] = [
    ({"value": 3500.0}, "rejected", "out_of_limits"),
    ({"value": "fast"}, "rejected", "wrong_type"),
    ({"prop": "temp"}, "rejected", "not_writable"),
    ({"node": "elsewhere"}, "rejected", "not_owner"),
    ({"gateway": "gw2"}, "rejected", "not_owner"),
    ({"expires_in_s": -1.0}, "expired", "expired"),
]


def test_refused_before_any_write(port: int, tmp_path: Path) -> None:
    asyncio.run(_refused_before_any_write(port, tmp_path))


async def _refused_before_any_write(port: int, tmp_path: Path) -> None:
    """Each refusal with an executor of its own (its own journal), against one server: nothing is written."""
    site = parse_site(SITE.format(port=port))
    async with opcua_server(port) as (_server, variables):
        await variables["t1"].set_writable()
        for i, (kw, state, reason) in enumerate(REFUSALS):
            (tmp_path / str(i)).mkdir()
            ex, writer = _executor(site, tmp_path / str(i))
            try:
                report = await ex.handle(_cmd(**kw))  # type: ignore[arg-type]
                if kw.get("value") == "fast":
                    assert report is None, kw  # not even a command: logged and dropped
                    continue
                assert report is not None, kw
                assert (report.state, report.reason) == (state, reason), kw
                assert await variables["t1"].read_value() == 0.0, kw
            finally:
                await writer.close()


def test_a_bad_status_is_reported_failed_with_its_name(port: int, tmp_path: Path) -> None:
    asyncio.run(_a_bad_status_is_reported_failed_with_its_name(port, tmp_path))


async def _a_bad_status_is_reported_failed_with_its_name(port: int, tmp_path: Path) -> None:
    site = parse_site(SITE.format(port=port))
    async with opcua_server(port) as (_server, _variables):  # t2 is not writable on the server
        ex, writer = _executor(site, tmp_path)
        try:
            report = await ex.handle(_cmd(100.0, prop="locked"))
            assert report is not None
            assert (report.state, report.reason) == ("failed", "bad_status")
            assert "Bad" in report.detail
        finally:
            await writer.close()


def test_a_restart_mid_write_reads_back_and_never_writes_again(port: int, tmp_path: Path) -> None:
    asyncio.run(_a_restart_mid_write_reads_back_and_never_writes_again(port, tmp_path))


async def _a_restart_mid_write_reads_back_and_never_writes_again(port: int, tmp_path: Path) -> None:
    site = parse_site(SITE.format(port=port))
    async with opcua_server(port) as (_server, variables):
        await variables["t1"].set_writable()
        journal = Journal(tmp_path / "commands.db")
        cmd = Command.model_validate_json(_cmd(700.0))
        journal.begin(cmd, now_us())  # the agent died here: after the journal, maybe after the write
        await variables["t1"].write_value(700.0)
        journal.close()
        ex, writer = _executor(site, tmp_path)
        try:
            (report,) = await ex.recover()
            assert (report.state, report.value) == ("applied", 700.0)
            await variables["t1"].write_value(1.0)
            again = await ex.handle(_cmd(700.0))
            assert again is not None
            assert again.state == "applied"
            assert await variables["t1"].read_value() == 1.0  # never written twice
            assert [r.id for r in ex.journal.unreported()] == ["c0000001"]
        finally:
            await writer.close()
