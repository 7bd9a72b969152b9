"""Noise control: flapping detection, grouping of alerts with a shared cause, and the alarm rate.

Deduplication itself is structural: ``alerts.open_key`` allows one open alert per asset and condition, and a
condition that comes back while its alert is open counts an occurrence on it (lifecycle.reactivate).

The alarm rate is judged after EEMUA 191 (Alarm systems, 3rd edition, 2013), whose guidance for the long-term
average rate per operator in steady operation is: less than one alarm per 10 minutes is very likely to be
acceptable, one per 5 minutes manageable, one per 2 minutes likely to be over-demanding, more than one a minute
very likely to be unacceptable (ISA-18.2 and IEC 62682 take up the same figures). ``alarm_rate`` counts
annunciations (raises and reactivations) per operator area over the last 10 minutes, ``eemua_band`` names the
band a rate falls in; the engine publishes the rate as the ``factory_twin_alarm_rate_10min`` gauge and the
dashboard shows it.
"""

from __future__ import annotations

from collections import Counter

from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from twin.scopes import Sites, within
from twin.tables import Alert, AlertTransition

US = 1_000_000
RATE_WINDOW_S = 600.0
EEMUA_ACCEPTABLE_PER_10MIN = 1  # fewer than this: very likely acceptable
EEMUA_MANAGEABLE_PER_10MIN = 2  # one per 5 minutes: manageable
_BANDS = (  # (at most this many per 10 minutes, band), per EEMUA 191
    (EEMUA_ACCEPTABLE_PER_10MIN - 1, "very likely acceptable"),
    (EEMUA_MANAGEABLE_PER_10MIN, "manageable"),
    (5, "likely over-demanding"),
    (10, "over-demanding"),
)
ALARM_RATE = Gauge(
    "factory_twin_alarm_rate_10min", "Alarms annunciated in the last 10 minutes, per area", ["area"]
)
_ANNUNCIATIONS = ("raise", "reactivate")


def area_of(node_path: str) -> str:
    """The operator area of a node: the second level of its path ("/site/area/..."), else the site."""
    parts = [p for p in node_path.split("/") if p]
    return parts[1] if len(parts) > 1 else (parts[0] if parts else "")


def activations_since(session: Session, alert_id: int, since: int) -> int:
    """How often an alert was raised or came back since ``since`` (µs)."""
    stmt = select(func.count()).where(
        AlertTransition.alert_id == alert_id,
        AlertTransition.action.in_(_ANNUNCIATIONS),
        AlertTransition.at >= since,
    )
    return int(session.scalar(stmt) or 0)


def is_flapping(session: Session, alert: Alert, *, at: int, count: int, window_s: float) -> bool:
    """Flapping: ``count`` or more activations within ``window_s`` seconds."""
    return activations_since(session, alert.id, at - int(window_s * US)) >= count


def group_for(session: Session, *, root_path: str, at: int, window_s: float) -> int | None:
    """The group of an open alert raised under the same asset root within ``window_s``: a shared cause."""
    stmt = (
        select(Alert.group_id)
        .where(
            Alert.open_key.is_not(None),
            Alert.node_path.startswith(root_path, autoescape=True),
            Alert.raised_at >= at - int(window_s * US),
        )
        .order_by(Alert.id)
        .limit(1)
    )
    return session.scalar(stmt)


def alarm_rate(
    session: Session, *, now: int, window_s: float = RATE_WINDOW_S, sites: Sites = None
) -> dict[str, int]:
    """Annunciations per area within the window ending ``now`` (of ``sites`` only, if given)."""
    stmt = (
        select(Alert.node_path)
        .join(AlertTransition, AlertTransition.alert_id == Alert.id)
        .where(
            AlertTransition.action.in_(_ANNUNCIATIONS),
            AlertTransition.at >= now - int(window_s * US),
            AlertTransition.at <= now,
            within(Alert.node_path, sites),
        )
    )
    return dict(Counter(area_of(p) for p in session.scalars(stmt)))


def areas_with_alerts(session: Session, sites: Sites = None) -> set[str]:
    """The operator areas any alert was ever raised in (of ``sites`` only, if given)."""
    paths = session.scalars(select(Alert.node_path).where(within(Alert.node_path, sites)).distinct())
    return {area_of(p) for p in paths}


def publish_rate(rates: dict[str, int], areas: set[str]) -> None:
    """Set the alarm-rate gauge for every known area (zero where nothing was annunciated)."""
    for area in areas | set(rates):
        ALARM_RATE.labels(area=area).set(rates.get(area, 0))


def eemua_band(per_10min: float) -> str:
    """The EEMUA 191 band of an alarm rate (annunciations per 10 minutes for one operator area)."""
    return next((band for most, band in _BANDS if per_10min <= most), "very likely unacceptable")
