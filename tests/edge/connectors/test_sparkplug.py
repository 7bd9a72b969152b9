"""Sparkplug B: births and aliases, data, deaths marking signals stale, rebirth on gaps, bad payloads."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.connectors import sparkplug_b_pb2 as pb
from edge_agent.connectors.factory import build_connectors
from edge_agent.connectors.mqtt import MqttConnector
from edge_agent.connectors.sparkplug import REBIRTH_METRIC, SparkplugDecoder, SparkplugField
from plant.wire import Quality
from tests.mqtt_peer import MqttPeer

from .conftest import Collector, one_machine_site, running

T_MS = 1_700_000_000_000


def payload(seq: int | None, metrics: list[dict[str, Any]], ts: int = T_MS) -> bytes:
    msg = pb.Payload(timestamp=ts)
    if seq is not None:
        msg.seq = seq
    for m in metrics:
        metric = msg.metrics.add()
        for k, v in m.items():
            setattr(metric, k, v)
    return msg.SerializeToString()


def birth(seq: int = 0, bdseq: int = 1) -> bytes:
    return payload(
        seq,
        [
            {"name": "bdSeq", "datatype": pb.Int64, "long_value": bdseq},
            {"name": "Temp", "alias": 1, "datatype": pb.Double, "double_value": 20.5},
            {"name": "Offset", "alias": 2, "datatype": pb.Int32, "int_value": (1 << 32) - 3},  # -3
            {"name": "Unbound", "alias": 3, "datatype": pb.Double, "double_value": 1.0},
        ],
    )


def make_decoder() -> SparkplugDecoder:
    return SparkplugDecoder(
        "sp",
        [
            SparkplugField("g/e1", "Temp", "m1", "temp"),
            SparkplugField("g/e1", "Offset", "m1", "offset"),
            SparkplugField("g/e1/d1", "Speed", "m2", "speed"),
        ],
        max_payload=1000,
    )


def test_birth_aliases_data_and_signed_ints() -> None:
    d = make_decoder()
    out, bad = d.decode("spBv1.0/g/NBIRTH/e1", birth(), 5)
    assert bad == []
    assert {(r.prop, r.raw, r.source_ts) for r in out} == {
        ("temp", 20.5, T_MS * 1000),
        ("offset", -3, T_MS * 1000),
    }
    out, bad = d.decode(
        "spBv1.0/g/NDATA/e1", payload(1, [{"alias": 1, "double_value": 21.0, "timestamp": T_MS + 5}]), 6
    )
    assert [(r.prop, r.raw, r.source_ts, r.recv_ts) for r in out] == [("temp", 21.0, (T_MS + 5) * 1000, 6)]
    assert d.commands == []
    d.decode(
        "spBv1.0/g/DBIRTH/e1/d1",
        payload(2, [{"name": "Speed", "alias": 7, "datatype": pb.Float, "float_value": 1.5}]),
        7,
    )
    out, _ = d.decode("spBv1.0/g/DDATA/e1/d1", payload(3, [{"alias": 7, "float_value": 2.5}]), 8)
    assert [(r.node, r.prop, r.raw) for r in out] == [("m2", "speed", 2.5)]


def test_sequence_gap_requests_a_rebirth_once_per_interval() -> None:
    d = make_decoder()
    d.decode("spBv1.0/g/NBIRTH/e1", birth(), 0)
    d.decode("spBv1.0/g/NDATA/e1", payload(3, [{"alias": 1, "double_value": 1.0}]), 0)  # 1 and 2 lost
    assert len(d.commands) == 1
    topic, body = d.commands[0]
    assert topic == "spBv1.0/g/NCMD/e1"
    cmd = pb.Payload.FromString(body)
    assert cmd.metrics[0].name == REBIRTH_METRIC
    assert cmd.metrics[0].boolean_value is True
    d.decode("spBv1.0/g/NDATA/e1", payload(9, [{"alias": 1, "double_value": 1.0}]), 0)
    assert len(d.commands) == 1  # rate-limited
    d.decode("spBv1.0/g/NDATA/e1", payload(10, [{"alias": 1, "double_value": 1.0}]), 0)
    assert len(d.commands) == 1
    d2 = make_decoder()
    d2.decode("spBv1.0/g/NBIRTH/e1", birth(seq=255), 0)
    d2.decode("spBv1.0/g/NDATA/e1", payload(0, [{"alias": 1, "double_value": 1.0}]), 0)  # wraps: no gap
    assert d2.commands == []


def test_data_before_birth_is_rejected_and_asks_for_a_birth() -> None:
    d = make_decoder()
    out, bad = d.decode("spBv1.0/g/NDATA/e1", payload(4, [{"alias": 1, "double_value": 1.0}]), 0)
    assert out == []
    assert [r for r, _ in bad] == ["unknown_alias"]
    assert len(d.commands) == 1


def test_deaths_mark_bound_signals_stale() -> None:
    d = make_decoder()
    d.decode("spBv1.0/g/NBIRTH/e1", birth(bdseq=4), 0)
    d.decode("spBv1.0/g/DBIRTH/e1/d1", payload(1, [{"name": "Speed", "alias": 7, "float_value": 1.5}]), 0)
    out, _ = d.decode("spBv1.0/g/DDEATH/e1/d1", payload(2, []), 9)
    assert [(r.node, r.prop, r.raw, r.quality, r.status) for r in out] == [
        ("m2", "speed", None, Quality.BAD, "stale")
    ]
    old, _ = d.decode("spBv1.0/g/NDEATH/e1", payload(None, [{"name": "bdSeq", "long_value": 3}]), 9)
    assert old == []  # the death of an earlier session: ignored
    out, _ = d.decode("spBv1.0/g/NDEATH/e1", payload(None, [{"name": "bdSeq", "long_value": 4}]), 9)
    assert {(r.prop, r.quality, r.status) for r in out} == {
        ("temp", Quality.BAD, "stale"),
        ("offset", Quality.BAD, "stale"),
        ("speed", Quality.BAD, "stale"),
    }


@pytest.mark.parametrize(
    ("topic", "body", "reason"),
    [
        ("spBv1.0/g/NDATA/e1", b"\xff\xff\xff\xff", "bad_sparkplug"),
        ("spBv1.0/g/NDATA/e1", b"x" * 2000, "payload_too_large"),
        ("spBv1.0/g/NDATA/other", b"", "unknown_topic"),
        ("spBv2.0/g/NDATA/e1", b"", "unknown_topic"),
        ("spBv1.0/g/NBIRTH/e1", None, "wrong_type"),
        ("spBv1.0/g/NBIRTH/e1", "nan", "not_a_number"),
    ],
)
def test_bad_payloads_are_rejections(topic: str, body: bytes | str | None, reason: str) -> None:
    d = make_decoder()
    if body is None:
        body = payload(0, [{"name": "Temp", "alias": 1, "bytes_value": b"\x00"}])
    elif body == "nan":
        body = payload(0, [{"name": "Temp", "alias": 1, "double_value": float("nan")}])
    out, bad = d.decode(topic, body, 0)  # type: ignore[arg-type]
    assert out == []
    assert [r for r, _ in bad] == [reason]


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200), kind=st.sampled_from(["NBIRTH", "NDATA", "DDATA", "NDEATH", "DDEATH"]))
def test_fuzz_random_payloads_never_raise(body: bytes, kind: str) -> None:
    d = make_decoder()
    topic = f"spBv1.0/g/{kind}/e1" + ("/d1" if kind.startswith("D") else "")
    d.decode(topic, body, 0)


@pytest.mark.mosquitto
def test_against_the_broker_birth_data_gap_rebirth_death(
    mqtt_broker: tuple[str, int], topic_prefix: str
) -> None:
    group = topic_prefix
    spec = {
        "kind": "mqtt",
        "url": f"mqtt://{mqtt_broker[0]}:{mqtt_broker[1]}",
        "format": "sparkplug",
        "client_id": f"{group}-agent",
    }
    site = one_machine_site("sp", spec, {"temp": {}}, {"temp": {"device": f"{group}/e1", "metric": "Temp"}})
    commands: list[str] = []
    # subscribed (SUBACK read) before the agent's first rebirth request
    edge = MqttPeer(*mqtt_broker, [f"spBv1.0/{group}/NCMD/e1"], on_message=lambda m: commands.append(m.topic))

    def pub(kind: str, body: bytes) -> None:
        edge.publish(f"spBv1.0/{group}/{kind}/e1", body, qos=0)

    async def main() -> None:
        (conn,) = build_connectors(site, type("S", (), {"sparkplug_rebirth_interval_s": 0.1}))
        assert isinstance(conn, MqttConnector)
        sink = Collector()
        async with running(conn.run(sink)):
            await sink.wait_for(lambda: len(commands) == 1)  # a rebirth request on connect
            pub("NBIRTH", birth())
            pub("NDATA", payload(1, [{"alias": 1, "double_value": 22.0}]))
            await sink.wait_for(lambda: [r.raw for r in sink.readings] == [20.5, 22.0])
            await asyncio.sleep(0.2)
            pub("NDATA", payload(5, [{"alias": 1, "double_value": 23.0}]))  # gap: 2..4 lost
            await sink.wait_for(lambda: len(commands) == 2)
            pub("NDEATH", payload(None, [{"name": "bdSeq", "long_value": 1}]))
            await sink.wait_for(lambda: any(r.status == "stale" for r in sink.readings))
        assert [r.raw for r in sink.readings][:3] == [20.5, 22.0, 23.0]
        assert sink.readings[-1].quality is Quality.BAD

    try:
        asyncio.run(main())
    finally:
        edge.close()
    assert json.dumps(commands)  # all on the NCMD topic
    assert set(commands) == {f"spBv1.0/{group}/NCMD/e1"}
