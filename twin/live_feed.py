"""The live feed: what changed in the twin, read once and fanned out to every subscriber.

One ``LiveFeed`` per application (the ``/api/v1/live`` route, twin/api/routes/live.py, streams it to pages):

- the live bus (twin/live.py: LISTEN/NOTIFY across replicas on PostgreSQL, in-process on SQLite) says at once
  which properties moved; the feed reads their latest state and sends it;
- a poll every POLL_S reads what was committed since the last look (properties by ``stored_ts``, alerts by
  ``updated_at``, work orders by ``updated_at``). It carries alert and work-order changes, which the bus does
  not, and it keeps values flowing where no
  ingest process publishes to the bus. A value seen by both paths is sent once.

``SiteFilter`` keeps, of each event, the items of one caller's sites.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from plant.wire import from_us, now_us
from twin import queries
from twin.live import RESYNC, LiveBus, LiveEvent
from twin.scopes import Sites, allows
from twin.tables import Alert, TwinNode, TwinProperty, WorkOrder

log = structlog.get_logger(__name__)

POLL_S = 1.0
BUS_GATHER_S = 0.1
# Rows are stamped before their transaction commits, so one committed a moment after a newer one would be
# missed by a strict "newer than the last seen" read; each look goes back this far and skips what was sent.
OVERLAP_US = 5_000_000
QUEUE_LIMIT = 256  # events held for a slow client before it is dropped (it reconnects and reloads)


@dataclass
class LiveFeed:
    """Polls the database for changes and fans them out to subscribers' queues.

    Args:
        maker: sessionmaker of the app's database.
        poll_s: seconds between looks.
    """

    maker: sessionmaker[Session]
    bus: LiveBus | None = None
    poll_s: float = POLL_S
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the poll and the bus read in two threads
    _bus_task: asyncio.Task[None] | None = None
    _subscribers: set[asyncio.Queue[tuple[str, Any] | None]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _sent_props: dict[int, int] = field(default_factory=dict)
    _sent: dict[str, dict[int, int]] = field(default_factory=dict)  # kind → id → updated_at sent
    _marks: dict[str, int] = field(default_factory=dict)  # kind → newest updated_at seen
    _prop_mark: int | None = None
    _failing: set[str] = field(default_factory=set)

    def subscribe(self) -> asyncio.Queue[tuple[str, Any] | None]:
        """A queue receiving ``(event, data)``; None means the feed dropped this subscriber."""
        q: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(QUEUE_LIMIT)
        self._subscribers.add(q)
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="live-feed")
        if self.bus is not None and (self._bus_task is None or self._bus_task.done()):
            self._bus_task = loop.create_task(self._follow_bus(self.bus), name="live-feed-bus")
        return q

    def unsubscribe(self, q: asyncio.Queue[tuple[str, Any] | None]) -> None:
        """Stop delivering to ``q``; the poller stops with its last subscriber."""
        self._subscribers.discard(q)
        if not self._subscribers:
            for task in (self._task, self._bus_task):
                if task is not None:
                    task.cancel()
            self._task = self._bus_task = None

    async def _run(self) -> None:
        while self._subscribers:
            for event in await asyncio.to_thread(self.poll):
                self._publish(event)
            await asyncio.sleep(self.poll_s)

    async def _follow_bus(self, bus: LiveBus) -> None:
        async with bus.subscribe() as sub:
            while self._subscribers:
                first = await sub.get()
                await asyncio.sleep(BUS_GATHER_S)  # a batch touches many properties: read them together
                events = [first]
                while True:
                    try:
                        events.append(await sub.get(0))
                    except TimeoutError:
                        break
                if RESYNC in events:
                    self._publish(("resync", {}))
                    continue
                try:
                    values = await asyncio.to_thread(self.read_changed, events)
                except SQLAlchemyError as exc:
                    log.warning("live_feed_changes_unreadable", error=str(exc).splitlines()[0])
                    continue
                if values:
                    self._publish(("values", values))

    def read_changed(self, events: list[LiveEvent]) -> list[dict[str, Any]]:
        """The latest state of the properties the bus named, less what was sent already."""
        wanted: dict[str, set[str]] = {}
        for e in events:
            wanted.setdefault(e.node, set()).update(e.props)
        p = TwinProperty
        with self.maker() as session:
            rows = [
                r
                for node, names in wanted.items()
                for r in session.scalars(select(p).where(p.node_id == node, p.name.in_(names)))
            ]
        return [queries.property_public(r).model_dump(mode="json") for r in self._unsent(rows)]

    def _unsent(self, rows: list[TwinProperty]) -> list[TwinProperty]:
        """Rows whose current state was not sent yet; marks them sent."""
        fresh = []
        with self._lock:
            for r in rows:
                if r.stored_ts is None or self._sent_props.get(r.id) == r.stored_ts:
                    continue
                self._sent_props[r.id] = r.stored_ts
                if self._prop_mark is not None:
                    self._prop_mark = max(self._prop_mark, r.stored_ts)
                fresh.append(r)
        return fresh

    def _publish(self, event: tuple[str, Any]) -> None:
        for q in list(self._subscribers):
            try:
                q.put_nowait(event)
            except asyncio.QueueFull:  # a stuck client: drop it rather than hold memory for it
                self._subscribers.discard(q)
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
                q.put_nowait(None)

    def poll(self) -> list[tuple[str, Any]]:
        """One look at the database: the events since the previous look (none on the first)."""
        events: list[tuple[str, Any]] = []
        for name, read in (("values", self._values), ("alerts", self._alerts), ("workorders", self._work_orders)):
            try:
                with self.maker() as session:
                    found = read(session)
            except SQLAlchemyError as exc:  # the database is down or lacks a table: say so once, keep polling
                if name not in self._failing:
                    log.warning("live_feed_unreadable", part=name, error=str(exc).splitlines()[0])
                self._failing.add(name)
                continue
            self._failing.discard(name)
            if found:
                events.append((name, found))
        return events

    def _values(self, session: Session) -> list[dict[str, Any]]:
        p = TwinProperty
        first = self._prop_mark is None
        if self._prop_mark is None:  # the first look: what is there now is the baseline, not news
            self._prop_mark = session.scalar(select(func.max(p.stored_ts))) or now_us()
        rows = list(session.scalars(select(p).where(p.stored_ts >= self._prop_mark - OVERLAP_US)))
        fresh = self._unsent(rows)
        return [] if first else [queries.property_public(r).model_dump(mode="json") for r in fresh]

    def _alerts(self, session: Session) -> list[dict[str, Any]]:
        return [
            {"id": r.id, "node": r.node_id, "state": r.state, "priority": r.priority, "message": r.message,
             "condition": r.condition, "updated": from_us(r.updated_at).isoformat()}
            for r in self._changed(session, Alert, "alerts")
        ]

    def _work_orders(self, session: Session) -> list[dict[str, Any]]:
        return [
            {"id": r.id, "node": r.node_id, "state": r.state, "priority": r.priority, "assignee": r.assignee,
             "updated": from_us(r.updated_at).isoformat()}
            for r in self._changed(session, WorkOrder, "workorders")
        ]

    def _changed(self, session: Session, model: type[Any], kind: str) -> list[Any]:
        """Rows of ``model`` whose ``updated_at`` moved since they were last sent (none on the first look)."""
        first = kind not in self._marks
        if first:
            self._marks[kind] = session.scalar(select(func.max(model.updated_at))) or now_us()
        sent = self._sent.setdefault(kind, {})
        rows = list(session.scalars(select(model).where(model.updated_at >= self._marks[kind] - OVERLAP_US)))
        fresh = [r for r in rows if sent.get(r.id) != r.updated_at]
        for r in fresh:
            sent[r.id] = r.updated_at
            self._marks[kind] = max(self._marks[kind], r.updated_at)
        # only what the next look can see again needs remembering: the map stays small however long it runs
        horizon = self._marks[kind] - OVERLAP_US
        self._sent[kind] = {k: v for k, v in sent.items() if v >= horizon}
        return [] if first else fresh


@dataclass
class SiteFilter:
    """Keeps the items of an event that belong to ``sites`` (all of them when ``sites`` is None).

    Args:
        maker: sessionmaker of the app's database, to learn which site a node belongs to.
        sites: the caller's sites (twin/scopes.py).
    """

    maker: sessionmaker[Session]
    sites: Sites
    _nodes: dict[str, bool] = field(default_factory=dict)  # node id → in the caller's sites

    async def keep(self, event: str, data: Any) -> Any:
        """``data`` without the items of other sites' nodes; None when nothing is left."""
        if self.sites is None or not isinstance(data, list):
            return data
        names = {_node_of(item) for item in data} - self._nodes.keys()
        if names:  # a node not seen yet (a new one, or the first event): ask which site it belongs to
            self._nodes.update(await asyncio.to_thread(self._look_up, names))
        kept = [item for item in data if self._nodes.get(_node_of(item), False)]
        return kept or None

    def _look_up(self, names: set[str]) -> dict[str, bool]:
        with self.maker() as session:
            paths = {i: p for i, p in session.execute(select(TwinNode.id, TwinNode.path).where(TwinNode.id.in_(names)))}
        return {name: allows(self.sites, paths.get(name, "")) for name in names}


def _node_of(item: Any) -> str:
    return str(item.get("node_id") or item.get("node") or "") if isinstance(item, dict) else ""
