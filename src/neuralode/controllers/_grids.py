"""The host loop's fixed grids: explicit points, or uniform steps made one at a time."""

from __future__ import annotations

import bisect
import math
from itertools import islice
from typing import Any

from ._ops import _EPS, indistinct, uniform_steps


def check_points(grid: Any, t0: float, t_end: float) -> None:
    """Raise unless the grid points start at ``t0``, end at ``t_end`` and are strictly
    monotonic from one to the other."""
    sign = 1.0 if t_end > t0 else -1.0
    if len(grid) < 2 or grid[0] != t0 or grid[-1] != t_end:
        raise ValueError(
            f"the step grid must start at t0={t0} and end at t1={t_end}; "
            f"got {grid[0] if grid else None} ... {grid[-1] if grid else None}"
        )
    if any(sign * (b - a) <= 0 for a, b in zip(grid, islice(grid, 1, None))):
        raise ValueError("the step grid must be strictly monotonic, in the direction of t")


class Grid:
    """Explicit grid points; ``after(t)`` is the first point past ``t`` by more than
    round-off (the last point when none is)."""

    def __init__(self, points: list[float]):
        self.points = points
        self.sign = 1.0 if points[-1] >= points[0] else -1.0
        # increasing, for bisection
        self.keys = points if self.sign > 0 else [self.sign * x for x in points]

    def after(self, t: float) -> float:
        i = bisect.bisect_right(self.keys, self.sign * t)
        while i < len(self.points) - 1 and indistinct(t, self.points[i]):
            i += 1  # a point within round-off of t (a landing point beside it) is reached
        return self.points[min(i, len(self.points) - 1)]


class UniformGrid:
    """The points ``t0 + i * step`` before ``t_end``, then ``t_end`` (as torchdiffeq), made
    one at a time: a tiny step over a long span costs no memory before ``max_steps`` is
    checked. An infinite ``t_end`` (an event search) gives an unbounded grid. ``eps`` is
    the resolution of the times' dtype (``uniform_steps``)."""

    def __init__(self, t0: float, t_end: float, step_size: float, eps: float = _EPS):
        span = t_end - t0
        self.t0, self.t_end = t0, t_end
        self.sign = 1.0 if span >= 0 else -1.0
        self.step = math.copysign(step_size, span)
        scale = max(abs(t0), abs(t_end))
        self.n = uniform_steps(span, step_size, scale, eps) if math.isfinite(span) else math.inf

    def point(self, i: int) -> float:
        return self.t_end if i >= self.n else self.t0 + i * self.step

    def after(self, t: float) -> float:
        sign = self.sign
        i = max(int(math.floor((t - self.t0) / self.step)), 0) if math.isfinite(t) else 0
        while i > 0 and sign * (self.point(i) - t) > 0:  # round-off in the division
            i -= 1
        while i < self.n and (sign * (self.point(i) - t) <= 0 or indistinct(t, self.point(i))):
            i += 1  # points up to t, or within round-off past it, are reached
        return self.point(i)
