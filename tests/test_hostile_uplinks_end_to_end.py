"""A real agent streams the demo plant while a rogue client on the same broker publishes hostile uplinks.

The agent's values keep arriving at the rate they arrived before the attack, every hostile message ends as a
rejection or a dead letter, no worker dies, and nothing forged for the agent's gateway is stored. Embedded
defaults (amqtt + SQLite), as ``factory-twin demo`` runs: every hop crosses real TCP.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select

from factory_twin.simulator.rogue import FORGED_VALUE, Rogue, rogue_against
from factory_twin.stack import Stack, StackConfig
from twin.tables import HistoryRow

pytestmark = pytest.mark.slow

ATTACK_AT_S = 6.0
RUN_S = 18.0


def test_the_agent_keeps_streaming_while_a_rogue_client_attacks(tmp_path: Path) -> None:
    gateway = f"e2e-{uuid.uuid4().hex[:8]}"
    stack = Stack(StackConfig(data_dir=tmp_path, http_port=0, speed=2.0, gateway_id=gateway, paced=True))
    stack.start_platform()
    samples: list[tuple[float, int]] = []
    done = threading.Event()
    rogue: Rogue | None = None
    try:
        assert stack.ingestor is not None
        ingestor = stack.ingestor
        rogue = rogue_against(stack, gateway, every_s=1.0)

        def sample() -> None:
            start = time.monotonic()
            while not done.wait(0.5):
                samples.append((time.monotonic() - start, ingestor.stats().values))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rogue.start(after_s=ATTACK_AT_S)
        asyncio.run(stack.run_edge(RUN_S))
        done.set()
        sampler.join(5)
        rogue.stop()
        time.sleep(1.0)  # the last rogue round ends
        stats = ingestor.stats()
        assert stack.agent is not None
        assert stack.agent.uplink is not None
        agent = stack.agent.uplink.stats
        assert stack.engine is not None
        with stack.engine.connect() as conn:
            forged = conn.execute(select(func.count()).select_from(HistoryRow)
                                  .where(HistoryRow.value_num == FORGED_VALUE)).scalar_one()
        consuming = ingestor.consuming()
    finally:
        done.set()
        if rogue is not None:
            rogue.stop()
        stack.stop_platform()
    before = _rate(samples, 3.0, ATTACK_AT_S)
    after = _rate(samples, ATTACK_AT_S + 4.0, RUN_S - 1.0)
    assert rogue.sent >= 12 * 10
    assert after >= 0.7 * before, f"values/s before the attack {before:.1f}, during it {after:.1f}"
    assert _rate(samples, RUN_S - 5.0, RUN_S - 1.0) > 0  # still arriving at the end
    assert stats.worker_restarts == 0
    assert consuming == 1
    assert forged == 0
    assert stats.dead_letters["bad_gateway"] >= 4 * 10
    assert {"too_large", "undecodable", "gateway_mismatch"} <= set(stats.dead_letters)
    assert {"out_of_range", "bad_string", "bad_timestamp"} <= set(stats.rejected)
    assert (agent.items_rejected, agent.refused) == (0, 0)  # nothing of the agent's own was refused


def _rate(samples: list[tuple[float, int]], start: float, end: float) -> float:
    """Values stored per second between ``start`` and ``end`` seconds of the run."""
    inside = [(t, v) for t, v in samples if start <= t <= end]
    assert len(inside) >= 2, f"no samples between {start} and {end} s: {samples[-3:]}"
    (t0, v0), (t1, v1) = inside[0], inside[-1]
    return (v1 - v0) / (t1 - t0)
