"""Browsing an OPC-UA server's variables, as a function and as `factory-twin agent browse`."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from asyncua import ua
from click.testing import CliRunner

from edge_agent.browse import browse_variables
from factory_twin.cli.agent_browse import browse

from .conftest import opcua_server


async def _add_unit(var: Any) -> None:
    eu = ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=4408652,
        DisplayName=ua.LocalizedText("°C"),
        Description=ua.LocalizedText("degree Celsius"),
    )
    await var.add_property(0, "EngineeringUnits", eu)


def test_browse_lists_variables_with_type_and_unit(port: int) -> None:
    async def main() -> None:
        async with opcua_server(port, ("temp", "count")) as (_server, var):
            await _add_unit(var["temp"])
            found = await browse_variables(f"opc.tcp://127.0.0.1:{port}/test/", timeout_s=5)
        by_id = {v.node_id: v for v in found}
        assert by_id["ns=2;s=temp"].path == "2:Plant/2:temp"
        assert by_id["ns=2;s=temp"].dtype == "Double"
        assert by_id["ns=2;s=temp"].unit == "°C"
        assert by_id["ns=2;s=count"].unit == ""
        assert not any(v.path.startswith("0:Server") for v in found)
        assert not any("EngineeringUnits" in v.path for v in found)

    asyncio.run(main())


def test_browse_command_prints_a_table_and_json(port: int) -> None:
    ready = threading.Event()
    stop = threading.Event()

    def serve() -> None:
        async def main() -> None:
            async with opcua_server(port, ("speed",)):
                ready.set()
                while not stop.is_set():  # noqa: ASYNC110 - a threading.Event from the test thread
                    await asyncio.sleep(0.05)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(20)
        url = f"opc.tcp://127.0.0.1:{port}/test/"
        table = CliRunner().invoke(browse, [url, "--timeout", "5"])
        assert table.exit_code == 0, table.output
        for text in ("ns=2;s=speed", "2:Plant/2:speed", "Double"):
            assert text in table.output
        lines = CliRunner().invoke(browse, [url, "--json"]).output.strip().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        assert {"node_id": "ns=2;s=speed", "path": "2:Plant/2:speed", "type": "Double", "unit": ""} in rows
    finally:
        stop.set()
        thread.join(10)


def test_browse_command_reports_an_unreachable_server(port: int) -> None:
    result = CliRunner().invoke(browse, [f"opc.tcp://127.0.0.1:{port}/", "--timeout", "1"])
    assert result.exit_code == 1
    assert "Error:" in result.output
    assert f"127.0.0.1:{port}" in result.output
