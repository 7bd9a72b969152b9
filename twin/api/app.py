"""The FastAPI application: routers under /api/v1, /healthz, OpenAPI at /docs and /redoc, errors as problem details.

Domain errors (twin/errors.py) become HTTP responses in one handler here, so routes raise NotFound or
Forbidden and never build an error response themselves. Bodies follow RFC 9457 (``application/problem+json``).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from plant.platform_api import API_PREFIX
from twin import errors, metrics
from twin.api import docs
from twin.api.exposure import Exposure
from twin.api.headers import SecurityHeaders
from twin.api.limits import BodyLimits
from twin.api.routes import (
    advice,
    alerts,
    asset_types,
    audit,
    health,
    keys,
    live,
    logbook,
    models,
    nodes,
    setpoints,
    users,
    webhooks,
    workorders,
)
from twin.config import TwinSettings, get_settings
from twin.dashboard import api as dashboard_api
from twin.dashboard import router as dashboard_router
from twin.db import make_engine, make_sessionmaker
from twin.live import live_bus_for
from twin.schemas import Problem
from twin.teachers import Teachers
from twin.throttle import Throttle, policy_of

log = structlog.get_logger(__name__)

# Every resource's router; each protects itself with a role dependency (twin/api/deps.py).
V1_ROUTERS: tuple[APIRouter, ...] = (
    nodes.router,
    setpoints.router,
    asset_types.router,
    alerts.router,
    advice.router,
    workorders.router,
    logbook.router,
    webhooks.router,
    keys.router,
    users.router,
    users.account_router,
    audit.router,
    live.router,
    models.router,
    models.cascade_router,
    dashboard_api.session_router,
    dashboard_api.router,
)

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[errors.TwinError], int], ...] = (
    (errors.NotFound, 404),
    (errors.Conflict, 409),
    (errors.InvalidRequest, 422),
    (errors.Unauthenticated, 401),
    (errors.Forbidden, 403),
    (errors.TooManyAttempts, 429),
    (errors.Unavailable, 503),
    (errors.SchemaOutdated, 503),
    (errors.StoreError, 503),
    (errors.BrokerError, 503),
)


def create_app(settings: TwinSettings | None = None, engine: Engine | None = None) -> FastAPI:
    """The API application for ``settings``, on ``engine`` or one made from ``settings.db_url``."""
    settings = settings or get_settings()
    owned = engine is None
    engine = engine if engine is not None else make_engine(settings.db_url)
    # history and frames reads may go to a replica (TWIN_DATABASE_READ_URL); everything else reads the primary
    reader = make_engine(settings.database_read_url) if settings.database_read_url else engine

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await app.state.live.aclose()
        if owned:  # an engine passed in belongs to the caller
            engine.dispose()
        if reader is not engine:
            reader.dispose()

    app = FastAPI(
        title="factory-twin",
        lifespan=lifespan,
        version="1",
        summary="Digital twin of a plant: hierarchy, latest state, history, diagnoses.",
        docs_url=None,  # /docs and /redoc come from twin/api/docs.py, with their assets served here, not by a CDN
        redoc_url=None,
        responses={
            401: {"model": Problem},
            403: {"model": Problem},
            408: {"model": Problem, "description": "the request body arrived too slowly"},
            413: {"model": Problem, "description": "the request body is over the limit"},
            422: {"model": Problem},
            429: {"model": Problem, "description": "too many failed credential checks: see Retry-After"},
        },
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessionmaker = make_sessionmaker(app.state.engine)
    app.state.read_sessionmaker = make_sessionmaker(reader)
    app.state.live = live_bus_for(engine)  # live updates across replicas (twin/live.py), for SSE
    # the teacher's answers to offloaded windows are stored like uplinked diagnoses, and heard live
    app.state.teachers = Teachers(engine, settings, listeners=[app.state.live.listener])

    v1 = APIRouter(prefix=API_PREFIX)
    for router in V1_ROUTERS:
        v1.include_router(router)
    app.include_router(v1)
    app.include_router(health.router)
    app.include_router(docs.router)
    app.include_router(dashboard_router)  # the dashboard's pages at /, its files at /static
    app.state.throttle = Throttle(policy_of(settings))  # failed logins and key checks (twin/throttle.py)

    # Middleware, innermost first: who may see /metrics and /docs; bodies bounded and read before routing
    # (so before any database session); requests counted, refusals included; security headers on everything.
    app.add_middleware(Exposure, settings=settings)
    app.add_middleware(BodyLimits, settings=settings)
    metrics.instrument(app, settings)  # GET /metrics (TWIN_METRICS_ACCESS)
    app.add_middleware(SecurityHeaders)

    app.add_exception_handler(errors.TwinError, _twin_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(SQLAlchemyError, _database_error)
    return app


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem response."""
    body = Problem(title=HTTPStatus(status).phrase, status=status, detail=detail, **extra)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


async def _twin_error(_request: Request, exc: Exception) -> JSONResponse:
    status = next((code for cls, code in _STATUS if isinstance(exc, cls)), 500)
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    if isinstance(exc, errors.TooManyAttempts):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
    if status >= 500:
        log.error("request_failed", error=str(exc), kind=type(exc).__name__)
    return problem(status, str(exc) or type(exc).__name__, headers)


# A validation error answers with at most this many of its errors, each cut to a length: the reply stays a
# few KiB however much junk the request held.
MAX_ERRORS = 10
_MAX_LOC_PARTS = 6
_MAX_TEXT = 160


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    found = exc.errors()
    shown = [_brief_error(e) for e in found[:MAX_ERRORS]]
    messages = [f"{'.'.join(e['loc']) or 'request'}: {e['msg']}" for e in shown]
    if len(found) > MAX_ERRORS:
        messages.append(f"and {len(found) - MAX_ERRORS} more errors")
    return problem(422, "; ".join(messages) or "invalid request", errors=shown)


def _brief_error(error: Any) -> dict[str, Any]:
    """One validation error as field path, reason and kind, each cut short (the input is never echoed)."""
    loc = [_cut(str(p), 64) for p in error.get("loc", ())]
    if len(loc) > _MAX_LOC_PARTS:
        loc = [*loc[: _MAX_LOC_PARTS - 1], "…", loc[-1]]
    return {"loc": loc, "msg": _cut(str(error.get("msg", "invalid")), _MAX_TEXT),
            "type": _cut(str(error.get("type", "")), 64)}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _database_error(_request: Request, exc: Exception) -> JSONResponse:
    # Where SQLAlchemy's errors become ours: the client learns that the database failed, the log says how.
    log.error("database_error", error=str(exc).splitlines()[0] if str(exc) else "", kind=type(exc).__name__)
    return problem(
        503, "the database is unavailable or its schema is outdated (run `factory-twin db upgrade`)"
    )
