"""Adams multistep methods on fixed grids: Adams-Bashforth and Adams-Bashforth-Moulton.

Weights are computed for the actual past step sizes (integrals of the Lagrange interpolant of
past derivatives), so non-uniform grids keep their order. The first steps, while the history
fills, are taken by the eighth-order Runge-Kutta method (Dopri8 on the same grid), so the
start-up does not limit the global order up to 8; ``max_order`` goes to 12 as in torchdiffeq,
where the start-up's local errors O(dt^9) bound the global order by 9. High orders shrink
the stability region: the explicit method of order 8 and up is unstable on an oscillator at
steps where order 4 is accurate.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from .._args import count, is_real
from .._errors import SolverError
from .._term import ODETerm
from ._hermite import hermite_interpolate
from ._step import Step
from .base import Solver
from .dopri8 import Dopri8

History = list[tuple[float, torch.Tensor]]  # (t, f(t, y(t))), most recent first


@lru_cache(maxsize=256)
def adams_weights(nodes: tuple[float, ...]) -> tuple[float, ...]:
    """w_j = int_0^1 l_j(s) ds for the Lagrange basis l_j on ``nodes`` (in units of dt)."""
    weights = []
    for j, tj in enumerate(nodes):
        basis = np.poly1d([1.0])
        for m, tm in enumerate(nodes):
            if m != j:
                basis = basis * np.poly1d([1.0, -tm]) / (tj - tm)
        antiderivative = basis.integ()
        weights.append(float(antiderivative(1.0) - antiderivative(0.0)))
    return tuple(weights)


def _scaled(times: list[float], t0: float, dt: float) -> tuple[float, ...]:
    # Rounded so that uniform grids hit the cache despite round-off in the times.
    return tuple(round((t - t0) / dt, 12) for t in times)


class _Adams(Solver):
    multistep = True

    def __init__(self, max_order: int):
        order = count("max_order", max_order)
        if order > 12:
            raise ValueError(f"max_order must be an integer in [1, 12], got {max_order!r}")
        self.max_order = order
        self._starter = Dopri8()

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.max_order

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        return None if f0 is None else [(t0, f0)]

    def _history(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> History:
        if state is not None:
            return state
        inward = 1.0 if t1 > t0 else -1.0
        return [(t0, term(t0, y0, inward if perturb else 0.0))]

    def _combine(self, y0: torch.Tensor, dt: float, history: History, t0: float) -> torch.Tensor:
        weights = adams_weights(_scaled([t for t, _ in history], t0, dt))
        stacked = torch.stack([f for _, f in history], 1)
        coefficients = torch.tensor(weights, dtype=torch.float64).to(stacked.dtype)
        return torch.addmv(y0, stacked, coefficients.to(stacked.device), alpha=dt)

    def _start_up(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, history: History, perturb: bool
    ) -> Step:
        """A Runge-Kutta step while there are too few past values for the full order."""
        step = self._starter.step(term, t0, t1, y0, history[0][1], perturb)
        f1 = term(t1, step.y1, (-1.0 if t1 > t0 else 1.0) if perturb else 0.0)
        new_history = [(t1, f1), *history[: self.max_order - 1]]
        return Step(
            t0, t1, y0, step.y1, None, [], f1, {"history": new_history, "f0": history[0][1]}
        )

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        return step.extra["history"]

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        return hermite_interpolate(term, step, thetas, self.hermite_f0(term, step))

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        return step.extra["f0"]

    def __repr__(self) -> str:
        return f"{self.name}(max_order={self.max_order})"


class ExplicitAdams(_Adams):
    """Adams-Bashforth of order ``max_order``: one evaluation per step after start-up.

    Arguments:
        max_order: the highest order (history length) the method builds up to, 1 to 12.
    """

    def __init__(self, max_order: int = 4):
        super().__init__(max_order)

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """One Adams-Bashforth step; a Dopri8 step while the history has fewer than
        ``max_order`` past derivatives.

        Arguments:
            term: the vector field.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: the history of past ``(t, f(t, y))``, most recent first (``None`` at the
                start: f(t0, y0) is evaluated).
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step] (no error estimate), with ``f1`` and the
                new history.
        """
        history = self._history(term, t0, t1, y0, state, perturb)
        if len(history) < self.max_order:
            return self._start_up(term, t0, t1, y0, history, perturb)
        dt = t1 - t0
        y1 = self._combine(y0, dt, history[: self.max_order], t0)
        f1 = term(t1, y1, (-1.0 if t1 > t0 else 1.0) if perturb else 0.0)
        new_history = [(t1, f1), *history[: self.max_order - 1]]
        return Step(t0, t1, y0, y1, None, [], f1, {"history": new_history, "f0": history[0][1]})


class ImplicitAdams(_Adams):
    """Adams-Bashforth-Moulton predictor-corrector.

    The corrector (Adams-Moulton with up to ``max_order`` nodes) is iterated until it converges
    or ``max_iters`` times. Evaluations per step: one per corrector iteration plus one for the
    accepted state's derivative.

    Arguments:
        max_order: the corrector's highest order, 1 to 12.
        max_iters: the most corrector iterations per step.
        tol: the corrector has converged when its relative change is below ``tol``.
    """

    def __init__(self, max_order: int = 4, max_iters: int = 4, tol: float = 1e-12):
        super().__init__(max_order)
        max_iters = count("max_iters", max_iters)
        # the corrector's convergence test; 0 always takes max_iters iterations
        if not (is_real(tol) and 0 <= tol < math.inf):
            raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")
        self.max_iters = max_iters
        self.tol = tol

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """One predictor-corrector step; a Dopri8 step while the history has fewer than
        ``max_order - 1`` past derivatives.

        Arguments:
            term: the vector field.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: the history of past ``(t, f(t, y))``, most recent first (``None`` at the
                start: f(t0, y0) is evaluated).
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step] (no error estimate), with ``f1`` and the
                new history.

        Raises:
            SolverError: NaN in the corrector.
        """
        history = self._history(term, t0, t1, y0, state, perturb)
        if len(history) < self.max_order - 1:
            return self._start_up(term, t0, t1, y0, history, perturb)
        past = history[: self.max_order - 1]
        dt = t1 - t0
        y1 = self._combine(y0, dt, history[: max(self.max_order - 1, 1)], t0)  # predictor
        end_perturb = (-1.0 if t1 > t0 else 1.0) if perturb else 0.0
        for _ in range(self.max_iters):
            f1 = term(t1, y1, end_perturb)
            corrected = self._combine(y0, dt, [(t1, f1), *past], t0)
            change = float(torch.linalg.vector_norm((corrected - y1).detach()))
            scale = float(torch.linalg.vector_norm(corrected.detach())) + 1.0
            y1 = corrected
            if not change == change:
                raise SolverError(f"implicit_adams: NaN in the corrector at t={t1:.6g}")
            if change <= self.tol * scale:
                break
        f1 = term(t1, y1, end_perturb)
        new_history = [(t1, f1), *history[: self.max_order - 1]]
        return Step(t0, t1, y0, y1, None, [], f1, {"history": new_history, "f0": history[0][1]})
