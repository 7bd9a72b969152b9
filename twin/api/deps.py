"""Shared dependencies of the API routes, as ``Annotated`` aliases.

    def route(session: SessionDep, who: EngineerDep) -> ...

``require_role(Role.X)`` authenticates the request's bearer key and checks its role; the aliases below are
the four people's roles ready to use, then two for the routes edge gateways (``agent`` keys) call. A
missing, unknown or revoked key is Unauthenticated (401), a lower role Forbidden (403), and a node, alert, work
order or command of a site outside the key's scope named in the path or query OutOfScope (403, twin/scopes.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import cache
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from twin.auth import Principal, Role, SessionLimits, authenticate
from twin.config import TwinSettings
from twin.errors import Unauthenticated
from twin.scopes import check_references, require_unscoped
from twin.throttle import Kind, Throttle


def get_session(request: Request) -> Iterator[Session]:
    """One database session per request, from the sessionmaker on ``app.state``."""
    with request.app.state.sessionmaker() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A session for reads a replica may serve (history, frames): ``TWIN_DATABASE_READ_URL``, else the primary."""
    with request.app.state.read_sessionmaker() as session:
        yield session


def get_app_settings(request: Request) -> TwinSettings:
    """The settings the app was created with."""
    settings: TwinSettings = request.app.state.settings
    return settings


def get_throttle(request: Request) -> Throttle:
    """The app's counters of failed credential checks (twin/throttle.py)."""
    throttle: Throttle = request.app.state.throttle
    return throttle


def client_address(request: Request) -> str:
    """The client's address as the server saw it (a trusted proxy's X-Forwarded-For applied by uvicorn)."""
    return request.client.host if request.client is not None else "unknown"


SessionDep = Annotated[Session, Depends(get_session)]
ReadSessionDep = Annotated[Session, Depends(get_read_session)]
SettingsDep = Annotated[TwinSettings, Depends(get_app_settings)]

# auto_error off: a missing header is our Unauthenticated (401, WWW-Authenticate), not FastAPI's answer.
_bearer = HTTPBearer(auto_error=False, description="an API key: `factory-twin keys create --role viewer`")
BearerDep = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


AddressDep = Annotated[str, Depends(client_address)]


@cache
def require_role(
    role: Role, *, or_agent: bool = False
) -> Callable[[Request, SessionDep, SettingsDep, BearerDep, AddressDep], Principal]:
    """A dependency authenticating the request's key, requiring at least ``role`` (or, with ``or_agent``, an
    edge gateway's agent key); returns the principal, with the client's address for the audit trail.

    Unknown keys count against the client's address (twin/throttle.py): past the limit the answer is 429
    without a look at the database. One function per role (cached), so a router's role dependency and a
    route's ``AdminDep`` are the same dependency and the key is checked once per request.
    """

    def dependency(
        request: Request, session: SessionDep, settings: SettingsDep, credentials: BearerDep, address: AddressDep
    ) -> Principal:
        if credentials is None:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        limits = SessionLimits(settings.session_idle_s, settings.session_max_s)
        with get_throttle(request).attempt(Kind.KEY, address):
            principal = replace(authenticate(session, credentials.credentials, limits), address=address)
        principal.require(role, or_agent=or_agent)
        if role is Role.ADMIN:  # administration (users, keys, webhooks, audit trail) spans every site
            require_unscoped(principal, "administration")
        # what the request names (a node, alert, work order, command) must lie in the caller's sites
        named = [*((k, str(v)) for k, v in request.path_params.items()), *request.query_params.multi_items()]
        check_references(session, principal, named)
        # End the authentication's transaction now: its connection goes back to the pool instead of staying
        # "idle in transaction" for as long as the route runs (a live stream: minutes).
        session.commit()
        return principal

    dependency.__name__ = f"require_{role.value}{'_or_agent' if or_agent else ''}"
    return dependency


ViewerDep = Annotated[Principal, Depends(require_role(Role.VIEWER))]
TechnicianDep = Annotated[Principal, Depends(require_role(Role.TECHNICIAN))]
EngineerDep = Annotated[Principal, Depends(require_role(Role.ENGINEER))]
AdminDep = Annotated[Principal, Depends(require_role(Role.ADMIN))]
# Routes edge gateways call: their agent keys, or people with the role named.
AgentOrViewerDep = Annotated[Principal, Depends(require_role(Role.VIEWER, or_agent=True))]
AgentOrEngineerDep = Annotated[Principal, Depends(require_role(Role.ENGINEER, or_agent=True))]
