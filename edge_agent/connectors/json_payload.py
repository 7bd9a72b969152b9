"""Plain JSON telemetry over MQTT: which bindings a topic feeds, and how a payload becomes readings.

Payload shapes understood (``path`` and ``ts_path`` are dotted paths; a digit part indexes a list):

* one object: ``{"ts": 1700000000.5, "motor": {"current": 3.2}}``, ``path: motor.current``, ``ts_path: ts``;
* a list of such objects, each with its own timestamp (one reading per object and binding);
* a series at the path: ``{"temp": [{"ts": ..., "value": 1.0}, [1700000001, 1.1], ...]}`` — each element an
  object with ``ts``/``t`` and ``value``/``v``, or a ``[ts, value]`` pair;
* a bare value (``21.5``), or with no ``path`` an object ``{"ts": ..., "value": ...}`` (``ts`` is then the
  default timestamp field).

Timestamps: numbers are epoch time, and their size says the unit — below 1e11 seconds (floats allowed),
below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds. (1e11 s is the year 5138 and 1e11 ms
is March 1973, so the only ambiguous instants lie before 1973.) Numeric strings are read as numbers, any
other string as ISO 8601 (``Z`` or an offset; a naive time is taken as UTC). Absurd but well-formed times
(year 2000 after a PLC clock reset) pass through: judging clocks is normalise's job.

Nothing here raises on bad input: each problem becomes a ``(reason, detail)`` pair with a stable reason code.

Hot path: the usual message is one object whose fields all share one timestamp path. For each topic a plan is
compiled once (the shared timestamp path, and per field its node, prop, key or path, kind), so such a message
costs one timestamp conversion and a dict lookup per value. Anything unusual in a message (a list, a series,
a missing field, a bad value or timestamp) sends it down the general path instead, which says what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from edge_agent.reading import Reading
from plant.mqtt import topic_matches_sub

try:  # orjson is several times faster; plain json is the fallback and accepts NaN (refused below)
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
    _JSON_ERRORS: tuple[type[Exception], ...] = (orjson.JSONDecodeError, RecursionError, ValueError)
except ImportError:  # pragma: no cover - orjson is a dependency
    _loads = json.loads
    _JSON_ERRORS = (ValueError, RecursionError)

Rejection = tuple[str, str]
_MISSING = object()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DETAIL_MAX = 200

NUMBER, BOOL, STRING = "number", "bool", "string"


@dataclass(frozen=True, slots=True)
class JsonField:
    """One bound signal inside a JSON topic.

    Args:
        node: twin node id.
        prop: property on that node.
        path: dotted path parts of the value; empty means the element itself.
        ts_path: dotted path parts of the timestamp, or None.
        kind: what values are accepted: ``number``, ``bool`` or ``string``.
    """

    node: str
    prop: str
    path: tuple[str, ...]
    ts_path: tuple[str, ...] | None
    kind: str = NUMBER


def split_path(path: str | None) -> tuple[str, ...]:
    """``'a.b.0'`` → ``('a', 'b', '0')``; None or empty → ``()``."""
    return tuple(p for p in path.split(".") if p) if path else ()


class TopicRouter:
    """Topic → fields: exact topics in a dict, wildcard filters checked after, results cached per topic.

    Args:
        routes: ``(topic filter, field)`` pairs; a filter may hold ``+`` and ``#``.
    """

    def __init__(self, routes: list[tuple[str, JsonField]], cache_size: int = 10_000) -> None:
        self._exact: dict[str, list[JsonField]] = {}
        self._wild: dict[str, list[JsonField]] = {}
        for filt, fld in routes:
            target = self._wild if ("+" in filt or "#" in filt) else self._exact
            target.setdefault(filt, []).append(fld)
        self._cache: dict[str, list[JsonField] | None] = {}
        self._cache_size = cache_size

    def filters(self) -> list[str]:
        """Every topic filter to subscribe to."""
        return [*self._exact, *self._wild]

    def match(self, topic: str) -> list[JsonField] | None:
        """Fields fed by ``topic``, or None when no binding covers it."""
        hit = self._exact.get(topic)
        if hit is not None or not self._wild:
            return hit
        try:
            return self._cache[topic]
        except KeyError:
            pass
        found: list[JsonField] = [
            f for filt, fs in self._wild.items() if topic_matches_sub(filt, topic) for f in fs
        ]
        result = found or None
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # topics are usually few; a flood of new ones must not grow memory
        self._cache[topic] = result
        return result


def timestamp_us(value: object) -> int | None:
    """Epoch µs from a number (unit by magnitude) or an ISO 8601 / numeric string; None if unreadable."""
    if isinstance(value, str):
        try:
            number: object = float(value)
        except ValueError:
            return _iso_us(value)
        value = number
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")):
        return None
    mag = abs(value)
    if mag < 1e11:
        return round(value * 1_000_000)
    if mag < 1e14:
        return round(value * 1_000)
    if mag < 1e17:
        return int(value)
    return int(value // 1_000)


def _iso_us(text: str) -> int | None:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return (dt - _EPOCH) // _ONE_US


_ONE_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - _EPOCH


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    cur = doc
    for part in path:
        if type(cur) is dict:
            cur = cur.get(part, _MISSING)
            if cur is _MISSING:
                return _MISSING
        elif type(cur) is list and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return _MISSING
    return cur


def check_value(value: object, kind: str) -> str | None:
    """None if ``value`` suits a signal of ``kind``, else the rejection reason."""
    t = type(value)
    if kind == NUMBER:
        if t is float:
            return None if value - value == 0 else "not_a_number"  # type: ignore[operator]  # NaN, ±inf
        return None if t is int else "wrong_type"
    if kind == BOOL:
        return None if t is bool or (t is int and value in (0, 1)) else "wrong_type"
    if t is float and value - value != 0:  # type: ignore[operator]
        return "not_a_number"
    return None if t in (str, int, float, bool) else "wrong_type"


# per field: node, prop, top-level key (or None), dotted path parts, kind
_PlanField = tuple[str, str, str | None, tuple[str, ...], str]
# the shared timestamp path (or None), the fields
_Plan = tuple[tuple[str, ...] | None, tuple[_PlanField, ...]]


def compile_plan(fields: list[JsonField]) -> _Plan | None:
    """The fast-path plan of a topic's fields, or None when they need the general path."""
    ts_paths = {f.ts_path for f in fields}
    if len(ts_paths) != 1 or any(not f.path for f in fields):
        return None
    plan = tuple((f.node, f.prop, f.path[0] if len(f.path) == 1 else None, f.path, f.kind) for f in fields)
    return next(iter(ts_paths)), plan


class JsonDecoder:
    """Turns one MQTT message into readings and rejections.

    Args:
        source: the site source id.
        routes: ``(topic filter, field)`` pairs from the site's bindings.
        max_payload: larger payloads are refused unread.
    """

    def __init__(
        self, source: str, routes: list[tuple[str, JsonField]], max_payload: int = 256 * 1024
    ) -> None:
        self.source = source
        self.router = TopicRouter(routes)
        self.max_payload = max_payload
        self.commands: list[tuple[str, bytes]] = []  # plain JSON never talks back
        self._ts_raw: object = _MISSING
        self._ts_us: int | None = None
        self._plans: dict[str, _Plan | None] = {}

    def filters(self) -> list[str]:
        """Topic filters to subscribe to."""
        return self.router.filters()

    def on_connect(self) -> None:
        """Nothing to do: plain JSON topics need no handshake."""

    def decode(self, topic: str, payload: bytes, recv_ts: int) -> tuple[list[Reading], list[Rejection]]:
        """Readings and rejections found in one message; never raises on bad input."""
        fields = self.router.match(topic)
        if fields is None:
            return [], [("unknown_topic", _detail(topic, "no binding"))]
        if len(payload) > self.max_payload:
            return [], [("payload_too_large", _detail(topic, f"{len(payload)} > {self.max_payload} bytes"))]
        try:
            doc = _loads(payload)
        except _JSON_ERRORS as exc:
            return [], [("malformed_json", _detail(topic, str(exc)))]
        out: list[Reading] = []
        if type(doc) is dict:
            plan = self._plans.get(topic, _MISSING)
            if plan is _MISSING:
                plan = self._plan(topic, fields)
            if plan is not None and self._fast(doc, plan, recv_ts, out):  # type: ignore[arg-type]
                return out, []
            out.clear()
        bad: list[Rejection] = []
        self._ts_raw = _MISSING
        elements = doc if type(doc) is list else (doc,)
        for el in elements:
            for fld in fields:
                self._field(topic, el, fld, recv_ts, out, bad)
        if not out and not bad:
            bad.append(("no_values", _detail(topic, "payload holds no values")))
        return out, bad

    def _plan(self, topic: str, fields: list[JsonField]) -> _Plan | None:
        if len(self._plans) >= self.router._cache_size:
            self._plans.clear()  # a flood of new topics must not grow memory
        plan = self._plans[topic] = compile_plan(fields)
        return plan

    def _fast(self, doc: dict[str, Any], plan: _Plan, recv_ts: int, out: list[Reading]) -> bool:
        """Readings of a plain object in ``out``; False (``out`` partly filled) when anything is unusual."""
        ts_path, fields = plan
        ts: int | None = None
        if ts_path is not None:
            ts_raw = doc.get(ts_path[0], _MISSING) if len(ts_path) == 1 else _get(doc, ts_path)
            if ts_raw is None or ts_raw is _MISSING:
                return False
            ts = timestamp_us(ts_raw)
            if ts is None:
                return False
        src = self.source
        get = doc.get
        for node, prop, key, path, kind in fields:
            value = get(key, _MISSING) if key is not None else _get(doc, path)
            t = type(value)
            if t is float:
                if value - value != 0.0 or kind == BOOL:  # NaN, ±inf; or a float for a bool
                    return False
            elif t is list or value is _MISSING or check_value(value, kind) is not None:
                return False
            out.append(Reading(src, node, prop, value, ts, None, recv_ts))
        return True

    def _field(
        self, topic: str, el: Any, fld: JsonField, recv_ts: int, out: list[Reading], bad: list[Rejection]
    ) -> None:
        if fld.path:
            value = _get(el, fld.path)
            ts_raw = _get(el, fld.ts_path) if fld.ts_path else None
        elif type(el) is dict:  # no path: an object {"ts": ..., "value": ...}
            value = el.get("value", el.get("v", _MISSING))
            ts_raw = _get(el, fld.ts_path) if fld.ts_path else el.get("ts", el.get("t"))
        else:
            value = el
            ts_raw = None
        if value is _MISSING:
            bad.append(("missing_field", _detail(topic, f"{'.'.join(fld.path) or 'value'} not in payload")))
            return
        if type(value) is list:  # a series: each element has its own time, else the message's
            default_ts = None if ts_raw is _MISSING else ts_raw
            for item in value:
                self._series_item(topic, item, fld, default_ts, recv_ts, out, bad)
            return
        if ts_raw is _MISSING:
            bad.append(("bad_timestamp", _detail(topic, f"{'.'.join(fld.ts_path or ())} not in payload")))
            return
        self._emit(topic, value, ts_raw, fld, recv_ts, out, bad)

    def _series_item(
        self,
        topic: str,
        item: Any,
        fld: JsonField,
        default_ts: Any,
        recv_ts: int,
        out: list[Reading],
        bad: list[Rejection],
    ) -> None:
        if type(item) is dict:
            value = item.get("value", item.get("v", _MISSING))
            ts_raw = item.get("ts", item.get("t", default_ts))
        elif type(item) is list and len(item) == 2:
            ts_raw, value = item
        else:
            bad.append(("wrong_type", _detail(topic, f"series element {type(item).__name__}")))
            return
        if value is _MISSING:
            bad.append(("missing_field", _detail(topic, "series element without 'value'")))
            return
        self._emit(topic, value, ts_raw, fld, recv_ts, out, bad)

    def _emit(
        self,
        topic: str,
        value: Any,
        ts_raw: Any,
        fld: JsonField,
        recv_ts: int,
        out: list[Reading],
        bad: list[Rejection],
    ) -> None:
        problem = check_value(value, fld.kind)
        if problem is not None:
            bad.append((problem, _detail(topic, f"{fld.node}.{fld.prop}={value!r:.60}")))
            return
        ts = None
        if ts_raw is not None:
            if ts_raw is self._ts_raw:  # the fields of one object share its timestamp: convert it once
                ts = self._ts_us
            else:
                ts = timestamp_us(ts_raw)
                self._ts_raw, self._ts_us = ts_raw, ts
            if ts is None:
                bad.append(("bad_timestamp", _detail(topic, f"{ts_raw!r:.60}")))
                return
        out.append(Reading(self.source, fld.node, fld.prop, value, ts, None, recv_ts))


def _detail(topic: str, text: str) -> str:
    return f"{topic}: {text}"[:_DETAIL_MAX]
