"""Fixtures of the agent's pipeline tests: a small site model and readings built from it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from plant.site import Site, parse_site

if TYPE_CHECKING:
    from tests.mqtt_peer import Message

SITE_YAML = """
site: {id: t}
sources:
  plc: {kind: mqtt, format: json}
asset_types:
  pump:
    alignment: {grid_ms: 1000, tolerance_ms: 3000, watermark_ms: 2000}
    properties:
      temp: {unit: °C}
      pressure: {unit: kPa}
      speed: {unit: rpm}
      count: {dtype: int}
      running: {dtype: bool}
      mode: {dtype: string}
nodes:
  - id: t
    kind: site
    children:
      - id: hall
        kind: area
        children:
          - id: pump-1
            kind: machine
            type: pump
            bindings:
              temp: {source: plc, topic: p/1, path: temp, unit: °F}
              pressure: {source: plc, topic: p/1, path: p, unit: bar}
              speed: {source: plc, topic: p/1, path: hz, unit: Hz}
              count: {source: plc, topic: p/1, path: c, scale: 2}
              running: {source: plc, topic: p/1, path: r}
              mode: {source: plc, topic: p/1, path: m}
          - id: pump-2
            kind: machine
            type: pump
            bindings:
              temp: {source: plc, topic: p/2, path: temp}
              pressure: {source: plc, topic: p/2, path: p}
"""


def on_broker(text: str, url: str, prefix: str) -> str:
    """Site text ``text`` (``SITE_YAML``, maybe edited) with its source on the broker at ``url``, connected as
    client ``agent-<prefix>``."""
    return text.replace(
        "plc: {kind: mqtt, format: json}",
        f"plc: {{kind: mqtt, format: json, url: '{url}', client_id: agent-{prefix}}}",
    )


@pytest.fixture
def site() -> Site:
    """A two-pump site with unit conversions on pump-1."""
    return parse_site(SITE_YAML, "test-site")


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    """The same site written to a file."""
    p = tmp_path / "site.yaml"
    p.write_text(SITE_YAML, encoding="utf-8")
    return p


class AckResponder:
    """A stand-in for the platform's ingest: decodes UplinkBatch on the real broker, stores keys once, acks.

    ``mode`` per batch: "ack" (stored), "refuse" (stored false), "silent" (no answer, the agent must resend).
    """

    def __init__(self, host: str, port: int, gateway: str) -> None:
        import threading

        from plant.wire import uplink_topic
        from tests.mqtt_peer import MqttPeer

        self.keys: set[tuple[object, ...]] = set()
        self.values: dict[tuple[object, ...], object] = {}
        self.received = 0
        self.batches = 0
        self.modes: list[str] = []  # consumed one per batch; "ack" once empty
        self.reports: list[Any] = []  # the command reports received (plant.wire.CommandReport), repeats too
        self.reject_first_value = False
        self.gateway = gateway
        self._lock = threading.Lock()
        self._peer = MqttPeer(host, port, [uplink_topic(gateway)], client_id=f"resp-{gateway}",
                              on_message=self._on_message)

    def _on_message(self, message: Message) -> None:
        from plant.wire import Ack, Rejection, ack_topic, decode_batch, decode_report, now_us

        batch = decode_batch(message.payload)
        with self._lock:
            self.batches += 1
            self.reports.extend(decode_report(c) for c in batch.commands)
            mode = self.modes.pop(0) if self.modes else "ack"
            if mode == "silent":
                return
            if mode == "refuse":
                ack = Ack(gateway=batch.gateway, batch=batch.batch, stored=False, error="database down")
            else:
                before = len(self.keys)
                self.received += len(batch)
                for v in batch.values:
                    self.keys.add(("v", v.node, v.prop, v.ts))
                    self.values.setdefault(("v", v.node, v.prop, v.ts), v.value)
                for f in batch.frames:
                    self.keys.add(("f", f.node, f.ts, f.revision))
                rejected = (
                    [Rejection(kind="value", index=0, reason="out_of_range")]
                    if (self.reject_first_value and batch.values)
                    else []
                )
                ack = Ack(
                    gateway=batch.gateway,
                    batch=batch.batch,
                    stored=True,
                    accepted=len(self.keys) - before,
                    duplicates=len(batch) - (len(self.keys) - before),
                    rejected=rejected,
                )
        if "commands" in batch.model_fields_set:  # as the platform does: its clock for the agent's offset
            ack = ack.model_copy(update={"at": now_us()})
        # not waiting for the PUBACK: some tests give the agent 0.5 s for an ack
        self._peer.publish(ack_topic(batch.gateway), ack.model_dump_json(), acked=False)

    def value_keys(self) -> set[tuple[object, ...]]:
        with self._lock:
            return {k for k in self.keys if k[0] == "v"}

    def close(self) -> None:
        self._peer.close()


@pytest.fixture
def responder(mqtt_broker: tuple[str, int], topic_prefix: str):  # type: ignore[no-untyped-def]
    """An ack responder for gateway ``topic_prefix`` on the test broker."""
    r = AckResponder(mqtt_broker[0], mqtt_broker[1], topic_prefix)
    yield r
    r.close()
