"""A client on the real broker standing in for an edge agent's uplink, for the ingest tests: it publishes
batches (or any bytes) on a gateway's uplink topic and hears one gateway's acks."""

from __future__ import annotations

import queue

from plant.mqtt import MqttOptions, ThreadedClient
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
        options = MqttOptions(host, port, f"{root}-{gateway}", protocol="3.1.1", persistent=False)
        on_ack = self.acks.put
        self.client = ThreadedClient(options, [ack_topic(gateway, root)], lambda _t, p, _q: on_ack(decode_ack(p)))
        assert self.client.start().wait_connected(5), "the test broker did not take the uplink client"

    def send(self, payload: UplinkBatch | bytes | str, gateway: str | None = None) -> None:
        data = payload.model_dump_json() if isinstance(payload, UplinkBatch) else payload
        raw = data.encode() if isinstance(data, str) else data
        self.client.publish(uplink_topic(gateway or self.gateway, self.root), raw, qos=1, acked=True)

    def ack(self, timeout: float = 10.0) -> Ack:
        return self.acks.get(timeout=timeout)

    def close(self) -> None:
        self.client.stop()
