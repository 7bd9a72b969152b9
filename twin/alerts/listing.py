"""Alerts as people look them up: the filtered, paged list, newest first, and the counts behind the alert badge."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from twin.alerts import lifecycle
from twin.scopes import Sites, within
from twin.tables import Alert


@dataclass(frozen=True)
class AlertFilter:
    """Which alerts to list; every condition given must hold.

    Args:
        sites: the sites the reader may see (None: every site).
        states: any of these states.
        priorities: any of these priorities.
        subtree: alerts of this node and below.
        site: alerts of this site (a top-level node id).
        start: raised at or after, µs.
        end: raised before, µs.
        open_only: only alerts not back to normal.
    """

    sites: Sites = None
    states: list[str] | None = None
    priorities: list[str] | None = None
    subtree: str | None = None
    site: str | None = None
    start: int | None = None
    end: int | None = None
    open_only: bool = False

    def conditions(self) -> list[Any]:
        """The filter as SQL conditions on ``Alert``."""
        conds: list[Any] = [within(Alert.node_path, self.sites)]
        if self.states:
            conds.append(Alert.state.in_(self.states))
        if self.priorities:
            conds.append(Alert.priority.in_(self.priorities))
        if self.subtree:
            conds.append(Alert.node_path.contains(f"/{self.subtree}/", autoescape=True))
        if self.site:
            conds.append(within(Alert.node_path, frozenset({self.site})))
        if self.start is not None:
            conds.append(Alert.raised_at >= self.start)
        if self.end is not None:
            conds.append(Alert.raised_at < self.end)
        if self.open_only:
            conds.append(Alert.open_key.is_not(None))
        return conds


def page(session: Session, which: AlertFilter, *, limit: int, offset: int) -> tuple[list[Alert], int]:
    """One page of the alerts ``which`` selects, newest first, and how many it selects in all."""
    conds = which.conditions()
    total = session.scalar(select(func.count()).select_from(Alert).where(*conds)) or 0
    rows = session.scalars(select(Alert).where(*conds).order_by(Alert.id.desc()).limit(limit).offset(offset))
    return list(rows), total


@dataclass
class BadgeCounts:
    """What the alert badge counts; shelved and suppressed alerts count only as such.

    Args:
        needs_ack: open, unacknowledged, neither shelved nor suppressed.
        active: open and active, neither shelved nor suppressed.
        open: not back to normal, shelved and suppressed ones included.
        shelved: open and shelved now.
        suppressed: open and suppressed by design.
        flapping: open and flapping.
        by_priority: ``needs_ack`` by priority.
    """

    needs_ack: int = 0
    active: int = 0
    open: int = 0
    shelved: int = 0
    suppressed: int = 0
    flapping: int = 0
    by_priority: dict[str, int] = field(default_factory=dict)


def badge_counts(session: Session, *, now: int, sites: Sites = None) -> BadgeCounts:
    """Count the open alerts (of ``sites`` only, if given) at ``now`` (µs) for the badge."""
    rows = session.execute(
        select(Alert.state, Alert.active, Alert.priority, Alert.shelved_until, Alert.suppressed, Alert.flapping)
        .where(Alert.open_key.is_not(None), within(Alert.node_path, sites))
    ).all()
    out = BadgeCounts(open=len(rows))
    for state, active, priority, shelved_until, suppressed, flapping in rows:
        shelved = shelved_until is not None and shelved_until > now
        out.shelved += shelved
        out.suppressed += bool(suppressed)
        out.flapping += bool(flapping)
        if shelved or suppressed:
            continue
        out.active += bool(active)
        if state in (lifecycle.ACTIVE_UNACK, lifecycle.RETURNED_UNACK):
            out.needs_ack += 1
            out.by_priority[priority] = out.by_priority.get(priority, 0) + 1
    return out
