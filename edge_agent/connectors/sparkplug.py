"""Sparkplug B (spBv1.0) decoding: births with metric aliases, data, deaths, and rebirth requests.

Topics are ``spBv1.0/<group>/<type>/<edge node>[/<device>]``. A binding names its device as
``group/edge`` (a metric of the edge node itself) or ``group/edge/device``, and the metric by name; data
messages usually carry only aliases, which the last NBIRTH/DBIRTH defined.

Sequence numbers (0-255, wrapping) of one edge node must follow each other: a skipped one means lost
messages (Sparkplug data travels at QoS 0), so the decoder asks for a rebirth (NCMD ``Node Control/Rebirth``),
at most once per ``rebirth_interval_s``. It also asks for one after every (re)connect, since births sent
while we were away are gone. NDEATH/DDEATH emit a bad reading with status ``stale`` for every bound signal
of that node or device.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from google.protobuf.message import DecodeError

from edge_agent.connectors import sparkplug_b_pb2 as pb
from edge_agent.connectors.json_payload import check_value
from edge_agent.reading import Reading
from plant.wire import Quality

log = structlog.get_logger(__name__)

NAMESPACE = "spBv1.0"
REBIRTH_METRIC = "Node Control/Rebirth"
Rejection = tuple[str, str]

_SIGNED: dict[int, int] = {pb.Int8: 1 << 32, pb.Int16: 1 << 32, pb.Int32: 1 << 32, pb.Int64: 1 << 64}
_DATA_TYPES = {"NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH"}


@dataclass(frozen=True, slots=True)
class SparkplugField:
    """One bound Sparkplug metric.

    Args:
        device: ``group/edge`` or ``group/edge/device``.
        metric: the metric name as in the births.
        node: twin node id.
        prop: property on that node.
        kind: accepted values: ``number``, ``bool`` or ``string``.
    """

    device: str
    metric: str
    node: str
    prop: str
    kind: str = "number"


@dataclass(slots=True)
class _EdgeState:
    seq: int | None = None
    bdseq: int | None = None
    born: bool = False
    last_rebirth: float = -1e9
    aliases: dict[str, dict[int, str]] = field(default_factory=dict)  # device ('' = the node) → alias → name


class SparkplugDecoder:
    """Turns Sparkplug B messages into readings, keeping each edge node's aliases and sequence.

    Args:
        source: the site source id.
        fields: the bound metrics.
        max_payload: larger payloads are refused unread.
        rebirth_interval_s: least time between two rebirth requests to one edge node.
    """

    def __init__(
        self,
        source: str,
        fields: list[SparkplugField],
        max_payload: int = 256 * 1024,
        rebirth_interval_s: float = 5.0,
    ) -> None:
        self.source = source
        self.max_payload = max_payload
        self.rebirth_interval_s = rebirth_interval_s
        self.commands: list[tuple[str, bytes]] = []
        self._by_metric: dict[tuple[str, str], list[SparkplugField]] = {}
        self._by_device: dict[str, list[SparkplugField]] = {}
        self._edges: dict[tuple[str, str], _EdgeState] = {}
        for f in fields:
            parts = f.device.split("/")
            if len(parts) not in (2, 3) or not all(parts):
                raise ValueError(f"Sparkplug device must be 'group/edge[/device]', not {f.device!r}")
            self._by_metric.setdefault((f.device, f.metric), []).append(f)
            self._by_device.setdefault(f.device, []).append(f)
            self._edges.setdefault((parts[0], parts[1]), _EdgeState())

    def filters(self) -> list[str]:
        """One filter per bound edge node: its births, data and deaths, and those of its devices."""
        return [f"{NAMESPACE}/{g}/+/{e}/#" for g, e in self._edges]

    def on_connect(self) -> None:
        """Ask every bound edge node for a rebirth: births sent while we were away are lost."""
        for (g, e), state in self._edges.items():
            state.seq = None
            self._request_rebirth(g, e, state, force=True)

    def decode(self, topic: str, payload: bytes, recv_ts: int) -> tuple[list[Reading], list[Rejection]]:
        """Readings and rejections of one message; never raises on bad input."""
        parts = topic.split("/")
        if len(parts) not in (4, 5) or parts[0] != NAMESPACE:
            return [], [("unknown_topic", topic[:200])]
        group, mtype, edge = parts[1], parts[2], parts[3]
        state = self._edges.get((group, edge))
        if state is None:
            return [], [("unknown_topic", topic[:200])]
        if mtype not in _DATA_TYPES:
            return [], []  # NCMD/DCMD (our own rebirth requests among them) and STATE are not telemetry
        if len(payload) > self.max_payload:
            return [], [("payload_too_large", f"{topic}: {len(payload)} > {self.max_payload} bytes")]
        try:
            msg = pb.Payload.FromString(payload)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return [], [("bad_sparkplug", f"{topic}: {exc}"[:200])]
        device = f"{group}/{edge}" if len(parts) == 4 else f"{group}/{edge}/{parts[4]}"
        dev_key = parts[4] if len(parts) == 5 else ""
        if mtype == "NDEATH":
            return self._node_death(group, edge, state, msg, recv_ts), []
        if mtype == "NBIRTH":
            state.aliases.clear()
            state.born = True
            state.seq = msg.seq if msg.HasField("seq") else None
            state.bdseq = _bdseq(msg)
        else:
            self._check_seq(group, edge, state, msg)
        if mtype == "DDEATH":
            state.aliases.pop(dev_key, None)
            return self._stale(self._by_device.get(device, ()), msg, recv_ts), []
        if mtype in ("NBIRTH", "DBIRTH"):
            state.aliases[dev_key] = {m.alias: m.name for m in msg.metrics if m.HasField("alias") and m.name}
        return self._metrics(topic, device, dev_key, group, edge, state, msg, recv_ts)

    # --- messages -----------------------------------------------------------------------------------------

    def _metrics(
        self,
        topic: str,
        device: str,
        dev_key: str,
        group: str,
        edge: str,
        state: _EdgeState,
        msg: pb.Payload,
        recv_ts: int,
    ) -> tuple[list[Reading], list[Rejection]]:
        aliases = state.aliases.get(dev_key)
        out: list[Reading] = []
        bad: list[Rejection] = []
        payload_ts = msg.timestamp * 1000 if msg.HasField("timestamp") else None
        for m in msg.metrics:
            name = m.name
            if not name and m.HasField("alias"):
                if aliases is None or m.alias not in aliases:
                    bad.append(("unknown_alias", f"{topic}: alias {m.alias} before its birth"))
                    self._request_rebirth(group, edge, state)
                    continue
                name = aliases[m.alias]
            bound = self._by_metric.get((device, name))
            if not bound:
                continue  # edge nodes publish many metrics; only bound ones matter
            ts = m.timestamp * 1000 if m.HasField("timestamp") else payload_ts
            self._metric_readings(topic, m, bound, ts, recv_ts, out, bad)
        return out, bad

    def _metric_readings(
        self,
        topic: str,
        m: pb.Payload.Metric,
        bound: list[SparkplugField],
        ts: int | None,
        recv_ts: int,
        out: list[Reading],
        bad: list[Rejection],
    ) -> None:
        if m.is_null:
            out.extend(
                Reading(self.source, f.node, f.prop, None, ts, None, recv_ts, Quality.BAD, "null")
                for f in bound
            )
            return
        which = m.WhichOneof("value")
        if which not in (
            "int_value",
            "long_value",
            "float_value",
            "double_value",
            "boolean_value",
            "string_value",
        ):
            bad.append(("wrong_type", f"{topic}: metric {m.name or m.alias} holds {which}"))
            return
        value = getattr(m, which)
        wrap = _SIGNED.get(m.datatype)
        if wrap is not None and which in ("int_value", "long_value") and value >= wrap >> 1:
            value -= wrap  # Sparkplug carries signed integers as two's complement in unsigned fields
        for f in bound:
            problem = check_value(value, f.kind)
            if problem is not None:
                bad.append((problem, f"{topic}: {f.node}.{f.prop}={value!r:.60}"))
                continue
            out.append(Reading(self.source, f.node, f.prop, value, ts, None, recv_ts))

    def _node_death(
        self, group: str, edge: str, state: _EdgeState, msg: pb.Payload, recv_ts: int
    ) -> list[Reading]:
        bdseq = _bdseq(msg)
        if bdseq is not None and state.bdseq is not None and bdseq != state.bdseq:
            log.info("sparkplug_old_death_ignored", group=group, edge=edge, bdseq=bdseq, current=state.bdseq)
            return []
        state.born = False
        state.seq = None
        state.aliases.clear()
        prefix = f"{group}/{edge}"
        fields = [
            f
            for dev, fs in self._by_device.items()
            if dev == prefix or dev.startswith(prefix + "/")
            for f in fs
        ]
        return self._stale(fields, msg, recv_ts)

    def _stale(self, fields: object, msg: pb.Payload, recv_ts: int) -> list[Reading]:
        ts = msg.timestamp * 1000 if msg.HasField("timestamp") else None
        return [
            Reading(self.source, f.node, f.prop, None, ts, None, recv_ts, Quality.BAD, "stale")
            for f in fields  # type: ignore[attr-defined]
        ]

    # --- sequence and rebirth -----------------------------------------------------------------------------

    def _check_seq(self, group: str, edge: str, state: _EdgeState, msg: pb.Payload) -> None:
        if not msg.HasField("seq"):
            return
        seq = msg.seq
        if not state.born or (state.seq is not None and seq != (state.seq + 1) % 256):
            log.warning(
                "sparkplug_sequence_gap",
                group=group,
                edge=edge,
                expected=_next(state.seq),
                got=seq,
                born=state.born,
            )
            self._request_rebirth(group, edge, state)
        state.seq = seq

    def _request_rebirth(self, group: str, edge: str, state: _EdgeState, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - state.last_rebirth < self.rebirth_interval_s:
            return
        state.last_rebirth = now
        self.commands.append(encode_command(f"{group}/{edge}", REBIRTH_METRIC, True))
        log.info("sparkplug_rebirth_requested", group=group, edge=edge)


def encode_command(device: str, metric: str, value: bool | int | float) -> tuple[str, bytes]:
    """Topic and payload of a command setting one metric: NCMD for ``group/edge``, DCMD for ``group/edge/device``.

    A bool is sent as Boolean, an int as Int64 (two's complement, as Sparkplug carries signed integers), a float
    as Double. Sparkplug commands travel at QoS 0, not retained (the specification's rule for NCMD and DCMD).
    """
    parts = device.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"Sparkplug device must be 'group/edge[/device]', not {device!r}")
    cmd = pb.Payload(timestamp=int(time.time() * 1000))
    m = cmd.metrics.add()
    m.name = metric
    if isinstance(value, bool):
        m.datatype, m.boolean_value = pb.Boolean, value
    elif isinstance(value, int):
        m.datatype, m.long_value = pb.Int64, value % (1 << 64)
    else:
        m.datatype, m.double_value = pb.Double, value
    kind = "NCMD" if len(parts) == 2 else "DCMD"
    topic = "/".join([NAMESPACE, parts[0], kind, *parts[1:]])
    return topic, cmd.SerializeToString()


def _next(seq: int | None) -> int | None:
    return None if seq is None else (seq + 1) % 256


def _bdseq(msg: pb.Payload) -> int | None:
    for m in msg.metrics:
        if m.name == "bdSeq":
            which = m.WhichOneof("value")
            return int(getattr(m, which)) if which in ("int_value", "long_value") else None
    return None
