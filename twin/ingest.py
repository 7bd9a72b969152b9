"""Broker → store: uplink batches from the edge agents applied to the twin, acknowledged after the commit.

Each worker is one paho-mqtt client (persistent session, QoS 1, manual MQTT acknowledgement) and one thread:

    on_message → queue → decode → TwinStore.apply → commit → publish Ack → PUBACK

The MQTT PUBACK goes out only after the batch is stored and its ``Ack`` published, so a batch in hand when
the process dies is delivered again by the broker (the persistent session keeps it); the store is idempotent,
so a second delivery only counts duplicates. When the database fails the agent gets
``Ack(stored=False, error=...)`` and resends later. An undecodable payload is counted, recorded in
``ingest_rejections`` and dropped: sending it again would not help. With several workers the clients share
one subscription (``$share/<group>/...``).
"""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from plant.errors import WireError
from plant.wire import (
    OVER_BUDGET,
    TOPIC_ROOT,
    Ack,
    UplinkBatch,
    ack_topic,
    decode_batch,
    uplink_topic,
)
from twin.budget import GatewayBudget
from twin.config import TwinSettings
from twin.errors import BrokerError, ConfigError, StoreError
from twin.lanes import Lanes
from twin.ownership import Ownership
from twin.store import ApplyResult, TwinStore, record_rejection

log = structlog.get_logger(__name__)

Listener = Callable[[UplinkBatch, ApplyResult], None]


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where the broker is and how to log in.

    Args:
        host: broker host.
        port: broker port.
        username: user name, if the broker wants one.
        password: its password.
        tls: connect with TLS (``mqtts://``).
    """

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> BrokerAddress:
        """Parse ``mqtt[s]://[user:pass@]host[:port]``."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"MQTT URL must look like mqtt[s]://host:port, got {url!r}")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, parts.port or (8883 if tls else 1883),
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None, tls)


@dataclass
class IngestStats:
    """Counters of one ingestor since it started.

    Args:
        batches: batches stored.
        values: values newly stored.
        accepted: items newly stored (values, frames, diagnoses).
        duplicates: items already stored, received again.
        rejected: refused items, by reason code.
        undecodable: payloads that were not an uplink batch.
        failed: batches the database failed to store (answered stored=False).
        nodes_updated: distinct nodes whose latest state changed.
    """

    batches: int = 0
    values: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    failed: int = 0
    nodes_updated: int = 0

    @property
    def rejected_total(self) -> int:
        """All refused items and payloads."""
        return sum(self.rejected.values()) + self.undecodable


class Ingestor:
    """Subscribes to the agents' uplink topics and applies each batch to the twin.

    Args:
        store: the twin store batches are applied to.
        broker: where the MQTT broker is.
        client_id: MQTT client id (with ``-<n>`` per worker when several); keep it stable for the session.
        workers: clients and threads; more than one uses a shared subscription.
        share_group: the shared subscription's group.
        topic_root: topic root of the uplink and ack topics.
        gateway: subscribe to this gateway only (``+`` for every gateway).
        keepalive: MQTT keepalive, seconds.
        budget: values per second each gateway may send (twin/budget.py); None: no limit.
    """

    def __init__(
        self,
        store: TwinStore,
        broker: BrokerAddress | None = None,
        *,
        client_id: str = "factory-twin-ingest",
        workers: int = 1,
        share_group: str = "ingest",
        topic_root: str = TOPIC_ROOT,
        gateway: str = "+",
        keepalive: int = 30,
        budget: GatewayBudget | None = None,
    ) -> None:
        self.store = store
        self.budget = budget or GatewayBudget(0, 0)
        self.ownership = Ownership(store.engine)
        self.broker = broker or BrokerAddress()
        self.topic_root = topic_root
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stats = IngestStats()
        self._rejected: Counter[str] = Counter()
        self._nodes: set[str] = set()
        self._stopping = threading.Event()
        topic = uplink_topic(gateway, topic_root)  # gateway "+" gives the filter of every gateway
        if workers > 1:
            topic = f"$share/{share_group}/{topic}"  # as plant.wire.shared_uplink_filter
        self._workers = [
            _Worker(self, f"{client_id}-{n}" if workers > 1 else client_id, topic, keepalive)
            for n in range(workers)
        ]

    @classmethod
    def from_settings(cls, store: TwinStore, settings: TwinSettings, mqtt_url: str | None = None) -> Ingestor:
        """An ingestor configured by the platform settings; ``mqtt_url`` overrides ``settings.mqtt_url``."""
        url = mqtt_url or settings.mqtt_url
        if url is None:
            raise ConfigError("no MQTT broker URL: set TWIN_MQTT_URL or start the embedded broker first")
        return cls(store, BrokerAddress.from_url(url), client_id=settings.mqtt_client_id,
                   workers=settings.ingest_workers, share_group=settings.ingest_share_group,
                   topic_root=settings.mqtt_topic_root,
                   budget=GatewayBudget(settings.ingest_gateway_budget, settings.ingest_gateway_burst))

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(batch, result)`` after each stored batch (on the worker thread; keep it quick)."""
        self._listeners.append(listener)

    def start(self, timeout: float = 10.0) -> Ingestor:
        """Connect every worker and wait until each is subscribed; raises BrokerError if that fails."""
        self._stopping.clear()
        for w in self._workers:
            w.start()
        for w in self._workers:
            if not w.subscribed.wait(timeout):
                self.stop()
                raise BrokerError(
                    f"cannot subscribe at MQTT broker {self.broker.host}:{self.broker.port} "
                    f"within {timeout:g}s"
                    f"{': ' + w.error if w.error else ''}"
                )
        log.info("ingest started", broker=f"{self.broker.host}:{self.broker.port}",
                 workers=len(self._workers))
        return self

    def stop(self, timeout: float = 10.0, leave: bool = False) -> None:
        """Finish the batch in hand, leave the rest to the broker (unacknowledged), disconnect.

        With ``leave`` the workers' broker sessions end as well, for a worker removed for good: Mosquitto
        hands a shared subscription's messages in turn to offline members that keep a session, so a worker
        gone without leaving holds its share until it returns or its session expires (agents resend
        unacknowledged batches, so nothing is lost, only late). What the sessions held, agents resend.
        """
        self._stopping.set()
        for w in self._workers:
            w.stop(timeout)
            if leave:
                w.leave()
        log.info("ingest stopped", left=leave, **self._summary())

    def run(self) -> None:
        """Start and serve until ``stop()`` is called from another thread or Ctrl-C."""
        self.start()
        try:
            self._stopping.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stats(self) -> IngestStats:
        """A copy of the counters."""
        with self._lock:
            s = self._stats
            return IngestStats(s.batches, s.values, s.accepted, s.duplicates, dict(self._rejected),
                               s.undecodable, s.failed, len(self._nodes))

    @property
    def workers(self) -> int:
        """How many workers (MQTT clients) this ingestor runs."""
        return len(self._workers)

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping.is_set()

    def handle(self, topic: str, payload: bytes | bytearray) -> Ack | None:
        """Decode, store and answer one uplink message; returns the ack to publish (None for undecodable)."""
        try:
            batch = decode_batch(bytes(payload))
        except WireError as exc:
            self._undecodable(topic, str(exc))
            return None
        sender = _gateway_of(topic, self.topic_root)  # the broker's ACL ties the topic to the gateway's login
        wait = self.budget.take(sender, len(batch))
        if wait is not None:
            return self._over_budget(sender, batch, wait)
        try:
            split = self.ownership.split(sender, batch)
            result = split.merge(self.store.apply(split.batch))
        except StoreError as exc:
            with self._lock:
                self._stats.failed += 1
            return Ack(gateway=batch.gateway, batch=batch.batch, stored=False, error=str(exc))
        self._count(result)
        log.info("batch stored", gateway=batch.gateway, batch=batch.batch, accepted=result.accepted,
                 duplicates=result.duplicates, rejected=len(result.rejected), changes=len(result.changes))
        for listener in self._listeners:
            try:
                listener(split.batch, result)
            except Exception:
                log.exception("ingest listener failed", listener=repr(listener))
        return result.ack(batch)

    def _over_budget(self, sender: str, batch: UplinkBatch, wait: float) -> Ack:
        """Refuse the whole batch before any database work: the gateway sends it again after ``wait``."""
        retry = round(wait, 3)
        if self.budget.should_report(sender):  # a flood must not flood the log as well
            log.warning("batches over budget", gateway=sender, batch=batch.batch, items=len(batch),
                        retry_after=retry, refused_so_far=self.budget.refused_batches().get(sender, 0))
        return Ack(gateway=batch.gateway, batch=batch.batch, stored=False, code=OVER_BUDGET, retry_after=retry,
                   error=f"over budget of {self.budget.rate:g} values/s: send again in {retry:g} s")

    def _count(self, result: ApplyResult) -> None:
        with self._lock:
            s = self._stats
            s.batches += 1
            s.values += result.values_accepted
            s.accepted += result.accepted
            s.duplicates += result.duplicates
            self._rejected.update(r.reason for r in result.rejected)
            self._nodes.update(result.nodes_changed)

    def _undecodable(self, topic: str, reason: str) -> None:
        with self._lock:
            self._stats.undecodable += 1
        gateway = _gateway_of(topic, self.topic_root)
        log.warning("undecodable uplink dropped", topic=topic, reason=reason)
        try:
            record_rejection(self.store.engine, gateway, "", "batch", "undecodable", reason)
        except Exception as exc:  # recording is best effort: the payload is dropped either way
            log.warning("could not record rejection", error=str(exc).splitlines()[0])

    def _summary(self) -> dict[str, Any]:
        s = self.stats()
        return {"batches": s.batches, "values": s.values, "duplicates": s.duplicates,
                "rejected": s.rejected_total, "failed": s.failed}


def _lane_of(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:  # not a topic any broker should pass on: one lane for all such
        return ""


def _gateway_of(topic: str, root: str) -> str:
    rest = topic[len(root) + 1 :] if topic.startswith(root + "/") else topic
    return rest.split("/", 1)[0][:64]


class _Worker:
    """One MQTT client and the thread that applies what it receives."""

    def __init__(self, owner: Ingestor, client_id: str, topic: str, keepalive: int) -> None:
        self.owner = owner
        self.topic = topic
        self.keepalive = keepalive
        self.subscribed = threading.Event()
        self.error: str | None = None
        self.inbox: Lanes[mqtt.MQTTMessage] = Lanes(_lane_of)  # a lane per gateway (uplink topic)
        self.client_id = client_id
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False,
                                  protocol=mqtt.MQTTv311, manual_ack=True)
        b = owner.broker
        if b.username:
            self.client.username_pw_set(b.username, b.password)
        if b.tls:
            self.client.tls_set()
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.thread = threading.Thread(target=self._loop, name=f"ingest-{client_id}", daemon=True)

    def start(self) -> None:
        b = self.owner.broker
        try:
            self.client.connect_async(b.host, b.port, self.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to MQTT broker {b.host}:{b.port}: {exc}") from exc
        self.client.loop_start()
        self.thread.start()

    def stop(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def leave(self, timeout: float = 5.0) -> None:
        """End this worker's persistent session: connect once with a clean session, then disconnect."""
        connected = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=True,
                        protocol=mqtt.MQTTv311)
        b = self.owner.broker
        if b.username:
            c.username_pw_set(b.username, b.password)
        if b.tls:
            c.tls_set()
        c.on_connect = lambda *_a: connected.set()
        try:
            c.connect(b.host, b.port, self.keepalive)
            c.loop_start()
            if not connected.wait(timeout):
                log.warning("could not end the ingest session", client_id=self.client_id)
            c.disconnect()
            c.loop_stop()
        except OSError as exc:
            log.warning("could not end the ingest session", client_id=self.client_id, error=str(exc))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.error = f"connection refused: {rc}"
            log.warning("mqtt connect refused", reason=str(rc))
            return
        self.error = None
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if any(c.is_failure for c in codes):
            self.error = f"subscription to {self.topic!r} refused: {codes[0]}"
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if not self.owner.stopping:
            log.warning("mqtt disconnected, reconnecting", reason=str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg)

    def _loop(self) -> None:
        while not self.owner.stopping:
            try:
                msg = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            self._process(msg)
        # what is still queued is not acknowledged: the broker delivers it again to this session

    def _process(self, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = self.owner.handle(msg.topic, msg.payload)
        except Exception:
            # a bug, not bad input: leave the message unacknowledged so the broker delivers it again
            log.exception("ingest failed on a batch", topic=msg.topic)
            return
        if ack is not None:
            topic = ack_topic(ack.gateway, self.owner.topic_root)
            info = self.client.publish(topic, ack.model_dump_json(), qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                log.warning("ack not published", gateway=ack.gateway, batch=ack.batch, rc=info.rc)
        self.client.ack(msg.mid, msg.qos)
