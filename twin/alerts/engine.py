"""The alert engine: feeds the store's changes and diagnoses to the site's rules and keeps alerts in step.

``process(session, changes, diagnoses)`` runs after ``TwinStore.apply``; ``tick(session, now)`` runs every few
seconds for what time alone changes: stale data, on/off delays that ran out, shelf expiry, escalation,
flapping that calmed down. Both write alerts, their transitions and the webhook deliveries those cause in
the caller's session, so one commit keeps them together.

Rule state (delays pending, rate windows) lives in memory; open alerts live in the database and are read back
by ``load`` on start, so a restart neither forgets an active alert nor raises it twice. Run one engine per
database: two evaluating the same assets would race on the same alerts. twin/alerts/evaluator.py runs it in the
one process that holds the leader lock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from plant.site import AlertRuleDef, NodeKind, Site
from plant.wire import Diagnosis, Scalar, now_us
from twin.alerts import lifecycle, noise
from twin.alerts.rules import (
    DIAGNOSIS_TASK,
    US,
    ChangeLike,
    ComboState,
    Debounce,
    RuleState,
    Verdict,
    condition_holds,
    evaluation_order,
    make_state,
)
from twin.scopes import site_of
from twin.tables import Alert

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NoiseConfig:
    """Noise-control settings.

    Args:
        flap_count: activations within ``flap_window_s`` that make an alert flapping.
        flap_window_s: the flapping window; an alert quiet this long is stable again.
        group_window_s: alerts raised under one machine within this span share a group (a common cause).
    """

    flap_count: int = 4
    flap_window_s: float = 600.0
    group_window_s: float = 120.0


_READS_PROPERTY = frozenset({"limit", "rate", "stale", "quality"})


@dataclass(frozen=True)
class Watched:
    """What the rules of one asset read.

    Args:
        props: property names.
        tasks: diagnosis tasks (their newest diagnosis).
    """

    props: frozenset[str]
    tasks: frozenset[str]


@dataclass
class _Watched:
    """One rule on one asset: its evaluation state and a debounce per slot."""

    rule: AlertRuleDef
    state: RuleState
    debounce: dict[str, Debounce]
    levels: dict[str, int] = field(default_factory=dict)
    shown: dict[str, str] = field(default_factory=dict)  # the condition the open alert of each slot shows


@dataclass
class _Asset:
    node_id: str
    type: str
    path: str
    root: str  # path of the machine it belongs to, for grouping
    criticality: str
    area: str
    rules: list[_Watched]
    values: dict[str, Scalar | None] = field(default_factory=dict)
    clock: int = 0


class AlertEngine:
    """Evaluates the alert rules of every asset of one site or several (each asset by its own site's rules).

    Args:
        site: the validated site model, or several; rules come from their asset types' ``alerts``.
        started: when the engine started watching (µs); stale rules wait their grace from here.
        noise: flapping and grouping settings.
    """

    def __init__(
        self, site: Site | Sequence[Site], *, started: int | None = None, noise: NoiseConfig | None = None
    ) -> None:
        self.sites = [site] if isinstance(site, Site) else list(site)
        # the site each top-level node comes from: an alert is judged by its own site's asset types
        self._site_of_root = {top.id: site for site in self.sites for top in site.nodes}
        self.noise = noise or NoiseConfig()
        self.started = started if started is not None else now_us()
        self.assets: dict[str, _Asset] = {}
        self._suppressed: set[str] = set()
        # open alerts this engine knows of, by machine root: key → raised at. Only this engine raises alerts,
        # so a key missing here has no open alert and needs no query; people closing alerts only remove.
        self._open_by_root: dict[str, dict[str, int]] = {}
        self._root_of_key: dict[str, str] = {}
        self._late_raised: set[str] = set()  # alerts raised by late values, until the newer values are judged
        self._build()

    def _build(self) -> None:
        for site in self.sites:
            self._build_site(site)

    def _build_site(self, site: Site) -> None:
        paths: dict[str, str] = {}
        roots: dict[str, str] = {}
        for node, parent in site.walk():
            paths[node.id] = (paths[parent.id] if parent else "/") + f"{node.id}/"
            roots[node.id] = (
                paths[node.id]
                if node.kind == NodeKind.MACHINE
                or parent is None
                or parent.kind not in (NodeKind.MACHINE, NodeKind.COMPONENT)
                else roots[parent.id]
            )
            if node.type is None:
                continue
            atype = site.asset_types[node.type]
            watched = []
            for rule in evaluation_order(list(atype.alerts)):
                unit = atype.properties[rule.property].unit if rule.property else ""
                state = make_state(rule, node.id, self.started, unit)
                deb = {
                    s: Debounce(int(rule.on_delay_s * US), int(rule.off_delay_s * US)) for s in state.slots
                }
                watched.append(_Watched(rule, state, deb))
            self.assets[node.id] = _Asset(
                node.id,
                node.type,
                paths[node.id],
                roots[node.id],
                node.criticality.value,
                noise.area_of(paths[node.id]),
                watched,
            )

    def watched(self) -> dict[str, Watched]:
        """What the rules read, by asset: properties (rules and their suppressions) and diagnosis tasks."""
        out: dict[str, Watched] = {}
        for node_id, asset in self.assets.items():
            props = {w.rule.property for w in asset.rules if w.rule.property and w.rule.kind in _READS_PROPERTY}
            props |= {w.rule.suppress_when.property for w in asset.rules if w.rule.suppress_when is not None}
            tasks = {DIAGNOSIS_TASK[w.rule.kind] for w in asset.rules if w.rule.kind in DIAGNOSIS_TASK}
            if props or tasks:
                out[node_id] = Watched(frozenset(props), frozenset(tasks))
        return out

    @staticmethod
    def key(node_id: str, rule_id: str, slot: str) -> str:
        """The dedup key of a condition: asset, rule and (for limits) direction."""
        return f"{node_id}/{rule_id}/{slot}" if slot else f"{node_id}/{rule_id}"

    def load(self, session: Session) -> int:
        """Take up the open alerts stored by an earlier run; returns how many are active."""
        active = 0
        for alert in session.scalars(select(Alert).where(Alert.open_key.is_not(None))):
            asset = self.assets.get(alert.node_id)
            self._remember(alert.key, asset.root if asset else alert.node_path, alert.raised_at)
            for w, slot in self._slots_of(alert.node_id, alert.rule):
                if self.key(alert.node_id, w.rule.id, slot) == alert.key:
                    w.shown[slot] = alert.condition
                    w.debounce[slot].active = alert.active
                    w.state.latch(slot, alert.active)
                    if alert.active:
                        w.state.resume(alert.activated_at)
                    active += alert.active
            if alert.suppressed:
                self._suppressed.add(alert.key)
        return active

    def _slots_of(self, node_id: str, rule_id: str) -> list[tuple[_Watched, str]]:
        asset = self.assets.get(node_id)
        if asset is None:
            return []
        return [(w, s) for w in asset.rules if w.rule.id == rule_id for s in w.state.slots]

    def process(
        self,
        session: Session,
        changes: Iterable[ChangeLike] = (),
        diagnoses: Iterable[Diagnosis] = (),
        late: bool = False,
    ) -> int:
        """Evaluate the rules of every asset the changes and diagnoses touch; returns transitions written.

        ``late``: the changes are older than values of their properties judged before (a batch that committed
        late). They may raise an alert (an excursion happened) but neither return one to normal nor change its
        level: the newer value decides that, and is judged again after them (twin/alerts/feed.py).
        """
        if not late:
            self._late_raised.clear()
        touched: set[str] = set()
        for c in changes:
            asset = self.assets.get(c.node)
            if asset is None:
                continue
            if c.ts >= asset.clock or c.prop not in asset.values:
                asset.values[c.prop] = c.value
            asset.clock = max(asset.clock, c.ts)
            for w in asset.rules:
                w.state.on_value(c)
            touched.add(c.node)
        for d in diagnoses:
            asset = self.assets.get(d.node)
            if asset is None:
                continue
            asset.clock = max(asset.clock, d.ts)
            for w in asset.rules:
                w.state.on_diagnosis(d)
            touched.add(d.node)
        return sum(self._evaluate(session, self.assets[n], self.assets[n].clock, late) for n in sorted(touched))

    def tick(self, session: Session, now: int | None = None) -> int:
        """Time-driven work at ``now`` (µs, default the wall clock); returns transitions written."""
        now = now if now is not None else now_us()
        written = 0
        for asset in self.assets.values():
            written += self._evaluate(session, asset, max(now, asset.clock))
        written += self._timed_lifecycle(session, now)
        noise.publish_rate(noise.alarm_rate(session, now=now), {a.area for a in self.assets.values()})
        return written

    def _evaluate(self, session: Session, asset: _Asset, now: int, late: bool = False) -> int:
        written = 0
        active_rules: dict[str, bool] = {}
        seen: dict[str, Verdict] = {}  # each rule's first active verdict, for the all/any rules after it
        for w in asset.rules:
            if isinstance(w.state, ComboState):
                w.state.inputs = {r: active_rules.get(r, False) for r in w.rule.rules}
                w.state.details = {r: seen[r] for r in w.rule.rules if r in seen}
            suppressed = w.rule.suppress_when is not None and condition_holds(
                w.rule.suppress_when, asset.values
            )
            for slot, verdict in w.state.verdicts(now).items():
                written += self._slot(session, asset, w, slot, verdict, now, suppressed, late)
                w.state.latch(slot, w.debounce[slot].active)
                if verdict.active and w.rule.id not in seen:
                    seen[w.rule.id] = verdict
            active_rules[w.rule.id] = any(d.active for d in w.debounce.values())
        return written

    def _slot(
        self, session: Session, asset: _Asset, w: _Watched, slot: str, v: Verdict, now: int, suppressed: bool,
        late: bool = False,
    ) -> int:
        deb = w.debounce[slot]
        key = self.key(asset.node_id, w.rule.id, slot)
        if late and deb.active and not v.active and key not in self._late_raised:
            return 0  # the newer value holds the alert: a late normal value does not return it
        if not w.rule.notify:
            deb.update(v.active and not suppressed, now)
            return 0
        if suppressed != (key in self._suppressed):
            return self._suppression(session, key, suppressed, w.rule, now)
        if suppressed and not deb.active:
            deb.since = None  # by design: a stopped machine raises nothing new
            return 0
        changed = deb.update(v.active, now) if not suppressed else None
        if late and changed is not None:
            (self._late_raised.add if changed else self._late_raised.discard)(key)
        if changed is True:
            w.levels[slot], w.shown[slot] = v.level, v.condition
            return self._activate(session, asset, w.rule, key, v, now)
        if changed is False:
            return self._return(session, key, now)
        if not late and deb.active and v.active and (w.levels.get(slot) != v.level or w.shown.get(slot) != v.condition):
            w.levels[slot], w.shown[slot] = v.level, v.condition
            return self._follow(session, asset, key, v, now)
        return 0

    def _remember(self, key: str, root: str, raised_at: int) -> None:
        self._open_by_root.setdefault(root, {})[key] = raised_at
        self._root_of_key[key] = root

    def _forget(self, key: str) -> None:
        root = self._root_of_key.pop(key, None)
        if root is not None:
            self._open_by_root.get(root, {}).pop(key, None)

    def _open(self, session: Session, key: str) -> Alert | None:
        if key not in self._root_of_key:
            return None
        alert = session.scalars(select(Alert).where(Alert.open_key == key)).first()
        if alert is None:
            self._forget(key)  # closed by a person meanwhile
        return alert

    def _group(self, session: Session, root: str, now: int) -> int | None:
        since = now - int(self.noise.group_window_s * US)
        if not any(t >= since for t in self._open_by_root.get(root, {}).values()):
            return None
        return noise.group_for(session, root_path=root, at=now, window_s=self.noise.group_window_s)

    def _activate(
        self, session: Session, asset: _Asset, rule: AlertRuleDef, key: str, v: Verdict, now: int
    ) -> int:
        alert = self._open(session, key)
        if alert is not None:
            if alert.active:
                return 0
            lifecycle.reactivate(session, alert, at=now, seen=_seen(v))
            if not alert.flapping and noise.is_flapping(
                session, alert, at=now, count=self.noise.flap_count, window_s=self.noise.flap_window_s
            ):
                lifecycle.set_flapping(
                    session,
                    alert,
                    True,
                    at=now,
                    reason=f"{self.noise.flap_count}+ activations in {self.noise.flap_window_s:g} s",
                )
            return 1
        group = self._group(session, asset.root, now)
        lifecycle.raise_alert(
            session,
            key=key,
            node_id=asset.node_id,
            node_path=asset.path,
            asset_type=asset.type,
            rule=rule.id,
            kind=rule.kind,
            condition=v.condition,
            severity=rule.severity.value,
            criticality=asset.criticality,
            level=v.level,
            message=rule.message or _default_message(rule),
            value=v.value,
            evidence=v.evidence,
            at=now,
            group_id=group,
            unit=v.unit,
            limit=v.limit,
            reason=v.reason,
        )
        self._remember(key, asset.root, now)
        log.info("alert_raised", key=key, condition=v.condition, value=v.value)
        return 1

    def _return(self, session: Session, key: str, now: int) -> int:
        alert = self._open(session, key)
        if alert is None or not alert.active:
            return 0
        lifecycle.return_to_normal(session, alert, at=now, reason="condition cleared")
        if alert.open_key is None:
            self._forget(key)
        return 1

    def _follow(self, session: Session, asset: _Asset, key: str, v: Verdict, now: int) -> int:
        """The condition of an active alert changed (HI → HIHI, a fault mode OSF → PWF): the alert shows the new
        one, with its value, evidence and advice, and says so in a transition; the priority follows the level."""
        alert = self._open(session, key)
        if alert is None or alert.condition == v.condition:
            return 0
        lifecycle.change_condition(session, alert, at=now, seen=_seen(v))
        lifecycle.set_level(
            session, alert, criticality=asset.criticality, level=v.level, at=now, reason=f"now {v.condition}"
        )
        return 1

    def _suppression(self, session: Session, key: str, suppressed: bool, rule: AlertRuleDef, now: int) -> int:
        (self._suppressed.add if suppressed else self._suppressed.discard)(key)
        alert = self._open(session, key)
        if alert is None:
            return 0
        cond = rule.suppress_when
        why = f"by design: {cond.property} {_describe(cond)}" if cond else "by design"
        lifecycle.set_suppressed(
            session, alert, suppressed, at=now, reason=why if suppressed else "condition over"
        )
        return 1

    def _timed_lifecycle(self, session: Session, now: int) -> int:
        written = 0
        for alert in session.scalars(select(Alert).where(Alert.open_key.is_not(None)).order_by(Alert.id)):
            if alert.shelved_until is not None and alert.shelved_until <= now:
                lifecycle.unshelve(session, alert, at=now, reason="shelf expired")
                written += 1
            if alert.flapping and now - alert.activated_at >= self.noise.flap_window_s * US:
                lifecycle.set_flapping(session, alert, False, at=now, reason="quiet for the flapping window")
                written += 1
            written += self._escalation(session, alert, now)
        return written

    def _escalation(self, session: Session, alert: Alert, now: int) -> int:
        rule = self._rule(alert)
        esc = rule.escalate if rule is not None else None
        if esc is None or alert.suppressed:
            return 0
        if alert.state == lifecycle.ACTIVE_UNACK and now - alert.activated_at >= esc.after_s * US * (
            alert.escalations + 1
        ):
            why = f"unacknowledged for {(now - alert.activated_at) / US:.0f} s"
            return int(lifecycle.escalate(session, alert, at=now, max_steps=esc.max_steps, reason=why))
        if (
            esc.deescalate_after_s
            and not alert.active
            and alert.returned_at is not None
            and now - alert.returned_at >= esc.deescalate_after_s * US
        ):
            return int(lifecycle.deescalate(session, alert, at=now, reason="returned long enough"))
        return 0

    def _rule(self, alert: Alert) -> AlertRuleDef | None:
        site = self._site_of_root.get(site_of(alert.node_path))
        atype = site.asset_types.get(alert.asset_type) if site is not None else None
        return next((r for r in atype.alerts if r.id == alert.rule), None) if atype else None

    def rule_for(self, alert: Alert) -> AlertRuleDef | None:
        """The site rule behind an alert, if the site still declares it."""
        return self._rule(alert)


def _describe(cond: Any) -> str:
    parts = [
        f"below {cond.below:g}" if cond.below is not None else "",
        f"above {cond.above:g}" if cond.above is not None else "",
        f"= {cond.equals}" if cond.equals is not None else "",
    ]
    return " ".join(p for p in parts if p)


_KIND_WORDS = {
    "limit": "outside its limits",
    "rate": "changing too fast",
    "stale": "no new data",
    "quality": "bad quality",
    "fault": "failure predicted",
    "anomaly": "anomalous operation",
    "rul": "end of life approaching",
    "all": "combined condition",
    "any": "combined condition",
}


def _default_message(rule: AlertRuleDef) -> str:
    """A title for a rule the site gives no message: what it watches and what it found, in words."""
    words = _KIND_WORDS.get(rule.kind, rule.kind)
    return f"{rule.property}: {words}" if rule.property else words[0].upper() + words[1:]


def _seen(v: Verdict) -> lifecycle.Seen:
    return lifecycle.Seen(v.condition, v.value, v.unit, v.limit, v.reason, v.evidence)
