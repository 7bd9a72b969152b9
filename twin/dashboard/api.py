"""The API behind the dashboard: ``/api/v1/session`` (log in and out) and ``/api/v1/dashboard/*`` (plant
health, downsampled trends, diagnoses over time). Everything else the pages show comes from the public API.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from plant.wire import from_us, now_us, to_us
from twin import audit, auth, queries, users
from twin.api.deps import AddressDep, SessionDep, SettingsDep, ViewerDep, get_throttle
from twin.auth import SESSION_PREFIX, Role
from twin.diagnoses import diagnoses_over
from twin.downsample import MAX_BUCKETS, downsample
from twin.errors import InvalidRequest, Unauthenticated
from twin.fields import Key, Name, Timestamp
from twin.plant_health import plant_health
from twin.schemas.dashboard import Diagnoses, LoginRequest, PlantHealth, SessionCreated, SessionPublic, Trend
from twin.tables import QUALITY_NAMES
from twin.throttle import Kind

session_router = APIRouter(prefix="/session", tags=["session"])
router = APIRouter(prefix="/dashboard", tags=["dashboard"])

DEFAULT_RANGE = timedelta(hours=1)


@session_router.post("", response_model=SessionCreated, status_code=201)
def log_in(
    request: Request, session: SessionDep, settings: SettingsDep, address: AddressDep, body: LoginRequest
) -> SessionCreated:
    """Log in with a username and password (a new session token) or check an API key (used as the token).

    A session token given as the key is checked against the configured session lifetimes like any request,
    so an expired session cannot be revived by "logging in" with it. Failures count per client address and
    per user name; past the limits the answer is 429 with ``Retry-After`` (docs/security.md).
    """
    throttle = get_throttle(request)
    if body.api_key is not None:
        limits = auth.SessionLimits(settings.session_idle_s, settings.session_max_s)
        with throttle.attempt(Kind.KEY, address):
            who = auth.authenticate(session, body.api_key.strip(), limits)
        return SessionCreated(token=body.api_key.strip(), name=who.name, role=who.role, prefix=who.prefix,
                              session=False, sites=None if who.sites is None else sorted(who.sites))
    assert body.username is not None
    assert body.password is not None
    with throttle.attempt(Kind.PASSWORD, address, body.username, guesses=(Unauthenticated,)):
        try:
            token, user = users.login(session, body.username, body.password, commit=False)
        except Unauthenticated as exc:
            session.rollback()
            audit.record(session, body.username, "session.login_failed", f"user:{body.username}",
                         after={"reason": str(exc)}, address=address)
            session.commit()
            raise
    audit.record(session, user.username, "session.login", f"user:{user.username}", after={"session": token[:16]},
                 address=address)
    session.commit()
    return SessionCreated(token=token, name=user.username, role=Role(user.role), prefix=token[:16], sites=user.sites,
                          session=True)


@session_router.get("", response_model=SessionPublic)
def whoami(who: ViewerDep) -> SessionPublic:
    """The caller's name and role."""
    is_session = who.name.startswith(SESSION_PREFIX)
    name = who.name.removeprefix(SESSION_PREFIX) if is_session else (who.name or who.prefix)
    return SessionPublic(name=name, role=who.role, prefix=who.prefix, session=is_session,
                         sites=None if who.sites is None else sorted(who.sites))


@session_router.delete("", status_code=204)
def log_out(session: SessionDep, who: ViewerDep) -> Response:
    """Log out: a session token is revoked; a standing API key is left alone (`keys revoke` does that)."""
    if who.name.startswith(SESSION_PREFIX) and users.log_out(session, who.key_id):
        audit.record(session, who, "session.logout", f"user:{who.owner}", after={"session": who.prefix})
        session.commit()
    return Response(status_code=204)


@router.get("/health", response_model=PlantHealth)
def health(session: SessionDep, who: ViewerDep) -> PlantHealth:
    """Each node's health (own and of its subtree) from open alerts and latest diagnoses."""
    return PlantHealth.model_validate({
        "generated_at": from_us(now_us()),
        "nodes": {node_id: h.as_dict() for node_id, h in plant_health(session, sites=who.sites).items()},
    })  # fmt: skip


Start = Annotated[Timestamp | None, Query(description="inclusive; default: an hour before end")]
End = Annotated[Timestamp | None, Query(description="exclusive; default: now")]
NodeId = Annotated[Key, Path(description="a node id from the site model")]


@router.get("/nodes/{node_id}/trend", response_model=Trend)
def trend(
    session: SessionDep,
    _who: ViewerDep,
    node_id: NodeId,
    prop: Annotated[Name, Query(min_length=1, max_length=128, description="property name")],
    start: Start = None,
    end: End = None,
    points: Annotated[int, Query(ge=10, le=MAX_BUCKETS, description="most buckets returned")] = 800,
) -> Trend:
    """A property's history over a range, downsampled on the server to at most ``points`` min/max buckets."""
    begin, finish = _range(start, end)
    p = queries.get_property(session, node_id, prop)
    if p.dtype == "string":
        raise InvalidRequest(f"{node_id}.{prop} holds text: it has no trend")
    buckets, width, raw = downsample(session, p, to_us(begin), to_us(finish), points)
    return Trend.model_validate({
        "node_id": node_id,
        "property": prop,
        "unit": p.unit or "",
        "range_low": p.range_low,
        "range_high": p.range_high,
        "start": begin,
        "end": finish,
        "raw": raw,
        "bucket_s": width / 1e6,
        # compact columns: a chart of 5000 buckets stays a small response
        "ts": [b.ts // 1000 for b in buckets],  # ms, what JavaScript dates use
        "min": [b.min for b in buckets],
        "max": [b.max for b in buckets],
        "mean": [b.mean for b in buckets],
        "count": [b.count for b in buckets],
        # the worst quality in each bucket; null where it came from rollups, which keep none
        "quality": [None if b.worst_quality is None else QUALITY_NAMES.get(b.worst_quality, "bad")
                    for b in buckets],
    })


@router.get("/nodes/{node_id}/diagnoses", response_model=Diagnoses)
def diagnoses(
    session: SessionDep,
    _who: ViewerDep,
    node_id: NodeId,
    start: Start = None,
    end: End = None,
    task: Annotated[Key | None, Query(max_length=16)] = None,
) -> Diagnoses:
    """A node's diagnoses over a range (the newest MAX_DIAGNOSES of twin/diagnoses.py), oldest first, by task."""
    begin, finish = _range(start, end)
    queries.get_node(session, node_id)
    tasks, truncated = diagnoses_over(session, node_id, to_us(begin), to_us(finish), task)
    return Diagnoses(node_id=node_id, start=begin, end=finish, tasks=tasks, truncated=truncated)


def _range(start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
    finish = end or from_us(now_us())
    begin = start or finish - DEFAULT_RANGE
    if begin >= finish:
        raise InvalidRequest("start must be before end")
    return begin, finish
