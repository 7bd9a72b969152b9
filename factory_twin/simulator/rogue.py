"""A rogue client on the platform's broker: the hostile uplinks a plant's ingest must survive.

Every kind of bad message the ingest checks refuse (``twin.uplink_checks``), sent as a gateway of its own and as
a forger of another's: gateway ids holding ``#``, ``+``, NUL or 70,000 characters, a 400-digit number, an
integer beyond int64, a NUL in a string, a payload over the size limit, garbage bytes, cut JSON, and a batch
claiming the victim's gateway sent on the rogue's topic. Used by the end-to-end test and
``benchmarks/rogue_gateway.py``; point it at a test plant, never a production one.
"""

from __future__ import annotations

import json
import threading
import uuid
from typing import TYPE_CHECKING

from plant.errors import MqttError
from plant.mqtt import Backoff, BrokerUrl, MqttOptions, ThreadedClient
from plant.wire import TOPIC_ROOT, now_us, uplink_topic
from twin.db import make_sessionmaker
from twin.gateways import new_credential, set_credential

if TYPE_CHECKING:
    from factory_twin.stack import Stack

FORGED_VALUE = -12345.0  # the value every forged item carries: it must never reach the twin


def hostile_uplinks(victim: str, rogue: str = "rogue-gateway", root: str = TOPIC_ROOT, node: str = "engine-1",
                    prop: str = "t24", max_payload: int = 1 << 20) -> list[tuple[str, bytes]]:
    """(topic, payload) of each hostile case, on the rogue's topic; ``node.prop`` a property of the plant."""
    ts = now_us()

    def batch(gateway: str, value: object, **extra: object) -> bytes:
        item = {"node": node, "prop": prop, "value": value, "ts": ts, **extra}
        return json.dumps({"gateway": gateway, "batch": uuid.uuid4().hex, "sent": ts, "values": [item]}).encode()

    mine = uplink_topic(rogue, root)
    return [
        (mine, batch(f"{rogue}/#", 1.0)),
        (mine, batch("+", 1.0)),
        (mine, batch("rogue\x00gateway", 1.0)),
        (mine, batch("g" * 70_000, 1.0)),
        (mine, batch(rogue, 0).replace(b'"value": 0', b'"value": ' + b"9" * 400)),
        (mine, batch(rogue, 2**63)),
        (mine, batch(rogue, "on\x00off")),
        (mine, batch(rogue, 1.0, recv_ts=2**64)),
        (mine, b'{"gateway": "' + rogue.encode() + b'", "pad": "' + b"x" * (max_payload + 1) + b'"}'),
        (mine, bytes(range(256)) * 4),
        (mine, batch(rogue, 1.0)[:40]),
        (mine, batch(victim, FORGED_VALUE)),  # forged: the victim's gateway on the rogue's topic
    ]


class Rogue:
    """Publishes the hostile cases in rounds, on a thread, until stopped.

    Args:
        host: broker host.
        port: broker port.
        cases: what to publish each round (``hostile_uplinks``).
        every_s: seconds between rounds.
        username: the broker login (a gateway of its own), if the broker asks for one.
        password: its credential.
    """

    def __init__(self, host: str, port: int, cases: list[tuple[str, bytes]], every_s: float = 1.0,
                 username: str | None = None, password: str | None = None) -> None:
        self.cases = cases
        self.every_s = every_s
        self.sent = 0
        self._stop = threading.Event()
        options = MqttOptions(host, port, f"rogue-{uuid.uuid4().hex[:8]}", username=username, password=password,
                              protocol="3.1.1", persistent=False)
        # a login the broker has not read yet is refused for a moment: retry soon
        self.client = ThreadedClient(options, backoff=Backoff(initial=1.0, cap=2.0), name="rogue-mqtt").start()
        self._thread = threading.Thread(target=self._run, name="rogue", daemon=True)

    def start(self, after_s: float = 0.0) -> Rogue:
        """Begin after ``after_s`` seconds."""
        self._after = after_s
        self._thread.start()
        return self

    def _run(self) -> None:
        if self._stop.wait(self._after):
            return
        while not self._stop.is_set():
            for topic, payload in self.cases:
                try:
                    self.client.publish(topic, payload, qos=1)
                except MqttError:  # not connected (yet, or any more): this round's case is skipped
                    continue
                self.sent += 1
            self._stop.wait(self.every_s)

    def stop(self) -> None:
        """Stop publishing and disconnect."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self.client.stop()


def rogue_against(stack: Stack, victim: str, every_s: float = 1.0, name: str = "rogue-gateway") -> Rogue:
    """A rogue on ``stack``'s broker. Where the broker asks for logins (the embedded one), it is a gateway of
    its own, registered here: the threat is a gateway that is compromised or broken, not an anonymous client,
    which the broker refuses before ingest sees anything."""
    url = BrokerUrl.parse(stack.mqtt_url)
    username = password = None
    if stack.config.mqtt_url is None and stack.engine is not None:
        username, password = name, new_credential()
        with make_sessionmaker(stack.engine)() as session:
            set_credential(session, name, password)
    return Rogue(url.host, url.port, hostile_uplinks(victim, rogue=name), every_s,
                 username=username, password=password)
