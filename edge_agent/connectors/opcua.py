"""OPC-UA connector: one subscription with a monitored item per binding, polling where a binding asks for it.

Each publish response becomes one ``ReadingBatch`` carrying the source timestamp, server timestamp and
StatusCode of every value. Items are created in batches (``batch_size``; servers cap operations per request).
Node ids the server refuses are skipped and reported (metric ``ft_agent_bad_nodes`` and one log line naming
them); the rest go on.

Failure handling: any loss (socket closed, publish responses stop for ``watchdog_s``, the server's watchdog
probe fails, a StatusChange from the subscription) tears the whole client down, and a fresh client reconnects
after an exponential backoff with jitter and recreates the subscription. Session attempts to one server are
serialised across connectors, so a restarting server is never flooded; sessions ask for a short timeout so
the server drops any that a lost network left behind. The low-level service calls are used on purpose: the
high-level Subscription schedules a task per value, too slow at 10,000 items.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Any

import structlog
from asyncua import Client, ua

from edge_agent.connectors import Sink
from edge_agent.connectors.opcua_session import (
    BAD_NODE_CODES,
    FILTER_CODES,
    connect_client,
    session_lock,
    status_of,
    to_us,
    translate_error,
)
from edge_agent.connectors.reconnect import ReconnectingConnector
from edge_agent.errors import ConnectorError
from edge_agent.metrics import BAD_NODES, SIGNAL_MISSING
from edge_agent.reading import Reading, ReadingBatch
from plant.mqtt.backoff import Backoff
from plant.site import OpcUaBinding, OpcUaSource
from plant.wire import Quality

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class OpcUaSignal:
    """One bound signal: the twin node and property, and where it comes from.

    Args:
        node: twin node id.
        prop: property on that node.
        binding: the site model's binding.
    """

    node: str
    prop: str
    binding: OpcUaBinding


class OpcUaConnector(ReconnectingConnector):
    """Subscribes to one OPC-UA server and delivers each publish response as a batch; reconnects on its own.

    Args:
        source_id: the site source id.
        source: the site's source (endpoint, security, publishing interval, batch size, timeout).
        signals: the bound signals of this source.
        password: the user's password when the source names a user.
        watchdog_s: no publish response (data or keepalive) for this long means the server is gone.
        queue_size: batches waiting for the sink before the publish loop waits.
        backoff: reconnect delays.
    """

    def __init__(
        self,
        source_id: str,
        source: OpcUaSource,
        signals: list[OpcUaSignal],
        *,
        password: str | None = None,
        watchdog_s: float = 5.0,
        queue_size: int = 2000,
        backoff: Backoff | None = None,
    ) -> None:
        super().__init__("opcua", source_id, backoff)
        self.source = source
        self.signals = signals
        self.password = password
        self.watchdog_s = watchdog_s
        self._queue: asyncio.Queue[ReadingBatch] = asyncio.Queue(maxsize=queue_size)
        self._node_ids: list[ua.NodeId | None] = []
        self._invalid: dict[int, str] = {}
        for i, sig in enumerate(signals):
            try:
                self._node_ids.append(ua.NodeId.from_string(sig.binding.node_id))
            except Exception as exc:  # asyncua raises plain errors on unparsable ids
                self._node_ids.append(None)
                self._invalid[i] = f"unparsable: {exc}"
        self.bad_nodes: dict[str, str] = {}
        self._missing: dict[int, float] = {}
        self._m_missing: dict[int, Any] = {}
        self._dead: asyncio.Event | None = None
        self._dead_reason = ""
        self._last_publish = 0.0
        self._silence_s = watchdog_s
        self._m_bad = BAD_NODES.labels(source_id)

    def status(self) -> dict[str, object]:
        """Connected or not, last error, counts and bad node ids."""
        return {
            "source": self.source_id,
            "kind": "opcua",
            "connected": self._connected,
            "last_error": self._last_error,
            "values": self._values,
            "reconnects": self._reconnects,
            "bad_nodes": dict(self.bad_nodes),
            "queued": self._queue.qsize(),
        }

    # --- run loop -------------------------------------------------------------------------------------------

    async def run(self, sink: Sink) -> None:
        """Connect, subscribe and deliver batches to ``sink`` until cancelled, reconnecting with backoff."""
        now = time.monotonic()
        self._missing = dict.fromkeys(range(len(self.signals)), now)
        try:
            await super().run(sink)
        finally:
            self._all_missing()
            self._flush_missing()

    def _log_lost(self, exc: ConnectorError) -> None:
        log.warning("opcua_disconnected", source=self.source_id, error=str(exc))

    async def _after_loss(self, was_connected: bool) -> None:
        self._all_missing()
        if was_connected:
            await self._deliver_stale()

    async def _consume(self, sink: Sink) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await sink(batch)
            except Exception:
                self._mark_dead("the sink failed")  # end the session: run() then re-raises for the agent
                raise

    async def _session(self) -> None:
        self._dead = asyncio.Event()
        self._dead_reason = ""
        async with session_lock(self.source.endpoint):
            client = await connect_client(self.source, self.password, self.watchdog_s, self._on_lost)
        pollers: list[asyncio.Task[None]] = []
        try:
            self._last_publish = time.monotonic()
            self._silence_s = self.watchdog_s
            await self._subscribe(client)
            pollers = self._start_pollers(client)
            self._set_connected(True)
            self.backoff.reset()
            log.info(
                "opcua_connected",
                source=self.source_id,
                endpoint=self.source.endpoint,
                signals=len(self.signals),
                bad_nodes=len(self.bad_nodes),
            )
            await self._watch()
        except (OSError, TimeoutError, ua.UaError) as exc:
            raise translate_error(exc, self.source.endpoint) from exc
        finally:
            for task in pollers:
                task.cancel()
            await self._close(client)

    async def _watch(self) -> None:
        dead = self._dead
        assert dead is not None
        next_flush = time.monotonic() + 5.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dead.wait(), timeout=0.5)
            if dead.is_set():
                raise ConnectorError(f"OPC-UA {self.source.endpoint}: {self._dead_reason}")
            now = time.monotonic()
            if self._queue.full():  # the publish loop waits for our sink, not for the server
                self._last_publish = now
            if now - self._last_publish > self._silence_s:
                raise ConnectorError(
                    f"OPC-UA {self.source.endpoint}: server silent for {self._silence_s:g} s"
                )
            if now >= next_flush:
                self._flush_missing()
                next_flush = now + 5.0

    def _mark_dead(self, reason: str) -> None:
        if self._dead is not None and not self._dead.is_set():
            self._dead_reason = reason
            self._dead.set()

    async def _on_lost(self, exc: Exception) -> None:
        self._mark_dead(f"connection lost: {exc!r}")

    async def _close(self, client: Client) -> None:
        try:
            await asyncio.wait_for(client.disconnect(), timeout=min(self.source.timeout_s, 2.0))
        except Exception as exc:  # the server is gone: drop the socket, the session expires there
            log.debug("opcua_close_failed", source=self.source_id, error=repr(exc))
            with contextlib.suppress(Exception):
                client.disconnect_socket()
        task = client.uaclient._publish_task
        if task is not None and not task.done():
            task.cancel()

    # --- subscription ---------------------------------------------------------------------------------------

    async def _subscribe(self, client: Client) -> None:
        self.bad_nodes = {self.signals[i].binding.node_id: why for i, why in self._invalid.items()}
        wanted = [
            i for i, s in enumerate(self.signals) if s.binding.mode == "subscribe" and i not in self._invalid
        ]
        if wanted:
            sub_id = await self._create_subscription(client)
            await self._create_items(client, sub_id, wanted)
        self._m_bad.set(len(self.bad_nodes))
        if self.bad_nodes:
            log.warning(
                "opcua_bad_nodes",
                source=self.source_id,
                count=len(self.bad_nodes),
                node_ids=sorted(self.bad_nodes),
            )

    async def _create_subscription(self, client: Client) -> int:
        interval = float(self.source.publishing_interval_ms)
        keepalive = max(1, math.ceil(1000.0 / interval))  # an empty publish response about every second
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval,
            RequestedLifetimeCount=max(keepalive * 3, math.ceil(60_000 / interval)),
            RequestedMaxKeepAliveCount=keepalive,
            MaxNotificationsPerPublish=0,
            PublishingEnabled=True,
            Priority=0,
        )
        result = await asyncio.wait_for(
            client.uaclient.create_subscription(params, self._on_publish), self.source.timeout_s
        )
        keepalive_s = result.RevisedPublishingInterval * result.RevisedMaxKeepAliveCount / 1000.0
        # Never call a server silent before it was due to speak (slow publishing interval, revised keepalive).
        self._silence_s = max(self._silence_s, 2.5 * keepalive_s)
        return int(result.SubscriptionId)

    async def _create_items(self, client: Client, sub_id: int, wanted: list[int]) -> None:
        size = self.source.batch_size
        for start in range(0, len(wanted), size):
            chunk = wanted[start : start + size]
            results = await self._create_chunk(client, sub_id, chunk, with_filter=True)
            retry = []
            for i, res in zip(chunk, results, strict=True):
                code = res.StatusCode.value
                if code >> 30 == 0:
                    continue
                if code & 0xFFFF0000 in FILTER_CODES:
                    retry.append(i)
                else:
                    self.bad_nodes[self.signals[i].binding.node_id] = status_of(code)[1]
            if retry:
                log.warning(
                    "opcua_deadband_refused",
                    source=self.source_id,
                    node_ids=[self.signals[i].binding.node_id for i in retry],
                )
                again = await self._create_chunk(client, sub_id, retry, with_filter=False)
                for i, res in zip(retry, again, strict=True):
                    if res.StatusCode.value >> 30:
                        self.bad_nodes[self.signals[i].binding.node_id] = status_of(res.StatusCode.value)[1]

    async def _create_chunk(
        self, client: Client, sub_id: int, chunk: list[int], with_filter: bool
    ) -> list[ua.MonitoredItemCreateResult]:
        params = ua.CreateMonitoredItemsParameters()
        params.SubscriptionId = sub_id
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.ItemsToCreate = [self._item_request(i, with_filter) for i in chunk]
        return await asyncio.wait_for(client.uaclient.create_monitored_items(params), self.source.timeout_s)

    def _item_request(self, i: int, with_filter: bool) -> ua.MonitoredItemCreateRequest:
        b = self.signals[i].binding
        rv = ua.ReadValueId()
        rv.NodeId = self._node_ids[i]
        rv.AttributeId = ua.AttributeIds.Value
        mp = ua.MonitoringParameters()
        mp.ClientHandle = i + 1
        mp.SamplingInterval = float(b.sampling_ms)
        mp.QueueSize = b.queue_size
        mp.DiscardOldest = True
        if with_filter and b.deadband is not None:
            f = ua.DataChangeFilter()
            f.Trigger = ua.DataChangeTrigger.StatusValue
            f.DeadbandType = 1 if b.deadband.kind == "absolute" else 2
            f.DeadbandValue = b.deadband.value
            mp.Filter = f
        req = ua.MonitoredItemCreateRequest()
        req.ItemToMonitor = rv
        req.MonitoringMode = ua.MonitoringMode.Reporting
        req.RequestedParameters = mp
        return req

    async def _on_publish(self, result: ua.PublishResult) -> None:
        self._last_publish = time.monotonic()
        data = result.NotificationMessage.NotificationData
        if not data:
            return
        recv_ts = time.time_ns() // 1000
        readings: list[Reading] = []
        n = len(self.signals)
        for notif in data:
            if isinstance(notif, ua.DataChangeNotification):
                for item in notif.MonitoredItems:
                    i = item.ClientHandle - 1
                    if 0 <= i < n:
                        readings.append(self._reading(i, item.Value, recv_ts))
            elif isinstance(notif, ua.StatusChangeNotification):
                self._mark_dead(f"subscription status {status_of(notif.Status.value)[1]}")
        if readings:
            await self._deliver(readings)

    # --- polling --------------------------------------------------------------------------------------------

    def _start_pollers(self, client: Client) -> list[asyncio.Task[None]]:
        groups: dict[int, list[int]] = {}
        for i, s in enumerate(self.signals):
            if s.binding.mode == "poll" and i not in self._invalid:
                ms = s.binding.sampling_ms or self.source.publishing_interval_ms
                groups.setdefault(ms, []).append(i)
        if groups and not any(s.binding.mode == "subscribe" for s in self.signals):
            # Only polls show the server is alive: allow two poll periods between signs of life.
            slowest = max(groups) / 1000.0
            self._silence_s = max(self._silence_s, 2 * slowest + self.source.timeout_s)
        return [asyncio.create_task(self._poll(client, ms / 1000.0, idx)) for ms, idx in groups.items()]

    async def _poll(self, client: Client, period: float, indices: list[int]) -> None:
        try:
            while indices:
                started = time.monotonic()
                for start in range(0, len(indices), self.source.batch_size):
                    await self._poll_chunk(client, indices, indices[start : start + self.source.batch_size])
                self._last_publish = max(self._last_publish, time.monotonic())
                await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))
        except (OSError, TimeoutError, ua.UaError) as exc:
            self._mark_dead(f"poll failed: {exc!r}")

    async def _poll_chunk(self, client: Client, indices: list[int], chunk: list[int]) -> None:
        params = ua.ReadParameters()
        params.TimestampsToReturn = ua.TimestampsToReturn.Both
        params.NodesToRead = [
            ua.ReadValueId(NodeId=self._node_ids[i], AttributeId=ua.AttributeIds.Value) for i in chunk
        ]
        values = await asyncio.wait_for(client.uaclient.read(params), self.source.timeout_s)
        recv_ts = time.time_ns() // 1000
        readings = []
        for i, dv in zip(chunk, values, strict=True):
            code = dv.StatusCode.value if dv.StatusCode is not None else 0
            if code & 0xFFFF0000 in BAD_NODE_CODES:
                self.bad_nodes[self.signals[i].binding.node_id] = status_of(code)[1]
                indices.remove(i)
                self._m_bad.set(len(self.bad_nodes))
                log.warning(
                    "opcua_bad_nodes",
                    source=self.source_id,
                    count=len(self.bad_nodes),
                    node_ids=sorted(self.bad_nodes),
                )
                continue
            readings.append(self._reading(i, dv, recv_ts))
        if readings:
            await self._deliver(readings)

    # --- readings and metrics -------------------------------------------------------------------------------

    def _reading(self, i: int, dv: ua.DataValue, recv_ts: int) -> Reading:
        sig = self.signals[i]
        variant = dv.Value
        code = dv.StatusCode.value if dv.StatusCode is not None else 0
        quality, name = status_of(code)
        missing = self._missing
        if quality is Quality.GOOD:
            if missing and i in missing:
                self._missing_metric(i).inc(max(0.0, time.monotonic() - missing.pop(i)))
        elif i not in missing:
            missing[i] = time.monotonic()
        return Reading(
            self.source_id,
            sig.node,
            sig.prop,
            variant.Value if variant is not None else None,
            to_us(dv.SourceTimestamp),
            to_us(dv.ServerTimestamp),
            recv_ts,
            quality,
            name,
        )

    async def _deliver_stale(self) -> None:
        """The session is gone: a subscribed value no longer holds (the aligner keeps it until told so)."""
        recv_ts = time.time_ns() // 1000
        stale = [
            Reading(self.source_id, sig.node, sig.prop, None, None, None, recv_ts, Quality.BAD, "stale")
            for sig in self.signals
            if sig.binding.mode == "subscribe"
        ]
        if stale:
            await self._deliver(stale)

    async def _deliver(self, readings: list[Reading]) -> None:
        self._values += len(readings)
        self._m_values.inc(len(readings))
        await self._queue.put(ReadingBatch(readings))

    def _missing_metric(self, i: int) -> Any:
        m = self._m_missing.get(i)
        if m is None:
            sig = self.signals[i]
            m = self._m_missing[i] = SIGNAL_MISSING.labels(self.source_id, f"{sig.node}.{sig.prop}")
        return m

    def _all_missing(self) -> None:
        now = time.monotonic()
        for i in range(len(self.signals)):
            self._missing.setdefault(i, now)

    def _flush_missing(self) -> None:
        now = time.monotonic()
        for i, since in self._missing.items():
            self._missing_metric(i).inc(max(0.0, now - since))
            self._missing[i] = now
