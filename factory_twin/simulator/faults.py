"""Fault scenarios: make one signal leave its engineering range or go stale, for alert and health tests.

A fault is written ``NODE.PROP:KIND[@AFTER]``, for example ``mill-1.torque:high@10``:

    high    the value is replaced by one well above the property's range (high + half the span)
    low     the value is replaced by one well below the range (low - half the span)
    stale   the signal is no longer sent: its OPC-UA variable keeps its last value and timestamp, its
            field is left out of the MQTT message

``AFTER`` is the number of seconds of replay before the fault starts (default 0: from the first tick).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from factory_twin.simulator.errors import ScenarioError
from plant.site import DataType, PropertyDef, Site
from plant.wire import Scalar

_SPEC = re.compile(
    r"^(?P<node>[A-Za-z0-9][\w.\-]*)\.(?P<prop>[A-Za-z0-9][\w\-]*):(?P<kind>\w+)(?:@(?P<after>[\d.]+))?$"
)


class FaultKind(StrEnum):
    """What a fault does to its signal."""

    HIGH = "high"
    LOW = "low"
    STALE = "stale"


@dataclass(frozen=True)
class Fault:
    """One injected fault on one signal.

    Args:
        node: twin node id of the machine.
        prop: property name on that node.
        kind: what happens to the signal.
        after_s: seconds of replay before the fault starts.
    """

    node: str
    prop: str
    kind: FaultKind
    after_s: float = 0.0

    def active(self, elapsed_s: float) -> bool:
        """True once ``elapsed_s`` seconds of replay have passed the fault's start."""
        return elapsed_s >= self.after_s


def parse_fault(spec: str) -> Fault:
    """A fault from its text ``NODE.PROP:KIND[@AFTER]``; ScenarioError saying what is wrong otherwise."""
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ScenarioError(f"fault {spec!r}: expected NODE.PROP:KIND[@SECONDS], e.g. mill-1.torque:high@10")
    try:
        kind = FaultKind(m["kind"])
    except ValueError:
        kinds = ", ".join(k.value for k in FaultKind)
        raise ScenarioError(f"fault {spec!r}: unknown kind {m['kind']!r} (one of {kinds})") from None
    try:
        after = float(m["after"]) if m["after"] else 0.0
    except ValueError:
        raise ScenarioError(f"fault {spec!r}: {m['after']!r} is not a number of seconds") from None
    return Fault(node=m["node"], prop=m["prop"], kind=kind, after_s=after)


def check_fault(fault: Fault, site: Site) -> PropertyDef:
    """The definition of the fault's property; ScenarioError if the node, property or range is missing."""
    try:
        node = site.node(fault.node)
    except KeyError:
        raise ScenarioError(
            f"fault on {fault.node}.{fault.prop}: no node {fault.node!r} in the site"
        ) from None
    if fault.prop not in node.bindings:
        raise ScenarioError(
            f"fault on {fault.node}.{fault.prop}: {fault.node} has no binding for {fault.prop!r}"
        )
    pdef = site.property_def(fault.node, fault.prop)
    if fault.kind != FaultKind.STALE:
        if pdef.dtype not in (DataType.FLOAT, DataType.INT):
            raise ScenarioError(f"fault on {fault.node}.{fault.prop}: a {fault.kind} fault needs a number")
        if pdef.range is None:
            raise ScenarioError(f"fault on {fault.node}.{fault.prop}: a {fault.kind} fault needs a range")
    return pdef


def apply_fault(fault: Fault, value: Scalar, pdef: PropertyDef) -> Scalar | None:
    """The value the faulty signal shows instead of ``value``; None means nothing is sent (stale)."""
    if fault.kind == FaultKind.STALE:
        return None
    assert pdef.range is not None  # check_fault saw to it
    low, high = pdef.range
    out = high + (high - low) / 2 if fault.kind == FaultKind.HIGH else low - (high - low) / 2
    return int(out) if pdef.dtype == DataType.INT else out
