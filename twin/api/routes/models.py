"""``/api/v1/models`` (the model registry: upload, list, promote, download, failure reports) and ``/api/v1/cascade``.

Engineers upload and promote; edge gateways (``agent`` keys) download the promoted versions, report the ones
they could not run and send the windows their student was unsure about; viewers may read the list. What the
agents call, with its bodies, is the contract's (plant/platform_api.py).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.concurrency import run_in_threadpool

from plant.platform_api import (
    ARCHIVE,
    ARCHIVE_MEDIA_TYPE,
    CASCADE,
    FAILURES,
    MODELS,
    PROMOTE,
    PROMOTED,
    SHA256_HEADER,
    CascadeRequest,
    FailureRecorded,
    ModelFailureReport,
    PromotedModel,
)
from plant.wire import Diagnosis
from twin import model_registry
from twin.api.deps import AgentOrEngineerDep, AgentOrViewerDep, EngineerDep, SessionDep, SettingsDep
from twin.errors import InvalidRequest
from twin.fields import Key
from twin.schemas import ModelCreated, ModelPromote, ModelPublic, ModelsPublic
from twin.scopes import check_references
from twin.teachers import Teachers

router = APIRouter(tags=["models"])
cascade_router = APIRouter(tags=["models"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "description": "tar.gz of one registry model directory: manifest.json, the ONNX files, MODEL_CARD.md",
        "content": {ARCHIVE_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


def get_teachers(request: Request) -> Teachers:
    """The app's teachers (loaded once per process)."""
    teachers: Teachers = request.app.state.teachers
    return teachers


TeachersDep = Annotated[Teachers, Depends(get_teachers)]


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (422) beyond ``limit`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise InvalidRequest(f"archive of {declared} bytes exceeds the limit of {limit} (TWIN_MODEL_MAX_BYTES)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidRequest(f"archive exceeds the limit of {limit} bytes (TWIN_MODEL_MAX_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(MODELS, status_code=201, response_model=ModelCreated, openapi_extra=_UPLOAD_BODY)
async def upload_model(
    request: Request, response: Response, session: SessionDep, settings: SettingsDep, who: EngineerDep
) -> dict[str, Any]:
    """Upload a model version (engineer and up): 201 when stored, 200 when identical to the one stored."""
    data = await _read_body(request, settings.model_max_bytes)
    row, created = await run_in_threadpool(
        model_registry.upload, session, data, who.name or who.prefix, settings.model_max_bytes, who
    )
    if not created:
        response.status_code = 200
    return {"task": row.task, "name": row.name, "version": row.version, "sha256": row.sha256}


@router.get(MODELS, response_model=ModelsPublic)
def list_models(session: SessionDep, _who: AgentOrViewerDep) -> dict[str, Any]:
    """Every model version, with the asset types it is promoted for and the failures gateways reported."""
    items = [ModelPublic.model_validate(m) for m in model_registry.list_models(session)]
    return {"items": items, "count": len(items)}


@router.get(PROMOTED, response_model=dict[str, dict[str, PromotedModel]])
def promoted_models(session: SessionDep, _who: AgentOrViewerDep) -> dict[str, Any]:
    """asset type → task → the version its agents should run, with the archive's sha256."""
    return model_registry.promoted(session)


@router.post(PROMOTE, response_model=ModelCreated)
def promote_model(session: SessionDep, who: EngineerDep, task: Key, version: Key, body: ModelPromote) -> dict[str, Any]:
    """Have the agents of an asset type run this version (engineer and up); promoting an older one rolls back."""
    row = model_registry.promote(session, task, version, body.asset_type, who.name or who.prefix, who)
    return {"task": row.task, "name": row.name, "version": row.version, "sha256": row.sha256}


@router.get(
    ARCHIVE,
    response_class=Response,
    responses={200: {"content": {ARCHIVE_MEDIA_TYPE: {}}, "headers": {SHA256_HEADER: {"description": "of the body"}}}},
)
def download_model(session: SessionDep, _who: AgentOrViewerDep, task: Key, version: Key) -> Response:
    """The version's tar.gz; the X-Model-Sha256 header is the sha256 of the body, to check before use."""
    data, sha256 = model_registry.archive(session, task, version)
    headers = {
        SHA256_HEADER: sha256,
        "ETag": f'"{sha256}"',
        "Content-Disposition": f'attachment; filename="{task}-{version}.tar.gz"',
    }
    return Response(content=data, media_type=ARCHIVE_MEDIA_TYPE, headers=headers)


@router.post(FAILURES, status_code=201, response_model=FailureRecorded)
def report_failure(
    session: SessionDep, _who: AgentOrEngineerDep, task: Key, version: Key, body: ModelFailureReport
) -> FailureRecorded:
    """A gateway could not run this version for an asset type (agent keys, engineer and up); shown in the list."""
    model_registry.report_failure(session, task, version, body.gateway, body.asset_type, body.reason)
    return FailureRecorded()


@cascade_router.post(CASCADE, response_model=Diagnosis)
def cascade(session: SessionDep, who: AgentOrEngineerDep, teachers: TeachersDep, body: CascadeRequest) -> Diagnosis:
    """The platform teacher's diagnosis of a window, stored with source ``platform`` (agent keys, engineers)."""
    check_references(session, who, [("node", body.node)])
    return teachers.diagnose(session, body, gateway=who.name or who.prefix)
