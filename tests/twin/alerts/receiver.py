"""A real HTTP webhook receiver on loopback that misbehaves on purpose, for the webhook tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    """One request as the receiver saw it."""

    at: float
    headers: dict[str, str]
    body: bytes
    answered: int | None  # status sent back; None when the connection was dropped or timed out

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")

    def json(self) -> Any:
        return json.loads(self.body)


# An action decides the answer to one request:
# "ok", "500", "429:<retry-after>", "slow:<seconds>", "drop", "400"
Plan = Callable[[int, bytes], str]


@dataclass
class Receiver:
    """Threaded http.server; ``plan(n, body)`` picks the answer to the n-th request (0-based)."""

    plan: Plan = field(default=lambda n, body: "ok")
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    n = len(receiver.requests)
                    rec = Received(
                        time.monotonic(), {k.lower(): v for k, v in self.headers.items()}, body, None
                    )
                    receiver.requests.append(rec)
                action = receiver.plan(n, body)
                if action == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if action.startswith("slow:"):
                    time.sleep(float(action.split(":", 1)[1]))
                    action = "ok"
                status, headers = 200, {}
                if action.startswith("429"):
                    status = 429
                    headers["Retry-After"] = action.split(":", 1)[1]
                elif action.isdigit():
                    status = int(action)
                rec.answered = status
                payload = b'{"ok":true}' if status == 200 else b'{"error":"on purpose"}'
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout) before we answered

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if r.answered is not None and 200 <= r.answered < 300]

    def first_delivery_keys(self) -> list[str]:
        """Idempotency keys of accepted requests, each once (what a deduplicating receiver keeps)."""
        seen: dict[str, None] = {}
        for r in self.delivered():
            seen.setdefault(r.key, None)
        return list(seen)
