"""Live updates across API replicas: which nodes' properties changed, fanned out to every subscriber.

The ingest side publishes after each stored batch (``LiveBus.listener`` is an ``Ingestor`` listener); API
replicas subscribe (``LiveBus.subscribe``, an async iterator the dashboard's server-sent events read).

- PostgreSQL: ``NOTIFY twin_live`` with small JSON payloads (node id and property names, well under the
  8,000-byte limit), one ``LISTEN`` connection per API process. Any number of ingest workers and API replicas
  meet in the database; nothing lives in one process's memory.
- SQLite: an in-process fan-out with the same interface (one process runs both sides there).

Live updates say *what* changed, not the values: a subscriber reads the latest state through the API, so a
lost or merged event costs at most a late refresh. When events may have been lost (a subscriber too slow,
the LISTEN connection re-established) the subscriber gets ``RESYNC``: re-read everything it shows.

Threads read with ``LiveBus.reader()`` (``wait(timeout)`` → events): the alert evaluator does, to hear what any
process stored (a LISTEN connection of its own on PostgreSQL, the in-process fan-out on SQLite).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from typing import Any, NamedTuple, Protocol

import structlog
from sqlalchemy import Engine

from plant.wire import UplinkBatch
from twin.store import ApplyResult

log = structlog.get_logger(__name__)

CHANNEL = "twin_live"
MAX_PAYLOAD = 7_000  # bytes; PostgreSQL refuses NOTIFY payloads of 8,000 and more
RECONNECT_MAX_S = 10.0


class LiveEvent(NamedTuple):
    """Properties of one node changed (their latest state moved).

    Args:
        node: node id; empty in ``RESYNC``.
        props: the property names that changed.
    """

    node: str
    props: tuple[str, ...]


RESYNC = LiveEvent("", ())  # events may have been missed: re-read what you show
_CLOSED = LiveEvent("", ("<closed>",))  # wakes a reader of a closed subscription


class Subscription:
    """One subscriber's events; iterate with ``async for``, close with ``close()`` or ``async with``.

    Args:
        bus: the bus it belongs to.
        nodes: only events of these nodes (all when None); ``RESYNC`` always.
        maxsize: events held for a slow reader before they are replaced by one ``RESYNC``.
    """

    def __init__(self, bus: LiveBus, nodes: Collection[str] | None, maxsize: int) -> None:
        self._bus = bus
        self.nodes = frozenset(nodes) if nodes is not None else None
        self.loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[LiveEvent] = asyncio.Queue(maxsize)
        self.closed = False

    def wants(self, event: LiveEvent) -> bool:
        """Whether this subscriber takes ``event``."""
        return self.nodes is None or not event.node or event.node in self.nodes

    def put(self, event: LiveEvent) -> None:
        """Queue an event (on the subscriber's loop); a full queue becomes one RESYNC."""
        if self.closed:
            return
        if self._queue.full():
            while not self._queue.empty():
                self._queue.get_nowait()
            event = RESYNC
        self._queue.put_nowait(event)

    async def get(self, within: float | None = None) -> LiveEvent:
        """The next event; TimeoutError after ``within`` seconds without one."""
        return await asyncio.wait_for(self._queue.get(), within)

    def close(self) -> None:
        """Stop receiving events; an ``async for`` over the subscription ends (from any thread)."""
        self.closed = True
        self._bus._remove(self)
        with contextlib.suppress(RuntimeError):  # a closed loop has no reader left to wake
            self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> LiveEvent:
        if self.closed:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is _CLOSED:
            raise StopAsyncIteration
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class LiveBus:
    """The fan-out; this base class delivers within the process (SQLite, tests, the demo)."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._readers: set[ThreadReader] = set()
        self._lock = threading.Lock()

    def publish(self, changed: Mapping[str, Iterable[str]]) -> None:
        """Announce that these nodes' properties changed; callable from any thread, never raises."""
        events = [LiveEvent(node, tuple(props)) for node, props in changed.items()]
        self._deliver(events)
        with self._lock:
            readers = list(self._readers)
        for reader in readers:
            reader.put(events)

    def reader(self) -> LiveReader:
        """Events for a thread of this process (not an event loop); ``close()`` it when done."""
        reader = ThreadReader(self)
        with self._lock:
            self._readers.add(reader)
        return reader

    def listener(self, _batch: UplinkBatch, result: ApplyResult) -> None:
        """An ``Ingestor`` listener: publishes the latest-state changes of a stored batch."""
        if not result.changes:
            return
        changed: dict[str, list[str]] = defaultdict(list)
        for c in result.changes:
            changed[c.node].append(c.prop)
        self.publish(changed)

    def subscribe(self, nodes: Collection[str] | None = None, maxsize: int = 1_000) -> Subscription:
        """A new subscription (call from the event loop that will read it)."""
        sub = Subscription(self, nodes, maxsize)
        with self._lock:
            self._subs.add(sub)
        self._started(sub.loop)
        return sub

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open."""
        with self._lock:
            return len(self._subs)

    async def aclose(self) -> None:
        """Close every subscription and whatever connection the bus holds."""
        with self._lock:
            subs = list(self._subs)
        for s in subs:
            s.close()

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hook for buses that need a task on the subscribers' loop."""

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            self._subs.discard(sub)

    def _remove_reader(self, reader: ThreadReader) -> None:
        with self._lock:
            self._readers.discard(reader)

    def _deliver(self, events: list[LiveEvent]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            wanted = [e for e in events if sub.wants(e)]
            if not wanted:
                continue
            try:
                sub.loop.call_soon_threadsafe(_put_all, sub, wanted)
            except RuntimeError:  # its loop is closed: the subscriber is gone
                self._remove(sub)


class LiveReader(Protocol):
    """Live events read by a thread."""

    def wait(self, timeout: float) -> list[LiveEvent]:
        """What arrived since the last call, waiting up to ``timeout`` s for something; ``RESYNC`` when some
        events may have been lost."""
        ...

    def close(self) -> None:
        """Stop reading."""
        ...


class ThreadReader:
    """A thread's reader of the in-process bus; more than ``maxsize`` unread events become one ``RESYNC``.

    Args:
        bus: the bus it reads.
        maxsize: unread events held.
    """

    def __init__(self, bus: LiveBus, maxsize: int = 10_000) -> None:
        self._bus = bus
        self.maxsize = maxsize
        self._events: list[LiveEvent] = []
        self._cond = threading.Condition()

    def put(self, events: list[LiveEvent]) -> None:
        """Queue events (from the publishing thread)."""
        with self._cond:
            if len(self._events) + len(events) > self.maxsize:
                events, self._events = [RESYNC], []
            self._events.extend(events)
            self._cond.notify_all()

    def wait(self, timeout: float) -> list[LiveEvent]:
        """What arrived, waiting up to ``timeout`` s for something."""
        with self._cond:
            self._cond.wait_for(lambda: bool(self._events), timeout)
            events, self._events = self._events, []
        return events

    def close(self) -> None:
        """Stop receiving events."""
        self._bus._remove_reader(self)


class NotifyReader:
    """A thread's reader of ``LISTEN twin_live`` on a connection of its own; reconnects, then says ``RESYNC``.

    Args:
        conninfo: a libpq URL.
    """

    def __init__(self, conninfo: str) -> None:
        self.conninfo = conninfo
        self._conn: Any = None
        self._lost = False
        self._connect()

    def _connect(self) -> None:
        import psycopg

        # client-side keepalives: a connection a NAT or firewall dropped silently raises within ~20 s, and the
        # listener resynchronises, instead of waiting for notifications that can no longer come
        conn = psycopg.connect(
            self.conninfo, autocommit=True, connect_timeout=5,
            keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=5,
        )  # fmt: skip
        try:
            conn.execute(f"LISTEN {CHANNEL}")
        except psycopg.Error:
            conn.close()
            raise
        self._conn = conn

    def wait(self, timeout: float) -> list[LiveEvent]:
        """Notifications received, waiting up to ``timeout`` s for the first; never raises."""
        import psycopg

        try:
            if self._conn is None:
                self._connect()
            if self._lost:  # notifications sent while we were away are gone
                self._lost = False
                return [RESYNC]
            got = list(self._conn.notifies(timeout=timeout, stop_after=1))
            if got:
                got += self._conn.notifies(timeout=0)  # and whatever came with it
            return [e for n in got for e in decode(n.payload)]
        except psycopg.Error as exc:
            log.warning("live_listen_lost", error=str(exc).splitlines()[0]
                        if str(exc) else type(exc).__name__)
            self.close()
            self._lost = True
            time.sleep(min(timeout, 1.0))
            return []

    def close(self) -> None:
        """Close the LISTEN connection."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def _put_all(sub: Subscription, events: list[LiveEvent]) -> None:
    for e in events:
        sub.put(e)


def encode(changed: Mapping[str, Iterable[str]]) -> list[str]:
    """NOTIFY payloads for the changes: JSON ``[[node, [prop, ...]], ...]``, each under ``MAX_PAYLOAD``."""
    payloads: list[str] = []
    items: list[Any] = []
    size = 2
    for node, props in changed.items():
        item = [node, list(props)]
        n = len(json.dumps(item, separators=(",", ":")).encode()) + 1
        if n + 2 > MAX_PAYLOAD:  # one node with very many properties: the node alone says enough
            item, n = [node, []], len(node) + 8
        if items and size + n > MAX_PAYLOAD:
            payloads.append(json.dumps(items, separators=(",", ":")))
            items, size = [], 2
        items.append(item)
        size += n
    if items:
        payloads.append(json.dumps(items, separators=(",", ":")))
    return payloads


def decode(payload: str) -> list[LiveEvent]:
    """The events of one NOTIFY payload; an unreadable payload becomes RESYNC."""
    try:
        return [LiveEvent(str(node), tuple(str(p) for p in props)) for node, props in json.loads(payload)]
    except (ValueError, TypeError):
        log.warning("live_payload_unreadable", payload=payload[:200])
        return [RESYNC]


class PostgresLiveBus(LiveBus):
    """Fan-out through PostgreSQL LISTEN/NOTIFY: works across ingest and API processes and machines.

    Args:
        conninfo: a libpq URL (``postgresql://user:pass@host:port/db``).
    """

    def __init__(self, conninfo: str) -> None:
        super().__init__()
        self.conninfo = conninfo
        self._notify_conn: Any = None
        self._notify_lock = threading.Lock()
        self._tasks: dict[asyncio.AbstractEventLoop, asyncio.Task[None]] = {}
        self.listening = threading.Event()  # set while the LISTEN connection is up

    def publish(self, changed: Mapping[str, Iterable[str]]) -> None:
        """NOTIFY the changes; a database failure is logged (and retried once on a new connection)."""
        import psycopg

        payloads = encode(changed)
        if not payloads:
            return
        with self._notify_lock:
            for attempt in (1, 2):
                try:
                    if self._notify_conn is None or self._notify_conn.closed:
                        self._notify_conn = psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5)
                    with self._notify_conn.cursor() as cur:
                        for p in payloads:
                            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, p))
                    return
                except psycopg.Error as exc:
                    self._close_notify()
                    if attempt == 2:
                        log.warning("live_notify_failed", error=str(exc).splitlines()[0] if str(exc) else "")

    def _close_notify(self) -> None:
        if self._notify_conn is not None:
            try:
                self._notify_conn.close()
            finally:
                self._notify_conn = None

    def reader(self) -> LiveReader:
        """Events for a thread, from every process: a LISTEN connection of its own (raises if it cannot)."""
        return NotifyReader(self.conninfo)

    def _started(self, loop: asyncio.AbstractEventLoop) -> None:
        task = self._tasks.get(loop)
        if task is None or task.done():
            self._tasks[loop] = loop.create_task(self._listen(), name="twin-live-listen")

    async def _listen(self) -> None:
        import psycopg

        delay = 0.5
        first = True
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening.set()
                    if not first:  # notifications sent while we were away are gone
                        self._deliver([RESYNC])
                    first, delay = False, 0.5
                    async for n in conn.notifies():
                        self._deliver(decode(n.payload))
            except psycopg.Error as exc:
                self.listening.clear()
                log.warning("live_listen_lost", error=str(exc).splitlines()[0]
                            if str(exc) else type(exc).__name__, retry_in_s=delay)
                first = False
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_S)

    async def aclose(self) -> None:
        """Stop listening, close the NOTIFY connection and every subscription."""
        await super().aclose()
        here = asyncio.get_running_loop()
        tasks, self._tasks = self._tasks, {}
        for loop, task in tasks.items():
            if loop is here:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:  # another loop's listener: cancel it there (a closed loop has nothing left to cancel)
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(task.cancel)
        with self._notify_lock:
            self._close_notify()


_BUSES: dict[str, LiveBus] = {}
_BUSES_LOCK = threading.Lock()


def live_bus_for(engine: Engine) -> LiveBus:
    """The process's bus for this database: LISTEN/NOTIFY on PostgreSQL, in-process on SQLite."""
    key = engine.url.render_as_string(hide_password=False)
    with _BUSES_LOCK:
        bus = _BUSES.get(key)
        if bus is None:
            if engine.dialect.name == "postgresql":
                url = engine.url.set(drivername="postgresql")
                bus = PostgresLiveBus(url.render_as_string(hide_password=False))
            else:
                bus = LiveBus()
            _BUSES[key] = bus
        return bus
