"""The platform's HTTP API as edge agents speak it: paths, request and answer bodies, the model archive format.

The MQTT side of the contract is plant/wire.py; this is the HTTP side. An agent (``agent`` API key, sent as a
Bearer token) calls four endpoints, all under ``API_PREFIX``:

    GET  PROMOTED   asset type → task → ``PromotedModel``: the version its agents should run
    GET  ARCHIVE    a version's tar.gz (``ARCHIVE_MEDIA_TYPE``); ``SHA256_HEADER`` is the sha256 of the body
    POST FAILURES   ``ModelFailureReport``: this gateway could not run the version; answered ``FailureRecorded``
    POST CASCADE    ``CascadeRequest``: a window the student was unsure about; answered with the teacher's
                    ``plant.wire.Diagnosis`` (source ``platform``)

An archive holds one registry model directory, flat or under one folder: ``MANIFEST`` (a ``Manifest``),
``MODEL_CARD`` and the ONNX file of each variant it ships (every file's sha256 is in the manifest).

Every model carries its contract version (``CONTRACT``, also the ``/api/v<n>`` of its path). Within a version
fields are only added, optional, and left out of a message while unset; anything else is a new version, served
beside the old one until every agent has moved (docs/contract.md).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from plant.fields import EpochUs, Key, Name, Text

API_VERSION = 1
API_PREFIX = f"/api/v{API_VERSION}"

# paths under API_PREFIX; ``{task}`` and ``{version}`` are a registry task and version
MODELS = "/models"
PROMOTED = "/models/promoted"
ARCHIVE = "/models/{task}/{version}/archive"
FAILURES = "/models/{task}/{version}/failures"
PROMOTE = "/models/{task}/{version}/promote"
CASCADE = "/cascade"

SHA256_HEADER = "X-Model-Sha256"
ARCHIVE_MEDIA_TYPE = "application/gzip"
MANIFEST = "manifest.json"
MODEL_CARD = "MODEL_CARD.md"
MANIFEST_SCHEMA = 1
TASKS = ("rul", "faults", "anomaly")
VARIANTS = ("teacher", "student", "student-int8")

Task = Literal["rul", "faults", "anomaly"]


def url(base: str, path: str, **params: str) -> str:
    """The absolute URL of an endpoint: ``url(platform, ARCHIVE, task="rul", version="1.2")``."""
    return base.rstrip("/") + API_PREFIX + path.format(**params)


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid")
    CONTRACT: ClassVar[int] = API_VERSION


class PromotedModel(_Contract):
    """The version of a task an asset type runs, with its archive's sha256."""

    version: str
    sha256: str


class ModelFailureReport(_Contract):
    """A gateway could not run a version: it failed to load, or its outputs left their declared range."""

    gateway: Key
    asset_type: Key
    reason: Annotated[Text, Field(min_length=1)]


class FailureRecorded(_Contract):
    """A failure report was stored."""

    status: Literal["recorded"] = "recorded"


class CascadeRequest(_Contract):
    """A window the edge student was unsure about, for the platform's teacher."""

    node: Key
    task: Task
    ts: EpochUs = Field(description="window end, µs since the epoch")
    model: Annotated[Name, Field(max_length=128, description="the student's model name")]
    version: Annotated[Key, Field(description="the student's registry version")]
    window: dict[Key, Annotated[list[float | Name | None], Field(max_length=100_000)]] = Field(
        max_length=256, description="signal → values, oldest first"
    )
    units: dict[Key, Annotated[Name, Field(max_length=32)]] = Field(
        {}, max_length=256, description="signal → unit; default: the declared ones"
    )


class VariantEntry(BaseModel):
    """One variant of a manifest: its ONNX file, checked by sha256 and size, and how the runtime reads it."""

    model_config = ConfigDict(extra="allow")
    CONTRACT: ClassVar[int] = MANIFEST_SCHEMA

    file: str
    sha256: str
    bytes: int
    output_name: str
    n_features: int
    calibration: Any
    graph_input: Literal["features", "window"] = "features"


class Manifest(BaseModel):
    """The keys of ``MANIFEST`` every reader relies on; the runtime's own sections (``input``, ``output``,
    ``training``, ``cascade``…) are read by models/runtime.py. ``schema`` is the manifest's version."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)
    CONTRACT: ClassVar[int] = MANIFEST_SCHEMA

    manifest_schema: Literal[1] = Field(alias="schema")
    task: Task
    name: str
    version: str
    input: dict[str, Any]
    output: dict[str, Any]
    training: dict[str, Any]
    variants: dict[Literal["teacher", "student", "student-int8"], VariantEntry]
    default_variant: str


def required_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The JSON keys a model requires, in field order (aliases where set)."""
    return tuple(f.alias or name for name, f in model.model_fields.items() if f.is_required())
