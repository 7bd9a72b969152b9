"""Wire messages: round trips, timestamps exact to the microsecond, bad payloads refused with a reason."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from plant.errors import WireError
from plant.wire import (
    GATEWAY_ID_PATTERN,
    Ack,
    CommandReport,
    Diagnosis,
    Flag,
    Frame,
    Quality,
    UplinkBatch,
    Value,
    ack_topic,
    decode_ack,
    decode_batch,
    from_us,
    shared_uplink_filter,
    to_us,
    topic_gateway,
    uplink_topic,
    valid_gateway_id,
)


def test_batch_round_trip() -> None:
    batch = UplinkBatch(
        gateway="gw-1",
        batch="b-1",
        sent=1,
        values=[Value(node="n", prop="p", value=1.5, ts=10, quality=Quality.UNCERTAIN, flags=(Flag.LATE,))],
        frames=[Frame(node="n", ts=10, values={"p": 1.5, "q": None})],
        diagnoses=[Diagnosis(node="n", task="rul", ts=10, model="m", version="1", confidence=0.9, rul=42.0)],
    )
    assert decode_batch(batch.model_dump_json()) == batch
    assert len(batch) == 3


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))
def test_timestamps_exact(us: int) -> None:
    assert to_us(from_us(us)) == us


def test_naive_datetime_is_utc() -> None:
    assert to_us(datetime(2020, 1, 1)) == to_us(datetime(2020, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    "payload",
    [b"", b"{", b"[]", b'{"gateway": "g"}', b'{"gateway":"g","batch":"b","sent":1,"values":[{"node":"n"}]}'],
)
def test_bad_batch_refused_with_reason(payload: bytes) -> None:
    with pytest.raises(WireError, match="invalid uplink batch"):
        decode_batch(payload)


def test_ack_round_trip_and_refusal() -> None:
    ack = Ack(gateway="g", batch="b", stored=True, accepted=3)
    assert decode_ack(ack.model_dump_json()) == ack
    with pytest.raises(WireError):
        decode_ack(b"nope")


def test_topics() -> None:
    assert uplink_topic("gw") == "factory-twin/v1/gw/uplink"
    assert ack_topic("gw") == "factory-twin/v1/gw/ack"
    assert shared_uplink_filter() == "$share/ingest/factory-twin/v1/+/uplink"


def test_acks_name_a_code_and_retry_time_only_when_they_have_one() -> None:
    """An agent of an earlier version refuses unknown keys: a plain ack must not carry the new ones."""
    import json

    from plant.wire import OVER_BUDGET, Ack, decode_ack

    plain = json.loads(Ack(gateway="g", batch="b", stored=True, accepted=3).model_dump_json())
    assert "code" not in plain
    assert "retry_after" not in plain
    refused = Ack(gateway="g", batch="b", stored=False, code=OVER_BUDGET, retry_after=1.5, error="over budget")
    again = decode_ack(refused.model_dump_json())
    assert (again.code, again.retry_after) == ("over_budget", 1.5)
@pytest.mark.parametrize("gateway", ["gw1", "plant-7.line_2", "G" * 64, "0"])
def test_gateway_ids_that_fit_the_pattern(gateway: str) -> None:
    assert valid_gateway_id(gateway)


@pytest.mark.parametrize("gateway", ["", "#", "+", "a/b", "gw\x001", "g" * 65, "-gw", ".", "é", "gw 1", "gw\n"])
def test_gateway_ids_outside_the_pattern(gateway: str) -> None:
    assert not valid_gateway_id(gateway)
    assert GATEWAY_ID_PATTERN.startswith("^")


def test_the_gateway_of_an_uplink_topic() -> None:
    assert topic_gateway("factory-twin/v1/gw1/uplink") == "gw1"
    assert topic_gateway("r/v1/gw1/uplink", "r/v1") == "gw1"
    assert topic_gateway("factory-twin/v1/a/b/uplink") is None
    assert topic_gateway("factory-twin/v1//uplink") is None
    assert topic_gateway("other/gw1/uplink") is None
    assert topic_gateway("factory-twin/v1/gw1/ack") is None


@pytest.mark.parametrize("field", [{"id": "c1\x00"}, {"id": "c" * 65}, {"reason": "Bad\x00"},
                                   {"detail": "status\x00Bad"}, {"node": "n" * 129}])
def test_a_command_report_with_control_characters_or_oversized_fields_is_not_one(field: dict[str, str]) -> None:
    """A report the platform could not store (NUL on PostgreSQL) would be refused and resent for ever."""
    report = {"id": "c1", "node": "p1", "prop": "speed", "state": "applied", "at": 1, **field}
    with pytest.raises(ValidationError):
        CommandReport.model_validate(report)
    assert CommandReport.model_validate({**report, **dict.fromkeys(field, "ok")}).state == "applied"
