"""Broker → store: uplink batches from the edge agents applied to the twin, acknowledged after the commit.

Each worker is one connection of plant's MQTT client (``ThreadedClient``: its own thread and event loop,
reconnecting with plant's ``Backoff``; MQTT 3.1.1, persistent session, QoS 1, manual acknowledgement) and one
thread that applies what it receives:

    on_delivery → inbox → Intake.handle_many (check → decode → check → TwinStore.apply_many → commit)
                → publish the Acks → PUBACK the messages (handed to the connection in that order)

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

import asyncio
import dataclasses
import queue
import threading
from typing import Any

import structlog

from plant.errors import BrokerUrlError, MqttError
from plant.mqtt import Backoff, BrokerUrl, Delivery, MqttClient, MqttOptions, ThreadedClient
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

__all__ = ["IngestStats", "Ingestor", "Listener", "Outcome"]

log = structlog.get_logger(__name__)

SUPERVISE_EVERY_S = 0.5
GROUP = 256  # messages a worker takes from its inbox at once: their batches stored and dead letters written together
# payload bytes a worker takes at once: decoded, a group weighs about ten times its payload (2 MiB of the agent's
# batches, ~18,000 values, decode to ~20 MiB), so a backlog waits in the broker, not in the workers' memory
GROUP_BYTES = 2 * 1024 * 1024
RECONNECT_S = (1.0, 30.0)  # first and longest delay between a worker's connection attempts (plant's Backoff)



class Ingestor:
    """Subscribes to the agents' uplink topics and applies each batch to the twin.

    Args:
        store: the twin store batches are applied to.
        broker: where the MQTT broker is and how to log in (127.0.0.1:1883 by default); its client id is not used.
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
        broker: BrokerUrl | None = None,
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
        self.broker = broker or BrokerUrl("127.0.0.1", 1883)
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
            _Worker(self, MqttOptions.from_url(self.broker, f"{client_id}-{n}" if workers > 1 else client_id,
                                               own_id=True, keepalive_s=keepalive, protocol="3.1.1"), topic)
            for n in range(workers)
        ]

    @classmethod
    def from_settings(cls, store: TwinStore, settings: TwinSettings, mqtt_url: str | None = None) -> Ingestor:
        """An ingestor configured by the platform settings; ``mqtt_url`` overrides ``settings.mqtt_url`` (a
        client id the URL names wins over ``settings.mqtt_client_id``)."""
        url = mqtt_url or settings.mqtt_url
        if url is None:
            raise ConfigError("no MQTT broker URL: set TWIN_MQTT_URL or start the embedded broker first")
        try:
            broker = BrokerUrl.parse(url)
        except BrokerUrlError as exc:
            raise ConfigError(f"MQTT URL {url!r}: {exc}") from None
        limits = WireLimits(settings.ingest_max_payload_bytes, settings.ingest_max_string)
        dead = DeadLetters(store.engine, settings.ingest_dead_letters_kept, settings.ingest_max_payload_bytes)
        return cls(store, broker, client_id=broker.client_id or settings.mqtt_client_id,
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
            if not w.client.wait_connected(timeout):
                error = w.client.error
                self.stop()
                raise BrokerError(
                    f"cannot subscribe at MQTT broker {self.broker.host}:{self.broker.port} "
                    f"within {timeout:g}s"
                    f"{': ' + error if error else ''}"
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
        return sum(1 for w in self._workers if w.thread.is_alive() and w.client.is_connected())

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


def _lane_of(msg: Delivery) -> str:
    return msg.topic


class _Worker:
    """One MQTT connection (plant's ``ThreadedClient``) and the thread that applies what it receives."""

    def __init__(self, owner: Ingestor, options: MqttOptions, topic: str) -> None:
        self.owner = owner
        self.topic = topic
        self.client_id = options.client_id
        self.in_hand: list[Delivery] = []  # taken from the inbox, not yet acknowledged
        self.inbox: Lanes[Delivery] = Lanes(_lane_of)  # a lane per gateway (uplink topic)
        self.client = ThreadedClient(options, [topic], backoff=Backoff(*RECONNECT_S),
                                     name=f"ingest-mqtt-{self.client_id}", on_delivery=self.inbox.put)
        self.thread = self._thread()

    def _thread(self) -> threading.Thread:
        return threading.Thread(target=self._loop, name=f"ingest-{self.client_id}", daemon=True)

    def start(self) -> None:
        self.client.start()
        self.thread.start()

    def restart(self) -> None:
        """A new thread after this one died; the messages it held are dead-lettered and acknowledged."""
        held = list(self.in_hand)
        for msg in held:
            self.owner.intake.dead_letters.record(WORKER_DIED, "the ingest worker died holding this message",
                                                  msg.topic, msg.payload)
        self._puback(held)
        self.thread = self._thread()
        self.thread.start()

    def stop(self, timeout: float) -> None:
        if self.thread.is_alive():
            self.thread.join(timeout)
        self.client.stop()

    def leave(self, timeout: float = 5.0) -> None:
        """End this worker's persistent session: connect once with a clean session, then disconnect."""
        options = dataclasses.replace(self.client.options, persistent=False, timeout_s=timeout)
        try:
            asyncio.run(_end_session(options))
        except MqttError as exc:
            log.warning("ingest_session_end_failed", client_id=self.client_id, error=str(exc))

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
                self._puback(waiting)
        # what is still queued is not acknowledged: the broker delivers it again to this session

    def _handle_group(self, group: list[Delivery], deferred: list[Row]) -> list[Delivery]:
        """Handle the messages in hand, their batches stored together (``Intake.handle_many``), publish their
        acks and PUBACK them; returns those whose dead letter waits in ``deferred``."""
        try:
            with gc_pause.paused():  # the group's items form no cycles: not walked again and again
                outcomes = self.owner.intake.handle_many([(m.topic, m.payload) for m in group], deferred)
        except Exception:  # a bug: each message on its own, and each still ends
            log.exception("ingest_group_failed_retrying_singly", messages=len(group))
            return [m for m in group if self._process(m, deferred)]
        acks = [outcome.ack for outcome in outcomes if outcome.ack is not None]
        self._publish_acks(acks)
        waiting, done = [], []
        for msg, outcome in zip(group, outcomes, strict=True):
            if outcome.ack is None and outcome.dead_letter is not None:
                waiting.append(msg)
            else:
                done.append(msg)
        self._puback(done)
        return waiting

    def _process(self, msg: Delivery, deferred: list[Row]) -> bool:
        """Handle one message and publish its ack; PUBACK it unless its dead letter waits in ``deferred``.

        Whatever happens, the message ends here (or, for a deferred dead letter, once the group is written).
        """
        before = len(deferred)
        try:
            ack = self.owner.handle(msg.topic, msg.payload, deferred).ack
            self._publish_acks([ack] if ack is not None else [])
        except Exception:  # only a bug gets here (handle never raises): log it, the message still ends
            log.exception("ingest_message_failed", topic=msg.topic[:200])
        if len(deferred) > before:
            return True
        self._puback([msg])
        return False

    def _publish_acks(self, acks: list[Ack]) -> None:
        """Hand the acks to the client, to go out before the PUBACKs that follow (QoS 1)."""
        root = self.owner.topic_root
        try:
            self.client.publish_many([(ack_topic(a.gateway, root), a.model_dump_json().encode()) for a in acks], 1)
        except Exception:  # a bug: the messages still end
            log.exception("ack_not_published", batches=[a.batch for a in acks][:20])

    def _puback(self, msgs: list[Delivery]) -> None:
        """PUBACK ``msgs`` (those of a connection since lost are left to the broker to deliver again)."""
        if not msgs:
            return
        gone = {id(m) for m in msgs}
        self.in_hand = [m for m in self.in_hand if id(m) not in gone]
        self.owner.intake.ended(self.client.ack(msgs))  # those of a lost connection are counted when they come again


async def _end_session(options: MqttOptions) -> None:
    """Connect with ``options`` (a clean session ends the one the broker kept for this client id), disconnect."""
    async with MqttClient(options, _ignore) as client:
        await client.disconnect()


def _ignore(_topic: bytes, _payload: bytes, _qos: int, _mid: int, _dup: bool) -> None:
    """Messages a clean session gets: none (it subscribes to nothing)."""
