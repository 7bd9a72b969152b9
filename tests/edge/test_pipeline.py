"""The sink seam: ReadingBatch in, durable values and frames out, acks only after commit, bad input
dead-lettered."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

from edge_agent import metrics
from edge_agent.config import AgentSettings
from edge_agent.deadletter import DeadLetterFile
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


async def _pipeline(site: Site, tmp_path: Path) -> tuple[Pipeline, Outbox, DeadLetterFile]:
    box = await Outbox.open(tmp_path / "o.sqlite")
    dl = DeadLetterFile(tmp_path / "dead.jsonl")
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
    dl = DeadLetterFile(tmp_path / "d.jsonl", max_bytes=4096, backups=2, max_payload=100)
    for i in range(500):
        dl.write("src", "malformed_json", f"n={i}", b"\xff\xfe" * 200 if i % 2 else "x" * 300)
    files = dl.files()
    assert len(files) == 3
    assert all(p.stat().st_size <= 4096 for p in files)
    last = json.loads(files[0].read_text().splitlines()[-1])
    assert last["detail"] == "n=499"
    assert last["truncated"] == 400
    assert "payload_b64" in last


def _message(recv: int, count: int, acks: list[int], fp: bytes, dup: bool) -> ReadingBatch:
    """One MQTT message without a source timestamp: its values are stamped with receive time."""
    rs = [
        Reading("plc", "pump-1", "count", count, None, None, recv),
        Reading("plc", "pump-1", "running", True, None, None, recv),
    ]
    return ReadingBatch(rs, ack=lambda: acks.append(count), messages=[(fp, dup, len(rs))])


def test_a_redelivered_message_already_committed_is_skipped_but_acked_across_a_restart(
    site: Site, tmp_path: Path
) -> None:
    async def main() -> None:
        pipe, box, _ = await _pipeline(site, tmp_path)
        runner = asyncio.create_task(pipe.run())
        acks: list[int] = []
        await pipe.submit(_message(T0, 1, acks, b"m1", dup=False))
        await pipe.submit(_message(T0 + 1000, 2, acks, b"m2", dup=False))
        await pipe.wait_idle()
        pipe.stop()
        await runner
        await box.close()
        assert box.db.depth[0] == 4

        pipe, box, _ = await _pipeline(site, tmp_path)  # a restart: the window comes from the outbox
        runner = asyncio.create_task(pipe.run())
        # a coalesced burst: m1 redelivered (skipped), m3 redelivered but never committed (kept),
        # m2 again without the DUP flag (a sensor repeating itself: new data, kept)
        rs = [
            *_message(T0 + 5 * S, 1, acks, b"m1", True).readings,
            *_message(T0 + 5 * S, 3, acks, b"m3", True).readings,
            *_message(T0 + 5 * S, 2, acks, b"m2", False).readings,
        ]
        burst = ReadingBatch(
            rs, ack=lambda: acks.append(99), messages=[(b"m1", True, 2), (b"m3", True, 2), (b"m2", False, 2)]
        )
        await pipe.submit(burst)
        await pipe.submit(_message(T0 + 6 * S, 3, acks, b"m3", True))  # m3 again, before or after its commit
        await pipe.wait_idle()
        assert acks == [1, 2, 99, 3]  # everything acknowledged, skipped or not
        assert pipe.redelivered == 2
        assert box.db.depth[0] == 4 + 4  # m3 and the repeated m2: two values each
        pipe.stop()
        await runner
        await box.close()

    asyncio.run(main())


def test_the_fingerprint_window_is_bounded(site: Site, tmp_path: Path) -> None:
    async def main() -> None:
        box = await Outbox.open(tmp_path / "o.sqlite")
        pipe = Pipeline(
            Stage.build(site, AgentSettings()), box, DeadLetterFile(tmp_path / "d.jsonl"), dedup_window=5
        )
        acks: list[int] = []
        for i in range(20):
            await pipe.submit(_message(T0 + i * S, i, acks, f"m{i}".encode(), dup=False))
            await pipe.commit()
        assert list(pipe._delivered) == [f"m{i}".encode() for i in range(15, 20)]
        await pipe._prune()
        assert [fp for fp, _ in box.db.delivered(0)] == [f"m{i}".encode() for i in range(15, 20)]
        await pipe.submit(_message(T0 + 30 * S, 0, acks, b"m0", dup=True))  # out of the window: kept
        await pipe.commit()
        assert pipe.redelivered == 0
        await box.close()

    asyncio.run(main())


def test_enough_unacked_messages_end_the_commit_window_early(site: Site, tmp_path: Path) -> None:
    async def main() -> None:
        box = await Outbox.open(tmp_path / "o.sqlite")
        pipe = Pipeline(
            Stage.build(site, AgentSettings()),
            box,
            DeadLetterFile(tmp_path / "d.jsonl"),
            commit_window_ms=60_000,
            commit_messages=3,
        )
        runner = asyncio.create_task(pipe.run())
        acks: list[int] = []
        for i in range(3):
            await pipe.submit(_message(T0 + i * S, i, acks, f"m{i}".encode(), dup=False))
        await asyncio.wait_for(pipe.wait_idle(), 10)  # not the minute of the window
        assert acks == [0, 1, 2]
        pipe.stop()
        await runner
        await box.close()

    asyncio.run(main())


def test_a_batch_arriving_during_a_commit_write_is_prepared_then_and_acked_only_with_its_own_commit(
    site: Site, tmp_path: Path
) -> None:
    async def main() -> None:
        pipe, box, _ = await _pipeline(site, tmp_path)
        durable_at_ack: list[tuple[float, int]] = []  # (batch, values in the outbox when its ack came)

        def tracked(t: float) -> ReadingBatch:
            return ReadingBatch(batch(t, []).readings, ack=lambda: durable_at_ack.append((t, box.db.depth[0])))

        await pipe.submit(tracked(0.0))
        slow_disk = sqlite3.connect(tmp_path / "o.sqlite", isolation_level=None)
        slow_disk.execute("BEGIN IMMEDIATE")  # the outbox's write waits for this lock
        commit = asyncio.create_task(pipe.commit())
        await asyncio.sleep(0.2)
        await pipe.submit(tracked(0.5))
        assert pipe.accepted == 4  # normalised and aligned while the first commit waits on the disk
        slow_disk.execute("COMMIT")
        slow_disk.close()
        await commit
        assert durable_at_ack == [(0.0, 2)]  # the second batch is not in that commit: not acked
        await pipe.commit()
        assert durable_at_ack == [(0.0, 2), (0.5, 4)]
        await box.close()

    asyncio.run(main())
