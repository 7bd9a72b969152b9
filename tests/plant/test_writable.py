"""Writable properties in the site model: declared with limits, rate, role and two-person rule; a declaration
that could not be written safely is refused with the file's line and field."""

from __future__ import annotations

import pytest

from plant.errors import SiteError
from plant.site import parse_site
from tests.site_texts import one_pump_site

SITE = one_pump_site("""
site: {{id: plant}}
sources:
  ua: {{kind: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}}
  bus: {{kind: mqtt, url: "mqtt://127.0.0.1:1883"}}
asset_types:
  pump:
    properties:
      speed: {{unit: rpm, {speed}}}
      flow: {{unit: m3/h, writable: {{limits: [0, 50]}}}}
""", """\
speed: {{source: ua, node_id: "ns=2;s=p1.speed"}}
flow: {{source: bus, topic: plant/p1, path: flow{flow}}}
""", gateway="gw1")
GOOD_SPEED = "writable: {limits: [0, 3000], max_rate: 100, role: technician, two_person: true}"
GOOD_FLOW = ", command_topic: plant/p1/set, command_field: flow"


def test_a_writable_property_is_declared_with_its_rules() -> None:
    site = parse_site(SITE.format(speed=GOOD_SPEED, flow=GOOD_FLOW))
    pdef, rules, binding = site.writable("p1", "speed")
    assert (rules.limits, rules.max_rate, rules.role, rules.two_person, rules.expiry_s) == (
        (0, 3000), 100, "technician", True, 60.0)
    assert pdef.unit == "rpm"
    assert getattr(binding, "node_id", None) == "ns=2;s=p1.speed"
    _, flow_rules, _ = site.writable("p1", "flow")
    assert flow_rules.role == "engineer"  # the default least role
    with pytest.raises(KeyError):
        parse_site(SITE.format(speed="range: [0, 3000]", flow=GOOD_FLOW)).writable("p1", "speed")


@pytest.mark.parametrize(("speed", "flow", "message"), [
    ("writable: {limits: [3000, 0]}", GOOD_FLOW, "must be below"),
    ("writable: {limits: [0, .nan]}", GOOD_FLOW, "finite"),
    ("dtype: string, writable: {limits: [0, 1]}", GOOD_FLOW, "float or int"),
    ("writable: {limits: [0, 1], role: viewer}", GOOD_FLOW, "role"),
    ("writable: {limits: [0, 1], max_rate: 0}", GOOD_FLOW, "max_rate"),
    ("writable: {limits: [0, 1], expiry_s: 0}", GOOD_FLOW, "expiry_s"),
    (GOOD_SPEED, "", "command_topic"),
])
def test_an_unsafe_declaration_is_refused(speed: str, flow: str, message: str) -> None:
    with pytest.raises(SiteError, match=message):
        parse_site(SITE.format(speed=speed, flow=flow))
