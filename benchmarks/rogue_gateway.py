"""A good gateway's delivery while a rogue client publishes hostile uplinks, against a clean run of the same demo.

    python benchmarks/rogue_gateway.py [--quick]

Runs the demo plant (``factory_twin.stack``: simulator, real agent, platform, embedded broker, SQLite) twice for
the same time: once clean, once with a rogue client on the same broker publishing every hostile case of
``factory_twin.simulator.rogue`` each second from second 10 (5 with ``--quick``). ``ratio`` is the values the
good gateway delivered under attack over those of the clean run; the target is 0.9. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET = 0.9


def run(seconds: float, attack_at: float | None) -> dict[str, object]:
    """One demo run; with ``attack_at`` a rogue client attacks from that second on."""
    from factory_twin.simulator.rogue import rogue_against
    from factory_twin.stack import Stack, StackConfig

    gateway = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as d:
        stack = Stack(StackConfig(data_dir=Path(d), http_port=0, gateway_id=gateway, paced=True))
        stack.start_platform()
        rogue = None
        try:
            if attack_at is not None:
                rogue = rogue_against(stack, gateway).start(after_s=attack_at)
            asyncio.run(stack.run_edge(seconds))
            assert stack.ingestor is not None
            s = stack.ingestor.stats()
        finally:
            if rogue is not None:
                rogue.stop()
            stack.stop_platform()
    return {"values": s.values, "hostile_sent": rogue.sent if rogue else 0,
            "dead_letters": sum(s.dead_letters.values()), "rejected": sum(s.rejected.values()),
            "worker_restarts": s.worker_restarts}


def main() -> None:
    """Clean run, then attacked run; one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="25 s runs instead of 45 s")
    args = ap.parse_args()
    logging.disable(logging.ERROR)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    seconds, attack_at = (25.0, 5.0) if args.quick else (45.0, 10.0)
    clean = run(seconds, None)
    attacked = run(seconds, attack_at)
    ratio = attacked["values"] / max(clean["values"], 1)  # type: ignore[operator]
    print(json.dumps({"name": "rogue_gateway", "ratio": round(ratio, 3), "target": TARGET,
                      "ok": ratio >= TARGET and attacked["worker_restarts"] == 0, "seconds": seconds,
                      "attack_from_s": attack_at, "clean_values": clean["values"],
                      "attacked_values": attacked["values"], "hostile_messages": attacked["hostile_sent"],
                      "dead_letters": attacked["dead_letters"], "items_rejected": attacked["rejected"],
                      "worker_restarts": attacked["worker_restarts"]}))


if __name__ == "__main__":
    main()
