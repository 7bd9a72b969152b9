"""Wire messages between edge agents and the platform, and the topics that carry them.

An agent publishes ``UplinkBatch`` JSON at QoS 1 on ``uplink_topic(gateway)``; the platform stores it and answers
with an ``Ack`` on ``ack_topic(gateway)``. The agent deletes a batch from its outbox only when the ack arrives, so a
batch may be delivered more than once: every item carries an idempotency key (node, property or task, source
timestamp) and the platform stores each key once.

Timestamps are integers: microseconds since the Unix epoch, UTC. They are exact, compare cheaply and survive JSON.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from plant.errors import WireError

WIRE_VERSION = 1
TOPIC_ROOT = "factory-twin/v1"
# a gateway id: letters, digits and ``-_.``, 1 to 64 characters (it is a topic segment and a broker user name)
GATEWAY_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"

# why the platform refused an item or a whole batch (``Rejection.reason``, ``Ack.code``)
NOT_OWNER = "not_owner"  # the item's node belongs to another gateway (plant/site.py ``gateway``)
OVER_BUDGET = "over_budget"  # the gateway sent more values than its budget: nothing stored, retry later

# A gateway id: letters, digits, '-', '_' and '.', 1 to 64 characters, starting with a letter or digit. It is a
# topic segment, so it can hold no MQTT wildcard, no '/' and no NUL; the platform refuses any other.
GATEWAY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_GATEWAY_ID = re.compile(GATEWAY_ID_PATTERN)

Scalar = float | int | bool | str
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Quality(StrEnum):
    """OPC-UA-style quality of a value, reduced to its three classes."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


class Flag(StrEnum):
    """What happened to a value on its way, for people reading its history."""

    CLOCK_CORRECTED = "clock_corrected"  # source timestamp shifted by the estimated clock offset
    RECEIVE_TIME = "receive_time"  # source clock absurd: stamped with the gateway's receive time
    LATE = "late"  # arrived after its frame's watermark
    STALE = "stale"  # the source declared it stale (Sparkplug DEATH, lost subscription)
    IMPUTED = "imputed"  # filled by a declared policy, not measured


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Value(_Wire):
    """One property value of one twin node; key (node, prop, ts)."""

    node: str
    prop: str
    value: Scalar | None
    ts: int = Field(description="source timestamp, µs since epoch UTC")
    server_ts: int | None = Field(None, description="server timestamp (OPC-UA), µs")
    recv_ts: int | None = Field(None, description="gateway receive time, µs")
    quality: Quality = Quality.GOOD
    flags: tuple[Flag, ...] = ()


class Frame(_Wire):
    """One asset's aligned values at one grid point; key (node, ts). A later revision replaces an earlier one."""

    node: str
    ts: int
    values: dict[str, Scalar | None]
    quality: dict[str, Quality] = {}
    revision: int = 0


class DiagnosisSource(StrEnum):
    """Who produced a diagnosis."""

    EDGE = "edge"  # the edge student, confident enough
    PLATFORM = "platform"  # the platform's teacher, after the edge offloaded the window
    EDGE_FALLBACK = "edge_fallback"  # the student's answer, kept because the platform did not answer in time


class Diagnosis(_Wire):
    """A model's verdict on one window of one asset; key (node, task, ts)."""

    node: str
    task: Literal["rul", "faults", "anomaly"]
    ts: int = Field(description="window end, µs")
    model: str
    version: str
    source: DiagnosisSource = DiagnosisSource.EDGE
    confidence: float = Field(ge=0.0, le=1.0)
    score: float | None = None  # anomaly score
    threshold: float | None = None  # anomaly threshold
    label: str | None = None  # fault mode, "none" when healthy
    probability: float | None = None  # of the label
    rul: float | None = None  # remaining useful life, cycles or hours as the model declares
    rul_low: float | None = None
    rul_high: float | None = None
    unit: str = ""
    # set while the model still learns the asset's baseline and judges nothing: share learnt (0-1) and when it
    # expects to start judging (µs, if it keeps running normally); a verdict carries neither
    learning: float | None = Field(None, ge=0.0, le=1.0)
    ready_at: int | None = None


class CommandState(StrEnum):
    """Where a setpoint command is. The first four are the platform's; the last four are final."""

    AWAITING_CONFIRMATION = "awaiting_confirmation"  # two-person write: a second person must confirm
    PENDING = "pending"  # stored, not yet on the broker
    SENT = "sent"  # published to the gateway, no report yet
    APPLIED = "applied"  # written and read back equal
    REJECTED = "rejected"  # refused before any write (``reason`` says why)
    FAILED = "failed"  # the write failed or the value read back differs (``reason``, ``detail``: status code)
    EXPIRED = "expired"  # not applied before its expiry


FINAL_STATES = frozenset({CommandState.APPLIED, CommandState.REJECTED, CommandState.FAILED, CommandState.EXPIRED})


class Command(_Wire):
    """A setpoint write the platform sends to the owning gateway on ``command_topic(gateway)``, QoS 1.

    The agent applies each ``id`` at most once and never at or after ``expires`` by its corrected clock.
    """

    v: int = WIRE_VERSION
    id: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    gateway: str
    node: str
    prop: str
    value: float | int
    issued: int = Field(description="µs, the platform's clock when the command was created")
    expires: int = Field(description="µs: at or after this time the command must not be applied")
    actor: str = ""


class CommandReport(_Wire):
    """What became of a command on the gateway: applied (with the value read back), rejected, failed, expired."""

    # the platform mints command ids (hex) and reason codes: anything else is not a report of one of its commands
    id: str = Field(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    node: str = Field(max_length=128)
    prop: str = Field(max_length=128)
    state: Literal["applied", "rejected", "failed", "expired"]
    reason: str = Field("", max_length=64, pattern=r"^[a-z0-9_]*$",
                        description="stable code, e.g. 'out_of_limits', 'bad_status'")
    detail: str = Field("", max_length=500, pattern=r"^[^\x00]*$",
                        description="for people: the status code, the limits (no NUL)")
    value: float | int | bool | str | None = Field(None, description="the value read back after the write")
    at: int = Field(description="µs, the agent's corrected clock when the command ended")


class UplinkBatch(_Wire):
    """What an agent publishes: values, frames and diagnoses from its outbox, and command reports."""

    v: int = WIRE_VERSION
    gateway: str
    batch: str = Field(description="unique id of this batch, echoed in the ack")
    sent: int = Field(description="µs, the agent's clock when published")
    values: list[Value] = []
    frames: list[Frame] = []
    diagnoses: list[Diagnosis] = []
    commands: list[Any] = Field([], max_length=1000, description="command reports (CommandReport), each checked "
                                "on its own: a bad one is rejected alone (``command_reports``)")

    def __len__(self) -> int:
        return len(self.values) + len(self.frames) + len(self.diagnoses)


class Rejection(_Wire):
    """One item of a batch the platform refused, and why."""

    kind: Literal["value", "frame", "diagnosis", "command"]
    index: int
    reason: str = Field(description="short stable code, e.g. 'unknown_property', 'not_finite'")
    detail: str = Field("", description="what was wrong, for people")


class Ack(_Wire):
    """The platform's answer to one batch. ``stored`` false means nothing was kept: the agent must resend."""

    gateway: str
    batch: str
    stored: bool
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = []
    error: str | None = None
    code: str | None = Field(None, description="why nothing was stored, as a stable code, e.g. 'over_budget'")
    retry_after: float | None = Field(None, ge=0, description="send this batch again after so many seconds")
    at: int | None = Field(None, description="µs, the platform's clock when it answered (on acks of batches that "
                                             "carry the 'commands' key: the agent's clock offset)")

    @model_serializer(mode="wrap")
    def _without_unset_codes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # an agent of an earlier version refuses keys it does not know: send them only when they say something
        data: dict[str, Any] = handler(self)
        for key in ("code", "retry_after", "at"):
            if data.get(key) is None:
                data.pop(key, None)
        return data


def valid_gateway_id(gateway: str) -> bool:
    """Whether ``gateway`` matches ``GATEWAY_ID_PATTERN``."""
    return _GATEWAY_ID.fullmatch(gateway) is not None


def topic_gateway(topic: str, root: str = TOPIC_ROOT) -> str | None:
    """The gateway segment of an uplink topic ``<root>/<gateway>/uplink``, None if the topic is not one."""
    prefix = root + "/"
    if not topic.startswith(prefix) or not topic.endswith("/uplink"):
        return None
    segment = topic[len(prefix) : -len("/uplink")]
    return None if "/" in segment or not segment else segment


def uplink_topic(gateway: str, root: str = TOPIC_ROOT) -> str:
    """Topic an agent publishes its batches on (``root`` lets tests and tenants keep apart)."""
    return f"{root}/{gateway}/uplink"


def ack_topic(gateway: str, root: str = TOPIC_ROOT) -> str:
    """Topic the platform acknowledges an agent's batches on."""
    return f"{root}/{gateway}/ack"


def command_topic(gateway: str, root: str = TOPIC_ROOT) -> str:
    """Topic the platform sends a gateway its setpoint commands on (only that gateway may read it)."""
    return f"{root}/{gateway}/cmd/setpoint"


def _first_error(exc: ValidationError, whole: str = "") -> str:
    """``field.path: message`` of a validation's first error (``whole`` names a payload wrong as a whole)."""
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or whole
    return f"{loc}: {first['msg']}"


def decode_command(payload: bytes | bytearray | str) -> Command:
    """Parse a command payload; raises WireError with the reason."""
    try:
        return Command.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(f"invalid command: {_first_error(exc)}") from None


UPLINK_FILTER = f"{TOPIC_ROOT}/+/uplink"


def uplink_filter(root: str = TOPIC_ROOT) -> str:
    """Filter matching every gateway's uplink topic under ``root``."""
    return f"{root}/+/uplink"


def shared_uplink_filter(group: str = "ingest", root: str = TOPIC_ROOT) -> str:
    """Shared subscription so several ingest workers split the uplink traffic."""
    return f"$share/{group}/{uplink_filter(root)}"


def decode_batch(payload: bytes | str) -> UplinkBatch:
    """Parse an uplink payload; raises WireError with the reason."""
    try:
        return UplinkBatch.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(f"invalid uplink batch: {_first_error(exc)} ({exc.error_count()} errors)") from None


def decode_report(item: Any) -> CommandReport:
    """One command report of an uplink batch; raises WireError naming the first bad field."""
    try:
        return CommandReport.model_validate(item)
    except ValidationError as exc:
        raise WireError(f"invalid command report: {_first_error(exc, 'report')}") from None


def command_reports(batch: UplinkBatch) -> list[tuple[int, CommandReport]]:
    """The batch's valid command reports with their index; the others are left out (``decode_report`` says why)."""
    out = []
    for i, item in enumerate(batch.commands):
        try:
            out.append((i, decode_report(item)))
        except WireError:
            continue
    return out


def decode_ack(payload: bytes | str) -> Ack:
    """Parse an ack payload; raises WireError with the reason."""
    try:
        return Ack.model_validate_json(payload)
    except ValidationError as exc:
        raise WireError(f"invalid ack: {exc.errors()[0]['msg']}") from None


def now_us() -> int:
    """The current time as µs since the epoch."""
    return time.time_ns() // 1000


def to_us(dt: datetime) -> int:
    """A datetime (naive taken as UTC) as µs since the epoch."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> datetime:
    """µs since the epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=us)
