"""The durable outbox: round trip, take order, budget policy, a power cut (kill -9) during heavy writes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edge_agent import metrics
from edge_agent.errors import OutboxError
from edge_agent.outbox import FRAME, VALUE, Outbox, OutboxDB
from plant.wire import Frame, Quality, Value

T0 = 1_763_900_000_000_000


def values(n: int, start: int = 0, node: str = "m") -> list[Value]:
    return [
        Value(node=node, prop="p", value=float(i), ts=T0 + i, quality=Quality.GOOD)
        for i in range(start, start + n)
    ]


def frames(n: int) -> list[Frame]:
    return [Frame(node="m", ts=T0 + i, values={"p": 1.0}) for i in range(n)]


def items(db: OutboxDB) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for c in db.take(10**9):
        out.extend(json.loads(b"[" + c.body + b"]"))
    return out


class TestOutboxDB:
    def test_round_trip_survives_reopen(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite", chunk_items=10)
        db.put(values(25), frames(3))
        assert db.depth == [25, 3, 0]
        db.close()
        db = OutboxDB(tmp_path / "o.sqlite", chunk_items=10)
        assert db.depth == [25, 3, 0]
        got = items(db)
        assert [Value.model_validate(v) for v in got[:25]] == values(25)
        db.close()

    def test_clock_offsets_persist_with_the_items(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite")
        db.put(values(1), clocks={"plc/m": -60_000_000})
        db.put(clocks={"plc/m": -61_000_000, "plc/n": 5})
        db.close()
        db = OutboxDB(tmp_path / "o.sqlite")
        assert db.clock_offsets() == {"plc/m": -61_000_000, "plc/n": 5}
        db.close()

    def test_wal_mode_and_full_sync(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite")
        assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        db.close()

    def test_take_oldest_first_with_live_share_and_exclusions(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite", chunk_items=10)
        for i in range(10):
            db.put(values(10, i * 10))
        ids = [c.id for c in db.take(10**9)]
        got = db.take(40, live_share=0.25)
        assert [c.id for c in got] == ids[:3] + ids[-1:]  # 30 oldest, 10 newest
        got = db.take(30, exclude=ids[:3])
        assert [c.id for c in got] == ids[3:6]
        db.close()

    def test_delete_only_what_is_acked_and_ignores_unknown_ids(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite", chunk_items=10)
        db.put(values(30))
        chunks = db.take(20)
        assert db.delete([c.id for c in chunks] + [999]) == 20
        assert db.delete([c.id for c in chunks]) == 0  # a repeated ack changes nothing
        assert db.depth[VALUE] == 10
        db.close()

    def test_ids_never_reused(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite")
        db.put(values(1))
        first = db.take(10)[0].id
        db.delete([first])
        db.put(values(1))
        assert db.take(10)[0].id > first
        db.close()

    def test_budget_drops_oldest_raw_values_keeps_frames(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite", budget_bytes=1 << 16, chunk_items=50)
        db.put(frames=frames(20))
        total_dropped = 0
        for i in range(40):
            total_dropped += db.put(values(50, i * 50)).counts[VALUE]
        assert total_dropped > 0
        assert db.bytes <= db.budget_bytes
        assert db.depth[FRAME] == 20
        kept = [v["ts"] for v in items(db) if "prop" in v]
        assert kept == sorted(kept)
        assert kept[-1] == T0 + 1999  # the newest survive
        assert db.depth[VALUE] == len(kept) == 2000 - total_dropped
        db.close()

    def test_drop_oldest_policy_drops_any_kind(self, tmp_path: Path) -> None:
        db = OutboxDB(tmp_path / "o.sqlite", budget_bytes=1 << 16, chunk_items=50, policy="drop_oldest")
        db.put(frames=frames(50))
        for i in range(40):
            db.put(values(50, i * 50))
        assert db.depth[FRAME] == 0
        db.close()

    def test_damaged_file_is_a_clear_error(self, tmp_path: Path) -> None:
        p = tmp_path / "o.sqlite"
        p.write_bytes(b"this is not a database" * 100)
        with pytest.raises(OutboxError, match="cannot open outbox"):
            OutboxDB(p)


def test_async_outbox_counts_drops_in_metrics(tmp_path: Path) -> None:
    labels = {"kind": "value", "reason": "disk_budget"}

    async def main() -> None:
        box = await Outbox.open(tmp_path / "o.sqlite", budget_bytes=1 << 16, chunk_items=50)
        before = metrics.REGISTRY.get_sample_value("ft_agent_dropped_total", labels) or 0
        for i in range(40):
            await box.put(values(50, i * 50))
        after = metrics.REGISTRY.get_sample_value("ft_agent_dropped_total", labels) or 0
        assert after - before == 2000 - box.db.depth[VALUE]
        assert (
            metrics.REGISTRY.get_sample_value("ft_agent_outbox_depth", {"kind": "value"})
            == box.db.depth[VALUE]
        )
        await box.close()

    asyncio.run(main())


_WRITER = textwrap.dedent("""
    import sys
    from edge_agent.outbox import OutboxDB
    from plant.wire import Value
    db = OutboxDB(sys.argv[1], chunk_items=100)
    i = 0
    while True:
        db.put([Value(node="m", prop="p", value=float(k), ts=k) for k in range(i, i + 500)])
        i += 500
        print(i, flush=True)  # everything below i is committed
""")


@pytest.mark.slow
@pytest.mark.parametrize("after_s", [0.3, 1.0, 1.7])
def test_power_cut_during_heavy_writes(tmp_path: Path, after_s: float) -> None:
    path = tmp_path / "o.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed = 0
    deadline = time.monotonic() + 30
    while committed < 500 and time.monotonic() < deadline:  # wait until writing is under way
        committed = int(proc.stdout.readline())
    time.sleep(after_s)
    os.kill(proc.pid, signal.SIGKILL)
    rest = proc.stdout.read().split()
    proc.stdout.close()
    proc.wait()
    committed = int(rest[-1]) if rest else committed
    db = OutboxDB(path)  # runs PRAGMA quick_check, raises if damaged
    ts = [v["ts"] for v in items(db)]
    assert len(ts) >= committed  # nothing acknowledged is lost
    assert ts == list(range(len(ts)))  # whole transactions only, no duplicates, no holes
    assert db.depth[VALUE] == len(ts)
    db.close()
