"""Scale-out ingest: values per second from Mosquitto into PostgreSQL history with 1 and 2 ingest processes.

    python benchmarks/scale_ingest.py [--quick] [--soak SECONDS] [--pg ADMIN_URL]

Both baselines are measured in the same run, on the same machine:

- the raw Mosquitto drain: a paho subscriber (QoS 1, persistent session) that only counts, draining the same
  backlog of uplink batches the workers drain;
- raw COPY: the same rows written with PostgreSQL ``COPY`` (binary) into a table with the history's primary
  key, one COPY and one commit per batch.

Each consumer meets a backlog: its persistent session is created first, the batches are queued in a private
Mosquitto (a free port, queue limits raised: stock Mosquitto would drop beyond 1,000 queued messages), then
the consumer connects and drains it. The batches are the agent's (values only, no ``commands`` key). The
workers are the real ``Ingestor`` (decode, validate, store with the idempotent array write of twin/bulk.py,
commit, publish the Ack, then PUBACK) on the real ``TwinStore``, measured three ways:

- 1 process: one ingest process with one worker;
- 2 processes: as compose.yaml runs ingest (services ``ingest-1``, ``ingest-2``): two processes, each with its
  own engine, ``TwinStore`` and ``Ingestor`` of one worker, its own MQTT client id, on one shared subscription
  (``$share/<group>/...``);
- 2 threads: one process with ``Ingestor(workers=2)`` (the GIL serialises their Python work).

Each ingestor first stores a dozen batches through its intake (not the broker), so the clock measures a worker
that has run a while (catalog and ownership loaded, statements prepared), not its start-up. Each run writes
new timestamps, from an hour before the benchmark began: into the history's current partitions, as a plant's
values go (``stored_in_default_partition`` says none went to the DEFAULT partition that catches far back-fills).
The processes are started before the clock; the clock runs from their go to the last batch stored. CPU seconds
are the ingest processes' (from their go) and the database backends'.

Prints one JSON line. ``ratio`` is the best configuration's rate (named in ``best``) over raw COPY;
``ratio_drain`` the same over the raw drain.

Sustained capacity (full run: 120 s; ``--quick``: 15 s, only when a soak is asked for): the burst rates above
are a few seconds into a young table with nothing else running. The soak's load is taken from the rate 2
ingest processes hold under the soak's own conditions instead: the soak's publisher process running beside
them, new timestamps into the history the runs above wrote, the publisher keeping at most ``WINDOW`` batches
ahead of what is stored (so no backlog builds); measured over the phase's last two thirds, reported under
``sustained_2_processes``.

Soak (``--soak SECONDS``; the full run soaks 600 s, ``--quick`` none unless asked): a publisher process sends
live batches at ``--soak-load`` (80 % by default) of the sustained rate to 2 ingest processes for that long,
with new timestamps and the publish time (wall clock, same host) in each batch id. Reported under ``soak``:
ingest latency from publish (the broker's receive, a local hop later) to committed, p50/p99/max, over the whole
soak and each third; per third the values stored a second and the CPU µs per value of the ingest processes and
of the database backends (what degrades shows there); the backlog (published, not yet stored: the broker's
queue and the workers' inboxes, at most ``INFLIGHT`` messages per worker) and the ingest processes' RSS
together (the publisher runs apart), sampled every 5 s, after a warm-up sixth; ``ok`` when every batch was
stored, the last third's p99 is within 1.5 times the first third's (+ 250 ms), and neither the backlog nor the
RSS grew by more than 50 batches or 64 MiB. A backlog that grows means the machine gave less than the
sustained rate (other work on it, or a database slower per value as its tables grow: see the thirds).

What the database did besides, per third: checkpoints forced by WAL volume (``checkpoints_forced``: the server's
``max_wal_size`` is too small for the write rate, and each forced checkpoint makes the next writes pay full-page
images), and the share of samples in which a checkpoint was being written or an autovacuum worker ran. The
server's settings that decide this are printed under ``database``; docs/scaling.md gives the ones production
(compose.yaml) runs with and what the soak measured with and without them.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import paho.mqtt.client as mqtt
import structlog
from _mosquitto import private_mosquitto
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import create_engine, text
from store_apply import make_site

from migrations import run
from plant.mqtt import BrokerUrl
from plant.wire import UplinkBatch, Value, now_us, uplink_topic
from twin.config import TwinSettings
from twin.db import make_engine
from twin.history import HOUR_US, HistoryJob, ensure_partitions, storage_of
from twin.ingest import Ingestor
from twin.live import live_bus_for
from twin.store import TwinStore

SOAK_LOAD = 0.8  # of the measured capacity
SOAK_EVERY_S = 5.0
WINDOW = 100  # batches published and not yet stored, at most, while the sustained capacity is measured
INFLIGHT = 100  # QoS 1 messages the broker has in flight per ingest client; a longer backlog waits in the broker
SUSTAIN_S = 120.0  # the sustained capacity phase, full run (--quick: 15 s)
WARM_BATCHES = 12  # stored by each ingestor before the clock starts (more than psycopg's prepare threshold, 5)
TARGET = 0.5  # end to end (broker, decode, validate, store, ack) against a bare COPY of the rows
PG_ADMIN = os.environ.get("FACTORY_TWIN_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# µs: an hour before the run began (the spawned processes inherit it), so every value lands in the history's
# current partition as a plant's values do, not in the DEFAULT partition that catches far back-fills
T0 = int(os.environ.setdefault("FACTORY_TWIN_BENCH_T0", str(now_us() - 3600 * 10**6)))
STEP = 5 * 60 * 10**6  # µs between the phases' timestamps (each phase spans less)
ROOT = "bench/v1"
MACHINES, PROPS = 20, 10


def payloads(batches: int, size: int, offset: int) -> list[bytes]:
    """Uplink batches as the agent sends them, every property in turn, timestamps from T0 + offset."""
    keys = [(f"m{j}", f"p{i}") for j in range(MACHINES) for i in range(PROPS)]
    out = []
    n = 0
    for b in range(batches):
        values = []
        for _ in range(size):
            node, prop = keys[n % len(keys)]
            ts = T0 + offset + (n // len(keys)) * 1000
            values.append(Value(node=node, prop=prop, value=float(n % 97), ts=ts))
            n += 1
        batch = UplinkBatch(gateway="gw", batch=f"{offset}-{b}", sent=T0 + offset, values=values)
        # no "commands" key: the agent's value batches carry none (a batch with one is stored on its own)
        out.append(batch.model_dump_json(exclude={"commands"}).encode())
    return out


def publish(port: int, data: list[bytes]) -> None:
    """Queue every payload in the broker (QoS 1) and wait until the broker has them all."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(uplink_topic("gw", ROOT), p, qos=1) for p in data]
    for info in infos:
        info.wait_for_publish(120)
    c.disconnect()
    c.loop_stop()


def drain(port: int, data: list[bytes]) -> float:
    """Seconds a counting subscriber takes to drain the backlog of ``data``."""
    cid = f"drain-{uuid.uuid4().hex[:8]}"
    subscribed = threading.Event()
    done = threading.Event()
    count = [0]

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        count[0] += 1
        if count[0] >= len(data):
            done.set()

    def client() -> mqtt.Client:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cid, clean_session=False)
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = on_message
        return c

    first = client()
    first.connect("127.0.0.1", port)
    first.loop_start()
    first.subscribe(uplink_topic("+", ROOT), qos=1)
    subscribed.wait(10)
    first.disconnect()
    first.loop_stop()
    publish(port, data)
    c = client()
    t = time.perf_counter()
    c.connect("127.0.0.1", port)
    c.loop_start()
    if not done.wait(300):
        raise RuntimeError(f"drain got {count[0]} of {len(data)}")
    elapsed = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return elapsed


def proc_cpu_s(pid: int) -> float:
    """CPU seconds a process has used so far (Linux /proc); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(store: TwinStore) -> float:
    """CPU seconds used so far by the PostgreSQL backends serving this database (Linux /proc)."""
    with store.engine.connect() as conn:
        pids = [int(r[0]) for r in conn.execute(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"))]
    return sum(proc_cpu_s(pid) for pid in pids)


def db_activity(store: TwinStore) -> tuple[int, bool, int]:
    """What the database does besides our inserts: checkpoints forced so far (by WAL volume: ``max_wal_size``
    too small for the write rate), whether one is being written now, and the autovacuum workers running."""
    with store.engine.connect() as conn:
        done = conn.execute(text("SELECT checkpoints_req FROM pg_stat_bgwriter")).scalar_one()
        rows = conn.execute(text(
            "SELECT backend_type, coalesce(wait_event, '') FROM pg_stat_activity "
            "WHERE backend_type IN ('checkpointer', 'autovacuum worker')")).all()
    writing = any(kind == "checkpointer" and wait != "CheckpointerMain" for kind, wait in rows)
    return int(done), writing, sum(1 for kind, _w in rows if kind == "autovacuum worker")


def db_settings(store: TwinStore) -> dict[str, str]:
    """The server settings a write-heavy run depends on (docs/scaling.md says what production sets)."""
    names = ("max_wal_size", "checkpoint_timeout", "shared_buffers", "synchronous_commit", "wal_compression")
    with store.engine.connect() as conn:
        return {name: str(conn.execute(text("SELECT current_setting(:n)"), {"n": name}).scalar_one())
                for name in names}


def ingest_threads(store: TwinStore, port: int, workers: int, data: list[bytes]) -> tuple[float, float, float]:
    """Seconds ``workers`` ingest worker threads of this one process take to store and acknowledge the backlog
    of ``data``, and the CPU seconds spent meanwhile by this process (the workers) and by the database
    backends."""
    cid = f"bench-{uuid.uuid4().hex[:8]}"
    group = f"g{cid}"
    broker = BrokerUrl("127.0.0.1", port)
    Ingestor(store, broker, client_id=cid, workers=workers, share_group=group, topic_root=ROOT).start().stop()
    publish(port, data)
    ing = Ingestor(store, broker, client_id=cid, workers=workers, share_group=group, topic_root=ROOT)
    # what `factory-twin serve --role ingest` adds: live updates (NOTIFY) and the rollups' late-data mark
    ing.add_listener(live_bus_for(store.engine).listener)
    ing.add_listener(HistoryJob(store.engine, store.settings).listener)
    with ThreadPoolExecutor(workers) as pool:  # the workers' connections, opened before the clock starts
        list(pool.map(lambda _i: store.engine.connect().close(), range(workers)))
    warm_up(ing)
    goal = ing.stats().batches + len(data)  # the warm-up's batches are not counted
    db0 = backend_cpu(store)
    cpu0 = time.process_time()
    t = time.perf_counter()
    ing.start()
    deadline = time.monotonic() + 300
    while ing.stats().batches < goal:
        if time.monotonic() > deadline:
            raise RuntimeError(f"ingest stored {ing.stats().batches - goal + len(data)} of {len(data)} batches")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t
    cpu = time.process_time() - cpu0
    db = backend_cpu(store) - db0
    ing.stop()
    return elapsed, cpu, db


def warm_up(ing: Ingestor) -> None:
    """Store a few batches of new timestamps through the ingestor's intake (not the broker), as a worker that
    has run a while has: catalog and ownership loaded, statements prepared, connections open."""
    offset = 4 * STEP + uuid.uuid4().int % 300_000 * 1000
    for p in payloads(WARM_BATCHES, 1000, offset):  # a transaction each
        ing.intake.handle_many([(uplink_topic("gw", ROOT), p)], [])


def worker_process(url: str, port: int, cid: str, group: str, ready: Any, go: Any, stop: Any, stored: Any,
                   out: Any, timed: bool) -> None:
    """One ingest process as compose runs it (`factory-twin serve --role ingest`): its own engine, TwinStore
    and Ingestor with one worker on the shared subscription. Counts stored batches in ``stored`` from ``go``
    to ``stop``, then puts (CPU seconds, latencies) on ``out``; latencies only when ``timed`` (the soak)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    engine = make_engine(url, pool_size=2)
    store = TwinStore(engine, TwinSettings())
    ing = Ingestor(store, BrokerUrl("127.0.0.1", port), client_id=cid, share_group=group, shared=True,
                   topic_root=ROOT)
    ing.add_listener(live_bus_for(engine).listener)
    ing.add_listener(HistoryJob(engine, store.settings).listener)
    warm_up(ing)  # a process that has run a while: its caches filled, its statements prepared
    warmed = ing.stats().batches  # not counted
    latencies: list[tuple[float, float]] = []  # (committed at, publish → committed)
    if timed:
        def committed(batch: UplinkBatch, _result: Any) -> None:
            now = time.time()
            latencies.append((now, now - int(batch.batch.rsplit("-", 1)[1]) / 1e9))
        ing.add_listener(committed)
    ready.release()
    go.wait()
    cpu0 = time.process_time()
    ing.start()
    while not stop.wait(0.005):
        stored.value = ing.stats().batches - warmed
    stored.value = ing.stats().batches - warmed
    cpu = time.process_time() - cpu0
    ing.stop()
    engine.dispose()
    out.put((cpu, latencies))


class Processes:
    """``n`` ingest processes (``worker_process``) on one shared subscription, started and stopped together."""

    def __init__(self, store: TwinStore, url: str, port: int, n: int, timed: bool = False) -> None:
        ctx = multiprocessing.get_context("spawn")
        tag = uuid.uuid4().hex[:8]
        group = f"g{tag}"
        cids = [f"bench-{tag}-{k}" for k in range(n)]
        broker = BrokerUrl("127.0.0.1", port)
        for cid in cids:  # each process's persistent session, so the backlog queues for it
            Ingestor(store, broker, client_id=cid, share_group=group, shared=True, topic_root=ROOT).start().stop()
        self.ready, self.go, self.stop = ctx.Semaphore(0), ctx.Event(), ctx.Event()
        self.out = ctx.Queue()
        self.stored = [ctx.Value("q", 0) for _ in cids]
        self.procs = [ctx.Process(target=worker_process, args=(url, port, cid, group, self.ready, self.go,
                                                               self.stop, v, self.out, timed))
                      for cid, v in zip(cids, self.stored, strict=True)]

    def launch(self) -> None:
        """Start the processes and wait until each has its database connection (not yet consuming)."""
        for p in self.procs:
            p.start()
        for _ in self.procs:
            if not self.ready.acquire(timeout=60):
                raise RuntimeError("an ingest process did not start")

    def batches(self) -> int:
        """Batches stored by all of them so far."""
        return sum(int(v.value) for v in self.stored)

    def finish(self) -> tuple[float, list[tuple[float, float]]]:
        """Stop them; their CPU seconds (from ``go``) and latencies."""
        self.stop.set()
        results = [self.out.get(timeout=60) for _ in self.procs]
        for p in self.procs:
            p.join(30)
        return sum(r[0] for r in results), [x for r in results for x in r[1]]

    def cpu_s(self) -> float:
        """Their CPU seconds so far together (Linux /proc)."""
        return sum(proc_cpu_s(p.pid) for p in self.procs if p.pid is not None)

    def rss_mib(self) -> float:
        """Their resident memory together, MiB."""
        return sum(rss_mib(p.pid) for p in self.procs if p.pid is not None)


def ingest_processes(store: TwinStore, url: str, port: int, n: int, data: list[bytes]) -> tuple[float, float, float]:
    """Seconds ``n`` ingest processes take to store and acknowledge the backlog of ``data``, and the CPU seconds
    spent meanwhile by them and by the database backends."""
    procs = Processes(store, url, port, n)
    publish(port, data)
    procs.launch()
    db0 = backend_cpu(store)
    t = time.perf_counter()
    procs.go.set()
    deadline = time.monotonic() + 300
    while procs.batches() < len(data):
        if time.monotonic() > deadline:
            procs.finish()
            raise RuntimeError(f"ingest stored {procs.batches()} of {len(data)} batches")
        time.sleep(0.005)
    elapsed = time.perf_counter() - t
    db = backend_cpu(store) - db0
    cpu, _lat = procs.finish()
    return elapsed, cpu, db


def pace(port: int, batches_per_s: float, seconds: float, size: int, offset: int, sent: Any,
         stored: list[Any] | None = None) -> None:
    """Publish live batches at ``batches_per_s`` for ``seconds`` (a separate process: the soak's gateways).

    With ``stored`` (the ingest processes' counters) as fast as they store instead: at most ``WINDOW`` batches
    published and not yet stored (the sustained capacity phase)."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    keys = [f'"node":"m{j}","prop":"p{i}"' for j in range(MACHINES) for i in range(PROPS)]
    t0 = time.monotonic()
    seq = 0
    while (due := t0 + seq / batches_per_s) < t0 + seconds:
        if stored is None:
            time.sleep(max(0.0, due - time.monotonic()))
        else:
            while seq - sum(int(v.value) for v in stored) >= WINDOW and time.monotonic() < t0 + seconds:
                time.sleep(0.002)
            if time.monotonic() >= t0 + seconds:
                break
        n0 = seq * size
        # the agent's JSON written directly: the gateways' CPU is not what this measures
        base = T0 + offset
        values = ",".join(f'{{{keys[n % len(keys)]},"value":{float(n % 97)},"ts":{base + n // len(keys) * 1000}}}'
                          for n in range(n0, n0 + size))
        batch = f'{{"gateway":"gw","batch":"s{seq}-{time.time_ns()}","sent":{base},"values":[{values}]}}'
        c.publish(uplink_topic("gw", ROOT), batch.encode(), qos=1)
        seq += 1
        sent.value = seq
    c.loop_stop()
    c.disconnect()


def rss_mib(pid: int | str = "self") -> float:
    """A process's resident memory, MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def percentiles(latencies: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``latencies`` (seconds), in ms."""
    if not latencies:
        return {}
    ordered = sorted(latencies)
    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)
    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 1)}


def sustained(store: TwinStore, url: str, port: int, workers: int, seconds: float, size: int) -> dict[str, Any]:
    """The rate ``workers`` ingest processes hold for ``seconds`` under the soak's conditions: live batches from
    the soak's publisher running beside them, new timestamps into the history already written, the publisher
    keeping ``WINDOW`` batches ahead of what is stored (so no backlog grows); measured over the last two thirds."""
    procs = Processes(store, url, port, workers)
    procs.launch()
    procs.go.set()
    ctx = multiprocessing.get_context("spawn")
    sent = ctx.Value("q", 0)
    proc = ctx.Process(target=pace, args=(port, 1e9, seconds, size, 6 * STEP, sent, procs.stored))
    t0 = time.monotonic()
    proc.start()
    time.sleep(seconds / 3)
    t1, n1 = time.monotonic(), procs.batches()
    proc.join()
    t2, n2 = time.monotonic(), procs.batches()
    deadline = time.monotonic() + 60
    while procs.batches() < sent.value and time.monotonic() < deadline:
        time.sleep(0.05)
    procs.finish()
    thirds = [round(n1 * size / max(t1 - t0, 1e-9)), round((n2 - n1) * size / max(t2 - t1, 1e-9))]
    return {"seconds": seconds, "values_per_s": thirds[1], "values_per_s_first_third": thirds[0],
            "batches": sent.value}


def share_busy(busy: list[tuple[float, bool, int]]) -> dict[str, float]:
    """The share of samples in which a checkpoint was being written, and an autovacuum worker ran."""
    n = max(1, len(busy))
    return {"checkpoint_writing_share": round(sum(1 for x in busy if x[1]) / n, 2),
            "autovacuum_share": round(sum(1 for x in busy if x[2]) / n, 2)}


def soak(store: TwinStore, url: str, port: int, workers: int, values_per_s: float, seconds: float, size: int,
         load: float) -> dict[str, Any]:
    """Ingest live batches with ``workers`` ingest processes at ``values_per_s`` for ``seconds``; latency,
    backlog and memory over time."""
    procs = Processes(store, url, port, workers, timed=True)
    procs.launch()
    procs.go.set()
    t0 = time.time()
    ctx = multiprocessing.get_context("spawn")
    sent = ctx.Value("q", 0)
    proc = ctx.Process(target=pace, args=(port, values_per_s / size, seconds, size, 8 * STEP, sent))
    proc.start()
    samples: list[tuple[float, int, float]] = []  # (seconds into the soak, backlog in batches, RSS MiB)
    busy: list[tuple[float, bool, int]] = []  # (seconds, a checkpoint being written, autovacuum workers)
    # at each third's end: (seconds, batches stored, CPU seconds of the ingest processes, of the database
    # backends, checkpoints forced so far)
    marks = [(0.0, 0, procs.cpu_s(), backend_cpu(store), db_activity(store)[0])]
    while proc.is_alive():
        proc.join(SOAK_EVERY_S)
        samples.append((time.time() - t0, sent.value - procs.batches(), procs.rss_mib()))
        _done, writing, vacuums = db_activity(store)
        busy.append((time.time() - t0, writing, vacuums))
        if time.time() - t0 >= len(marks) * seconds / 3 and len(marks) < 4:
            marks.append((time.time() - t0, procs.batches(), procs.cpu_s(), backend_cpu(store),
                          db_activity(store)[0]))
    deadline = time.monotonic() + 120
    while procs.batches() < sent.value and time.monotonic() < deadline:
        time.sleep(0.05)
    stored = procs.batches()
    _cpu, committed = procs.finish()
    latencies = [(at - t0, latency) for at, latency in committed]
    warm = [x for x in samples if x[0] >= seconds / 6] or samples
    third = seconds / 3
    lat = [x[1] for x in latencies]
    part = [min(2, int(at // third)) for at, _latency in latencies]  # the third each commit fell in
    first, middle, last = (percentiles([x[1] for x, k in zip(latencies, part, strict=True) if k == n])
                           for n in range(3))
    # where a third's time went: values stored a second, CPU µs per value in the ingest processes and database,
    # and what the database did besides: checkpoints forced by WAL volume, the share of samples with a
    # checkpoint being written or an autovacuum worker running
    per_third = [{"values_per_s": round((b[1] - a[1]) * size / (b[0] - a[0])),
                  "ingest_us_per_value": round((b[2] - a[2]) / max(1, (b[1] - a[1]) * size) * 1e6, 2),
                  "db_us_per_value": round((b[3] - a[3]) / max(1, (b[1] - a[1]) * size) * 1e6, 2),
                  "checkpoints_forced": b[4] - a[4],
                  **share_busy([x for x in busy if a[0] <= x[0] < b[0]])}
                 for a, b in pairwise(marks)]
    backlog_growth = max(x[1] for x in warm[-3:]) - max(x[1] for x in warm[:3])
    rss_growth = round(warm[-1][2] - warm[0][2], 1)
    return {
        "seconds": seconds,
        "load": load,
        "values_per_s_offered": round(values_per_s),
        "batches_sent": sent.value,
        "batches_stored": stored,
        "latency": percentiles(lat),
        "latency_first_third": first,
        "latency_middle_third": middle,
        "latency_last_third": last,
        "thirds": per_third,
        "backlog_batches": {"max": max(x[1] for x in warm), "growth": backlog_growth},
        "rss_mib": {"start": round(warm[0][2], 1), "end": round(warm[-1][2], 1), "growth": rss_growth,
                    "max": round(max(x[2] for x in warm), 1)},
        # no growth: the last third's p99 within 1.5 times the first third's (plus 250 ms of scheduling noise)
        "ok": (stored == sent.value and last.get("p99_ms", 1e9) <= 1.5 * first.get("p99_ms", 0) + 250
               and backlog_growth <= 50 and rss_growth <= 64),
    }


def copy_rows(url: str, ids: list[int], batches: int, size: int) -> float:
    """Seconds raw binary COPY takes for the same rows, one COPY and commit per batch."""
    engine = create_engine(url)
    try:
        raw: Any = engine.raw_connection().driver_connection
        with raw.cursor() as cur:
            cur.execute("CREATE TABLE bench_copy (property_id integer, ts bigint, value_num float8, "
                        "value_text text, quality smallint, PRIMARY KEY (property_id, ts))")
        raw.commit()
        rows = [[(ids[n % len(ids)], T0 + (n // len(ids)) * 1000, float(n % 97), None, 0)
                 for n in range(b * size, (b + 1) * size)] for b in range(batches)]
        t = time.perf_counter()
        for batch in rows:
            with raw.cursor() as cur, cur.copy(
                "COPY bench_copy (property_id, ts, value_num, value_text, quality) FROM STDIN (FORMAT BINARY)"
            ) as cp:
                cp.set_types(["int4", "int8", "float8", "text", "int2"])
                for r in batch:
                    cp.write_row(r)
            raw.commit()
        elapsed = time.perf_counter() - t
        raw.close()
        return elapsed
    finally:
        engine.dispose()


def main() -> None:
    """Measure and print one JSON line."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="finish in under a minute")
    ap.add_argument("--soak", type=float, default=None,
                    help="seconds of live load at 80 %% of the measured capacity (default: 600, none with --quick)")
    ap.add_argument("--soak-load", type=float, default=SOAK_LOAD, help="soak load, of the measured capacity")
    ap.add_argument("--pg", default=PG_ADMIN, help="admin URL of a PostgreSQL server (a database is created)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
                        logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    batches, size = (200, 1000) if args.quick else (400, 1000)
    values = batches * size
    name = f"ft_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(args.pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = args.pg.rsplit("/", 1)[0] + f"/{name}"
    try:
        run.upgrade(url)
        engine = make_engine(url, pool_size=4)
        store = TwinStore(engine, TwinSettings())
        store.sync_site(make_site(MACHINES, PROPS))
        with engine.begin() as conn:  # the partitions the history job keeps, from the run's first timestamp on
            if storage_of(conn) == "partitioned":
                s = store.settings
                ensure_partitions(conn, now_us(), s.history_partition_hours * HOUR_US, s.history_partitions_ahead,
                                  since=T0)
        settings = db_settings(store)
        with engine.connect() as conn:
            ids = [int(r[0]) for r in conn.execute(text("SELECT id FROM twin_properties ORDER BY id"))]
        with private_mosquitto(INFLIGHT) as port:
            data = [payloads(batches, size, k * STEP) for k in range(4)]
            drain_s = drain(port, data[0])
            one_s, one_cpu, one_db = ingest_processes(store, url, port, 1, data[1])
            two_s, two_cpu, two_db = ingest_processes(store, url, port, 2, data[2])
            thr_s, thr_cpu, thr_db = ingest_threads(store, port, 2, data[3])
            del data
            soak_s = args.soak if args.soak is not None else (0 if args.quick else 600)
            # --quick measures the sustained rate only for a soak asked for (it would not finish in a minute)
            held = (sustained(store, url, port, 2, 15.0 if args.quick else SUSTAIN_S, size)
                    if soak_s > 0 or not args.quick else {"values_per_s": None, "batches": 0})
            soaked = (soak(store, url, port, 2, args.soak_load * held["values_per_s"], soak_s, size,
                           args.soak_load) if soak_s > 0 else None)
        copy_s = copy_rows(url, ids, batches, size)
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM twin_history")).scalar_one()
            # rows no partition covered (a back-fill's place): none, or the run did not write as a plant does
            in_default = (conn.execute(text("SELECT count(*) FROM twin_partitions.twin_history_default")).scalar_one()
                          if storage_of(conn) == "partitioned" else 0)
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    rate = {k: values / s for k, s in (("drain", drain_s), ("p1", one_s), ("p2", two_s), ("t2", thr_s),
                                        ("copy", copy_s))}
    best = max(("p1", "p2", "t2"), key=lambda k: rate[k])
    ratio = rate[best] / rate["copy"]
    out: dict[str, Any] = {
        "name": "scale_ingest",
        "ratio": round(ratio, 3),
        "target": TARGET,
        "ok": ratio >= TARGET and stored >= 3 * values + held["batches"] * size and (soaked is None or soaked["ok"]),
        "best": {"p1": "1 process", "p2": "2 processes", "t2": "2 threads, 1 process"}[best],
        "ratio_drain": round(rate[best] / rate["drain"], 3),
        "values_per_s_1_process": round(rate["p1"]),
        "values_per_s_2_processes": round(rate["p2"]),
        "values_per_s_2_threads": round(rate["t2"]),
        "drain_values_per_s": round(rate["drain"]),
        "copy_values_per_s": round(rate["copy"]),
        # what the soak's load is taken from: 2 processes beside a live publisher, the history already written
        "sustained_2_processes": held,
        "speedup_2_processes": round(rate["p2"] / rate["p1"], 2),
        "speedup_2_threads": round(rate["t2"] / rate["p1"], 2),
        # per core-second: what sizing (docs/scaling.md) starts from
        "ingest_values_per_cpu_s": round(values / one_cpu),
        "db_values_per_cpu_s": round(values / one_db) if one_db > 0 else None,
        "cpu_s_1_process": {"ingest": round(one_cpu, 2), "db": round(one_db, 2), "wall": round(one_s, 2)},
        "cpu_s_2_processes": {"ingest": round(two_cpu, 2), "db": round(two_db, 2), "wall": round(two_s, 2)},
        "cpu_s_2_threads": {"ingest": round(thr_cpu, 2), "db": round(thr_db, 2), "wall": round(thr_s, 2)},
        "values": values,
        "batch_size": size,
        "stored": stored,
        "stored_in_default_partition": in_default,
        "cpus": os.cpu_count(),
        "quick": args.quick,
        "soak": soaked,
        "database": settings,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
