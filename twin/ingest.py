"""Broker → store: uplink batches from the edge agents applied to the twin, acknowledged after the commit.

Each worker is one paho-mqtt client (persistent session, QoS 1, manual MQTT acknowledgement) and one thread:

    on_message → queue → Intake.handle_many (check → decode → check → TwinStore.apply_many → commit)
               → publish each Ack → PUBACK each

A worker takes what its inbox holds (up to ``GROUP`` messages or ``GROUP_BYTES`` of payload) and stores their
batches in one transaction (``Intake.handle_many``: one commit for several batches; a transaction that fails is
redone batch by batch), with Python's cycle collector paused meanwhile (``twin.gc_pause``).

The MQTT PUBACK goes out only after the batch is stored (or dead-lettered) and its ``Ack`` published, so a
batch in hand when the process dies is delivered again by the broker (the persistent session keeps it); the
store is idempotent, so a second delivery only counts duplicates. When the database fails the agent gets
``Ack(stored=False, error=...)`` and resends later. Every message ends (``twin.intake``): whatever it holds and
whatever fails on the way, it is stored or dead-lettered, then acknowledged, so no sender can stall the
broker's in-flight window or kill a worker. A worker thread that dies anyway is restarted by the supervisor
and counted; ``consuming()`` says whether any worker is taking messages (``/healthz``). With several workers
the clients share one subscription (``$share/<group>/...``).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from plant.errors import BrokerUrlError
from plant.mqtt import BrokerUrl
from plant.wire import TOPIC_ROOT, Ack, ack_topic, uplink_topic
from twin import gc_pause
from twin.budget import GatewayBudget
from twin.config import TwinSettings
from twin.dead_letters import DeadLetters, Row
from twin.errors import BrokerError, ConfigError
from twin.intake import WORKER_DIED, IngestStats, Intake, Listener, Outcome
from twin.lanes import Lanes
from twin.store import TwinStore
from twin.uplink_checks import WireLimits

__all__ = ["BrokerAddress", "IngestStats", "Ingestor", "Listener", "Outcome"]

log = structlog.get_logger(__name__)

SUPERVISE_EVERY_S = 0.5
GROUP = 256  # messages a worker takes from its inbox at once: their batches stored and dead letters written together
# payload bytes a worker takes at once: decoded, a group weighs about ten times its payload (2 MiB of the agent's
# batches, ~18,000 values, decode to ~20 MiB), so a backlog waits in the broker, not in the workers' memory
GROUP_BYTES = 2 * 1024 * 1024


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
        try:
            u = BrokerUrl.parse(url)
        except BrokerUrlError as exc:
            raise ConfigError(f"MQTT URL {url!r}: {exc}") from None
        return cls(u.host, u.port, u.username, u.password, u.tls)


class Ingestor:
    """Subscribes to the agents' uplink topics and applies each batch to the twin.

    Args:
        store: the twin store batches are applied to.
        broker: where the MQTT broker is.
        client_id: MQTT client id (with ``-<n>`` per worker when several); keep it stable for the session.
        workers: clients and threads; more than one uses a shared subscription.
        share_group: the shared subscription's group.
        shared: use the shared subscription even with one worker (several processes, one worker each);
            None: when ``workers`` > 1.
        topic_root: topic root of the uplink and ack topics.
        gateway: subscribe to this gateway only (``+`` for every gateway).
        keepalive: MQTT keepalive, seconds.
        limits: message size and string limits (``twin.uplink_checks``).
        dead_letters: where messages that cannot be stored go; a table of the store's database by default.
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
        shared: bool | None = None,
        topic_root: str = TOPIC_ROOT,
        gateway: str = "+",
        keepalive: int = 30,
        limits: WireLimits | None = None,
        dead_letters: DeadLetters | None = None,
        budget: GatewayBudget | None = None,
    ) -> None:
        self.store = store
        self.budget = budget or GatewayBudget(0, 0)
        self.broker = broker or BrokerAddress()
        self.topic_root = topic_root
        limits = limits or WireLimits()
        dead = dead_letters or DeadLetters(store.engine, payload_max=limits.max_payload_bytes)
        self.intake = Intake(store, dead, topic_root, limits, budget=self.budget)
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        topic = uplink_topic(gateway, topic_root)  # gateway "+" gives the filter of every gateway
        if workers > 1 if shared is None else shared:
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
        limits = WireLimits(settings.ingest_max_payload_bytes, settings.ingest_max_string)
        dead = DeadLetters(store.engine, settings.ingest_dead_letters_kept, settings.ingest_max_payload_bytes)
        return cls(store, BrokerAddress.from_url(url), client_id=settings.mqtt_client_id,
                   workers=settings.ingest_workers, share_group=settings.ingest_share_group,
                   topic_root=settings.mqtt_topic_root, limits=limits, dead_letters=dead,
                   budget=GatewayBudget(settings.ingest_gateway_budget, settings.ingest_gateway_burst))

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(batch, result)`` after each stored batch (on the worker thread; keep it quick)."""
        self.intake.listeners.append(listener)

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
        self._supervisor = threading.Thread(target=self._supervise, name="ingest-supervisor", daemon=True)
        self._supervisor.start()
        log.info("ingest_started", broker=f"{self.broker.host}:{self.broker.port}",
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
        if self._supervisor is not None:
            self._supervisor.join(timeout)
        for w in self._workers:
            w.stop(timeout)
            if leave:
                w.leave()
        log.info("ingest_stopped", left=leave, **self._summary())

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
        return self.intake.stats()

    @property
    def workers(self) -> int:
        """How many workers (MQTT clients) this ingestor runs."""
        return len(self._workers)

    @property
    def stopping(self) -> bool:
        """Whether stop() was called."""
        return self._stopping.is_set()

    def consuming(self) -> int:
        """How many workers take messages now: their thread runs and their client is subscribed."""
        if self.stopping:
            return 0
        return sum(1 for w in self._workers if w.thread.is_alive() and w.connected)

    def handle(self, topic: str, payload: bytes | bytearray, deferred: list[Row] | None = None) -> Outcome:
        """Check, store and answer one uplink message (never raises); what a worker does with each."""
        return self.intake.handle(topic, payload, deferred=deferred)

    def _supervise(self) -> None:
        """Restart any worker whose thread died, until stop()."""
        while not self._stopping.wait(SUPERVISE_EVERY_S):
            for w in self._workers:
                if not w.thread.is_alive() and not self._stopping.is_set():
                    self.intake.worker_restarted()
                    log.error("ingest_worker_restarted", client_id=w.client_id)
                    w.restart()

    def _summary(self) -> dict[str, Any]:
        s = self.stats()
        return {"batches": s.batches, "values": s.values, "duplicates": s.duplicates,
                "rejected": s.rejected_total, "failed": s.failed, "dead_letters": sum(s.dead_letters.values()),
                "worker_restarts": s.worker_restarts}


def _lane_of(msg: mqtt.MQTTMessage) -> str:
    try:
        return msg.topic
    except UnicodeDecodeError:  # not a topic any broker should pass on: one lane for all such
        return ""


class _Worker:
    """One MQTT client and the thread that applies what it receives."""

    def __init__(self, owner: Ingestor, client_id: str, topic: str, keepalive: int) -> None:
        self.owner = owner
        self.topic = topic
        self.keepalive = keepalive
        self.subscribed = threading.Event()
        self.connected = False
        self.error: str | None = None
        self.in_hand: list[mqtt.MQTTMessage] = []  # taken from the inbox, not yet acknowledged
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
        self.thread = self._thread()

    def _thread(self) -> threading.Thread:
        return threading.Thread(target=self._loop, name=f"ingest-{self.client_id}", daemon=True)

    def start(self) -> None:
        b = self.owner.broker
        try:
            self.client.connect_async(b.host, b.port, self.keepalive)
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot connect to MQTT broker {b.host}:{b.port}: {exc}") from exc
        self.client.loop_start()
        self.thread.start()

    def restart(self) -> None:
        """A new thread after this one died; the messages it held are dead-lettered and acknowledged."""
        for msg in list(self.in_hand):
            self.owner.intake.dead_letters.record(WORKER_DIED, "the ingest worker died holding this message",
                                                  msg.topic, msg.payload)
            self._puback(msg)
        self.thread = self._thread()
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
                log.warning("ingest_session_end_failed", client_id=self.client_id)
            c.disconnect()
            c.loop_stop()
        except OSError as exc:
            log.warning("ingest_session_end_failed", client_id=self.client_id, error=str(exc))

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            self.error = f"connection refused: {rc}"
            log.warning("mqtt_connect_refused", reason=str(rc))
            return
        self.error = None
        self.connected = True
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: list[Any], _p: Any) -> None:
        if any(c.is_failure for c in codes):
            self.error = f"subscription to {self.topic!r} refused: {codes[0]}"
            return
        self.subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self.connected = False
        if not self.owner.stopping:
            log.warning("mqtt_reconnecting", reason=str(rc))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put(msg)

    def _loop(self) -> None:
        deferred: list[Row] = []  # dead letters of the group in hand, written together
        while not self.owner.stopping:
            try:
                msg = self.inbox.get(timeout=0.2)
            except queue.Empty:
                continue
            group = [msg]
            size = len(msg.payload)
            while len(group) < GROUP and size < GROUP_BYTES:
                try:
                    group.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
                size += len(group[-1].payload)
            self.in_hand = list(group)
            waiting = self._handle_group(group, deferred)
            if waiting:
                self.owner.intake.flush(deferred)
                for m in waiting:
                    self._puback(m)
        # what is still queued is not acknowledged: the broker delivers it again to this session

    def _handle_group(self, group: list[mqtt.MQTTMessage], deferred: list[Row]) -> list[mqtt.MQTTMessage]:
        """Handle the messages in hand, their batches stored together (``Intake.handle_many``), publish their
        acks and PUBACK them; returns those whose dead letter waits in ``deferred``."""
        try:
            with gc_pause.paused():  # the group's items form no cycles: not walked again and again
                outcomes = self.owner.intake.handle_many([(m.topic, m.payload) for m in group], deferred)
        except Exception:  # a topic that is not UTF-8, or a bug: each message on its own, and each still ends
            log.exception("ingest_group_failed_retrying_singly", messages=len(group))
            return [m for m in group if self._process(m, deferred)]
        waiting = []
        for msg, outcome in zip(group, outcomes, strict=True):
            self._publish_ack(outcome.ack)
            if outcome.ack is None and outcome.dead_letter is not None:
                waiting.append(msg)
            else:
                self._puback(msg)
        return waiting

    def _process(self, msg: mqtt.MQTTMessage, deferred: list[Row]) -> bool:
        """Handle one message and publish its ack; PUBACK it unless its dead letter waits in ``deferred``.

        Whatever happens, the message ends here (or, for a deferred dead letter, once the group is written).
        """
        before = len(deferred)
        try:
            self._publish_ack(self.owner.handle(msg.topic, msg.payload, deferred).ack)
        except Exception:  # only a bug gets here (handle never raises): log it, the message still ends
            log.exception("ingest_message_failed", topic=msg.topic[:200])
        if len(deferred) > before:
            return True
        self._puback(msg)
        return False

    def _publish_ack(self, ack: Ack | None) -> None:
        if ack is None:
            return
        try:
            info = self.client.publish(ack_topic(ack.gateway, self.owner.topic_root), ack.model_dump_json(), qos=1)
        except Exception:  # a bug: the message still ends
            log.exception("ack_not_published", gateway_id=ack.gateway, batch=ack.batch)
            return
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            log.warning("ack_not_published", gateway_id=ack.gateway, batch=ack.batch, rc=info.rc)

    def _puback(self, msg: mqtt.MQTTMessage) -> None:
        with contextlib.suppress(ValueError):
            self.in_hand.remove(msg)
        try:
            self.client.ack(msg.mid, msg.qos)
        except Exception as exc:  # the connection is gone: the broker delivers it again to this session
            log.warning("puback_failed", mid=msg.mid, error=str(exc))
            return
        self.owner.intake.ended()
