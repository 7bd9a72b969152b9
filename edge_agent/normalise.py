"""Readings → Samples: units and scaling per binding, type checks, NaN refusal, source clocks checked.

Every bound signal is compiled once per site model into an affine map ``y = a * raw + b`` (binding scale and
offset first, then the binding's unit into the property's unit), so the hot path is a multiply-add per value.

Clocks: each clock domain (a source as seen through one node) keeps a window of ``recv_ts - source_ts``.
Network delay only ever adds to that difference, so a low quantile of the window tracks the clock offset plus
the smallest delay and ignores jitter and queueing bursts. Beyond a threshold the offset is added to the
source's timestamps (Flag.CLOCK_CORRECTED). The offset in use moves only in steps larger than the threshold,
after a warm-up, and is persisted with the outbox, so a value delivered twice gets the same timestamp (and
idempotency key) both times. A timestamp before ``min_valid_year`` or too far in the future (a PLC reset to
2000-01-01, a wrong time zone) is not corrected but replaced by the receive time (Flag.RECEIVE_TIME) and the
domain is flagged in the CLOCK_ABSURD metric until it sends a sane timestamp again.
"""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from edge_agent import metrics
from edge_agent.errors import ConfigError
from edge_agent.reading import Reading
from edge_agent.sample import Sample
from edge_agent.units import affine
from plant.site import DataType, Site
from plant.wire import Flag, Quality, to_us

log = structlog.get_logger(__name__)
_NONE: tuple[Flag, ...] = ()
_FLOAT = DataType.FLOAT
_CORRECTED = (Flag.CLOCK_CORRECTED,)
_RECEIVED = (Flag.RECEIVE_TIME,)
_MAX_STRING = 4096
_EXACT = 1 << 53  # ints below this in size are exact as floats


@dataclass(slots=True, frozen=True)
class Signal:
    """One bound property, compiled: its type and the affine map from raw to the property's unit.

    Args:
        node: twin node id.
        prop: property name.
        dtype: the property's data type.
        a: multiplier applied to the raw value.
        b: offset added after the multiplier.
    """

    node: str
    prop: str
    dtype: DataType
    a: float = 1.0
    b: float = 0.0
    scaled: bool = False


def compile_signals(site: Site) -> dict[tuple[str, str], Signal]:
    """Every binding of the site as a Signal keyed (node, prop); ConfigError when a unit does not convert."""
    out: dict[tuple[str, str], Signal] = {}
    for node in site.assets():
        assert node.type is not None
        props = site.asset_types[node.type].properties
        for prop, binding in node.bindings.items():
            pdef = props[prop]
            a, b = binding.scale, binding.offset
            if binding.unit is not None:
                try:
                    ua, ub = affine(binding.unit, pdef.unit)
                except ConfigError as exc:
                    raise ConfigError(f"{node.id}.{prop}: {exc}") from None
                a, b = a * ua, b * ua + ub
            if pdef.dtype in (DataType.BOOL, DataType.STRING) and (a, b) != (1.0, 0.0):
                raise ConfigError(f"{node.id}.{prop}: a {pdef.dtype} property cannot have a scale, offset or unit")
            out[(node.id, prop)] = Signal(node.id, prop, pdef.dtype, a, b, (a, b) != (1.0, 0.0))
    return out


class ClockEstimate:
    """A clock domain's offset: a rolling low quantile of ``recv_ts - source_ts``, and the offset in use.

    The offset in use (``applied_us``) changes only when the estimate moved away from it by more than the
    threshold, and only once the window spans ``warmup_s`` of receive time. So a value delivered twice (an
    MQTT redelivery after a crash) is stamped the same both times and keeps its idempotency key, and a burst
    of old queued messages (large differences, all received within a second) cannot pass for a clock offset.

    Args:
        window: how many samples are kept.
        quantile: which quantile of the window is the estimate (0 = minimum, 0.5 = median).
        threshold_us: hysteresis of the offset in use.
        warmup_s: receive time the window must span before the offset in use may change.
        label: the metric label of this clock domain.
        applied_us: the offset in use to start from (persisted across restarts).
    """

    __slots__ = (
        "_absurd",
        "_gauge",
        "_q",
        "_recv",
        "_samples",
        "_sorted",
        "_threshold",
        "_warmup",
        "_window",
        "applied_us",
        "offset_us",
    )

    def __init__(
        self,
        window: int = 64,
        quantile: float = 0.1,
        threshold_us: int = 500_000,
        warmup_s: float = 30.0,
        label: str = "",
        applied_us: int = 0,
    ) -> None:
        self._samples: deque[int] = deque()
        self._recv: deque[int] = deque()
        self._sorted: list[int] = []  # the same samples, kept sorted: the quantile is an index
        self._window = window
        self._q = quantile
        self._threshold = threshold_us
        self._warmup = int(warmup_s * 1_000_000)
        self._gauge = metrics.CLOCK_OFFSET.labels(label) if label else None
        self._absurd = metrics.CLOCK_ABSURD.labels(label) if label else None
        self.offset_us = 0
        self.applied_us = applied_us

    def add(self, sample_us: int, recv_us: int = 0) -> bool:
        """Add one sample received at ``recv_us``; True when the offset in use changed."""
        self._samples.append(sample_us)
        self._recv.append(recv_us)
        insort(self._sorted, sample_us)
        if len(self._samples) > self._window:
            old = self._samples.popleft()
            self._recv.popleft()
            del self._sorted[bisect_left(self._sorted, old)]
        s = self._sorted
        offset = s[int(self._q * (len(s) - 1))]
        if offset != self.offset_us or len(s) == 1:
            self.offset_us = offset
            if self._gauge is not None:
                self._gauge.set(-offset / 1e6)
        if abs(offset - self.applied_us) <= self._threshold or recv_us - self._recv[0] < self._warmup:
            return False
        self.applied_us = offset if abs(offset) > self._threshold else 0
        return True

    def set_absurd(self, absurd: bool) -> None:
        """Report the domain's clock as absurd (or sane again) in the CLOCK_ABSURD metric."""
        if self._absurd is not None:
            self._absurd.set(1 if absurd else 0)


@dataclass(slots=True)
class Normalised:
    """What one batch of readings became: values, and the readings refused with (reason, detail)."""

    values: list[Sample] = field(default_factory=list)
    rejected: list[tuple[Reading, str, str]] = field(default_factory=list)


class Normaliser:
    """Turns readings into wire Values for one site model.

    Args:
        site: the validated site model.
        clock_window: samples per clock domain.
        clock_quantile: the window's quantile taken as offset.
        clock_threshold_ms: offsets smaller than this are left alone (and the hysteresis of a correction).
        clock_warmup_s: receive time a domain's samples must span before its correction may change.
        max_future_s: source timestamps further ahead of receive time are absurd.
        min_valid_year: source timestamps before this year are absurd.
        clocks: clock estimates to carry over from a previous Normaliser (hot reload).
        applied: offsets in use per domain "source/node", as persisted by the outbox (restart).
    """

    def __init__(
        self,
        site: Site,
        *,
        clock_window: int = 64,
        clock_quantile: float = 0.1,
        clock_threshold_ms: float = 500.0,
        max_future_s: float = 600.0,
        min_valid_year: int = 2000,
        clock_warmup_s: float = 30.0,
        clocks: dict[tuple[str, str], ClockEstimate] | None = None,
        applied: dict[str, int] | None = None,
    ) -> None:
        self.signals = compile_signals(site)
        self.clocks: dict[tuple[str, str], ClockEstimate] = clocks if clocks is not None else {}
        self.applied = dict(applied or {})
        self.changed: dict[str, int] = {}  # offsets in use that changed since the last take_changed()
        self.absurd: set[tuple[str, str]] = set()
        self._window = clock_window
        self._quantile = clock_quantile
        self._warmup_s = clock_warmup_s
        self._threshold_us = int(clock_threshold_ms * 1000)
        self._max_future_us = int(max_future_s * 1_000_000)
        self._min_valid_us = to_us(datetime(min_valid_year, 1, 1, tzinfo=UTC))

    def normalise(self, readings: list[Reading]) -> Normalised:
        """Normalise one batch; refused readings come back with a reason instead of raising."""
        out = Normalised()
        offsets = self._update_clocks(readings)
        values, rejected = out.values, out.rejected
        signals = self.signals
        lo, ahead = self._min_valid_us, self._max_future_us
        last_src: str | None = None
        last_node: str | None = None
        off: int | None = None
        # hot path, once per value: kept flat on purpose (a function call costs as much as the work)
        for r in readings:
            source, node, prop, raw, source_ts, server_ts, recv, quality, _ = r
            sig = signals.get((node, prop))
            if sig is None:
                rejected.append((r, "unknown_signal", f"{node}.{prop} is not bound in the site model"))
                continue
            t = type(raw)
            # the usual case; ``raw`` is a number here (its type was just checked), which mypy cannot follow
            if sig.dtype is _FLOAT and (t is float or (t is int and -_EXACT < raw < _EXACT)):  # type: ignore[operator]
                value: object = raw * sig.a + sig.b if sig.scaled else (raw if t is float else float(raw))  # type: ignore[operator, arg-type]
                if value - value != 0.0:  # type: ignore[operator]  # NaN, ±inf, or a scaling overflow
                    rejected.append((r, "not_finite", f"{node}.{prop}: {raw!r}"))
                    continue
            else:
                value, reason = _convert(sig, raw, quality)
                if reason:
                    rejected.append((r, reason, f"{node}.{prop}: {value!r}"[:200]))
                    continue
            st = source_ts if source_ts is not None else server_ts
            if st is None:
                ts, flags = recv, _NONE
            else:
                if node is not last_node or source is not last_src:  # identity: no tuple per value
                    last_src, last_node = source, node
                    off = offsets.get((source, node))
                if off is None or st < lo or st > recv + ahead:
                    ts, flags = recv, _RECEIVED
                elif off:
                    ts, flags = st + off, _CORRECTED
                else:
                    ts, flags = st, _NONE
            values.append(Sample(node, prop, value, ts, server_ts, recv, quality, flags))  # type: ignore[arg-type]
        return out

    def _sane(self, st: int, recv: int) -> bool:
        return self._min_valid_us <= st <= recv + self._max_future_us

    def _update_clocks(self, readings: list[Reading]) -> dict[tuple[str, str], int | None]:
        """One sample per clock domain per batch (its smallest difference); None marks an absurd domain."""
        best: dict[tuple[str, str], int | None] = {}
        recv_of: dict[tuple[str, str], int] = {}
        lo, ahead = self._min_valid_us, self._max_future_us
        src = node = None
        key: tuple[str, str] = ("", "")
        for r_src, r_node, _, _, source_ts, server_ts, recv, _, _ in readings:
            st = source_ts if source_ts is not None else server_ts
            if st is None:
                continue
            if r_node is not node or r_src is not src:  # a batch is usually one domain: skip the tuple
                src, node = r_src, r_node
                key = (src, node)
            if st < lo or st > recv + ahead:
                best.setdefault(key, None)
                continue
            d = recv - st
            cur = best.get(key)
            if cur is None or d < cur:
                best[key] = d
                recv_of[key] = recv
        out: dict[tuple[str, str], int | None] = {}
        for k, sample in best.items():
            est = self.clocks.get(k)
            if est is None:
                label = f"{k[0]}/{k[1]}"
                est = self.clocks[k] = ClockEstimate(
                    self._window,
                    self._quantile,
                    self._threshold_us,
                    self._warmup_s,
                    label,
                    self.applied.get(label, 0),
                )
            if sample is None:
                out[k] = None
                if k not in self.absurd:
                    self.absurd.add(k)
                    est.set_absurd(True)
                continue
            if k in self.absurd:
                self.absurd.discard(k)
                est.set_absurd(False)
            if est.add(sample, recv_of[k]):
                label = f"{k[0]}/{k[1]}"
                self.applied[label] = self.changed[label] = est.applied_us
                log.info("clock_correction", domain=label, offset_s=-est.applied_us / 1e6)
            out[k] = est.applied_us
        return out

    def take_changed(self) -> dict[str, int]:
        """Offsets in use that changed since the last call (to persist with the next commit)."""
        changed, self.changed = self.changed, {}
        return changed


def _convert(sig: Signal, raw: object, quality: Quality) -> tuple[object, str]:
    """(value, "") or (raw, reason): the raw value scaled into the property's unit and type."""
    t = type(raw)
    dtype = sig.dtype
    if raw is None:
        return (None, "") if quality is not Quality.GOOD else (raw, "null_value")
    if dtype is DataType.FLOAT or dtype is DataType.INT:
        if t is not float and t is not int:
            return raw, "wrong_type"
        try:
            x = raw * sig.a + sig.b if sig.scaled else raw  # type: ignore[operator]
            if dtype is DataType.FLOAT and type(x) is int:
                x = float(x)
        except OverflowError:  # an int beyond float range
            return raw, "not_finite"
        if type(x) is float:
            if not math.isfinite(x):
                return raw, "not_finite"
            if dtype is DataType.INT:
                return (int(x), "") if x.is_integer() else (raw, "wrong_type")
            return x, ""
        return x, ""
    if dtype is DataType.BOOL:
        if t is bool:
            return raw, ""
        return (bool(raw), "") if t is int and raw in (0, 1) else (raw, "wrong_type")
    if t is not str:
        return raw, "wrong_type"
    text: str = raw  # type: ignore[assignment]
    return (text, "") if len(text) <= _MAX_STRING else (text[:64], "too_long")
