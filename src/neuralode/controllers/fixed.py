"""Fixed steps: on the output times, on a uniform grid, or on a grid the user constructs."""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Callable
from itertools import islice
from typing import Any

import torch

from .._norms import Norm
from .._term import ODETerm
from ..solvers.base import Solver
from ._ops import indistinct
from .base import StepSizeController

GridConstructor = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class FixedGrid(StepSizeController):
    """Steps between consecutive points of a grid; every step is accepted.

    With no argument the grid is the output times.

    Arguments:
        step_size: a uniform grid from the first to the last output time (the last step
            shortened to land on it, as torchdiffeq does).
        grid: the grid points (a tensor, or an ``array('d')`` used as it is: 8 bytes a
            point, for long grids); they must start and end at the first and last output time
            and be strictly monotonic in the direction of integration.
        constructor: makes the grid points from the times of each solve (a list of floats,
            first to last; an adjoint's backward solves call it again with their reversed
            times).

    Raises:
        ValueError: more than one of the arguments, or a step size that is not positive and
            finite.
        TypeError: ``constructor`` is not callable.
    """

    def __init__(
        self,
        step_size: float | None = None,
        grid: torch.Tensor | array | None = None,
        constructor: Callable[[list[float]], torch.Tensor] | None = None,
    ):
        if sum(x is not None for x in (step_size, grid, constructor)) > 1:
            raise ValueError("give FixedGrid one of step_size, grid and constructor")
        if step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        if constructor is not None and not callable(constructor):
            raise TypeError(f"constructor must be callable, got {type(constructor).__name__}")
        self.step_size = None if step_size is None else float(step_size)
        self.grid = grid
        self.constructor = constructor

    def _grid(self, ts: list[float]) -> _Grid:
        t0, t_end = ts[0], ts[-1]
        points = self.grid if self.constructor is None else self.constructor(list(ts))
        if isinstance(points, array) and points.typecode == "d":
            grid = points
        elif points is not None:
            grid = [float(x) for x in torch.as_tensor(points).detach().reshape(-1).tolist()]
        if points is not None:
            sign = 1.0 if t_end > t0 else -1.0
            if len(grid) < 2 or grid[0] != t0 or grid[-1] != t_end:
                raise ValueError(
                    f"the step grid must start at t0={t0} and end at t1={t_end}; "
                    f"got {grid[0] if grid else None} ... {grid[-1] if grid else None}"
                )
            if any(sign * (b - a) <= 0 for a, b in zip(grid, islice(grid, 1, None))):
                raise ValueError("the step grid must be strictly monotonic, in the direction of t")
            return _Grid(grid)
        if self.step_size is None:
            return _Grid(list(ts))
        return _UniformGrid(t0, t_end, self.step_size)

    def n_steps(self, ts: list[float]) -> float:
        """The number of steps from ``ts[0]`` to ``ts[-1]``, known without building the grid.

        Arguments:
            ts: the output times as Python floats.

        Returns:
            The number of steps: ``inf`` for a uniform grid towards an infinite end, 1 for a
                ``constructor``'s grid (not known before it is built).
        """
        if self.grid is not None:
            return max(torch.as_tensor(self.grid).numel() - 1, 1)
        if self.constructor is not None:
            return 1  # the user's grid: known once built
        if self.step_size is None:
            return len(ts) - 1
        return _UniformGrid(ts[0], ts[-1], self.step_size).n

    def restricted(self, t_start: float, t_end: float) -> FixedGrid:
        """The part of a user-given ``grid`` between two of its times (either direction).

        Arguments:
            t_start: the first point of the restricted grid.
            t_end: the last point of the restricted grid.

        Returns:
            A ``FixedGrid`` on ``t_start``, the grid points strictly between the two (ordered
                from ``t_start`` to ``t_end``) and ``t_end``, as float64.
        """
        assert self.grid is not None
        points = torch.as_tensor(self.grid).detach().to(torch.float64).reshape(-1).tolist()
        lo, hi = min(t_start, t_end), max(t_start, t_end)
        inside = [x for x in points if lo < x < hi]
        ordered = sorted(inside, reverse=t_end < t_start)
        return FixedGrid(grid=torch.tensor([t_start, *ordered, t_end], dtype=torch.float64))

    def init(
        self,
        term: ODETerm,
        solver: Solver,
        ts: list[float],
        y0: torch.Tensor,
        f0: torch.Tensor | None,
        norm: Norm,
    ) -> tuple[float, Any]:
        """Build the grid for ``ts`` and propose its first point after ``ts[0]``.

        Arguments:
            term: the vector field (unused).
            solver: the solver (unused).
            ts: the output times as Python floats.
            y0: the initial state (unused).
            f0: unused.
            norm: unused.

        Returns:
            ``(t1, grid)``: the end of the first step and the grid, the controller's state.

        Raises:
            ValueError: a given or constructed grid that does not start at ``ts[0]``, end at
                ``ts[-1]`` or is not strictly monotonic in the direction of integration.
        """
        grid = self._grid(ts)
        return grid.after(ts[0]), grid

    def adapt(
        self,
        t0: float,
        t1: float,
        y0: torch.Tensor,
        y1: torch.Tensor,
        error: Any,
        state: Any,
        ratio: float | None = None,
    ) -> tuple[bool, float, Any]:
        """Accept every step and propose the next grid point after ``t1``.

        Arguments:
            t0: the start time of the step (unused).
            t1: the end time of the step.
            y0: unused.
            y1: unused.
            error: unused.
            state: the grid from ``init``.
            ratio: unused.

        Returns:
            ``(True, t_next, state)``: ``t_next`` the first grid point past ``t1`` (the last
                point when there is none).
        """
        return True, state.after(t1), state

    def __repr__(self) -> str:
        return f"FixedGrid(step_size={self.step_size})"


class _Grid:
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


class _UniformGrid:
    """The points ``t0 + i * step`` before ``t_end``, then ``t_end`` (as torchdiffeq), made
    one at a time: a tiny step over a long span costs no memory before ``max_steps`` is
    checked. An infinite ``t_end`` (an event search) gives an unbounded grid."""

    def __init__(self, t0: float, t_end: float, step_size: float):
        span = t_end - t0
        self.t0, self.t_end = t0, t_end
        self.sign = 1.0 if span >= 0 else -1.0
        self.step = math.copysign(step_size, span)
        self.n = math.ceil(abs(span) / step_size - 1e-12) if math.isfinite(span) else math.inf

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
