"""The embedded MQTT broker (amqtt), started in-process when no broker URL is configured.

It runs on its own thread and event loop so that paho clients in the same process (ingest, simulator, agent)
talk to it over real TCP exactly as they would to Mosquitto: the same code paths as production.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any

import structlog

from twin.errors import ConfigError

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedBroker:
    """An MQTT 3.1.1 broker on ``host:port`` for as long as the object is started.

    Args:
        host: address to listen on (loopback by default: the embedded broker is for one machine).
        port: TCP port; 0 picks a free one.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The broker's URL for clients."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> EmbeddedBroker:
        """Start the broker thread; returns once it accepts connections."""
        logging.getLogger("amqtt").setLevel(logging.WARNING)
        logging.getLogger("transitions").setLevel(logging.WARNING)
        self._thread = threading.Thread(target=self._run, name="embedded-mqtt", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ConfigError(f"embedded MQTT broker did not start on {self.host}:{self.port} in {timeout}s")
        if self._error is not None:
            raise ConfigError(f"embedded MQTT broker failed on {self.host}:{self.port}: {self._error}")
        log.info("embedded mqtt broker started", url=self.url)
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._loop.set_exception_handler(_quiet_disconnects)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        try:
            self._loop.run_until_complete(self._broker.shutdown())
        finally:
            self._close_loop(self._loop)

    @staticmethod
    def _close_loop(loop: asyncio.AbstractEventLoop) -> None:
        """Cancel what the broker left running (client handlers) and close their sockets before the loop."""
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    async def _start(self) -> None:
        from amqtt.broker import Broker

        config = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.port}", "max_connections": 0},
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._broker = Broker(config)
        await self._broker.start()

    def stop(self) -> None:
        """Stop the broker and wait for its thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        log.info("embedded mqtt broker stopped", url=self.url)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that hangs up during CONNECT (an MQTT 5 client falling back to 3.1.1) is not an error."""
    if isinstance(context.get("exception"), ConnectionError | OSError):
        log.debug("mqtt client dropped during connect", error=str(context["exception"]))
        return
    loop.default_exception_handler(context)
