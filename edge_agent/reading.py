"""What a connector hands to the pipeline: raw readings, before units, clocks and grids are applied."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from plant.wire import Quality


class Reading(NamedTuple):
    """One raw value of one bound signal, as a connector received it.

    A named tuple, not a dataclass: one is made per value received, and a frozen dataclass costs several
    times more to make; immutable all the same, and the hot loops unpack it in one step.

    Args:
        source: id of the site source it came from.
        node: twin node id the signal is bound to.
        prop: property name on that node.
        raw: the value as received (before scaling and unit conversion).
        source_ts: the device's own timestamp in µs, or None when the device sends none.
        server_ts: the server's timestamp in µs (OPC-UA), or None.
        recv_ts: the gateway's clock when it was received, µs.
        quality: good, uncertain or bad.
        status: the protocol's own status text (an OPC-UA StatusCode name), for people.
    """

    source: str
    node: str
    prop: str
    raw: object
    source_ts: int | None
    server_ts: int | None
    recv_ts: int
    quality: Quality = Quality.GOOD
    status: str = ""


@dataclass(slots=True)
class ReadingBatch:
    """Readings that arrived together (one MQTT message, one OPC-UA publish response).

    ``ack`` is called once every reading is durable in the outbox; for MQTT it sends the PUBACK upstream, so an
    unacknowledged message is redelivered by the broker after a crash.
    """

    readings: list[Reading]
    ack: Callable[[], None] | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (reason, detail) found while decoding
    # MQTT: (fingerprint, redelivered, number of readings) of each message in order, readings concatenated;
    # the pipeline skips a redelivered message it has already committed (see pipeline.py)
    messages: list[tuple[bytes, bool, int]] | None = None
