"""The paho wrapper's own helpers that need no broker."""

from __future__ import annotations

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.connectors.mqtt_client import _coalesce_pubacks


def test_queued_pubacks_are_merged_into_one_write_and_other_packets_keep_their_place() -> None:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="x", manual_ack=True)
    for mid in (5, 6, 7):
        c._send_puback(mid)  # no socket: they stay queued
    c._packet_queue(0x30, b"\x30\x04\x00\x01tp", 0, 0)  # a QoS 0 PUBLISH (publish() refuses while offline)
    c._send_puback(8)
    before = [bytes(p["packet"]) for p in c._out_packet]
    _coalesce_pubacks(c)
    after = [bytes(p["packet"]) for p in c._out_packet]
    assert len(after) == 3
    assert after[0] == b"\x40\x02\x00\x05\x40\x02\x00\x06\x40\x02\x00\x07"
    assert after[1:] == before[3:]  # the PUBLISH, then the lone PUBACK, untouched
    assert b"".join(after) == b"".join(before)  # the same bytes in the same order
    assert c._out_packet[0]["to_process"] == 12
    assert c._out_packet[0]["pos"] == 0
