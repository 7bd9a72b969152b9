"""The API under a hostile unauthenticated client: does /healthz stay responsive, and how much does junk cost?

    python benchmarks/api_hostile.py [--quick]

The real API process (``factory-twin serve --role api``, embedded SQLite, one user with a password) on a
loopback port. A prober in its own process asks ``GET /healthz`` every 20 ms: first idle (the baseline, its
p99), then while a flooding client, with no key, sends as fast as it can on several connections at once:
the login body of 200,000 unknown keys (3.7 MB), 0.97 MB of unknown keys with a made-up key,
declared-oversized bodies, malformed JSON, wrong passwords for one name, and slow bodies trickling a byte a
second. Then one more 200,000-key login is timed alone (its reply time and size), and a guesser tries wrong
passwords one after the other, first for one name, then a new name each time, counting the guesses the
server actually checked (answers other than 429).

``ratio`` = worst /healthz latency during the flood ÷ idle p99 (target ≤ 100); ``ok`` also needs the worst
under one second and the 200,000-key body refused (413).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import structlog

TARGET = 100.0
USER, PASSWORD = "operator", "a long and right password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_api(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Migrate a fresh SQLite file, add the user, and start the API process; returns it and its URL."""
    env = {**os.environ, "TWIN_DATA_DIR": str(data), "TWIN_LOG_JSON": "true"}
    subprocess.run([sys.executable, "-m", "factory_twin", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    from twin.db import make_engine, make_sessionmaker
    from twin.users import create_user

    engine = make_engine(f"sqlite:///{data / 'twin.db'}")
    with make_sessionmaker(engine)() as session:
        create_user(session, USER, PASSWORD, "viewer")
    engine.dispose()
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "factory_twin", "serve", "--role", "api", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the API did not start")


@contextmanager
def api_server() -> Iterator[str]:
    """An API process on a fresh database for the ``with`` block; its URL."""
    with tempfile.TemporaryDirectory(prefix="api-hostile-") as tmp:
        proc, url = start_api(Path(tmp))
        try:
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


def probe(url: str, seconds: float, out: Any) -> None:
    """GET /healthz every 20 ms for ``seconds``; sends the latencies (s) back, a timeout counted as 5 s."""
    latencies = []
    with httpx.Client(timeout=5) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                client.get(f"{url}/healthz")
                latencies.append(time.perf_counter() - start)
            except httpx.HTTPError:
                latencies.append(5.0)
            time.sleep(0.02)
    out.send(latencies)
    out.close()


def run_probe(url: str, seconds: float) -> tuple[Any, Any]:
    parent, child = mp.Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(target=probe, args=(url, seconds, child), daemon=True)
    proc.start()
    return proc, parent


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def junk_login() -> bytes:
    """The login body of 200,000 unknown keys."""
    return json.dumps({f"k{i:06d}": i for i in range(200_000)}).encode()


async def _raw(host: str, port: int, head: bytes, body: bytes, *, trickle: float = 0.0) -> int:
    """Send one request on a fresh connection, body at once or a byte every ``trickle`` s; the status or 0."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0
    async def dribble() -> None:
        try:
            for byte in body:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(trickle)
        except OSError:  # the server gave up on us
            return

    sender = None
    try:
        writer.write(head)
        if trickle:
            sender = asyncio.create_task(dribble())
        else:
            writer.write(body)
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else 0
    except (TimeoutError, OSError, ValueError, IndexError):
        return 0
    finally:
        if sender is not None:
            sender.cancel()
        writer.close()


def _head(path: str, length: int | str, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n{extra}Connection: close\r\n\r\n").encode()


async def flood(url: str, seconds: float, workers: int) -> dict[str, int]:
    """Hostile requests on ``workers`` connections at a time for ``seconds``; counts of answers by kind."""
    host, port = url.removeprefix("http://").split(":")
    big = junk_login()
    # just under the 1 MiB allowed with a key: sent with a made-up key
    keyed = json.dumps({f"k{i:05d}": i for i in range(58_000)}).encode()
    kinds = [
        ("junk_keys", _head("/api/v1/session", len(big)), big),
        ("oversized", _head("/api/v1/session", 50 << 20), big[: 1 << 20]),
        ("malformed", _head("/api/v1/session", 5000), b"{" * 5000),
        ("fake_key_junk", _head("/api/v1/keys", len(keyed), "Authorization: Bearer ftk_0123456789ab_x\r\n"), keyed),
        ("password", _head("/api/v1/session", 0), b""),
    ]
    counts: dict[str, int] = {}
    end = time.monotonic() + seconds

    async def worker(i: int) -> None:
        n = i
        while time.monotonic() < end:
            name, head, body = kinds[n % len(kinds)]
            if name == "password":
                body = json.dumps({"username": USER, "password": f"guess-{n}"}).encode()
                head = _head("/api/v1/session", len(body))
            status = await _raw(host, int(port), head, body)
            counts[f"{name}_{status}"] = counts.get(f"{name}_{status}", 0) + 1
            n += 1

    async def slow() -> None:
        body = json.dumps({"username": USER, "password": "x" * 200}).encode()
        status = await _raw(host, int(port), _head("/api/v1/session", len(body)), body, trickle=1.0)
        counts[f"slow_{status}"] = counts.get(f"slow_{status}", 0) + 1

    slow_tasks = [asyncio.create_task(slow()) for _ in range(8)]
    await asyncio.gather(*(worker(i) for i in range(workers)))
    for task in slow_tasks:
        task.cancel()
    await asyncio.gather(*slow_tasks, return_exceptions=True)
    return counts


def one_junk_login(url: str) -> dict[str, Any]:
    body = junk_login()
    start = time.perf_counter()
    try:
        r = httpx.post(f"{url}/api/v1/session", content=body, headers={"Content-Type": "application/json"},
                       timeout=120)
        status, size = r.status_code, len(r.content)
    except httpx.HTTPError:  # refused while still sending: the reply may be lost with the connection
        status, size = 0, 0
    return {"junk_body_bytes": len(body), "junk_status": status, "junk_reply_bytes": size,
            "junk_reply_s": round(time.perf_counter() - start, 3)}


def guesses(url: str, seconds: float, *, new_name_each: bool) -> tuple[int, int]:
    """Wrong passwords one after the other for ``seconds``; how many the server checked, and refused (429)."""
    checked = refused = 0
    with httpx.Client(timeout=30) as client:
        end, n = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            name = f"{USER}{n}" if new_name_each else USER
            r = client.post(f"{url}/api/v1/session", json={"username": name, "password": f"guess-{n}"})
            checked += r.status_code != 429
            refused += r.status_code == 429
            n += 1
    return checked, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter flood and guessing run (under a minute)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # stdout carries the one JSON line
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    idle_s, flood_s, guess_s, workers = (3.0, 12.0, 5.0, 6) if args.quick else (10.0, 60.0, 60.0, 12)
    with api_server() as url:
        prober, pipe = run_probe(url, idle_s)
        idle = pipe.recv()
        prober.join()
        prober, pipe = run_probe(url, flood_s + 1)
        counts = asyncio.run(flood(url, flood_s, workers))
        during = pipe.recv()
        prober.join()
        single = one_junk_login(url)
    # new addresses are not at hand: a fresh server per guessing run, so the flood's failures do not count
    with api_server() as url:
        one_name = guesses(url, guess_s, new_name_each=False)
    with api_server() as url:
        many_names = guesses(url, guess_s, new_name_each=True)
    idle_p99, worst = p99(idle), max(during)
    ratio = worst / idle_p99

    def per_minute(checked: int, refused: int) -> float:
        # once refused, a lock-out of at least a minute has begun: what was checked is the minute's count;
        # a server that never refuses goes on at the rate seen
        return float(checked) if refused else round(checked * 60 / guess_s, 1)

    print(json.dumps({
        "name": "api_hostile",
        "ratio": round(ratio, 1),
        "target": TARGET,
        "ok": ratio <= TARGET and worst < 1.0 and single["junk_status"] == 413,
        "healthz_idle_p99_ms": round(idle_p99 * 1e3, 1),
        "healthz_flood_worst_ms": round(worst * 1e3, 1),
        "healthz_flood_p99_ms": round(p99(during) * 1e3, 1),
        **single,
        "flood_s": flood_s,
        "flood_answers": dict(sorted(counts.items())),
        "guess_window_s": guess_s,
        "guesses_checked_one_name": one_name[0],
        "guesses_checked_new_names": many_names[0],
        "guesses_per_minute_one_name": per_minute(*one_name),
        "guesses_per_minute_one_address": per_minute(*many_names),
    }))


if __name__ == "__main__":
    main()
