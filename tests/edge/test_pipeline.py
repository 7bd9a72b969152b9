"""The sink seam: ReadingBatch in, durable values and frames out, acks only after commit, bad input
dead-lettered."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.deadletter import DeadLetter
from edge_agent.outbox import Outbox
from edge_agent.pipeline import Pipeline, Stage
from edge_agent.reading import Reading, ReadingBatch
from plant.site import Site

S = 1_000_000
T0 = 1_763_900_000 * S


def batch(t: float, acks: list[float], temp: object = 70.0) -> ReadingBatch:
    ts = T0 + int(t * S)
    rs = [
        Reading("plc", "pump-1", "temp", temp, ts, None, ts + 2_000),
        Reading("plc", "pump-1", "pressure", 1.0, ts, None, ts + 2_000),
    ]
    return ReadingBatch(rs, ack=lambda: acks.append(t))


async def _pipeline(site: Site, tmp_path: Path) -> tuple[Pipeline, Outbox, DeadLetter]:
    box = await Outbox.open(tmp_path / "o.sqlite")
    dl = DeadLetter(tmp_path / "dead.jsonl")
    return Pipeline(Stage.build(site, AgentSettings()), box, dl, commit_window_ms=2), box, dl


def test_batches_become_values_and_frames_acked_after_commit(site: Site, tmp_path: Path) -> None:
    async def main() -> None:
        pipe, box, _ = await _pipeline(site, tmp_path)
        runner = asyncio.create_task(pipe.run())
        acks: list[float] = []
        for i in range(10):
            await pipe.submit(batch(i * 0.5, acks))
        assert acks == []  # nothing acked before it is durable
        assert box.db.count() == 0
        await pipe.wait_idle()
        assert len(acks) == 10
        assert box.db.depth[0] == 20  # values
        assert box.db.depth[1] >= 4  # frames at 1 s .. 4 s
        body = b"[" + b",".join(c.body for c in box.db.take(10**6) if c.kind == 1) + b"]"
        frames = json.loads(body)
        assert abs(frames[0]["values"]["temp"] - 21.111) < 1e-3  # 70 °F
        assert frames[0]["values"]["pressure"] == 100.0  # 1 bar in kPa
        pipe.stop()
        await runner
        await box.close()

    asyncio.run(main())


def test_rejections_are_counted_and_dead_lettered_and_the_batch_still_acked(
    site: Site, tmp_path: Path
) -> None:
    labels = {"source": "plc", "reason": "not_finite"}
    before = metrics.REGISTRY.get_sample_value("ft_agent_rejected_total", labels) or 0

    async def main() -> None:
        pipe, box, dl = await _pipeline(site, tmp_path)
        runner = asyncio.create_task(pipe.run())
        acks: list[float] = []
        await pipe.submit(batch(0, acks, temp=float("nan")))
        b = ReadingBatch(
            [], ack=lambda: acks.append(99), rejected=[("malformed_json", "p/1: Expecting value")]
        )
        await pipe.sink_for("plc")(b)
        await pipe.wait_idle()
        assert acks == [0, 99]  # refused input is acked too: redelivering it would not make it better
        assert box.db.depth[0] == 1
        lines = [json.loads(x) for x in dl.path.read_text().splitlines()]
        assert sorted((x["source"], x["reason"]) for x in lines) == [
            ("plc", "malformed_json"),
            ("plc", "not_finite"),
        ]
        pipe.stop()
        await runner
        await box.close()

    asyncio.run(main())
    assert (metrics.REGISTRY.get_sample_value("ft_agent_rejected_total", labels) or 0) == before + 1


def test_backpressure_when_pending_is_full(site: Site, tmp_path: Path) -> None:
    async def main() -> None:
        pipe, box, _ = await _pipeline(site, tmp_path)
        pipe.max_pending = 100
        acks: list[float] = []
        for i in range(50):
            pipe.process(batch(i, acks))
        waiter = asyncio.create_task(pipe.submit(batch(51, acks)))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # the sink waits instead of growing without bound
        runner = asyncio.create_task(pipe.run())
        await waiter
        await pipe.wait_idle()
        assert len(acks) == 51
        pipe.stop()
        await runner
        await box.close()

    asyncio.run(main())


def test_deadletter_rotates_and_stays_bounded(tmp_path: Path) -> None:
    dl = DeadLetter(tmp_path / "d.jsonl", max_bytes=4096, backups=2, max_payload=100)
    for i in range(500):
        dl.write("src", "malformed_json", f"n={i}", b"\xff\xfe" * 200 if i % 2 else "x" * 300)
    files = dl.files()
    assert len(files) == 3
    assert all(p.stat().st_size <= 4096 for p in files)
    last = json.loads(files[0].read_text().splitlines()[-1])
    assert last["detail"] == "n=499"
    assert last["truncated"] == 400
    assert "payload_b64" in last
