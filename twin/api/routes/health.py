"""``/healthz``: open to all, for load balancers and orchestrators."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from twin.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(request: Request) -> JSONResponse:
    """200 when the database answers and, in a process that ingests, a worker takes messages; 503 otherwise."""
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return JSONResponse(
            Health(status="unavailable", detail=f"database: {reason}").model_dump(), status_code=503
        )
    ingestor = getattr(request.app.state, "ingestor", None)
    if ingestor is not None and not ingestor.consuming():
        return JSONResponse(
            Health(status="unavailable", detail="ingest: no worker is consuming uplink messages").model_dump(),
            status_code=503,
        )
    return JSONResponse(Health(status="ok").model_dump(exclude_none=True))
