"""The dense output of the explicit Runge-Kutta methods, for every mode: the tableau's own
continuous extension (with its extra stages, evaluated once per step), or cubic Hermite
through the step's ends where the tableau has none."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from .._term import ODETerm
from ._hermite import hermite, hermite_interpolate
from ._rk_coefficients import Coefficients, theta_weights
from ._step import Step
from .base import Solver
from .tableau import ButcherTableau


class ExplicitDenseOutput(Solver):
    """The dense output of ``ExplicitRK`` (its base): the methods of ``Solver`` that
    interpolate a step, and ``dense``/``dense_stages``, which every mode calls."""

    tableau: ClassVar[ButcherTableau]

    @abc.abstractmethod
    def _coefficients(self, like: torch.Tensor) -> Coefficients:
        """The tableau's coefficients for ``like``'s dtype and device."""

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        tab = self.tableau
        if tab.dense is None:
            return hermite_interpolate(term, step, thetas, step.stages[0])
        co = self._coefficients(step.y0)
        stacked = step.extra.get("dense_stacked")
        if stacked is None:
            stacked = self._extra_stages(term, step, co)
            step.extra["dense_stacked"] = stacked
        return self.dense(step.y0, None, step.dt, stacked, None, thetas)

    def dense_width(self, like: torch.Tensor) -> int:
        """The rows of ``dense_stages``: the stages and the dense output's extra stages.

        Arguments:
            like: a tensor of the state's dtype and device.

        Returns:
            The number of rows.
        """
        return self._coefficients(like).dense.shape[0]

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor | None,
        h: Any,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
        theta: torch.Tensor,
        derivative: bool = False,
    ) -> torch.Tensor:
        """The dense output of every mode at the step fractions ``theta``.

        For one step, ``theta`` (m,) against (stages, n) stages gives (m, n); per row (a
        sample, or a step of a dense solution), ``theta`` (rows,) against
        (stages, rows, n) stages and ``h`` (rows, 1) gives (rows, n).

        Arguments:
            y0: the step's start state.
            y1: the step's end state (needed by the cubic Hermite fallback only).
            h: the step size: a float, or (rows, 1) per row.
            stacked: the stages, with the dense output's extra stages (``dense_stages``).
            f1: f(t1, y1) where the interpolant needs it and ``stacked`` lacks it, else
                ``None``.
            theta: the step fractions, float64.
            derivative: return dy/dt, sum_i B_i'(theta) k_i (the same polynomials
                differentiated in theta), instead of y.

        Returns:
            The states (or their time derivatives): (m, n) for one step, (rows, n) per row.

        Raises:
            ValueError: a method without its own dense output (cubic Hermite) and no ``f1``.
        """
        co = self._coefficients(y0)
        per_row = stacked.ndim == 3
        if self.tableau.dense is None:  # cubic Hermite through (y0, f0), (y1, f1)
            if f1 is None:
                raise ValueError(f"{self!r} needs f(t1, y1) for its dense output")
            th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
            return hermite(th, y0, y1, stacked[0], f1, h, derivative)
        weights = theta_weights(co, theta, derivative)
        if not per_row:  # one step, many points: one matrix product
            if derivative:
                return weights.T @ stacked
            return torch.addmm(y0[None, :], weights.T, stacked, alpha=h)
        if f1 is not None and stacked.shape[0] < weights.shape[0]:
            stacked = torch.cat([stacked, f1[None]])
        combined = torch.einsum("sb,sbd->bd", weights, stacked)
        return combined if derivative else torch.addcmul(y0, h, combined)

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        return step.stages[0]

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        if self.tableau.dense is None:
            return super().dense_record(term, step)
        stacked = step.extra.get("dense_stacked")
        if stacked is None:  # also serves the loop's interpolation of this step
            stacked = step.extra["dense_stacked"] = self._extra_stages(
                term, step, self._coefficients(step.y0)
            )
        # graph-free solves reuse one stage buffer across steps: keep a copy
        return stacked if torch.is_grad_enabled() else stacked.clone()

    def dense_weights(
        self, theta: torch.Tensor, h: torch.Tensor, like: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor:
        if self.tableau.dense is None:
            return super().dense_weights(theta, h, like, derivative)
        weights = theta_weights(self._coefficients(like), theta, derivative).T
        ends = weights.new_zeros(weights.shape[0], 2)
        if derivative:
            return torch.cat([ends, weights], 1)
        ends[:, 0] = 1  # y0 + h sum_i B_i(theta) k_i
        size = h if isinstance(h, float) else h.to(weights.dtype)[:, None]
        return torch.cat([ends, size * weights], 1)

    def _extra_stages(self, term: ODETerm, step: Step, co: Coefficients) -> torch.Tensor:
        """Evaluate the dense output's extra stages (once per step) and stack all stages."""
        if not self.tableau.dense.extra_c:
            return step.extra["stacked"]

        def f1() -> torch.Tensor:
            if step.f1 is None:
                step.f1 = term(step.t1, step.y1, step.end_perturb)
            return step.f1

        def evaluate(c: float, y_stage: torch.Tensor) -> torch.Tensor:
            return term(step.t0 + c * step.dt, y_stage)

        return self.dense_stages(step.y0, step.dt, step.stages, f1, evaluate)

    def dense_stages(
        self,
        y0: torch.Tensor,
        h: Any,
        ks: Sequence[torch.Tensor],
        f1: Callable[[], torch.Tensor],
        evaluate: Callable[[float, torch.Tensor], torch.Tensor],
        y1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The step's stages followed by its dense output's extra stages, for every mode.

        Arguments:
            y0: the step's start state.
            h: the step size: a float (one problem) or (batch, 1) (per sample).
            ks: the step's stages.
            f1: returns f(t1, y1), the extra stage at the step's end.
            evaluate: ``evaluate(c, y)`` returns f at the step fraction ``c``; an extra
                stage there is ``evaluate(c, y0 + h * sum_j a_j k_j)``.
            y1: the step's end state (unused: the extra stages are made from the stages).

        Returns:
            All stages stacked, (stages, *y0.shape).
        """
        co = self._coefficients(y0)
        ks = list(ks)
        for c, row, is_f1 in zip(self.tableau.dense.extra_c, co.extra_a, co.extra_is_f1):
            if is_f1:
                ks.append(f1())
            else:
                combination = torch.einsum("s,s...->...", row, torch.stack(ks))
                ks.append(evaluate(c, y0 + h * combination))
        return torch.stack(ks)
