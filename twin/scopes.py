"""Site scopes: which sites a person or an API key may see and change.

A site is a top-level node of the twin (kind ``site``); its id is the first part of every path below it
(``/<site>/<area>/.../``), so a node, alert or work order belongs to the site its path starts with. A user and an
API key each carry an optional list of site ids; none means every site. A key that belongs to a person does no
more than that person: its scope is the intersection of both.

The API applies scopes in two places:

- the role dependency of every route (twin/api/deps.py) resolves what the request names by path or query
  (:data:`REFERENCES`: ``node_id``, ``alert_id``, ``wo_id``, ...) and refuses one of another site with 403,
  recorded in the audit trail as ``site.refuse``;
- routes that list things filter them with :func:`within` (SQL) or :func:`allows` (Python).

Platform-wide administration (users, keys, webhooks, the audit trail) spans every site, so it is for unscoped
callers only (:func:`require_unscoped`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session

from twin.errors import InvalidRequest, OutOfScope
from twin.tables import Alert, SetpointCommand, TwinNode, WorkOrder

if TYPE_CHECKING:
    from twin.auth import Principal

Sites = frozenset[str] | None  # None: every site
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")  # a node id, as plant/site.py allows
MAX_SITES = 64


def site_of(path: str) -> str:
    """The site a node path (``/site/area/.../``) belongs to."""
    return path.split("/", 2)[1] if path.startswith("/") else ""


def allows(sites: Sites, path: str) -> bool:
    """Whether ``sites`` includes the site of ``path``."""
    return sites is None or site_of(path) in sites


def within(column: Any, sites: Sites) -> ColumnElement[bool]:
    """A SQL condition: ``column`` (a node path) lies in one of ``sites``; always true for every site."""
    if sites is None:
        return true()
    if not sites:
        return false()
    return or_(*(column.startswith(f"/{site}/", autoescape=True) for site in sorted(sites)))


def narrow(first: Iterable[str] | None, second: Iterable[str] | None) -> Sites:
    """The sites both scopes allow (None for either means every site)."""
    if first is None:
        return None if second is None else frozenset(second)
    return frozenset(first) if second is None else frozenset(first) & frozenset(second)


def normalise(sites: Iterable[str] | None) -> list[str] | None:
    """A scope as stored: sorted unique site ids, or None for every site; InvalidRequest for a bad id or none."""
    if sites is None:
        return None
    out = sorted({s.strip() for s in sites if s.strip()})
    if not out:
        raise InvalidRequest("a site scope needs at least one site (leave it out for every site)")
    if len(out) > MAX_SITES:
        raise InvalidRequest(f"a site scope holds at most {MAX_SITES} sites")
    bad = [s for s in out if not SITE_ID.match(s)]
    if bad:
        raise InvalidRequest(f"not a site id: {bad[0][:64]!r}")
    return out


def existing(session: Session, sites: Iterable[str] | None) -> list[str] | None:
    """:func:`normalise`, then InvalidRequest unless every site is loaded on this platform (a site file's root node),
    so a typo does not give a person an empty plant without a word."""
    out = normalise(sites)
    if out is None:
        return None
    known = set(session.scalars(select(TwinNode.id).where(TwinNode.parent_id.is_(None),
                                                         TwinNode.retired_at.is_(None))))
    unknown = [s for s in out if s not in known]
    if unknown:
        have = ", ".join(sorted(known)[:MAX_SITES]) or "none yet"
        raise InvalidRequest(f"no site {unknown[0]!r} on this platform (sites: {have}); load its site file first")
    return out


def parse(text: str | None) -> list[str] | None:
    """A scope from the command line: ``A,B``; empty or ``all`` for every site."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    return normalise(text.split(","))


def describe(sites: Iterable[str] | None) -> str:
    """A scope for people: ``all`` or the ids, comma-separated."""
    return "all" if sites is None else ",".join(sorted(sites))


def _node_path(session: Session, node_id: str) -> str | None:
    return session.scalar(select(TwinNode.path).where(TwinNode.id == node_id))


def _row_id(text: str) -> int | None:
    return int(text) if text.isdigit() and len(text) < 19 else None


def _alert_path(session: Session, alert_id: str) -> str | None:
    row = _row_id(alert_id)
    return None if row is None else session.scalar(select(Alert.node_path).where(Alert.id == row))


def _work_order_path(session: Session, wo_id: str) -> str | None:
    row = _row_id(wo_id)
    return None if row is None else session.scalar(select(WorkOrder.node_path).where(WorkOrder.id == row))


def _command_path(session: Session, command_id: str) -> str | None:
    node = session.scalar(select(SetpointCommand.node_id).where(SetpointCommand.id == command_id))
    return None if node is None else _node_path(session, node)


# A path or query parameter of these names refers to a thing of one site; the role dependency checks each.
REFERENCES: Mapping[str, Callable[[Session, str], str | None]] = {
    "node_id": _node_path,
    "node": _node_path,
    "subtree": _node_path,
    "root": _node_path,
    "site": _node_path,
    "alert_id": _alert_path,
    "wo_id": _work_order_path,
    "command_id": _command_path,
}


def check_references(session: Session, who: Principal, params: Iterable[tuple[str, str]]) -> None:
    """Refuse (OutOfScope, audited) a request naming a node, alert, work order or command outside the caller's
    sites; one that names nothing that exists is left to the route (404)."""
    if who.sites is None:
        return
    for name, value in params:
        resolve = REFERENCES.get(name)
        path = resolve(session, value) if resolve is not None else None
        if path is not None and not allows(who.sites, path):
            refuse(session, who, f"{name}:{value}", path)


def check_path(session: Session, who: Principal, path: str, target: str) -> None:
    """Refuse (OutOfScope, audited) ``target`` at ``path`` unless it lies in the caller's sites."""
    if not allows(who.sites, path):
        refuse(session, who, target, path)


def refuse(session: Session, who: Principal, target: str, path: str) -> None:
    """Record the refusal in the audit trail, then raise OutOfScope."""
    from twin import audit

    site = site_of(path)
    session.rollback()  # nothing of the request is half-done here: the record commits alone
    audit.record(session, who, "site.refuse", target[:200], after={"site": site, "scope": sorted(who.sites or ())})
    session.commit()
    raise OutOfScope(f"{target[:200]} belongs to the site {site!r}, outside this key's sites "
                     f"({describe(who.sites)})")


def require_unscoped(who: Principal, what: str) -> None:
    """Refuse a caller limited to some sites an action that spans every site (users, keys, webhooks, audit)."""
    if who.sites is not None:
        raise OutOfScope(f"{what} spans every site; the key {who.prefix} is limited to {describe(who.sites)}")
