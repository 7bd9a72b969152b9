"""Frames → model windows: one asset's recent frames, one row per grid point, oldest first.

The aligner emits a frame per grid point and may revise it (a later revision replaces the row). A window is
the newest run of consecutive grid points, at most the model's length: a gap (grid points without a frame,
a source outage) starts a new run, so a window never joins data from both sides of an outage. Once a model's
shortest accepted window is there, each new grid point gives a window ending at it.

A window whose rows lack one of the model's signals, or hold a value of bad quality, is not diagnosed; the
reason is returned so the caller counts it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from plant.wire import Frame, Quality, Scalar

_BAD = Quality.BAD


@dataclass(frozen=True, slots=True)
class Window:
    """One window of one asset, ready for a model.

    Args:
        node: the asset.
        ts: the window's end (its newest grid point), µs.
        values: signal → values, oldest first.
    """

    node: str
    ts: int
    values: dict[str, list[Scalar]]


class AssetFrames:
    """The recent frames of one asset, sorted by grid time.

    Args:
        node: the asset's node id.
        grid_us: its grid step, µs.
        keep: frames kept (the longest window of its models).
    """

    __slots__ = ("_frames", "_ts", "grid_us", "keep", "node")

    def __init__(self, node: str, grid_us: int, keep: int) -> None:
        self.node = node
        self.grid_us = grid_us
        self.keep = max(keep, 1)
        self._ts: list[int] = []
        self._frames: list[Frame] = []

    @property
    def newest(self) -> int | None:
        """The newest grid point held, µs."""
        return self._ts[-1] if self._ts else None

    def add(self, frame: Frame) -> None:
        """Take a frame or a revision of one (it replaces the earlier revision)."""
        ts = self._ts
        if not ts or frame.ts > ts[-1]:
            ts.append(frame.ts)
            self._frames.append(frame)
            if len(ts) > 2 * self.keep:  # trim in steps, not on every frame
                del ts[: -self.keep]
                del self._frames[: -self.keep]
            return
        i = bisect_left(ts, frame.ts)
        if i < len(ts) and ts[i] == frame.ts:
            if frame.revision >= self._frames[i].revision:
                self._frames[i] = frame
        elif i > 0 or len(ts) < self.keep:  # older than everything held: only while the buffer fills
            ts.insert(i, frame.ts)
            self._frames.insert(i, frame)

    def ends(self, after: int | None, period_us: int) -> list[int]:
        """Grid points to diagnose: those after ``after``, at least ``period_us`` apart, oldest first."""
        out: list[int] = []
        last = after
        for t in self._ts[bisect_right(self._ts, after) if after is not None else 0 :]:
            if last is None or t - last >= period_us:
                out.append(t)
                last = t
        return out

    def run_length(self, end: int | None = None, limit: int | None = None) -> int:
        """Frames in the run of consecutive grid points ending at ``end`` (default the newest), counted up to
        ``limit`` (default ``keep``)."""
        ts = self._ts
        n = len(ts) if end is None else bisect_right(ts, end)
        k = 1 if n else 0
        stop = min(n, limit or self.keep)
        grid = self.grid_us
        while k < stop and ts[n - k] - ts[n - k - 1] == grid:
            k += 1
        return k

    def window(
        self, signals: Sequence[str], length: int, min_length: int, end: int | None = None
    ) -> Window | str | None:
        """The window ending at grid point ``end`` (default the newest frame); None while too short; a skip
        reason when unusable."""
        run = self.run_length(end, length)
        if run < min_length:
            return None
        stop = len(self._ts) if end is None else bisect_right(self._ts, end)
        frames = self._frames[stop - run : stop]
        values: dict[str, list[Scalar]] = {}
        for s in signals:
            column = [f.values.get(s) for f in frames]
            if None in column:
                return "missing_signal"
            values[s] = column  # type: ignore[assignment]  # None excluded just above
        if any(f.quality and any(f.quality.get(s) is _BAD for s in signals) for f in frames):
            return "bad_quality"
        return Window(self.node, frames[-1].ts, values)

    def closed_rows(self, signals: Sequence[str], after: int, closed_us: int) -> list[tuple[int, list[float] | None]]:
        """Frames after ``after`` and at least ``closed_us`` older than the newest (no revision can follow),
        each as a row of good numeric values, or None where a value is missing, bad or not numeric."""
        newest = self.newest
        if newest is None:
            return []
        out: list[tuple[int, list[float] | None]] = []
        for ts, f in zip(self._ts, self._frames, strict=True):
            if ts <= after or ts > newest - closed_us:
                continue
            row: list[float] | None = []
            for s in signals:
                v = f.values.get(s)
                if v is None or isinstance(v, str | bool) or f.quality.get(s) is _BAD:
                    row = None
                    break
                row.append(float(v))  # type: ignore[union-attr]
            out.append((ts, row))
        return out
