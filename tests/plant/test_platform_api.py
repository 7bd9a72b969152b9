"""The edge ↔ platform HTTP contract holds on both sides: the platform's routes sit at the contract's paths and
document exactly the contract's bodies, the agent's client code speaks them to the real app, and a model
directory is what the contract says an archive holds.

A field changed on one side only fails here: the platform's OpenAPI schema of each endpoint is compared with the
plant model's JSON schema, and the edge's requests are checked by the real app's validation.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel, TypeAdapter

from edge_agent import metrics
from edge_agent.cascade_client import CascadeClient
from edge_agent.commands import report_payload
from edge_agent.uplink import build_payload
from models import registry
from plant import platform_api as api
from plant.platform_api import (
    API_PREFIX,
    CascadeRequest,
    FailureRecorded,
    Manifest,
    ModelFailureReport,
    PromotedModel,
    VariantEntry,
    required_keys,
)
from plant.wire import WIRE_VERSION, CommandReport, Diagnosis, UplinkBatch, decode_batch
from twin.api import create_app
from twin.auth import Role, create_key
from twin.config import TwinSettings
from twin.db import make_sessionmaker
from twin.model_registry import pack, unpack

from ..api_server import serve_api
from ..model_archives import machine_twin

REGISTRY = Path(registry.__file__).resolve().parent / "registry"
Schema = dict[str, Any]

# method, path, request body model, success status, answer type: every endpoint an agent calls
ENDPOINTS: list[tuple[str, str, type[BaseModel] | None, str, Any]] = [
    ("post", api.CASCADE, CascadeRequest, "200", Diagnosis),
    ("post", api.FAILURES, ModelFailureReport, "201", FailureRecorded),
    ("get", api.PROMOTED, None, "200", dict[str, dict[str, PromotedModel]]),
]


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> Schema:
    tmp = tmp_path_factory.mktemp("openapi")
    engines = machine_twin(f"sqlite:///{tmp / 'twin.db'}", "p1", "pump")
    engine = next(engines)
    document: Schema = create_app(TwinSettings(data_dir=tmp, docs_access="open"), engine).openapi()
    next(engines, None)
    return document


def _inline(schema: Any, defs: Schema) -> Any:
    """``schema`` with every ``$ref`` replaced by what it names (OpenAPI components or pydantic ``$defs``), and
    no ``"default": null`` (FastAPI leaves those out of the document)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if not (k == "default" and v is None)}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


def _plant_schema(tp: Any, mode: str) -> Any:
    schema = TypeAdapter(tp).json_schema(mode=mode)  # type: ignore[arg-type]
    inlined = _inline(schema, schema.pop("$defs", {}))
    inlined.pop("title", None)  # the platform names a bare dict's schema after its route
    return inlined


def _platform_schema(openapi: Schema, body: Schema) -> Any:
    inlined = _inline(body["content"]["application/json"]["schema"], openapi["components"]["schemas"])
    inlined.pop("title", None)
    return inlined


@pytest.mark.parametrize(("method", "path", "request_model", "status", "answer"), ENDPOINTS)
def test_the_platform_documents_the_contracts_bodies_at_the_contracts_paths(
    openapi: Schema, method: str, path: str, request_model: type[BaseModel] | None, status: str, answer: Any
) -> None:
    operation = openapi["paths"][API_PREFIX + path][method]
    if request_model is None:
        assert "requestBody" not in operation
    else:
        assert _platform_schema(openapi, operation["requestBody"]) == _plant_schema(request_model, "validation")
    assert _platform_schema(openapi, operation["responses"][status]) == _plant_schema(answer, "serialization")


def test_the_archive_is_served_at_its_path_with_its_media_type_and_digest_header(openapi: Schema) -> None:
    answer = openapi["paths"][API_PREFIX + api.ARCHIVE]["get"]["responses"]["200"]
    assert list(answer["content"]) == [api.ARCHIVE_MEDIA_TYPE]
    assert list(answer["headers"]) == [api.SHA256_HEADER]


def test_every_contract_model_carries_its_version() -> None:
    for model in (CascadeRequest, ModelFailureReport, FailureRecorded, PromotedModel):
        assert model.CONTRACT == api.API_VERSION
    assert f"/api/v{api.API_VERSION}" == API_PREFIX
    assert Manifest.CONTRACT == VariantEntry.CONTRACT == api.MANIFEST_SCHEMA == registry.SCHEMA_VERSION


def test_the_urls_an_agent_calls() -> None:
    base = "http://platform:8000/"
    assert api.url(base, api.ARCHIVE, task="rul", version="1.2.0") == (
        "http://platform:8000/api/v1/models/rul/1.2.0/archive"
    )
    assert api.url(base, api.CASCADE) == "http://platform:8000/api/v1/cascade"


# the model archive ------------------------------------------------------------------------------------------


def test_every_committed_manifest_is_a_contract_manifest() -> None:
    manifests = sorted(REGISTRY.glob(f"*/*/{api.MANIFEST}"))
    assert manifests
    for path in manifests:
        manifest = Manifest.model_validate(json.loads(path.read_text()))
        assert (manifest.task, manifest.version) == (path.parent.parent.name, path.parent.name)


def test_the_registry_checks_the_keys_the_contract_requires() -> None:
    # read_manifest refuses what lacks one of these keys: the edge's check of a download is the contract's
    assert required_keys(Manifest) == registry._REQUIRED
    assert required_keys(VariantEntry) == registry._VARIANT_KEYS
    assert (
        set(registry.GRAPH_INPUTS)
        == {"features", "window"}
        == set(
            VariantEntry.model_fields["graph_input"].annotation.__args__  # type: ignore[union-attr]
        )
    )
    assert set(registry.TASKS) == set(api.TASKS) == set(TypeAdapter(api.Task).json_schema()["enum"])


def test_an_archive_holds_the_manifest_the_model_card_and_the_variant_files() -> None:
    directory = registry.latest(REGISTRY, "faults")
    files = unpack(pack(directory), 1 << 30)
    manifest = Manifest.model_validate(json.loads(files[api.MANIFEST]))
    shipped = {entry.file for entry in manifest.variants.values() if (directory / entry.file).is_file()}
    assert set(files) == {api.MANIFEST, api.MODEL_CARD} | shipped


# the edge's client code against the real app ----------------------------------------------------------------


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """The real platform API (SQLite, one machine p1, no teacher) on loopback, and an agent key."""
    engines = machine_twin(f"sqlite:///{tmp_path / 'twin.db'}", "p1", "pump")
    engine = next(engines)
    with make_sessionmaker(engine)() as s:
        key = create_key(s, Role.AGENT, "gateway contract-test")
    app: FastAPI = create_app(TwinSettings(data_dir=tmp_path, model_dir=tmp_path / "no-models"), engine)
    with serve_api(app) as url:
        yield url, key
    next(engines, None)


def _cascade_results(task: str) -> dict[str, float]:
    return {
        s.labels["result"]: s.value
        for m in metrics.CASCADE.collect()
        for s in m.samples
        if s.name.endswith("_total") and s.labels["task"] == task
    }


def test_the_edges_cascade_request_passes_the_platforms_validation(platform: tuple[str, str]) -> None:
    url, key = platform
    before = _cascade_results("faults")

    async def ask() -> Diagnosis | None:
        client = CascadeClient(url, key, timeout_s=10.0)
        try:
            window = {"air_temp": [300.1, 300.2], "tool_wear": [1, 2], "type": ["M", "M"]}
            return await client.ask("p1", "faults", 1_700_000_000_000_000, "faults-student", "1.0.0", window, {})
        finally:
            await client.aclose()

    assert asyncio.run(ask()) is None  # the platform has no teacher: 503, after the body was accepted
    after = _cascade_results("faults")
    changed = {label for label in after if after[label] != before.get(label, 0.0)}
    assert changed == {"http_503"}


def test_the_edges_failure_report_passes_the_platforms_validation(platform: tuple[str, str]) -> None:
    url, key = platform
    report = ModelFailureReport(gateway="gw-1", asset_type="pump", reason="load failed: no ONNX")
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    where = api.url(url, api.FAILURES, task="faults", version="9.9.9")
    answer = httpx.post(where, content=report.model_dump_json(), headers=headers, timeout=10)
    assert answer.status_code == 404, answer.text  # an unknown version, not a malformed report (422)
    extra = json.dumps({**report.model_dump(), "severity": "high"})
    assert httpx.post(where, content=extra, headers=headers, timeout=10).status_code == 422
    promoted = httpx.get(api.url(url, api.PROMOTED), headers=headers, timeout=10).raise_for_status().json()
    assert TypeAdapter(dict[str, dict[str, PromotedModel]]).validate_python(promoted) == {}


# the MQTT uplinks the agent builds itself --------------------------------------------------------------------


def test_the_agents_uplinks_are_wire_batches() -> None:
    reports = [CommandReport(id="cmd-12345678", node="p1", prop="speed", state="applied", value=3.0, at=5)]
    batch = decode_batch(report_payload("gw-1", "b-1", reports, 7))
    assert (batch.gateway, batch.batch, batch.sent, batch.v) == ("gw-1", "b-1", 7, WIRE_VERSION)
    assert "commands" in batch.model_fields_set
    assert batch.commands == [reports[0].model_dump(mode="json")]
    # the outbox's batches are joined from stored JSON items for speed: the keys must stay UplinkBatch's
    fast = json.loads(build_payload("gw-1", "b-2", [], 9))
    assert set(fast) == set(UplinkBatch.model_fields) - {"commands"}
    assert decode_batch(build_payload("gw-1", "b-2", [], 9)).batch == "b-2"
