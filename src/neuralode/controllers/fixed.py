"""Fixed steps: on the output times, on a uniform grid, or on a grid the user constructs."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from typing import Any

import torch

from .._norms import Norm
from .._term import ODETerm
from ..solvers.base import Solver
from .base import StepSizeController

GridConstructor = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class FixedGrid(StepSizeController):
    """Steps between consecutive points of a grid; every step is accepted.

    With neither option the grid is the output times. ``step_size`` gives a uniform grid from
    the first to the last output time (the last step shortened to land on it, as torchdiffeq
    does). ``grid`` gives the points directly; it must start and end at the first and last
    output time and be strictly monotonic in the direction of integration.
    """

    def __init__(self, step_size: float | None = None, grid: torch.Tensor | None = None):
        if step_size is not None and grid is not None:
            raise ValueError("give FixedGrid either step_size or grid, not both")
        if step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        self.step_size = None if step_size is None else float(step_size)
        self.grid = grid

    def _grid(self, ts: list[float]) -> list[float]:
        t0, t_end = ts[0], ts[-1]
        if self.grid is not None:
            grid = [float(x) for x in torch.as_tensor(self.grid).detach().reshape(-1).tolist()]
            sign = 1.0 if t_end > t0 else -1.0
            if len(grid) < 2 or grid[0] != t0 or grid[-1] != t_end:
                raise ValueError(
                    f"the step grid must start at t0={t0} and end at t1={t_end}; "
                    f"got {grid[0] if grid else None} ... {grid[-1] if grid else None}"
                )
            if any(sign * (b - a) <= 0 for a, b in zip(grid, grid[1:])):
                raise ValueError("the step grid must be strictly monotonic, in the direction of t")
            return grid
        if self.step_size is None:
            return list(ts)
        span = t_end - t0
        n = math.ceil(abs(span) / self.step_size - 1e-12)
        step = math.copysign(self.step_size, span)
        return [t0 + i * step for i in range(n)] + [t_end]

    def restricted(self, t_start: float, t_end: float) -> FixedGrid:
        """The part of a user-given grid between two of its times (either direction)."""
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
        grid = self._grid(ts)
        sign = 1.0 if ts[-1] >= ts[0] else -1.0
        # Keys increase along the direction of integration, for bisection.
        keys = [sign * x for x in grid]
        return grid[1], (grid, keys, sign)

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
        grid, keys, sign = state
        i = bisect.bisect_right(keys, sign * t1)
        return True, grid[min(i, len(grid) - 1)], state

    def __repr__(self) -> str:
        return f"FixedGrid(step_size={self.step_size})"
