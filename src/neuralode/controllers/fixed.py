"""Fixed steps: on the output times, on a uniform grid, or on a grid the user constructs."""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable
from typing import Any

import torch

from .._norms import Norm
from .._term import ODETerm
from ..solvers.base import Solver
from ._grids import Grid, UniformGrid, check_points
from ._ops import _EPS
from ._row_grids import RowGrids
from .base import StepSizeController

GridConstructor = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


class FixedGrid(RowGrids, StepSizeController):
    """Steps between consecutive points of a grid; every step is accepted.

    With no argument the grid is the output times.

    In per-sample mode (``solve(..., per_sample=True)``) every sample steps on its own grid
    from its own t0 (``ts`` of shape (batch, n): its row), exactly as it would alone: the
    grid of ``step_size`` starts at each sample's t0 and its last step is shortened to land
    on the sample's t1; ``FixedGrid()`` steps between each sample's output times; a 1-D
    ``grid`` is every sample's (their spans must then be its span), a (batch, m) ``grid``
    gives each sample its row; ``constructor`` is called with each sample's times.

    Arguments:
        step_size: a uniform grid from the first to the last output time (the last step
            shortened to land on it, as torchdiffeq does; a remainder within the round-off
            of the state's dtype is no step of its own: float32 times 0 and 0.3 take 3 steps
            of 0.1). Per sample also a tensor of shape (batch,): each sample its own step
            size.
        grid: the grid points (a tensor, or an ``array('d')`` used as it is: 8 bytes a
            point, for long grids); they must start and end at the first and last output time
            and be strictly monotonic in the direction of integration. Per sample also
            (batch, m): row i is sample i's grid.
        constructor: makes the grid points from the times of each solve (a list of floats,
            first to last; an adjoint's backward solves call it again with their reversed
            times).

    Raises:
        ValueError: more than one of the arguments, or a step size that is not positive and
            finite (in every entry of a tensor of step sizes).
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
        if isinstance(step_size, torch.Tensor):
            step_size = step_size.detach()
            if step_size.ndim > 1 or not step_size.is_floating_point():
                raise ValueError(
                    "step_size must be a positive finite number or, per sample, a floating "
                    f"point tensor of shape (batch,), got a {step_size.dtype} tensor of shape "
                    f"{tuple(step_size.shape)}"
                )
            if not bool((torch.isfinite(step_size) & (step_size > 0)).all()):
                raise ValueError(
                    f"step_size must be positive and finite in every entry, got {step_size}"
                )
            step_size = step_size.to(torch.float64) if step_size.ndim else float(step_size)
        elif step_size is not None and not (step_size > 0 and math.isfinite(step_size)):
            raise ValueError(f"step_size must be a positive finite number, got {step_size!r}")
        if constructor is not None and not callable(constructor):
            raise TypeError(f"constructor must be callable, got {type(constructor).__name__}")
        if step_size is not None and not isinstance(step_size, torch.Tensor):
            step_size = float(step_size)
        self.step_size: float | torch.Tensor | None = step_size
        self.grid = grid
        self.constructor = constructor

    @property
    def per_sample_only(self) -> str | None:
        """What makes this grid one of per-sample mode alone (``None``: nothing): a tensor of
        step sizes, or a (batch, m) grid."""
        if isinstance(self.step_size, torch.Tensor):
            return "a step_size per sample (a tensor of shape (batch,))"
        if isinstance(self.grid, torch.Tensor) and self.grid.ndim == 2 and len(self.grid) > 1:
            return "a grid per sample (a (batch, m) tensor)"
        return None

    def _grid(self, ts: list[float], eps: float = _EPS) -> Grid:
        only = self.per_sample_only
        if only is not None:
            raise ValueError(
                f"FixedGrid with {only} needs per_sample=True (each sample of the batch its "
                "own grid); for one problem give one step_size or a 1-D grid"
            )
        t0, t_end = ts[0], ts[-1]
        points = self.grid if self.constructor is None else self.constructor(list(ts))
        if isinstance(points, array) and points.typecode == "d":
            grid = points
        elif points is not None:
            grid = [float(x) for x in torch.as_tensor(points).detach().reshape(-1).tolist()]
        if points is not None:
            check_points(grid, t0, t_end)
            return Grid(grid)
        if self.step_size is None:
            return Grid(list(ts))
        return UniformGrid(t0, t_end, self.step_size, eps)

    def n_steps(self, ts: list[float], eps: float = _EPS) -> float:
        """The number of steps from ``ts[0]`` to ``ts[-1]``, known without building the grid.

        Arguments:
            ts: the output times as Python floats.
            eps: the resolution of the times' dtype (a remainder within its round-off of
                the ends is no step: ``uniform_steps``).

        Returns:
            The number of steps: ``inf`` for a uniform grid towards an infinite end, 1 for a
                ``constructor``'s grid (not known before it is built).
        """
        if self.grid is not None:
            return max(torch.as_tensor(self.grid).shape[-1] - 1, 1)
        if self.constructor is not None:
            return 1  # the user's grid: known once built
        if self.step_size is None:
            return len(ts) - 1
        if isinstance(self.step_size, torch.Tensor):  # (per sample: the most steps)
            return UniformGrid(ts[0], ts[-1], float(self.step_size.min()), eps).n
        return UniformGrid(ts[0], ts[-1], self.step_size, eps).n

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
            term: the vector field (its ``time_dtype``: the resolution of the times).
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
        grid = self._grid(ts, torch.finfo(term.time_dtype).eps)
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
