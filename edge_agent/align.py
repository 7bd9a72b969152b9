"""Values → Frames: each asset's signals put on its type's time grid by an as-of join.

For a grid point ``g`` the frame holds, per signal, the latest value stamped at or before ``g`` and no older
than ``g - tolerance``; otherwise None. Signals whose source reports by exception (OPC-UA subscriptions,
Sparkplug B: a value is sent only when it changes) hold their last value for ``hold_ms`` instead (by default
until the source marks it stale: a lost OPC-UA session or a Sparkplug DEATH sends a bad reading), so a constant
signal does not vanish from the frames. Time is event time: an asset's clock ``E`` is the newest timestamp
seen from it.

* Frame ``g`` is first emitted once data past it has arrived (``g < E``), revision 0.
* A value stamped at or after ``E - watermark`` is on time: the open frames it changes are emitted again with
  the next revision. Frames before ``E - watermark`` are closed.
* A value stamped before ``E - watermark`` is late: it changes no frame and goes to history only (Flag.LATE).

So the final revision of every frame depends only on the set of on-time values, never on their arrival order;
two values of one signal with the same timestamp are resolved by a fixed rule, not by which came first.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from edge_agent import metrics
from edge_agent.sample import Sample
from plant.site import AlignmentDef, MqttSource, Node, OpcUaBinding, Site
from plant.wire import Flag, Frame, Quality, Scalar, Value

_GOOD = Quality.GOOD
_FOREVER = 1 << 62
_Cell = tuple[Scalar | None, Quality]
Item = Sample | Value  # normalise makes Samples; Values (tests, replays) work alike


def _tie_key(v: Item) -> tuple[str, str, str]:
    return (v.quality.value, type(v.value).__name__, repr(v.value))


class _Series:
    """One signal's recent values, sorted by timestamp."""

    __slots__ = ("cells", "ts")

    def __init__(self) -> None:
        self.ts: list[int] = []
        self.cells: list[Item] = []

    def insert(self, v: Item) -> bool:
        """Insert; False when an equal-timestamp value that wins the tie is already there."""
        ts = self.ts
        if not ts or v.ts > ts[-1]:
            ts.append(v.ts)
            self.cells.append(v)
            return True
        i = bisect_left(ts, v.ts)
        if i < len(ts) and ts[i] == v.ts:
            if _tie_key(v) <= _tie_key(self.cells[i]):
                return False
            self.cells[i] = v
            return True
        ts.insert(i, v.ts)
        self.cells.insert(i, v)
        return True

    def asof(self, g: int, tol: int) -> Item | None:
        """The latest value at or before ``g`` and no older than ``g - tol``."""
        i = bisect_right(self.ts, g) - 1
        if i >= 0 and self.ts[i] >= g - tol:
            return self.cells[i]
        return None

    def prune(self, before: int, keep_last: bool = False) -> None:
        """Forget values stamped before ``before`` (but the newest of them with ``keep_last``)."""
        i = bisect_right(self.ts, before) - 1 if keep_last else bisect_left(self.ts, before)
        if i > 0:
            del self.ts[:i]
            del self.cells[:i]


class AssetAligner:
    """Frames of one asset on its grid.

    Args:
        node: the asset's node id.
        props: the asset's bound properties (the frame's columns).
        alignment: grid, tolerance and watermark.
        held: the props that report by exception: they hold their value (``alignment.hold_ms``).
    """

    def __init__(
        self, node: str, props: Iterable[str], alignment: AlignmentDef, held: Iterable[str] = ()
    ) -> None:
        self.node = node
        self.props = tuple(sorted(props))
        self.alignment = alignment
        self.held = frozenset(held) & set(self.props)
        self._grid = alignment.grid_ms * 1000
        tol = alignment.tolerance_ms * 1000
        hold = _FOREVER if alignment.hold_ms is None else max(tol, alignment.hold_ms * 1000)
        self._tols = tuple(hold if p in self.held else tol for p in self.props)
        self._tol = max(self._tols, default=tol)  # the widest reach of one value over the grid
        self._wm = alignment.watermark_ms * 1000
        self._series = {p: _Series() for p in self.props}
        self._open: dict[int, tuple[int, tuple[_Cell, ...]]] = {}  # g -> (revision, cells) of frames emitted
        self.event_time: int | None = None
        self._closed = -(1 << 62)
        self.lag_gauge = metrics.ALIGN_LAG.labels(node)

    def add(self, values: Sequence[Item]) -> tuple[list[Frame], list[int]]:
        """Take this asset's values; return the frames emitted and the indexes of late values."""
        late: list[int] = []
        e_old = self.event_time
        e = e_old
        lo = hi = None
        for i, v in enumerate(values):
            series = self._series.get(v.prop)
            if series is None:
                continue
            if e is not None and v.ts < e - self._wm:
                late.append(i)
                continue
            if not series.insert(v):
                continue
            if e is None or v.ts > e:
                e = v.ts
            if lo is None or v.ts < lo:
                lo = v.ts
            if hi is None or v.ts > hi:
                hi = v.ts
        if e is None or lo is None or hi is None:
            return [], late
        self.event_time = e
        return self._emit(e_old, e, lo, hi), late

    def _emit(self, e_old: int | None, e: int, lo: int, hi: int) -> list[Frame]:
        # Frames an on-time value changes: [lo, hi + tol]. Frames newly due ([e_old, e)) can hold older values
        # only up to e_old + tol. Nothing here is closed yet: on-time values are at or after the watermark.
        ranges = [(lo, hi + self._tol)]
        if e_old is not None and e > e_old:
            ranges.append((e_old, e_old + self._tol))
        frames: list[Frame] = []
        done: set[int] = set()
        for start, stop in ranges:
            g = -(-start // self._grid) * self._grid
            stop = min(stop, e - 1)
            while g <= stop:
                if g not in done:
                    done.add(g)
                    f = self._frame(g)
                    if f is not None:
                        frames.append(f)
                g += self._grid
        closed_before = e - self._wm
        if closed_before // self._grid > self._closed // self._grid:  # only when a grid point closes
            self._close(closed_before)
            self._closed = closed_before
        frames.sort(key=lambda f: f.ts)
        return frames

    def _frame(self, g: int) -> Frame | None:
        cells: list[_Cell] = []
        any_value = False
        for p, tol in zip(self.props, self._tols, strict=True):
            v = self._series[p].asof(g, tol)
            if v is None:
                cells.append((None, _GOOD))
            else:
                cells.append((v.value, v.quality))
                any_value = True
        if not any_value:
            return None
        key = tuple(cells)
        prev = self._open.get(g)
        if prev is not None and prev[1] == key:
            return None
        rev = 0 if prev is None else prev[0] + 1
        self._open[g] = (rev, key)
        return Frame.model_construct(
            node=self.node,
            ts=g,
            values={p: c[0] for p, c in zip(self.props, cells, strict=True)},
            quality={
                p: c[1]
                for p, c in zip(self.props, cells, strict=True)
                if c[1] is not _GOOD and c[0] is not None
            },
            revision=rev,
        )

    def _close(self, closed_before: int) -> None:
        for g in [g for g in self._open if g < closed_before]:
            del self._open[g]
        for p, tol in zip(self.props, self._tols, strict=True):
            if p in self.held:  # open frames need only the newest value at or before the first of them
                self._series[p].prune(closed_before, keep_last=True)
            else:
                self._series[p].prune(closed_before - tol)


def reports_by_exception(site: Site, node: Node) -> frozenset[str]:
    """The node's props whose source sends a value only when it changes: OPC-UA subscriptions, Sparkplug B."""
    held = set()
    for prop, binding in node.bindings.items():
        if isinstance(binding, OpcUaBinding):
            if binding.mode == "subscribe":
                held.add(prop)
        else:
            source = site.sources.get(binding.source)
            if isinstance(source, MqttSource) and source.format == "sparkplug":
                held.add(prop)
    return frozenset(held)


@dataclass(slots=True)
class Aligned:
    """What aligning one batch produced: frames, and the values with late ones flagged."""

    frames: list[Frame] = field(default_factory=list)
    values: list[Item] = field(default_factory=list)
    late: int = 0


class Aligner:
    """Aligners for every asset of a site.

    Args:
        site: the validated site model.
        previous: an Aligner to take per-asset state from (hot reload) where columns and grid match.
    """

    def __init__(self, site: Site, previous: Aligner | None = None) -> None:
        self.assets: dict[str, AssetAligner] = {}
        for node in site.assets():
            if not node.bindings or node.type is None:
                continue
            alignment = site.asset_types[node.type].alignment
            held = reports_by_exception(site, node)
            old = previous.assets.get(node.id) if previous else None
            if (
                old is not None
                and old.props == tuple(sorted(node.bindings))
                and old.alignment == alignment
                and old.held == held
            ):
                self.assets[node.id] = old
            else:
                self.assets[node.id] = AssetAligner(node.id, node.bindings, alignment, held)

    def align(self, values: Sequence[Item]) -> Aligned:
        """Align one batch of values (any assets, any order)."""
        out = Aligned(values=values if isinstance(values, list) else list(values))
        by_node: dict[str, list[int]] = {}
        for i, v in enumerate(values):
            by_node.setdefault(v.node, []).append(i)
        late_idx: list[int] = []
        for node, idx in by_node.items():
            asset = self.assets.get(node)
            if asset is None:
                continue
            sub = values if len(by_node) == 1 else [values[i] for i in idx]
            frames, late = asset.add(sub)
            out.frames.extend(frames)
            late_idx.extend(idx[j] for j in late)
            if frames:
                recv = max((v.recv_ts or 0) for v in sub)
                if recv:
                    asset.lag_gauge.set((recv - frames[-1].ts) / 1e6)
        if late_idx:
            out.values = list(values)
            for i in late_idx:
                v = values[i]
                out.values[i] = (
                    v.with_flag(Flag.LATE)
                    if isinstance(v, Sample)
                    else v.model_copy(update={"flags": (*v.flags, Flag.LATE)})
                )
            out.late = len(late_idx)
        return out
