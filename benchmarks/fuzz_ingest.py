"""Fuzzed ingest: hostile uplink messages through the real ingest path on Mosquitto; nothing may crash or stall.

    python benchmarks/fuzz_ingest.py [--quick] [--messages N] [--pg ADMIN_URL]

A publisher process (seeded, so a run can be repeated) sends N messages at QoS 1 into a private Mosquitto while
the real ``Ingestor`` (checks, decode, store on SQLite or PostgreSQL, Ack, PUBACK) consumes them live. About a
quarter are a good gateway's batches of fresh values; the rest are hostile: random bytes, cut JSON, wrong
shapes, wildcards, NUL and 70 kB in gateway ids, forged batches for the good gateway sent on another's topic,
400-digit and 2**63 integers, NaN, NUL and overlong strings, timestamps beyond int64, frames and diagnoses no
column can hold, unicode names, huge arrays, payloads over the size limit, and good batches with one bad item.

At the end the ingest stops and a probe takes over its broker session: every message the broker still holds
for it is one ingest did not acknowledge. Prints one JSON line: ``ok`` when 0 workers died, 0 messages were
left unacknowledged, every good value was stored and no forged value was. ``ratio`` is messages ended per
second over the publisher's rate (the baseline, same run): below 1, ingest fell behind the sender.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GOOD_GW = "fuzz-good"
ROGUE_GW = "fuzz-rogue"
T0 = 1_750_000_000_000_000  # µs, June 2025: good values count up from here, 1 µs apart
FORGED_T0 = T0 - 10**12  # forged values live apart, so any that were stored can be counted
SITE = """
site: {id: fuzz}
asset_types:
  pump:
    properties:
      temp: {unit: degC, range: [0, 120]}
      count: {dtype: int}
      mode: {dtype: string}
nodes:
  - id: fuzz
    kind: site
    children:
      - id: hall
        kind: area
        children:
          - {id: p1, kind: machine, type: pump}
          - {id: p2, kind: machine, type: pump}
"""


class Fuzzer:
    """Deterministic hostile messages; counts the good values it sends."""

    def __init__(self, root: str, seed: int, max_payload: int) -> None:
        self.root = root
        self.rnd = random.Random(seed)
        self.max_payload = max_payload
        self.ts = T0
        self.forged_ts = FORGED_T0
        self.good_values = 0
        self.n = 0

    def topic(self, gateway: str) -> str:
        return f"{self.root}/{gateway}/uplink"

    def _value(self, node: str = "p1", prop: str = "temp", v: object = None, **extra: object) -> dict[str, object]:
        self.ts += 1
        return {"node": node, "prop": prop, "value": round(self.rnd.uniform(0, 100), 3) if v is None else v,
                "ts": self.ts, **extra}

    def _batch(self, gateway: str, values: list[dict[str, object]], **extra: object) -> dict[str, object]:
        self.n += 1
        return {"gateway": gateway, "batch": f"b{self.n}", "sent": T0, "values": values, **extra}

    def _good(self) -> tuple[str, bytes]:
        k = self.rnd.randint(1, 5)
        self.good_values += k
        vals = [self._value(self.rnd.choice(("p1", "p2"))) for _ in range(k)]
        return self.topic(GOOD_GW), json.dumps(self._batch(GOOD_GW, vals)).encode()

    def _mixed(self) -> tuple[str, bytes]:
        """A good gateway's batch with one bad item among good ones: the good ones must be stored."""
        bad = self.rnd.choice([
            {"v": 10**400}, {"v": 2**63, "prop": "count"}, {"v": "a\x00b", "prop": "mode"}, {"v": "x" * 5000,
            "prop": "mode"}, {"recv_ts": 2**64}, {"server_ts": -1}, {"v": "text"}, {"node": "nowhere"},
            {"node": "p1\x00"}, {"prop": "température"}, {"v": True},
        ])
        fields = {k: v for k, v in bad.items() if k not in ("v", "node", "prop")}
        item = self._value(str(bad.get("node", "p1")), str(bad.get("prop", "temp")), bad.get("v", 1.0), **fields)
        goods = [self._value() for _ in range(self.rnd.randint(1, 3))]
        self.good_values += len(goods)
        vals = [*goods, item]
        self.rnd.shuffle(vals)
        return self.topic(GOOD_GW), json.dumps(self._batch(GOOD_GW, vals)).encode()

    def _forged(self) -> tuple[str, bytes]:
        """A batch claiming the good gateway, sent on the rogue's topic: nothing of it may be stored."""
        self.forged_ts += 1
        val = {"node": "p1", "prop": "temp", "value": -1.0, "ts": self.forged_ts}
        return self.topic(ROGUE_GW), json.dumps(self._batch(GOOD_GW, [val])).encode()

    def _bad_gateway(self) -> tuple[str, bytes]:
        gw = self.rnd.choice(["#", "+", "a/b", "gw\x00", "", "é", "g" * 65, "g" * 70_000 if self.rnd.random() < 0.02
                              else "g" * 100])
        return self.topic(ROGUE_GW), json.dumps(self._batch(gw, [self._value()])).encode()

    def _garbage(self) -> tuple[str, bytes]:
        size = self.rnd.randint(0, 300)
        return self.topic(ROGUE_GW), self.rnd.randbytes(size)

    def _cut(self) -> tuple[str, bytes]:
        whole = json.dumps(self._batch(ROGUE_GW, [self._value() for _ in range(3)])).encode()
        return self.topic(ROGUE_GW), whole[: self.rnd.randint(0, len(whole) - 1)]

    def _shape(self) -> tuple[str, bytes]:
        doc = self.rnd.choice([
            "[]", "null", "1", '"x"', "{}", '{"gateway": 1}', '{"values": {}}', "[" * 5000 + "]" * 5000,
            '{"gateway": "fuzz-rogue", "batch": "b", "sent": "x"}', "1e999999", "NaN",
            '{"gateway": "fuzz-rogue", "batch": "b", "sent": 1, "values": [{"node": "p1"}]}',
            '{"gateway": "fuzz-rogue", "batch": "b", "sent": 1, "extra": true}',
        ])
        return self.topic(ROGUE_GW), doc.encode()

    def _rogue_items(self) -> tuple[str, bytes]:
        """The rogue's own batch, full of items no column can hold."""
        long = "ü" * 4097 if self.rnd.random() < 0.05 else "ü\u2028😀" * 100  # over the string limit, or unicode
        vals = [self._value(v=v) for v in ("NaN", 10**400, 2**63, -(2**63) - 1, "\x00" * 10, long)]
        frames = [{"node": "p1", "ts": T0, "values": {"temp\x00": 1.0}, "revision": 2**40},
                  {"node": "p1", "ts": 2**70, "values": {"temp": 10**30}}]
        diags = [{"node": "p1", "task": "rul", "ts": T0, "model": "m" * 500, "version": "v\x00", "confidence": 0.5,
                  "unit": "u" * 100, "ready_at": 2**80}]
        body = json.dumps(self._batch(ROGUE_GW, vals, frames=frames, diagnoses=diags))
        body = body.replace('"NaN"', "NaN")
        return self.topic(ROGUE_GW), body.encode()

    def _huge(self) -> tuple[str, bytes]:
        if self.rnd.random() < 0.2:  # over the limit: refused unparsed
            return self.topic(ROGUE_GW), b'{"gateway": "fuzz-rogue", "pad": "' + b"z" * self.max_payload + b'"}'
        vals = [{"node": f"n{i}", "prop": "x", "value": i, "ts": T0} for i in range(5000)]
        return self.topic(ROGUE_GW), json.dumps(self._batch(ROGUE_GW, vals)).encode()

    def messages(self, count: int) -> Iterator[tuple[str, bytes]]:
        kinds = [(self._good, 25), (self._mixed, 10), (self._forged, 8), (self._bad_gateway, 8),
                 (self._garbage, 15), (self._cut, 12), (self._shape, 10), (self._rogue_items, 11.9),
                 (self._huge, 0.1)]
        makers = [k for k, _ in kinds]
        weights = [w for _, w in kinds]
        for _ in range(count):
            yield self.rnd.choices(makers, weights)[0]()


def publish(port: int, count: int, root: str, seed: int, max_payload: int) -> None:
    """The publisher process: send ``count`` messages, then print the good and forged values sent as JSON."""
    import paho.mqtt.client as mqtt

    fuzz = Fuzzer(root, seed, max_payload)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"fuzz-pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    start = time.perf_counter()
    info = None
    for k, (topic, payload) in enumerate(fuzz.messages(count)):
        if k % 1000 == 0 and info is not None:
            info.wait_for_publish(600)  # backpressure: at most ~1,000 messages held in this process
        info = c.publish(topic, payload, qos=1)
    if info is not None:
        info.wait_for_publish(600)
    seconds = time.perf_counter() - start
    c.disconnect()
    c.loop_stop()
    print(json.dumps({"good_values": fuzz.good_values, "forged": fuzz.forged_ts - FORGED_T0, "seconds": seconds}))


def unacknowledged(port: int, client_id: str, topic: str, wait_s: float = 3.0) -> int:
    """Take over the ingest's broker session: each message it still holds was not acknowledged."""
    import paho.mqtt.client as mqtt

    got: list[int] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.on_message = lambda _c, _u, m: got.append(m.mid)
    c.connect("127.0.0.1", port)
    c.subscribe(topic, qos=1)
    c.loop_start()
    time.sleep(wait_s)
    c.disconnect()
    c.loop_stop()
    return len(got)


def _database(pg_admin: str | None) -> tuple[str, object]:
    if pg_admin is None:
        d = tempfile.mkdtemp(prefix="fuzz-ingest-")
        return f"sqlite:///{d}/twin.db", None
    from sqlalchemy import create_engine, text

    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    admin = create_engine(pg_admin, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return pg_admin.rsplit("/", 1)[0] + f"/{name}", (admin, name)


def run(count: int, pg_admin: str | None, seed: int, workers: int) -> dict[str, object]:
    """Publish ``count`` fuzzed messages into a private Mosquitto while the real ingest consumes them."""
    from _mosquitto import private_mosquitto
    from sqlalchemy import func, select, text

    from migrations import run as migrations
    from plant.mqtt import BrokerUrl
    from plant.site import parse_site
    from twin.config import TwinSettings
    from twin.db import make_engine
    from twin.ingest import Ingestor
    from twin.store import TwinStore
    from twin.tables import HistoryRow

    url, pg = _database(pg_admin)
    migrations.upgrade(url)
    engine = make_engine(url)
    store = TwinStore(engine, TwinSettings())
    store.sync_site(parse_site(SITE, "fuzz.yaml"))
    root = f"fuzz-{uuid.uuid4().hex[:8]}/v1"
    client_id = f"fuzz-ingest-{uuid.uuid4().hex[:8]}"
    try:
        with private_mosquitto() as port:
            ingest = Ingestor(store, BrokerUrl("127.0.0.1", port), client_id=client_id, topic_root=root,
                              workers=workers).start()
            start = time.perf_counter()
            pub = subprocess.run([sys.executable, __file__, "--publish", str(port), str(count), root, str(seed)],
                                 check=False, capture_output=True, text=True)
            if pub.returncode:
                raise RuntimeError(f"the publisher failed: {pub.stderr[-2000:]}")
            sent = json.loads(pub.stdout.strip().splitlines()[-1])
            last, stalled_since = -1, time.monotonic()
            while ingest.stats().messages < count and time.monotonic() - stalled_since < 60:
                now = ingest.stats().messages
                if now != last:
                    last, stalled_since = now, time.monotonic()
                time.sleep(0.05)
            seconds = time.perf_counter() - start
            stats = ingest.stats()
            consuming = ingest.consuming()
            ingest.stop()
            topic = f"$share/ingest/{root}/+/uplink" if workers > 1 else f"{root}/+/uplink"
            left = sum(unacknowledged(port, f"{client_id}-{n}" if workers > 1 else client_id, topic)
                       for n in range(workers))
        with engine.connect() as conn:
            stored_good = conn.execute(select(func.count()).select_from(HistoryRow)
                                       .where(HistoryRow.ts > T0)).scalar_one()
            stored_forged = conn.execute(select(func.count()).select_from(HistoryRow)
                                         .where(HistoryRow.ts > FORGED_T0, HistoryRow.ts < T0)).scalar_one()
            dead_rows = conn.execute(text("SELECT count(*) FROM twin_dead_letters")).scalar_one()
    finally:
        engine.dispose()
        if pg is not None:
            admin, name = pg  # type: ignore[misc]
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    lost = sent["good_values"] - stored_good
    return {
        "messages": count, "ended": stats.messages, "seconds": round(seconds, 1),
        "messages_per_s": round(stats.messages / max(seconds, 1e-9)),
        "publisher_messages_per_s": round(count / max(sent["seconds"], 1e-9)),
        "crashed_workers": stats.worker_restarts, "workers_consuming_at_end": consuming,
        "unacknowledged": left + (count - stats.messages), "good_values_sent": sent["good_values"],
        "good_values_lost": lost, "forged_values_sent": sent["forged"], "forged_values_stored": stored_forged,
        "dead_letters": stats.dead_letters, "dead_letter_rows_kept": dead_rows,
        "items_rejected": dict(sorted(stats.rejected.items())), "batches_stored": stats.batches,
        "database": "postgresql" if pg_admin else "sqlite",
    }


def main() -> None:
    """Run the fuzz and print one JSON line."""
    if len(sys.argv) > 1 and sys.argv[1] == "--publish":
        from twin.config import TwinSettings

        port, count, root, seed = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
        publish(port, count, root, seed, TwinSettings().ingest_max_payload_bytes)
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="100,000 messages instead of 1,000,000")
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--pg", default=None, help="PostgreSQL admin URL: fuzz a fresh database there, not SQLite")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    logging.disable(logging.ERROR)  # the dead-lettered messages' warnings: a million of them
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    count = args.messages or (100_000 if args.quick else 1_000_000)
    r = run(count, args.pg, args.seed, args.workers)
    ok = (r["crashed_workers"] == 0 and r["unacknowledged"] == 0 and r["good_values_lost"] == 0
          and r["forged_values_stored"] == 0 and r["ended"] == count)
    ratio = r["messages_per_s"] / max(r["publisher_messages_per_s"], 1)  # type: ignore[operator]
    print(json.dumps({"name": "fuzz_ingest", "ratio": round(ratio, 3), "target": "0 crashed, 0 unacknowledged, "
                      "0 good values lost, 0 forged stored", "ok": ok, **r, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    threading.stack_size(0)
    main()
