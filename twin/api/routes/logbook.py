"""``/api/v1/logbook``: what happened to an asset (and everything below it) and what was done, newest first.

Sources (twin/logbook.py): work orders, alerts, model versions, setpoint writes.
``/api/v1/logbook.csv`` is the same as a file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from plant.wire import from_us, now_us, to_us
from twin import logbook, queries
from twin.api.deps import SessionDep, ViewerDep
from twin.auth import Principal
from twin.errors import InvalidRequest
from twin.exports import filename_stamp
from twin.fields import Key, Timestamp
from twin.schemas.logbook import Logbook, LogEntryPublic, SourceName

router = APIRouter(tags=["logbook"])

DEFAULT_RANGE = timedelta(days=30)


Node = Annotated[Key | None, Query(description="this asset and everything below it; none: the plant")]
Start = Annotated[Timestamp | None, Query(description="inclusive; default: 30 days before end")]
End = Annotated[Timestamp | None, Query(description="exclusive; default: now")]
Sources = Annotated[list[SourceName] | None, Query(alias="source", description="only these sources")]
Limit = Annotated[int, Query(ge=1, le=5000)]


def _entries(
    session: SessionDep,
    who: Principal,
    node: str | None,
    start: datetime | None,
    end: datetime | None,
    source: list[SourceName] | None,
    limit: int,
) -> tuple[list[logbook.Entry], int, int]:
    finish = to_us(end) if end else now_us()
    begin = to_us(start) if start else finish - int(DEFAULT_RANGE.total_seconds() * 1e6)
    if begin >= finish:
        raise InvalidRequest("start must be before end")
    path = queries.get_node(session, node).path if node else ""
    scope = logbook.LogbookQuery(path=path, start=begin, end=finish, limit=limit, sites=who.sites)
    return logbook.entries(session, scope, list(source) if source else None), begin, finish


@router.get("/logbook", response_model=Logbook)
def get_logbook(
    session: SessionDep, who: ViewerDep, node: Node = None, start: Start = None, end: End = None,
    source: Sources = None, limit: Limit = 500,
) -> Logbook:
    """Work orders, alerts and model versions of an asset and its parts, newest first."""
    rows, begin, finish = _entries(session, who, node, start, end, source, limit)
    items = [LogEntryPublic(at=from_us(e.at), node=e.node, source=e.source, kind=e.kind,
                            title=e.title, detail=e.detail, actor=e.actor, ref=e.ref) for e in rows]
    return Logbook(node=node, start=from_us(begin), end=from_us(finish), items=items, count=len(items))


@router.get("/logbook.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def get_logbook_csv(
    session: SessionDep, who: ViewerDep, node: Node = None, start: Start = None, end: End = None,
    source: Sources = None, limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
) -> Response:
    """The logbook as CSV (at, node, source, kind, title, detail, actor, ref)."""
    rows, _, finish = _entries(session, who, node, start, end, source, limit)
    name = f"logbook-{node or 'plant'}-{filename_stamp(finish)}.csv"
    return Response(logbook.to_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
