"""Outbox drain: after an uplink outage at the live rate, how fast the backlog drains while live data keeps
flowing.

The backlog of a 10-minute outage (``--quick``: 1 minute) at the live rate is built first, through the real
pipeline (normalise → align → outbox, synchronous=FULL) and faster than real time, stamped over the outage.
Then the uplink connects to a private Mosquitto where a small ack responder (another process, standing in for
the platform: it decodes every UplinkBatch and answers an Ack) is listening, while a generator keeps
submitting live readings at the live rate. The drain rate is the backlog's values divided by the time until
the last backlog chunk is acknowledged; ratio = drain rate / live rate (target 5). Live data must keep flowing
meanwhile: the share of live values already acknowledged when the backlog is gone is reported too.

    python benchmarks/outbox_drain.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _mosquitto import private_mosquitto
from mqtt_ingest import DEVICES, PROPS, site_yaml

LIVE_RATE = 2_000  # values per second: 100 devices × 5 values, every 0.25 s
TICK_S = 0.02

RESPONDER = """
import sys
import paho.mqtt.client as mqtt
from plant.wire import Ack, ack_topic, decode_batch, uplink_topic
port, gateway = int(sys.argv[1]), sys.argv[2]
def on_message(c, _u, msg):
    b = decode_batch(msg.payload)
    ack = Ack(gateway=b.gateway, batch=b.batch, stored=True, accepted=len(b))
    c.publish(ack_topic(b.gateway), ack.model_dump_json(), qos=1)
def on_connect(c, *_a):
    c.subscribe(uplink_topic(gateway), qos=1)
    print("ready", flush=True)
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="responder-" + gateway)
c.on_message = on_message
c.on_connect = on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
"""


def _readings(t_us: int, k: int, recv_us: int) -> list[object]:
    from edge_agent.reading import Reading

    d = k % DEVICES
    return [
        Reading("bus", f"dev-{d}", p, float(k % 97) + i, t_us, None, recv_us) for i, p in enumerate(PROPS)
    ]


async def build_backlog(pipe: object, outage_s: float) -> None:
    """Submit outage_s × LIVE_RATE values stamped over the outage, as fast as the pipeline takes them."""
    from edge_agent.pipeline import Pipeline
    from edge_agent.reading import ReadingBatch

    assert isinstance(pipe, Pipeline)
    msgs = int(outage_s * LIVE_RATE / len(PROPS))
    start = time.time_ns() // 1000 - int(outage_s * 1e6)
    step = outage_s * 1e6 / msgs
    for k in range(msgs):
        t = start + int(k * step)
        await pipe.submit(ReadingBatch(_readings(t, k, t + 5_000)))  # type: ignore[arg-type]
        if k % 2000 == 1999:
            await pipe.commit()
    await pipe.flush()


async def live(pipe: object, counter: list[int]) -> None:
    """Submit LIVE_RATE values per second, stamped now, until cancelled."""
    from edge_agent.pipeline import Pipeline
    from edge_agent.reading import ReadingBatch

    assert isinstance(pipe, Pipeline)
    per_tick = LIVE_RATE * TICK_S / len(PROPS)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    k = 0
    while True:
        due = int((loop.time() - t0) / TICK_S * per_tick)
        while k < due:
            now = time.time_ns() // 1000
            await pipe.submit(ReadingBatch(_readings(now, k, now + 2_000)))  # type: ignore[arg-type]
            counter[0] += len(PROPS)
            k += 1
        await asyncio.sleep(TICK_S)


async def run(port: int, data_dir: Path, outage_s: float, gateway: str) -> dict[str, object]:
    """Build the backlog, then drain it with live data flowing; the figures."""
    from edge_agent.config import AgentSettings
    from edge_agent.deadletter import DeadLetterFile
    from edge_agent.outbox import Outbox
    from edge_agent.pipeline import Pipeline, Stage
    from edge_agent.platform_link import PlatformLink
    from edge_agent.uplink import Uplink
    from plant.mqtt import BrokerUrl
    from plant.site import parse_site
    from plant.wire import ack_topic

    site = parse_site(site_yaml("drain", port), "bench")
    s = AgentSettings(data_dir=data_dir, gateway_id=gateway)
    box = await Outbox.open(s.outbox_path, synchronous=s.outbox_synchronous, chunk_items=s.chunk_items)
    pipe = Pipeline(
        Stage.build(site, s), box, DeadLetterFile(s.deadletter_path), commit_window_ms=s.commit_window_ms
    )
    t = time.perf_counter()
    await build_backlog(pipe, outage_s)
    fill_s = time.perf_counter() - t
    backlog_end = box.db.last_id()
    backlog_values, backlog_frames = box.db.depth[0], box.db.depth[1]

    committer = asyncio.create_task(pipe.run())
    live_values = [0]
    generator = asyncio.create_task(live(pipe, live_values))
    link = PlatformLink(
        BrokerUrl("127.0.0.1", port, False), s.client_id, [ack_topic(gateway)], lambda _t, _p: None
    )
    up = Uplink.from_settings(box, link, s)
    link.on_message = up.on_message
    await link.start()
    await asyncio.wait_for(link.connected.wait(), 10)
    t0 = time.perf_counter()
    sender = asyncio.create_task(up.run())
    while await box.items_upto(backlog_end):  # noqa: ASYNC110 - a query, not a flag
        await asyncio.sleep(0.05)
    drain_s = time.perf_counter() - t0
    live_left = box.db.count()  # everything left was written after the outage
    live_in = live_values[0]
    for task in (generator, sender):
        task.cancel()
    pipe.stop()
    await committer
    await link.stop()
    await box.close()
    drain_rate = backlog_values / drain_s
    return {
        "live_values_per_s": LIVE_RATE,
        "outage_s": outage_s,
        "backlog_values": backlog_values,
        "backlog_frames": backlog_frames,
        "backlog_fill_s": round(fill_s, 1),
        "drain_s": round(drain_s, 2),
        "drain_values_per_s": round(drain_rate),
        "drain_items_per_s": round((backlog_values + backlog_frames) / drain_s),
        "live_values_during_drain": live_in,
        "live_items_still_queued": live_left,
        "batches": up.stats.batches_sent,
        "resent": up.stats.resent,
    }


def main() -> None:
    """Run once and print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a 1-minute outage instead of 10")
    ap.add_argument("--outage", type=float, default=None, help="outage length in seconds")
    args = ap.parse_args()
    outage = args.outage or (60.0 if args.quick else 600.0)
    import logging

    logging.disable(logging.WARNING)
    gateway = f"drain-{os.getpid()}"
    root = str(Path(__file__).resolve().parents[1])
    with private_mosquitto() as port, tempfile.TemporaryDirectory() as d:
        resp = subprocess.Popen(
            [sys.executable, "-c", RESPONDER, str(port), gateway],
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
            env={**os.environ, "PYTHONPATH": root},
        )
        try:
            assert resp.stdout is not None
            resp.stdout.readline()  # "ready"
            out = asyncio.run(run(port, Path(d), outage, gateway))
        finally:
            resp.terminate()
            resp.wait(10)
            if resp.stdout:
                resp.stdout.close()
    ratio = float(out["drain_values_per_s"]) / LIVE_RATE  # type: ignore[arg-type]
    print(
        json.dumps(
            {"name": "outbox_drain", "ratio": round(ratio, 2), "target": 5.0, "ok": ratio >= 5.0, **out}
        )
    )


if __name__ == "__main__":
    main()
