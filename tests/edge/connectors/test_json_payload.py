"""Plain JSON payload decoding: shapes, paths, timestamps, bad input, and a hypothesis fuzz of it all."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.connectors.json_payload import (
    BOOL,
    NUMBER,
    STRING,
    JsonDecoder,
    JsonField,
    TopicRouter,
    check_value,
    split_path,
    timestamp_us,
)

T0 = 1_700_000_000


def f(prop: str, path: str | None, ts: str | None = "ts", kind: str = NUMBER) -> JsonField:
    return JsonField("m1", prop, split_path(path), split_path(ts) or None, kind)


def decoder(*routes: tuple[str, JsonField], max_payload: int = 10_000) -> JsonDecoder:
    return JsonDecoder("src", list(routes), max_payload=max_payload)


def test_one_object_many_fields_by_dotted_path() -> None:
    d = decoder(
        ("p/m1", f("cur", "motor.current")),
        ("p/m1", f("typ", "type", kind=STRING)),
        ("p/m1", f("first", "arr.0")),
    )
    out, bad = d.decode(
        "p/m1", json.dumps({"ts": T0, "motor": {"current": 3.5}, "type": "L", "arr": [7, 8]}).encode(), 99
    )
    assert bad == []
    assert {(r.prop, r.raw, r.source_ts, r.recv_ts) for r in out} == {
        ("cur", 3.5, T0 * 1_000_000, 99),
        ("typ", "L", T0 * 1_000_000, 99),
        ("first", 7, T0 * 1_000_000, 99),
    }
    assert all(r.source == "src" and r.node == "m1" and r.server_ts is None for r in out)


def test_list_of_objects_each_with_its_own_timestamp() -> None:
    d = decoder(("p/m1", f("t", "temp")))
    out, bad = d.decode("p/m1", json.dumps([{"ts": T0, "temp": 1}, {"ts": T0 + 1, "temp": 2}]).encode(), 0)
    assert bad == []
    assert [(r.raw, r.source_ts) for r in out] == [(1, T0 * 10**6), (2, (T0 + 1) * 10**6)]


def test_series_at_the_path_and_value_objects_without_path() -> None:
    d = decoder(("p/a", f("a", "temp")), ("p/b", f("b", None, ts=None)))
    series = {"temp": [{"ts": T0 * 1000, "value": 1.5}, [T0 + 2, 2.5], {"t": "2024-01-01T00:00:00Z", "v": 3}]}
    out, bad = d.decode("p/a", json.dumps(series).encode(), 0)
    assert bad == []
    assert [(r.raw, r.source_ts) for r in out] == [
        (1.5, T0 * 10**6),
        (2.5, (T0 + 2) * 10**6),
        (3, 1_704_067_200 * 10**6),
    ]
    out, bad = d.decode("p/b", b'[{"ts": 1700000000, "value": 4}, {"ts": 1700000001, "value": 5}]', 0)
    assert [(r.raw, r.source_ts) for r in out] == [(4, T0 * 10**6), (5, (T0 + 1) * 10**6)]
    out, bad = d.decode("p/b", b"21.5", 7)
    assert [(r.raw, r.source_ts) for r in out] == [(21.5, None)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1_700_000_000, 1_700_000_000_000_000),  # seconds
        (1_700_000_000.25, 1_700_000_000_250_000),  # fractional seconds
        (1_700_000_000_123, 1_700_000_000_123_000),  # milliseconds
        (1_700_000_000_123_456, 1_700_000_000_123_456),  # microseconds
        (1_700_000_000_123_456_789, 1_700_000_000_123_456),  # nanoseconds
        (946_684_800, 946_684_800_000_000),  # year 2000: absurd but readable, judged later
        ("1700000000.5", 1_700_000_000_500_000),  # numeric string
        ("2023-11-14T22:13:20Z", 1_700_000_000_000_000),
        ("2023-11-14T23:13:20.000001+01:00", 1_700_000_000_000_001),
        ("2023-11-14T22:13:20", 1_700_000_000_000_000),  # naive = UTC
        ("yesterday", None),
        (True, None),
        (None, None),
        (float("nan"), None),
        ([1], None),
    ],
)
def test_timestamps(raw: object, expected: int | None) -> None:
    assert timestamp_us(raw) == expected


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("p/zzz", b"{}", "unknown_topic"),
        ("p/m1", b"{not json", "malformed_json"),
        ("p/m1", b'{"ts": 1, "v": NaN}', "malformed_json"),
        ("p/m1", b"\xff\xfe", "malformed_json"),
        ("p/m1", b'{"ts": 1700000000, "v": "hot"}', "wrong_type"),
        ("p/m1", b'{"ts": 1700000000, "v": {"x": 1}}', "wrong_type"),
        ("p/m1", b'{"ts": 1700000000, "v": null}', "wrong_type"),
        (
            "p/m1",
            b'{"ts": 1700000000, "v": 1e999}',
            "malformed_json",
        ),  # orjson refuses overflow; json gives inf
        ("p/m1", b'{"ts": 1700000000}', "missing_field"),
        ("p/m1", b'{"ts": "soon", "v": 1}', "bad_timestamp"),
        ("p/m1", b'{"v": 1}', "bad_timestamp"),
        ("p/m1", b"[]", "no_values"),
        ("p/m1", b"[" * 5000 + b"]" * 5000, "malformed_json"),
        ("p/m1", b'{"v": 1, "pad": "' + b"x" * 20_000 + b'"}', "payload_too_large"),
    ],
)
def test_bad_input_is_a_rejection_not_an_exception(topic: str, payload: bytes, reason: str) -> None:
    d = decoder(("p/m1", f("v", "v")))
    out, bad = d.decode(topic, payload, 0)
    assert out == []
    assert [r for r, _ in bad] == [reason]
    assert all(len(detail) <= 200 for _, detail in bad)


def test_non_finite_numbers_are_refused() -> None:
    assert check_value(float("nan"), NUMBER) == "not_a_number"
    assert check_value(float("-inf"), NUMBER) == "not_a_number"
    assert check_value(float("inf"), STRING) == "not_a_number"
    assert check_value(1.5, NUMBER) is None
    assert check_value(3, NUMBER) is None
    assert check_value(True, NUMBER) == "wrong_type"


def test_bool_and_string_kinds() -> None:
    d = decoder(("p/m1", f("on", "on", ts=None, kind=BOOL)), ("p/m1", f("s", "s", ts=None, kind=STRING)))
    out, bad = d.decode("p/m1", b'{"on": true, "s": 12}', 0)
    assert {(r.prop, r.raw) for r in out} == {("on", True), ("s", 12)}
    out, bad = d.decode("p/m1", b'{"on": 2, "s": [1]}', 0)
    assert out == []
    assert sorted(r for r, _ in bad) == ["wrong_type", "wrong_type"]


def test_router_exact_before_wildcards_and_cache_bound() -> None:
    a, b, c = f("a", "x"), f("b", "x"), f("c", "x")
    router = TopicRouter([("site/+/temp", a), ("site/#", b), ("site/l1/temp", c)], cache_size=2)
    assert router.match("site/l1/temp") == [c]
    assert router.match("site/l2/temp") == [a, b]
    assert router.match("site/l2/other/deep") == [b]
    assert router.match("elsewhere") is None
    for i in range(10):
        router.match(f"site/x{i}/temp")
    assert len(router._cache) <= 2
    assert sorted(router.filters()) == ["site/#", "site/+/temp", "site/l1/temp"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(["ts", "v", "value", "a", "t"]), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(doc=json_values)
def test_fuzz_structured_payloads_never_raise(doc: object) -> None:
    d = decoder(("p/m1", f("v", "v")), ("p/m1", f("a", "a.v", kind=STRING)), ("p/m1", f("w", None, ts=None)))
    try:
        payload = json.dumps(doc).encode()
    except (ValueError, OverflowError):
        return
    out, bad = d.decode("p/m1", payload, 0)
    for r in out:
        assert not (isinstance(r.raw, float) and not math.isfinite(r.raw))
        assert r.source_ts is None or isinstance(r.source_ts, int)
    assert all(isinstance(reason, str) and reason for reason, _ in bad)


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=300), topic=st.sampled_from(["p/m1", "p/other", "p/m1/x"]))
def test_fuzz_random_bytes_never_raise(payload: bytes, topic: str) -> None:
    d = decoder(("p/m1", f("v", "v")), ("p/+/x", f("w", None, ts=None)))
    out, bad = d.decode(topic, payload, 0)
    assert out or bad


_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),  # orjson refuses NaN and Infinity as malformed
    st.text(max_size=5),
    st.lists(st.integers(0, 3), max_size=2),
)
_ts = st.one_of(
    st.none(),
    st.integers(0, 2 * 10**18),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["2024-01-01T00:00:00Z", "x"]),
)


@settings(max_examples=300, deadline=None)
@given(
    doc=st.fixed_dictionaries(
        {},
        optional={
            "ts": _ts,
            "a": _leaf,
            "b": _leaf,
            "flag": _leaf,
            "name": _leaf,
            "m": st.fixed_dictionaries({}, optional={"x": _leaf}),
        },
    )
)
def test_the_per_topic_fast_path_decodes_like_the_general_path(doc: dict[str, object]) -> None:
    """A plain object takes the compiled fast path; the same object in a one-element list takes the general
    path: readings and rejections must be identical, whatever the values."""
    routes = [
        ("p/1", f("a", "a")),
        ("p/1", f("b", "b")),
        ("p/1", f("flag", "flag", kind=BOOL)),
        ("p/1", f("name", "name", kind=STRING)),
        ("p/1", f("mx", "m.x")),
    ]
    fast = decoder(*routes).decode("p/1", json.dumps(doc).encode(), 5)
    general = decoder(*routes).decode("p/1", json.dumps([doc]).encode(), 5)
    assert repr(fast) == repr(general)  # repr: 1 == 1.0 == True, but they print apart
