"""The embedded MQTT broker (amqtt), started in-process when no broker URL is configured.

It runs on its own thread and event loop so that the MQTT clients in the same process (ingest, simulator,
agent) talk to it over real TCP exactly as they would to Mosquitto: the same code paths as production.

Given a ``BrokerAccess`` it enforces what Mosquitto's password and ACL files do in production: a gateway logs
in with its own credential (twin/gateways.py) and publishes and reads only its own topics
(twin/topic_access.py); the platform's ingest logs in with a credential made for this broker's lifetime.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import structlog
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from twin.errors import ConfigError
from twin.gateways import new_credential, verify_password
from twin.topic_access import Access, TopicRules

log = structlog.get_logger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class BrokerAccess:
    """Who may log in to the embedded broker and what each may do.

    Args:
        rules: the topic rules.
        credentials: gateway id → ``$7$`` hash of its credential, read again at most every ``refresh_s``
            (so a revoked gateway cannot log in again).
        refresh_s: how long a read of ``credentials`` is trusted.
        platform_password: the platform's ingest login to this broker (a new random one by default).
    """

    rules: TopicRules
    credentials: Callable[[], dict[str, str]]
    refresh_s: float = 2.0
    platform_password: str = field(default_factory=new_credential)
    _cache: tuple[float, dict[str, str]] = field(init=False, default=(float("-inf"), {}))
    _verified: dict[tuple[str, str], str] = field(init=False, default_factory=dict)

    def authenticate(self, user: str | None, password: str | None) -> bool:
        """Whether this login may connect; anonymous clients may, to topics outside the root only."""
        if user is None:
            return password is None
        if user == self.rules.platform_user:
            return password == self.platform_password
        hashed = self._hashes().get(user)
        if hashed is None or password is None:
            return False
        key = (user, hashlib.sha256(password.encode()).hexdigest())
        if self._verified.get(key) == hashed:  # reconnects do not pay PBKDF2 again
            return True
        if not verify_password(password, hashed):
            return False
        self._verified[key] = hashed
        return True

    def allowed(self, user: str | None, access: Access, topic: str) -> bool:
        """Whether a logged-in ``user`` may still ``access`` ``topic`` (a revoked gateway may not)."""
        if user is not None and user != self.rules.platform_user and user not in self._hashes():
            return False
        return self.rules.allowed(user, access, topic)

    def _hashes(self) -> dict[str, str]:
        at, hashes = self._cache
        if time.monotonic() - at > self.refresh_s:
            try:
                hashes = self.credentials()
            except Exception as exc:  # the database is away: keep what we knew
                log.warning("broker_credentials_unreadable", error=str(exc).splitlines()[0])
            self._cache = (time.monotonic(), hashes)
        return hashes


class GatewayAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt has no type hints
    """amqtt authentication by ``BrokerAccess``."""

    @dataclass
    class Config:
        """The access rules (an object, not a file)."""

        access: Any = None

    async def authenticate(self, *, session: Session) -> bool | None:
        """Gateways by their credential, the platform by this broker's, anonymous clients outside the root."""
        access: BrokerAccess = self.context.config.access
        ok = access.authenticate(session.username, session.password)
        if not ok:
            log.warning("mqtt_login_refused", user=session.username, client_id=session.client_id)
        return ok


class GatewayTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]
    """amqtt topic ACL by ``BrokerAccess``."""

    @dataclass
    class Config:
        """The access rules (an object, not a file)."""

        access: Any = None

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool | None:
        """Publish needs write access to the topic, subscribe and receive read access."""
        access: BrokerAccess = self.context.config.access
        if session is None or topic is None:
            return False
        wanted = Access.WRITE if action == Action.PUBLISH else Access.READ
        ok = access.allowed(session.username, wanted, topic)
        if not ok and action != Action.RECEIVE:
            log.warning("mqtt_topic_refused", user=session.username, action=str(action), topic=topic[:200])
        return ok


class EmbeddedBroker:
    """An MQTT 3.1.1 broker on ``host:port`` for as long as the object is started.

    Args:
        host: address to listen on (loopback by default: the embedded broker is for one machine).
        port: TCP port; 0 picks a free one.
        access: logins and topic rules to enforce; None lets every client do everything.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 1883, access: BrokerAccess | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.access = access
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """The broker's URL for clients."""
        return f"mqtt://{self.host}:{self.port}"

    def url_for(self, user: str, password: str) -> str:
        """The broker's URL with a login."""
        return f"mqtt://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}"

    @property
    def platform_url(self) -> str:
        """The URL the platform's ingest uses: with this broker's platform login when access is enforced."""
        if self.access is None:
            return self.url
        return self.url_for(self.access.rules.platform_user, self.access.platform_password)

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
        log.info("embedded_broker_started", url=self.url, gateway_logins=self.access is not None)
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
        if self.access is not None:
            config["plugins"] = {f"{__name__}.GatewayAuthPlugin": {"access": self.access},
                                 f"{__name__}.GatewayTopicPlugin": {"access": self.access}}
        self._broker = Broker(config)
        await self._broker.start()

    def stop(self) -> None:
        """Stop the broker and wait for its thread."""
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        log.info("embedded_broker_stopped", url=self.url)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _quiet_disconnects(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A client that hangs up during CONNECT (an MQTT 5 client falling back to 3.1.1) is not an error."""
    if isinstance(context.get("exception"), ConnectionError | OSError):
        log.debug("mqtt_client_dropped_during_connect", error=str(context["exception"]))
        return
    loop.default_exception_handler(context)
