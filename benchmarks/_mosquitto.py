"""A private Mosquitto for benchmarks: a free port, queue limits raised, no persistence; stopped on exit.

Stock Mosquitto queues at most 1,000 messages per subscriber and drops QoS 1 beyond that, so a benchmark on
the shared broker would measure the broker's drops. This one queues everything and lets 1,000 messages be in
flight by default.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 0
max_queued_bytes 0
max_inflight_messages {inflight}
message_size_limit 0
"""


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def private_mosquitto(inflight: int = 1000) -> Iterator[int]:
    """Run mosquitto on a free port for the duration of the block, with ``inflight`` QoS 1 messages in flight
    per client; yields the port."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        conf = Path(d) / "mosquitto.conf"
        conf.write_text(CONF.format(port=port, inflight=inflight))
        proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError("private mosquitto did not start")
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
