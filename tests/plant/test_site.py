"""The site model: the example plant validates; every kind of mistake names file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from plant.errors import SiteError
from plant.site import NodeKind, OpcUaBinding, load_site, parse_site

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "plant.yaml"


@pytest.fixture(scope="module")
def text() -> str:
    return EXAMPLE.read_text()


def test_example_plant_loads() -> None:
    site = load_site(EXAMPLE)
    assets = {n.id: n for n in site.assets()}
    assert set(assets) == {"mill-1", "pump-1", "engine-1"}
    assert assets["engine-1"].type == "turbofan"
    assert isinstance(assets["engine-1"].bindings["t24"], OpcUaBinding)
    kinds = {n.kind for n, _ in site.walk()}
    assert kinds == set(NodeKind)
    assert site.property_def("pump-1", "pressure").unit == "kPa"


def _error(text: str) -> str:
    with pytest.raises(SiteError) as exc:
        parse_site(text, "plant.yaml")
    return str(exc.value)


def test_unknown_asset_type_names_line_and_field(text: str) -> None:
    msg = _error(text.replace("type: pump\n", "type: pumpx\n"))
    line = text.splitlines().index("            type: pump") + 1
    assert f"plant.yaml:{line}:" in msg
    assert "nodes[0].children[1].children[0].type" in msg
    assert "unknown asset type 'pumpx'" in msg


def test_wrong_value_type_names_field(text: str) -> None:
    msg = _error(text.replace("grid_ms: 1000", "grid_ms: fast"))
    assert "asset_types.turbofan.alignment.grid_ms" in msg
    assert "valid integer" in msg


def test_binding_to_unknown_property(text: str) -> None:
    msg = _error(text.replace("      voltage: {unit: V", "      volts: {unit: V"))
    assert "bindings.voltage" in msg
    assert "has no property 'voltage'" in msg


def test_binding_kind_must_match_source(text: str) -> None:
    broken = text.replace(
        "cycle: {source: cell-opcua, node_id", "cycle: {source: plant-mqtt, node_id"
    )
    assert "binding kind does not match source 'plant-mqtt'" in _error(broken)


def test_mqtt_binding_needs_topic_or_metric(text: str) -> None:
    broken = text.replace("topic: plant/utilities/pump-1/sensors, path: motor.voltage", "path: motor.voltage")
    assert "bindings.voltage: an MQTT binding needs 'topic'" in _error(broken)


def test_duplicate_node_id(text: str) -> None:
    assert "node id 'pump-1' is used twice" in _error(text.replace("id: engine-1\n", "id: pump-1\n"))


def test_hierarchy_rules(text: str) -> None:
    assert "a area cannot contain a site" in _error(text.replace("kind: line\n", "kind: site\n"))


def test_invalid_yaml_names_line() -> None:
    msg = _error("site: {id: x\nnodes: [")
    assert msg.startswith("plant.yaml:")
    assert "not valid YAML" in msg


def test_not_a_mapping() -> None:
    assert "must be a mapping" in _error("- just a list")


def test_unknown_key_is_refused(text: str) -> None:
    assert "Extra inputs are not permitted" in _error(text.replace("  timezone:", "  timezon:"))


def test_secure_opcua_needs_certificate(text: str) -> None:
    broken = text.replace("    publishing_interval_ms: 500",
                          "    security: {mode: Sign}\n    publishing_interval_ms: 500")
    assert "needs 'certificate' and 'private_key'" in _error(broken)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SiteError, match="cannot read site file"):
        load_site(tmp_path / "nope.yaml")
