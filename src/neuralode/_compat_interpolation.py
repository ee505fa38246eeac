"""torchdiffeq's ``interp`` option on a fixed-grid method: linear or cubic Hermite output
between its grid points, in every mode."""

from __future__ import annotations

from typing import Any

import torch

from .solvers._hermite import hermite, hermite_interpolate
from .solvers._step import RowFacts, Step
from .solvers.base import Solver
from .solvers.explicit_rk import ExplicitRK


def with_interpolation(solver: Solver, kind: str) -> Solver:
    """``solver`` (a fixed-grid method) with torchdiffeq's ``interp`` between grid points in
    every mode (one problem, per sample, the compiled solve, event location): ``"linear"``
    between the ends of a step, or ``"cubic"`` Hermite through their values and
    derivatives (the symplectic methods' row solvers are that already). The copy's class
    is a subclass of the solver's, so that checks and caches keyed on the class still
    apply."""
    cls = type(solver)
    key = (cls, kind)
    sub = _INTERPOLATED.get(key)
    if sub is None:
        between = _LinearBetweenGridPoints if kind == "linear" else _CubicBetweenGridPoints
        sub = type(cls.__name__, (between, cls), {"__module__": cls.__module__})
        _INTERPOLATED[key] = sub
    interpolated = object.__new__(sub)
    interpolated.__dict__.update(solver.__dict__)
    return interpolated


_INTERPOLATED: dict[tuple[type, str], type] = {}


class _LinearBetweenGridPoints:
    """torchdiffeq's ``interp="linear"``: y0 + theta (y1 - y0), which needs no evaluation
    of f beyond the step's own. Placed before a solver's class (``with_interpolation``)."""

    dense_extra_stages = 0

    def interpolate(self, term: Any, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        return self.dense(step.y0, step.y1, step.dt, None, None, thetas)

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        h: Any,
        stacked: torch.Tensor | None,
        f1: torch.Tensor | None,
        theta: torch.Tensor,
        derivative: bool = False,
    ) -> torch.Tensor:
        th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
        if derivative:
            return torch.zeros_like(th) + (y1 - y0) / h
        return y0 + th * (y1 - y0)

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        return super().row_facts(like)._replace(needs_f1=False)  # type: ignore[misc]

    def for_rows(self, term: Any, like: torch.Tensor) -> Any:
        rows = super().for_rows(term, like)  # type: ignore[misc]
        if rows is self:
            return rows
        # a method's own row solver (the symplectic methods'): linear between its ends too
        rows = with_interpolation(rows, "linear")
        rows.dense_extra_stages = 0
        return rows


class _CubicBetweenGridPoints:
    """torchdiffeq's ``interp="cubic"``: cubic Hermite through (y0, f0) and (y1, f1), f0
    the step's first stage (or f(t0, y0) for a method without stages). Placed before a
    solver's class (``with_interpolation``)."""

    dense_extra_stages = 0

    def interpolate(self, term: Any, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        f0 = step.stages[0] if isinstance(self, ExplicitRK) else term(step.t0, step.y0)
        return hermite_interpolate(term, step, thetas, f0)

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        h: Any,
        stacked: torch.Tensor | None,
        f1: torch.Tensor | None,
        theta: torch.Tensor,
        derivative: bool = False,
    ) -> torch.Tensor:
        th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
        return hermite(th, y0, y1, stacked[0], f1, h, derivative)

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        return super().row_facts(like)._replace(needs_f1=True)  # type: ignore[misc]
