"""Checks of an uplink message at the wire, before any I/O: what no database column or broker topic could hold.

Two levels, both pure and cheap (they run on every message):

- ``check_message(topic, payload)`` and ``check_envelope(topic, batch)`` judge the message as a whole. A message
  that fails them is dead-lettered (``twin.dead_letters``) and answered with no ``Ack``: there is no one to
  answer safely. Reasons:

      too_large         payload over ``TWIN_INGEST_MAX_PAYLOAD_BYTES``: refused unparsed
      undecodable       not JSON, or not an uplink batch
      bad_gateway       the batch's gateway id does not match ``plant.wire.GATEWAY_ID_PATTERN``
      gateway_mismatch  the batch's gateway is not the gateway segment of the topic it came on
      bad_batch_id      batch id empty, longer than 64 characters, or with control characters

- ``screen(batch)`` judges each item. A refused item gets a ``Rejection`` in the ack with one of these codes
  (beside the twin's own in ``twin.validation``); the other items of the batch go on:

      out_of_range      an integer beyond int64 (a 400-digit number, 2**63), a frame revision beyond int32
      bad_string        a string with a NUL character, or longer than ``TWIN_INGEST_MAX_STRING``
      bad_timestamp     a server or receive timestamp outside 0..2**63-1 µs
      bad_report        a command report that is not one (``plant.wire.CommandReport``: the field named)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from plant.errors import WireError
from plant.wire import (
    Diagnosis,
    Frame,
    Rejection,
    UplinkBatch,
    Value,
    decode_report,
    topic_gateway,
    valid_gateway_id,
)

TOO_LARGE = "too_large"
UNDECODABLE = "undecodable"
BAD_GATEWAY = "bad_gateway"
GATEWAY_MISMATCH = "gateway_mismatch"
BAD_BATCH_ID = "bad_batch_id"

OUT_OF_RANGE = "out_of_range"
BAD_STRING = "bad_string"
BAD_TIMESTAMP = "bad_timestamp"
BAD_REPORT = "bad_report"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MAX = 2**31 - 1
MAX_BATCH_ID = 64
DIAG_TEXT_LIMITS = {"model": 128, "version": 64, "unit": 32}  # the columns that hold them

Problem = tuple[str, str]  # (code, detail)
ItemKind = Literal["value", "frame", "diagnosis", "command"]


@dataclass(frozen=True, slots=True)
class WireLimits:
    """What a message may be.

    Args:
        max_payload_bytes: larger payloads are refused unparsed.
        max_string: longest string value, in characters.
    """

    max_payload_bytes: int = 1 << 20
    max_string: int = 4096


class Refused(Exception):
    """A message refused as a whole: ``reason`` is its dead-letter code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def check_message(topic: str, size: int, root: str, limits: WireLimits) -> None:
    """Raise Refused if the message is too large or its topic names no valid gateway (before parsing)."""
    if size > limits.max_payload_bytes:
        raise Refused(TOO_LARGE, f"payload of {size} bytes, over the limit of {limits.max_payload_bytes}")
    gateway = topic_gateway(topic, root)
    if gateway is None or not valid_gateway_id(gateway):
        raise Refused(BAD_GATEWAY, f"topic {topic[:200]!r} names no valid gateway")


def check_envelope(topic: str, batch: UplinkBatch, root: str) -> None:
    """Raise Refused if the batch's gateway or id is unusable or the gateway is not the topic's."""
    if not valid_gateway_id(batch.gateway):
        raise Refused(BAD_GATEWAY, f"gateway id {batch.gateway[:80]!r} does not match the gateway id pattern")
    if batch.gateway != topic_gateway(topic, root):
        raise Refused(GATEWAY_MISMATCH, f"batch of gateway {batch.gateway!r} on topic {topic[:200]!r}")
    bid = batch.batch
    if not bid or len(bid) > MAX_BATCH_ID or not bid.isprintable():
        raise Refused(BAD_BATCH_ID, f"batch id {bid[:80]!r} is empty, too long or not printable")


@dataclass(frozen=True, slots=True)
class Screened:
    """A batch with its refused items taken out.

    Args:
        batch: the items that passed (the original batch when all did).
        rejected: the refused items, indexed in the original batch.
        positions: for each kind with refusals, the original index of each kept item.
    """

    batch: UplinkBatch
    rejected: tuple[Rejection, ...] = ()
    positions: dict[str, list[int]] = field(default_factory=dict)

    def original(self, r: Rejection) -> Rejection:
        """A rejection of the screened batch, indexed in the original one."""
        where = self.positions.get(r.kind)
        return r if where is None else r.model_copy(update={"index": where[r.index]})


def screen(batch: UplinkBatch, limits: WireLimits) -> Screened:
    """Refuse the items no column can hold; the rest go on to the twin's validation."""
    rejected: list[Rejection] = []
    keep: dict[str, list[int]] = {}
    update: dict[str, list[Any]] = {}
    for kind, attr, check in _ITEMS:
        items: list[Any] = getattr(batch, attr)
        bad: dict[int, Problem] = _bad_values(items, limits) if kind == "value" else {}
        for i, item in enumerate(items if kind != "value" else ()):
            problem = check(item, limits)
            if problem is not None:
                bad[i] = problem
        if bad:
            rejected += [Rejection(kind=kind, index=i, reason=p[0], detail=p[1]) for i, p in bad.items()]
            keep[kind] = [i for i in range(len(items)) if i not in bad]
            update[attr] = [items[i] for i in keep[kind]]
    if not rejected:
        return Screened(batch)
    return Screened(batch.model_copy(update=update), tuple(rejected), keep)


def _scalar_problem(raw: Any, limits: WireLimits) -> Problem | None:
    kind = type(raw)
    if kind is int and not INT64_MIN <= raw <= INT64_MAX:
        return OUT_OF_RANGE, f"integer of {raw.bit_length()} bits is beyond int64"
    if kind is str and ("\x00" in raw or len(raw) > limits.max_string):
        return BAD_STRING, f"string of {len(raw)} characters with NUL or over {limits.max_string}"
    return None


def _bad_values(values: list[Value], limits: WireLimits) -> dict[int, Problem]:
    """The values' problems by index; the common value (a float, plain timestamps) costs a few attribute reads."""
    bad: dict[int, Problem] = {}
    low, high = INT64_MIN, INT64_MAX
    for i, v in enumerate(values):
        server, recv = v.server_ts, v.recv_ts
        if (type(v.value) is float and low <= v.ts <= high and (server is None or 0 <= server <= high)
                and (recv is None or 0 <= recv <= high)):
            continue
        problem = _value_problem(v, limits)
        if problem is not None:
            bad[i] = problem
    return bad


def _value_problem(v: Value, limits: WireLimits) -> Problem | None:
    raw = v.value
    if type(raw) is not float and raw is not None and (p := _scalar_problem(raw, limits)) is not None:
        return p[0], f"{v.node[:64]!r}.{v.prop[:64]!r}: {p[1]}"
    server, recv = v.server_ts, v.recv_ts
    if (server is not None and not 0 <= server <= INT64_MAX) or (recv is not None and not 0 <= recv <= INT64_MAX):
        return BAD_TIMESTAMP, f"server_ts {str(server)[:40]} or recv_ts {str(recv)[:40]} is outside 0..2**63-1 µs"
    if not INT64_MIN <= v.ts <= INT64_MAX:
        return BAD_TIMESTAMP, f"ts {str(v.ts)[:40]} is outside int64"
    return None


def _frame_problem(f: Frame, limits: WireLimits) -> Problem | None:
    if not 0 <= f.revision <= INT32_MAX:
        return OUT_OF_RANGE, f"frame revision {str(f.revision)[:40]} is outside 0..2**31-1"
    if not INT64_MIN <= f.ts <= INT64_MAX:
        return BAD_TIMESTAMP, f"frame ts {str(f.ts)[:40]} is outside int64"
    for name, raw in f.values.items():
        if "\x00" in name or len(name) > 128:
            return BAD_STRING, f"frame of {f.node[:64]!r}: a property name with NUL or over 128 characters"
        if raw is not None and type(raw) is not float and (p := _scalar_problem(raw, limits)) is not None:
            return p[0], f"frame of {f.node[:64]!r}, {name!r}: {p[1]}"
    return None


def _diagnosis_problem(d: Diagnosis, limits: WireLimits) -> Problem | None:
    if not INT64_MIN <= d.ts <= INT64_MAX or (d.ready_at is not None and not INT64_MIN <= d.ready_at <= INT64_MAX):
        return BAD_TIMESTAMP, f"diagnosis of {d.node[:64]!r}: ts or ready_at outside int64"
    for name, most in (*DIAG_TEXT_LIMITS.items(), ("label", limits.max_string)):
        text = getattr(d, name)
        if text is not None and ("\x00" in text or len(text) > most):
            return BAD_STRING, f"diagnosis of {d.node[:64]!r}: {name} with NUL or over {most} characters"
    return None


def _report_problem(item: Any, _limits: WireLimits) -> Problem | None:
    try:
        decode_report(item)
    except WireError as exc:
        return BAD_REPORT, str(exc)[:300]
    return None


_ITEMS: tuple[tuple[ItemKind, str, Callable[[Any, WireLimits], Problem | None]], ...] = (
    ("value", "values", _value_problem),
    ("frame", "frames", _frame_problem),
    ("diagnosis", "diagnoses", _diagnosis_problem),
    ("command", "commands", _report_problem),
)
