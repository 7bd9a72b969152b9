"""OPC-UA benchmark: N monitored items at 1 s on one agent connector; CPU, completeness and lag over time.

An asyncua server runs in its own process with N Double variables and, once a second, writes a new value to
every one of them in one batched write, all stamped with that second's source timestamp. The agent's
OpcUaConnector subscribes to all of them (one subscription, items created in batches of 500, sampling and
publishing at 1 s) and hands each publish response to a counting sink. Figures, over the measured window
(after subscribing and a warm-up):

* ratio = notifications received / values the server offered (target >= 0.99), counted per source tick;
* cpu_percent: the agent process's CPU time / wall time (one core = 100; target < 50);
* lag: receive time - source timestamp per value, its median in the first and the last fifth of the window;
  "no lag growth" = the last fifth's median is at most 0.5 s above the first's;
* server_kept_pace: the server wrote at least 90 % of the ticks, each completely (a tick it could not start in
  time is skipped, not written late). If it did not, the run says so and is not judged ok: the client must not
  be judged by a server that falls behind. (The asyncua test
  server is patched not to deep-copy each written value per monitored item, else it manages ~5,000/s.)

Usage: python benchmarks/opcua_items.py [--quick] [--items N] [--duration S]
(--quick: 10,000 items for 25 s instead of 300 s; the JSON says which.) ``ok`` needs the server to have kept
its pace; ``client_ok`` is the agent's verdict alone, for machines too loaded for the test server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import socket
import statistics
import sys
import time
from datetime import UTC, datetime
from typing import Any

import structlog

NS = "urn:factory-twin:bench"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- server process -------------------------------------------------------------------------------------


def server_main(port: int, items: int, ready: Any, stop: Any, results: Any) -> None:
    """Run the server and its writer until ``stop`` is set; put per-tick figures on ``results``."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    asyncio.run(_serve(port, items, ready, stop, results))


def _no_deepcopy(self: Any, cur_val: Any) -> None:
    # The test server deep-copies every written value for every monitored item (75 % of its time at 10,000
    # items, and why it falls behind). Our writer makes a fresh DataValue per write, so a reference is safe.
    self.old_dvalue = self.current_dvalue
    self.current_dvalue = cur_val


async def _serve(port: int, items: int, ready: Any, stop: Any, results: Any) -> None:
    from asyncua import Server, ua
    from asyncua.server import monitored_item_service

    monitored_item_service.MonitoredItemValues.set_current_datavalue = _no_deepcopy  # type: ignore[method-assign]

    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/bench/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_force_server_timestamp(False)  # our writes carry their own; saves a copy per value
    idx = await server.register_namespace(NS)
    ids = await _add_variables(server, idx, items)
    await server.start()
    ready.set()
    ticks: list[tuple[int, int, float, float]] = []  # (source ts µs, values written, write s, done at)
    service = server.iserver.attribute_service
    next_tick = time.time() // 1 + 1
    n = 0
    cpu0 = time.process_time()
    try:
        while not stop.is_set():
            n += 1
            stamp = datetime.fromtimestamp(next_tick, UTC)
            # Built before the tick: only the write itself is timed.
            writes = [
                ua.WriteValue(
                    NodeId=nid,
                    AttributeId=ua.AttributeIds.Value,
                    Value=ua.DataValue(
                        ua.Variant(n + i * 1e-6, ua.VariantType.Double),
                        SourceTimestamp=stamp,
                        ServerTimestamp=stamp,
                    ),
                )
                for i, nid in enumerate(ids)
            ]
            await asyncio.sleep(max(0.0, next_tick - time.time()))
            t0 = time.perf_counter()
            ok = 0
            for start in range(0, len(writes), 1000):  # slices, so publish responses go out in between
                params = ua.WriteParameters()
                params.NodesToWrite = writes[start : start + 1000]
                ok += sum(1 for c in await service.write(params) if c.is_good())
                await asyncio.sleep(0)
            took = time.perf_counter() - t0
            ticks.append((int(next_tick * 1_000_000), ok, took, time.time()))
            next_tick += 1
            while next_tick < time.time():  # a tick we could not make in time is skipped and shows as such
                next_tick += 1
    finally:
        results.put((ticks, time.process_time() - cpu0))
        await server.stop()


async def _add_variables(server: Any, idx: int, items: int, per_folder: int = 500) -> list[Any]:
    """N Double variables in folders of 500, added in one service call (adding one by one is quadratic)."""
    from asyncua import ua

    folders = []
    for f in range((items + per_folder - 1) // per_folder):
        folder = await server.nodes.objects.add_folder(ua.NodeId(f"f{f}", idx), f"{idx}:f{f}")
        folders.append(folder.nodeid)
    adds = []
    for i in range(items):
        item = ua.AddNodesItem()
        item.RequestedNewNodeId = ua.NodeId(f"v{i}", idx)
        item.BrowseName = ua.QualifiedName(f"v{i}", idx)
        item.NodeClass = ua.NodeClass.Variable
        item.ParentNodeId = folders[i // per_folder]
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
        attrs = ua.VariableAttributes()
        attrs.DisplayName = ua.LocalizedText(f"v{i}")
        attrs.DataType = ua.NodeId(ua.ObjectIds.Double)
        attrs.Value = ua.Variant(0.0, ua.VariantType.Double)
        attrs.ValueRank = ua.ValueRank.Scalar
        attrs.AccessLevel = attrs.UserAccessLevel = ua.AccessLevel.CurrentRead.mask
        item.NodeAttributes = attrs
        adds.append(item)
    results = server.iserver.node_mgt_service.add_nodes(adds)
    assert all(r.StatusCode.is_good() for r in results)
    return [item.RequestedNewNodeId for item in adds]


# --- agent side -----------------------------------------------------------------------------------------


class CountingSink:
    """Counts values per source tick and keeps (receive time, lag) samples per batch."""

    def __init__(self) -> None:
        self.per_tick: dict[int, int] = {}
        self.lags: list[tuple[float, float]] = []  # (monotonic receive, median lag s of the batch)
        self.values = 0

    async def __call__(self, batch: Any) -> None:
        readings = batch.readings
        self.values += len(readings)
        per = self.per_tick
        for r in readings:
            if r.source_ts is not None:
                per[r.source_ts] = per.get(r.source_ts, 0) + 1
        lag = [
            (r.recv_ts - r.source_ts) / 1e6 for r in readings[:: max(1, len(readings) // 50)] if r.source_ts
        ]
        if lag:
            self.lags.append((time.monotonic(), statistics.median(lag)))


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def run_agent(port: int, items: int, duration: float, warmup: float) -> dict[str, Any]:
    """Subscribe with the agent's connector, measure for ``duration`` after ``warmup``."""
    from edge_agent.connectors.opcua import OpcUaConnector, OpcUaSignal
    from plant.site import OpcUaBinding, OpcUaSource

    source = OpcUaSource(
        kind="opcua",
        endpoint=f"opc.tcp://127.0.0.1:{port}/bench/",
        publishing_interval_ms=1000,
        batch_size=500,
        timeout_s=30,
    )
    signals = [
        OpcUaSignal(
            "bench",
            f"v{i}",
            OpcUaBinding(source="opc", node_id=f"ns=2;s=v{i}", sampling_ms=1000, queue_size=2),
        )
        for i in range(items)
    ]
    conn = OpcUaConnector("opc", source, signals, watchdog_s=10.0, queue_size=100)
    sink = CountingSink()
    task = asyncio.create_task(conn.run(sink))
    t0 = time.monotonic()
    while not conn.status()["connected"]:
        if task.done():
            task.result()
        if time.monotonic() - t0 > 120:
            raise RuntimeError(f"not subscribed after 120 s: {conn.status()}")
        await asyncio.sleep(0.1)
    subscribe_s = time.monotonic() - t0
    await asyncio.sleep(warmup)
    start_wall, start_mono, start_cpu = time.time(), time.monotonic(), _cpu()
    await asyncio.sleep(duration)
    end_wall, end_mono, cpu = time.time(), time.monotonic(), _cpu() - start_cpu
    await asyncio.sleep(2.5)  # the last ticks' publish responses
    status = conn.status()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return {
        "sink": sink,
        "subscribe_s": subscribe_s,
        "window": (start_wall, end_wall),
        "mono": (start_mono, end_mono),
        "cpu_s": cpu,
        "status": status,
    }


def judge(
    items: int, ticks: list[tuple[int, int, float, float]], agent: dict[str, Any], quick: bool
) -> dict[str, Any]:
    """The JSON line: completeness, CPU, lag growth and whether the server kept its pace."""
    start, end = agent["window"]
    # Ticks stamped in the window and written before its end (the agent waits 2.5 s more for their values).
    window = [t for t in ticks if start * 1e6 <= t[0] and t[3] <= end]
    offered = sum(t[1] for t in window)
    sink: CountingSink = agent["sink"]
    received = sum(min(sink.per_tick.get(t[0], 0), t[1]) for t in window)
    wall = end - start
    cpu_percent = 100.0 * agent["cpu_s"] / wall
    m0, m1 = agent["mono"]
    fifth = (m1 - m0) / 5
    first = [lag for t, lag in sink.lags if m0 <= t < m0 + fifth]
    last = [lag for t, lag in sink.lags if m1 - fifth <= t <= m1]
    lag_first = statistics.median(first) if first else float("nan")
    lag_last = statistics.median(last) if last else float("nan")
    expected_ticks = max(1, int(wall) - 1)
    tick_share = len(window) / expected_ticks
    # Skipped ticks do not skew the ratio (it is counted per tick written), but a server that misses more than
    # one in ten is too loaded to judge the client by.
    kept_pace = tick_share >= 0.9 and all(t[1] == items for t in window)
    ratio = received / offered if offered else 0.0
    lag_growth = lag_last - lag_first
    client_ok = ratio >= 0.99 and cpu_percent < 50.0 and lag_growth <= 0.5
    ok = kept_pace and client_ok
    return {
        "name": "opcua_items",
        "ratio": round(ratio, 4),
        "target": 0.99,
        "ok": ok,
        "client_ok": client_ok,
        "items": items,
        "quick": quick,
        "duration_s": round(wall, 1),
        "values_offered": offered,
        "values_received": received,
        "values_per_s": round(received / wall, 1),
        "cpu_percent": round(cpu_percent, 1),
        "cpu_target_percent": 50.0,
        "lag_p50_first_s": round(lag_first, 3),
        "lag_p50_last_s": round(lag_last, 3),
        "lag_growth_s": round(lag_growth, 3),
        "subscribe_s": round(agent["subscribe_s"], 1),
        "server_kept_pace": kept_pace,
        "server_ticks": len(window),
        "server_tick_share": round(tick_share, 3),
        "server_write_max_s": round(max((t[2] for t in window), default=0.0), 3),
        "bad_nodes": len(agent["status"].get("bad_nodes", {})),
        "reconnects": agent["status"].get("reconnects"),
    }


def main() -> None:
    """Parse arguments, run server and agent, print one JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="25 s instead of 300 s")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--duration", type=float, default=None, help="measured seconds (default 300, quick 25)")
    args = ap.parse_args()
    duration = args.duration or (25.0 if args.quick else 300.0)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    ctx = mp.get_context("spawn")
    ready, stop, results = ctx.Event(), ctx.Event(), ctx.Queue()
    port = _free_port()
    proc = ctx.Process(target=server_main, args=(port, args.items, ready, stop, results), daemon=True)
    proc.start()
    if not ready.wait(180):
        proc.kill()
        sys.exit("server did not start in 180 s")
    try:
        agent = asyncio.run(run_agent(port, args.items, duration, warmup=3.0 if args.quick else 10.0))
    finally:
        stop.set()
    ticks, server_cpu_s = results.get(timeout=60)
    proc.join(30)
    out = judge(args.items, ticks, agent, args.quick)
    out["server_cpu_s"] = round(server_cpu_s, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
