"""``/api/v1/audit``: the audit trail (admin only), filtered, newest first; ``/api/v1/audit.csv`` as a file."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import AwareDatetime

from plant.wire import from_us, now_us, to_us
from twin import audit
from twin.api.deps import AdminDep, SessionDep
from twin.errors import InvalidRequest
from twin.exports import filename_stamp
from twin.fields import MAX_ROW_ID
from twin.schemas.audit import AuditPage, AuditPublic
from twin.tables import AuditRecord

router = APIRouter(tags=["audit"])

_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no NUL or control characters
Actor = Annotated[str | None, Query(max_length=160, pattern=_PRINTABLE,
                                    description="exactly this actor (a username, or 'key ftk_…')")]
Action = Annotated[str | None, Query(max_length=64, pattern=r"^[a-z_]+(\.[a-z_]*)?$",
                                     description="an action (user.disable), or a thing's every action (user.)")]
Target = Annotated[str | None, Query(max_length=256, pattern=_PRINTABLE,
                                     description="exactly this target (alert:42, user:alice)")]
Since = Annotated[AwareDatetime | None, Query(description="at or after")]
Until = Annotated[AwareDatetime | None, Query(description="before")]
BeforeId = Annotated[int | None, Query(ge=1, le=MAX_ROW_ID, description="older than this record (the next page)")]


def _filter(actor: str | None, action: str | None, target: str | None, since: datetime | None,
            until: datetime | None, before_id: int | None) -> audit.AuditFilter:
    if since is not None and until is not None and since >= until:
        raise InvalidRequest("since must be before until")
    return audit.AuditFilter(actor=actor, action=action, target=target,
                             since=None if since is None else to_us(since),
                             until=None if until is None else to_us(until), before_id=before_id)


def _public(r: AuditRecord) -> AuditPublic:
    return AuditPublic(id=r.id, at=from_us(r.at), actor=r.actor, address=r.address, action=r.action,
                       target=r.target, before=r.before, after=r.after)


@router.get("/audit", response_model=AuditPage)
def get_audit(
    session: SessionDep, _who: AdminDep, actor: Actor = None, action: Action = None, target: Target = None,
    since: Since = None, until: Until = None, before_id: BeforeId = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditPage:
    """Who changed what, when, from where, with the state before and after; newest first."""
    rows = audit.query(session, _filter(actor, action, target, since, until, before_id), limit)
    return AuditPage(items=[_public(r) for r in rows], count=len(rows),
                     next_before_id=rows[-1].id if len(rows) == limit else None)


@router.get("/audit.csv", response_class=Response, responses={200: {"content": {"text/csv": {}}}})
def get_audit_csv(
    session: SessionDep, _who: AdminDep, actor: Actor = None, action: Action = None, target: Target = None,
    since: Since = None, until: Until = None, before_id: BeforeId = None,
    limit: Annotated[int, Query(ge=1, le=audit.MAX_LIMIT)] = audit.MAX_LIMIT,
) -> Response:
    """The same records as CSV (id, at, actor, address, action, target, before, after as JSON)."""
    rows = audit.query(session, _filter(actor, action, target, since, until, before_id), limit)
    name = f"audit-{filename_stamp(now_us())}.csv"
    return Response(audit.to_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
