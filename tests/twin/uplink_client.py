"""A client on the real broker standing in for an edge agent's uplink, for the ingest tests: it publishes
batches (or any bytes) on a gateway's uplink topic and hears one gateway's acks."""

from __future__ import annotations

import queue

import paho.mqtt.client as mqtt

from plant.wire import Ack, UplinkBatch, ack_topic, decode_ack, uplink_topic

GW = "gw1"


class UplinkClient:
    """Publishes anything on any gateway's uplink topic under ``root``; collects the acks of ``gateway``.

    Args:
        host: broker host.
        port: broker port.
        root: the topic root the ingest under test serves.
        gateway: the gateway it sends as unless told otherwise, and whose acks it hears.
    """

    def __init__(self, host: str, port: int, root: str, gateway: str = GW) -> None:
        self.root, self.gateway = root, gateway
        self.acks: queue.Queue[Ack] = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{root}-{gateway}")
        subscribed = queue.Queue[int]()
        self.client.on_message = lambda _c, _u, m: self.acks.put(decode_ack(m.payload))
        self.client.on_subscribe = lambda *_a: subscribed.put(1)
        self.client.connect(host, port)
        self.client.loop_start()
        self.client.subscribe(ack_topic(gateway, root), qos=1)
        subscribed.get(timeout=5)

    def send(self, payload: UplinkBatch | bytes | str, gateway: str | None = None) -> None:
        data = payload.model_dump_json() if isinstance(payload, UplinkBatch) else payload
        self.client.publish(uplink_topic(gateway or self.gateway, self.root), data, qos=1).wait_for_publish(5)

    def ack(self, timeout: float = 10.0) -> Ack:
        return self.acks.get(timeout=timeout)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
