"""Setpoint round trip: from the API request to the value read back from a real asyncua server, through a
private Mosquitto and a real agent process, and the report back into the twin.

Each command: POST .../desired (in-process API) → the platform's dispatcher publishes it (QoS 1) → the agent
checks, journals, writes with asyncua, reads back → its report rides an uplink batch → ingest stores
"applied" with the value read back. The time is taken from the request until the twin shows the command
applied. Then the benchmark puts a sentinel on the variable and publishes the same command again (a
redelivery): if the variable changes, the command was applied twice (``duplicated``). Every fifth round also
sends a command that expires at once: it must end expired and never reach the variable (``expired_applied``).

Baseline (``ratio``'s denominator): a direct asyncua write and read back from this process, p99.

Usage: python benchmarks/setpoint_roundtrip.py [--quick] [--commands N]
(--quick: 40 commands instead of 300.) Target: p99 < 500 ms, expired_applied = 0, duplicated = 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncua import Client, ua
from fastapi.testclient import TestClient

from benchmarks._mosquitto import free_port, private_mosquitto
from plant.mqtt import BrokerUrl, MqttOptions, ThreadedClient
from plant.wire import command_topic
from tests.edge.setpoint_plant import PlcServer, plant_twin
from twin.api import create_app
from twin.commands import CommandDispatcher, to_wire
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.ingest import Ingestor
from twin.tables import SetpointCommand

GATEWAY = "bench-gw"
TARGET_P99_MS = 500.0
SENTINEL = 0.5
async def direct_p99(endpoint: str, n: int) -> float:
    """p99 ms of a write and read back with asyncua from this process (the baseline)."""
    times = []
    async with Client(endpoint) as client:
        node = client.get_node("ns=2;s=speed")
        for i in range(n):
            t0 = time.perf_counter()
            await node.write_value(ua.DataValue(ua.Variant(100.0 + i, ua.VariantType.Double)))
            await node.read_value()
            times.append((time.perf_counter() - t0) * 1e3)
    return _pct(times, 99)


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _wait_state(sessions: Any, cid: str, timeout: float = 10.0) -> SetpointCommand | None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        with sessions() as s:
            cmd = s.get(SetpointCommand, cid)
            if cmd is not None and cmd.state in ("applied", "rejected", "failed", "expired"):
                s.expunge(cmd)
                return cmd
        time.sleep(0.003)
    return None


def run(commands: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="setpoint-bench-"))
    with PlcServer(free_port()) as plc, private_mosquitto() as mport:
        twin = plant_twin(plc, GATEWAY, tmp, "bench")
        site_file, engine, key = twin.site_file, twin.engine, twin.key
        sessions = make_sessionmaker(engine)
        ingestor = Ingestor(twin.store, BrokerUrl("127.0.0.1", mport), client_id="bench-ingest").start()
        dispatcher = CommandDispatcher.connect(engine, BrokerUrl("127.0.0.1", mport), "bench-commands")
        dispatcher.report_grace_us = 300_000  # an unsent expired command ends soon after its expiry
        dispatcher.start()
        agent = subprocess.Popen(
            [sys.executable, "-m", "factory_twin", "agent", "run", "--site", str(site_file), "--gateway", GATEWAY,
             "--broker", f"mqtt://127.0.0.1:{mport}", "--data-dir", str(tmp / "agent"), "--metrics-port", "-1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ},
        )
        dup = ThreadedClient(MqttOptions("127.0.0.1", mport, "bench-redeliver", persistent=False),
                             name="bench-redeliver").start()
        dup.wait_connected(10)
        app = create_app(TwinSettings(data_dir=tmp, model_dir=tmp / "none"), engine)
        counts = {"sent": 0, "applied": 0, "expired": 0, "expired_applied": 0, "duplicated": 0, "failed": 0}
        latencies: list[float] = []
        try:
            with TestClient(app) as client:
                app.state.commands = dispatcher
                headers = {"Authorization": f"Bearer {key}"}
                url = "/api/v1/nodes/p1/properties/speed/desired"
                deadline = time.monotonic() + 60  # the agent is ready for commands once its clock probe came
                while ingestor.stats().batches == 0 and time.monotonic() < deadline:
                    time.sleep(0.05)
                time.sleep(0.2)  # its ack back at the agent
                for i in range(commands):
                    value = 1000.0 + i
                    t0 = time.perf_counter()
                    r = client.post(url, json={"value": value}, headers=headers)
                    cid = r.json()["id"]
                    counts["sent"] += 1
                    cmd = _wait_state(sessions, cid)
                    elapsed = (time.perf_counter() - t0) * 1e3
                    if cmd is None or cmd.state != "applied":
                        counts["failed"] += 1
                        continue
                    counts["applied"] += 1
                    latencies.append(elapsed)
                    plc.set(SENTINEL)
                    dup.publish(command_topic(GATEWAY), to_wire(cmd).model_dump_json().encode(), qos=1, acked=True)
                    if i % 5 == 4:
                        before = plc.value()
                        r = client.post(url, json={"value": value + 0.5, "expires_s": 0.001}, headers=headers)
                        counts["sent"] += 1
                        late = _wait_state(sessions, r.json()["id"], timeout=10.0)
                        if late is not None and late.state == "expired":
                            counts["expired"] += 1
                        if (late is not None and late.state == "applied") or plc.value() != before:
                            counts["expired_applied"] += 1
                    time.sleep(0.2)  # the redelivery has arrived and been refused by now
                    if plc.value() != SENTINEL:
                        counts["duplicated"] += 1
        finally:
            dup.stop()
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
            dispatcher.stop()
            ingestor.stop()
            engine.dispose()
        baseline = asyncio.run(direct_p99(plc.endpoint, max(50, commands)))
    p50, p99 = _pct(latencies, 50), _pct(latencies, 99)
    ok = (p99 < TARGET_P99_MS and counts["expired_applied"] == 0 and counts["duplicated"] == 0
          and counts["applied"] == commands)
    return {"name": "setpoint_roundtrip", "ratio": round(p99 / baseline, 2) if baseline else None,
            "target": f"p99_ms < {TARGET_P99_MS:g}, expired_applied = 0, duplicated = 0", "ok": ok,
            "p50_ms": round(p50, 1), "p99_ms": round(p99, 1), "direct_p99_ms": round(baseline, 2), **counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="40 commands instead of 300")
    ap.add_argument("--commands", type=int, default=None)
    args = ap.parse_args()
    import logging

    import structlog

    logging.disable(logging.WARNING)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = args.commands or (40 if args.quick else 300)
    out = run(n)
    out["quick"] = bool(args.quick)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
