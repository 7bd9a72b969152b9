"""Alert rules: what each kind of rule declared in the site model says about an asset, value by value.

A rule watches one asset and reports one or more *slots* (a limit rule has a high and a low slot). For
each slot it computes a raw verdict on every input; a ``Debounce`` turns raw verdicts into the rule's
state with the rule's on- and off-delays. Deadbands give hysteresis on the raw comparison, so a value
sitting on a limit does not flip the verdict. Kinds (fields in plant/site.py ``AlertRuleDef``):

    limit     HI / HIHI / LO / LOLO on a property, with deadband
    rate      |change per second| over ``window_s`` above ``max_rate``
    stale     no good value for ``after_s`` seconds (judged only ``grace_s`` after the engine started)
    quality   the latest value is bad
    fault     a fault diagnosis with label ``mode`` ('*': any but 'none') at probability >= ``probability``
    anomaly   an anomaly diagnosis with score > ``ratio`` × threshold
    rul       a RUL diagnosis below ``horizon``
    all, any  AND / OR of other rules of the same asset type

Times are µs since the epoch (plant/wire.py). Values arrive with their source time; the engine's clock for
time-driven rules is the newest of the wall clock it is given and the asset's newest source time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

from plant.site import AlertRuleDef, PropertyCondition
from plant.wire import Diagnosis, Scalar
from twin.alerts import reasons

US = 1_000_000


class ChangeLike(Protocol):
    """A property's value as the engine takes it: a store change (twin/store.py ``ApplyResult.changes``), a
    value read back from the database (twin/alerts/feed.py) or a ``PropertyChange``. Read-only members, so named
    tuples and frozen dataclasses fit."""

    @property
    def node(self) -> str: ...
    @property
    def prop(self) -> str: ...
    @property
    def value(self) -> Scalar | None: ...
    @property
    def ts(self) -> int: ...
    @property
    def quality(self) -> Any: ...  # "good"/"uncertain"/"bad", a plant.wire.Quality, or the stored small integer


@dataclass(frozen=True)
class PropertyChange:
    """A property's new latest value; the alert engine's input when no store result is at hand."""

    node: str
    prop: str
    value: Scalar | None
    ts: int
    quality: str = "good"


@dataclass(frozen=True)
class Verdict:
    """What a rule says about one slot at one time: for an active one, what was seen, in which unit, against
    which limit, and why in a sentence (twin/alerts/reasons.py)."""

    active: bool
    condition: str = ""
    level: int = 0  # 2 for HIHI/LOLO, 1 otherwise
    value: float | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    unit: str = ""
    limit: float | None = None
    reason: str = ""


NORMAL = Verdict(False)
DIAGNOSIS_TASK = {"fault": "faults", "anomaly": "anomaly", "rul": "rul"}  # rule kind → the task it judges
_QUALITY_BY_CODE = {0: "good", 1: "uncertain", 2: "bad"}


def quality_name(q: Any) -> str:
    """A quality given as a name, an enum or a stored code, as its name."""
    if isinstance(q, int) and not isinstance(q, bool):
        return _QUALITY_BY_CODE.get(q, "bad")
    return str(getattr(q, "value", q))


def as_number(v: Scalar | None) -> float | None:
    """A value as a float for numeric rules; None for text, None and non-finite numbers."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float) and v == v and abs(v) != float("inf"):
        return float(v)
    return None


def condition_holds(cond: PropertyCondition, values: dict[str, Scalar | None]) -> bool:
    """Whether a property condition (e.g. a suppression's "machine stopped") holds on the latest values."""
    v = values.get(cond.property)
    if v is None:
        return False
    if cond.equals is not None:
        return str(v) == str(cond.equals) if isinstance(cond.equals, str) else v == cond.equals
    n = as_number(v)
    if n is None:
        return False
    return (cond.below is None or n < cond.below) and (cond.above is None or n > cond.above)


class Debounce:
    """On- and off-delays: a raw verdict must hold for the delay before the rule's state follows it.

    Args:
        on_delay_us: how long a raw "active" must last before the state turns active.
        off_delay_us: how long a raw "normal" must last before the state returns.
    """

    def __init__(self, on_delay_us: int, off_delay_us: int) -> None:
        self.on_delay_us = on_delay_us
        self.off_delay_us = off_delay_us
        self.active = False
        self.since: int | None = None  # when the raw verdict started to differ from the state

    def update(self, raw: bool, ts: int) -> bool | None:
        """Feed a raw verdict at ``ts``; returns the new state when it changes, else None."""
        if raw == self.active:
            self.since = None
            return None
        if self.since is None:
            self.since = ts
        delay = self.on_delay_us if raw else self.off_delay_us
        if ts - self.since >= delay:
            self.active = raw
            self.since = None
            return raw
        return None


class RuleState:
    """The evaluation state of one rule on one asset; subclasses implement one kind.

    Args:
        rule: the rule as declared in the site model.
        node: the asset's node id.
        unit: the unit of the rule's property (site model), for values and reasons.
    """

    slots: tuple[str, ...] = ("",)

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        self.rule = rule
        self.node = node
        self.unit = unit
        self.latched: dict[str, bool] = {}

    def on_value(self, change: ChangeLike) -> bool:
        """Take a value of the asset; True when it concerns this rule."""
        return False

    def on_diagnosis(self, diagnosis: Diagnosis) -> bool:
        """Take a diagnosis of the asset; True when it concerns this rule."""
        return False

    def latch(self, slot: str, active: bool) -> None:
        """Learn the slot's debounced state: deadbands hold an active alert, they never raise one."""
        self.latched[slot] = active

    def resume(self, active_since: int) -> None:
        """Take up an alert stored active since ``active_since`` (µs), at a restart or a leader's takeover."""

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """The raw verdict of every slot at ``now``."""
        raise NotImplementedError


class LimitState(RuleState):
    """HI/HIHI on the "high" slot and LO/LOLO on the "low" slot, with deadband hysteresis."""

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.slots = tuple(
            s
            for s, on in (
                ("high", rule.hi is not None or rule.hihi is not None),
                ("low", rule.lo is not None or rule.lolo is not None),
            )
            if on
        )
        self.value: float | None = None
        self.ts = 0
        self.level = {s: 0 for s in self.slots}

    def on_value(self, change: ChangeLike) -> bool:
        """Take the watched property's value; bad-quality values are left to quality rules."""
        if change.prop != self.rule.property or quality_name(change.quality) == "bad":
            return False
        self.value = as_number(change.value)
        self.ts = change.ts
        for slot in self.slots:
            self.level[slot] = self._level(slot, self.level[slot])
        return True

    def _level(self, slot: str, current: int) -> int:
        v, db = self.value, self.rule.deadband
        if v is None:
            return current
        first, second = (self.rule.hi, self.rule.hihi) if slot == "high" else (self.rule.lo, self.rule.lolo)
        sign = 1.0 if slot == "high" else -1.0
        level = 0
        for n, limit in ((1, first), (2, second)):
            if limit is None:
                continue
            # once an alert is active at a level, it stays there until the value is back past the limit by
            # the deadband; before that the limit is strict, so a value chattering on it never holds long
            margin = db if current >= n and self.latched.get(slot, False) else 0.0
            if sign * (v - limit) > -margin and (current >= n or sign * (v - limit) > 0):
                level = n
        return level

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """HI/HIHI and LO/LOLO verdicts from the latest value."""
        out = {}
        for slot in self.slots:
            lvl = self.level[slot]
            if lvl == 0:
                out[slot] = Verdict(False, value=self.value)
                continue
            name = ("HI", "HIHI")[lvl - 1] if slot == "high" else ("LO", "LOLO")[lvl - 1]
            limit = {"HI": self.rule.hi, "HIHI": self.rule.hihi, "LO": self.rule.lo, "LOLO": self.rule.lolo}[
                name
            ]
            assert limit is not None
            assert self.value is not None
            assert self.rule.property is not None
            evidence = {"property": self.rule.property, "value": self.value, "limit": limit, "ts": self.ts}
            why = reasons.limit(self.rule.property, self.value, self.unit, name, limit)
            out[slot] = Verdict(True, name, lvl, self.value, evidence, self.unit, limit, why)
        return out


class RateState(RuleState):
    """Rate of change over a sliding window, either direction."""

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.samples: deque[tuple[int, float]] = deque()

    def on_value(self, change: ChangeLike) -> bool:
        """Take the watched property's good or uncertain numeric values."""
        v = as_number(change.value)
        if change.prop != self.rule.property or v is None or quality_name(change.quality) == "bad":
            return False
        if self.samples and change.ts <= self.samples[-1][0]:
            return False  # late or repeated value: the latest state never moves backwards
        self.samples.append((change.ts, v))
        horizon = change.ts - int(self.rule.window_s * US)
        while len(self.samples) > 2 and self.samples[1][0] <= horizon:
            self.samples.popleft()
        return True

    def rate(self) -> float | None:
        """Units per second between the oldest and newest sample of the window."""
        if len(self.samples) < 2:
            return None
        (t0, v0), (t1, v1) = self.samples[0], self.samples[-1]
        return (v1 - v0) / ((t1 - t0) / US) if t1 > t0 else None

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """Active while |rate| exceeds max_rate (less the deadband once active)."""
        r = self.rate()
        assert self.rule.max_rate is not None
        latched = self.latched.get("", False)
        limit = self.rule.max_rate - (self.rule.deadband if latched else 0.0)
        # no rate yet (one value since a restart) is not a normal rate: an active alert stays active
        active = abs(r) > limit if r is not None else latched
        if not active:
            return {"": Verdict(False, value=r)}
        unit = f"{self.unit}/s" if self.unit else "per s"
        evidence = {
            "property": self.rule.property,
            "rate_per_s": r,
            "max_rate": self.rule.max_rate,
            "window_s": self.rule.window_s,
        }
        if r is None:  # held active since a restart: no rate measured yet
            why = f"{self.rule.property} was changing faster than {reasons.qty(self.rule.max_rate, unit)}"
            return {"": Verdict(True, "ROC", 1, None, evidence, unit, self.rule.max_rate, why)}
        assert self.rule.property is not None
        why = reasons.rate(self.rule.property, r, unit, self.rule.window_s, self.rule.max_rate)
        return {"": Verdict(True, "ROC", 1, r, evidence, unit, self.rule.max_rate, why)}


class StaleState(RuleState):
    """No good value for ``after_s``; not judged before ``grace_s`` after the rule started watching."""

    def __init__(self, rule: AlertRuleDef, node: str, started: int, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.started = started
        self.last_good: int | None = None
        self.clock = 0  # the latest time judged: an older value's source time does not turn the clock back

    def on_value(self, change: ChangeLike) -> bool:
        """Note the time of the watched property's good values."""
        if change.prop != self.rule.property:
            return False
        if quality_name(change.quality) == "good" and change.value is not None:
            self.last_good = max(self.last_good or 0, change.ts)
        return True

    def resume(self, active_since: int) -> None:
        """The data was judged stale when the alert went active: it stays stale until a good value comes."""
        assert self.rule.after_s is not None
        # just past after_s (and grace_s) at the activation, with the clock no earlier than that
        self.started = min(self.started, active_since - int(max(self.rule.after_s, self.rule.grace_s) * US) - 1)
        self.clock = max(self.clock, active_since)

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """Active when the newest good value (or the start) is older than after_s."""
        assert self.rule.after_s is not None
        now = self.clock = max(now, self.clock)
        if now - self.started < int(self.rule.grace_s * US):
            return {"": NORMAL}
        since = self.last_good if self.last_good is not None else self.started
        age_s = (now - since) / US
        if age_s <= self.rule.after_s:
            return {"": NORMAL}
        evidence = {"property": self.rule.property, "last_good_ts": self.last_good, "age_s": round(age_s, 3)}
        assert self.rule.property is not None
        why = reasons.stale(self.rule.property, age_s, self.rule.after_s, self.last_good)
        return {"": Verdict(True, "STALE", 1, round(age_s, 1), evidence, "s", self.rule.after_s, why)}


class QualityState(RuleState):
    """The watched property's latest value is bad."""

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.quality = "good"
        self.ts = 0
        self.bad_since: int | None = None

    def on_value(self, change: ChangeLike) -> bool:
        """Take the watched property's quality."""
        if change.prop != self.rule.property:
            return False
        self.quality, self.ts = quality_name(change.quality), change.ts
        if self.quality != "bad":
            self.bad_since = None
        elif self.bad_since is None or change.ts < self.bad_since:
            self.bad_since = change.ts
        return True

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """Active while the latest quality is bad; the value is how long it has been (s)."""
        if self.quality != "bad" or self.bad_since is None:
            return {"": NORMAL}
        assert self.rule.property is not None
        bad_s = max(0.0, (max(now, self.ts) - self.bad_since) / US)
        why = reasons.bad_quality(self.rule.property, bad_s, self.bad_since)
        evidence = {"property": self.rule.property, "ts": self.ts, "bad_since": self.bad_since}
        return {"": Verdict(True, "BAD", 1, round(bad_s, 1), evidence, "s", self.rule.on_delay_s, why)}


class DiagnosisState(RuleState):
    """Fault, anomaly and RUL rules: the latest diagnosis of the rule's task decides."""

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.task = DIAGNOSIS_TASK[rule.kind]
        self.latest: Diagnosis | None = None

    def on_diagnosis(self, diagnosis: Diagnosis) -> bool:
        """Take a newer diagnosis of the rule's task (a model still learning its baseline judges nothing)."""
        if diagnosis.task != self.task or (self.latest is not None and diagnosis.ts < self.latest.ts):
            return False
        if diagnosis.learning is not None:
            return False
        self.latest = diagnosis
        return True

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """The latest diagnosis judged against the rule's mode, threshold or horizon."""
        d = self.latest
        if d is None:
            return {"": NORMAL}
        evidence = d.model_dump(mode="json", exclude_none=True)
        if self.rule.kind == "fault":
            label = d.label or "none"
            p = d.probability if d.probability is not None else d.confidence
            if label != "none" and self.rule.mode in ("*", label) and p >= self.rule.probability:
                why = reasons.fault(label, p, self.rule.probability, d.source)
                pct, limit = round(p * 100, 1), self.rule.probability * 100
                return {"": Verdict(True, label[:32], 1, pct, evidence, "%", limit, why)}
        elif self.rule.kind == "anomaly":
            if d.score is not None and d.threshold is not None and d.score > self.rule.ratio * d.threshold:
                why = reasons.anomaly(d.score, d.threshold, self.rule.ratio, d.source)
                limit = self.rule.ratio * d.threshold
                return {"": Verdict(True, "ANOMALY", 1, d.score, evidence, "", limit, why)}
        elif d.rul is not None and self.rule.horizon is not None and d.rul < self.rule.horizon:
            unit = _rul_unit(d.unit)
            why = reasons.rul(d.rul, d.rul_low, d.rul_high, unit, self.rule.horizon)
            return {"": Verdict(True, "RUL", 1, d.rul, evidence, unit, self.rule.horizon, why)}
        return {"": NORMAL}


def _rul_unit(unit: str) -> str:
    """The RUL model's unit as people say it (``cycle`` → ``cycles``)."""
    return {"cycle": "cycles", "hour": "hours", "h": "h", "": "cycles"}.get(unit, unit)


class ComboState(RuleState):
    """AND / OR of the debounced states of other rules on the same asset (set by the engine)."""

    def __init__(self, rule: AlertRuleDef, node: str, unit: str = "") -> None:
        super().__init__(rule, node, unit)
        self.inputs: dict[str, bool] = {r: False for r in rule.rules}
        self.details: dict[str, Verdict] = {}  # the referenced rules' latest active verdicts (set by the engine)

    def verdicts(self, now: int) -> dict[str, Verdict]:
        """Active when all (or any) referenced rules are active; value, unit and limit of the first of them."""
        states = list(self.inputs.values())
        hit = all(states) if self.rule.kind == "all" else any(states)
        if not hit:
            return {"": NORMAL}
        active = sorted(r for r, on in self.inputs.items() if on)
        seen = [self.details[r] for r in self.rule.rules if self.inputs.get(r) and r in self.details]
        why = reasons.combined(self.rule.kind, [v.reason for v in seen if v.reason])
        first = seen[0] if seen else NORMAL
        evidence: dict[str, Any] = {"rules": active, **({"reasons": [v.reason for v in seen]} if seen else {})}
        return {"": Verdict(True, self.rule.kind.upper(), 1, first.value, evidence, first.unit, first.limit, why)}


def make_state(rule: AlertRuleDef, node: str, started: int, unit: str = "") -> RuleState:
    """The evaluation state for ``rule`` on asset ``node``; ``unit`` is the unit of the rule's property."""
    if rule.kind == "limit":
        return LimitState(rule, node, unit)
    if rule.kind == "rate":
        return RateState(rule, node, unit)
    if rule.kind == "stale":
        return StaleState(rule, node, started, unit)
    if rule.kind == "quality":
        return QualityState(rule, node, unit)
    if rule.kind in ("fault", "anomaly", "rul"):
        return DiagnosisState(rule, node, unit)
    return ComboState(rule, node, unit)


def evaluation_order(rules: list[AlertRuleDef]) -> list[AlertRuleDef]:
    """Rules ordered so that every all/any rule comes after the rules it combines (no loops by then)."""
    by_id = {r.id: r for r in rules}
    out: list[AlertRuleDef] = []
    seen: set[str] = set()

    def visit(r: AlertRuleDef) -> None:
        if r.id in seen:
            return
        seen.add(r.id)
        for ref in r.rules:
            visit(by_id[ref])
        out.append(r)

    for r in rules:
        visit(r)
    return out
