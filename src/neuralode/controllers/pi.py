"""Adaptive step sizes from an embedded error estimate: the PI controller."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .._args import flag
from .._compile import compiled
from .._errors import user_stacklevel
from .._norms import Norm, cached_tolerance
from .._term import ODETerm
from ..solvers.base import Solver
from ._checks import check_overflow, check_settings
from ._ops import solve_span
from ._pi_formula import PIFormula
from ._pi_state import PIState, error_ratio, scaled_error
from .base import StepSizeController
from .initial_step import check_f0_norm, first_evaluations, select_initial_step


class PIController(PIFormula, StepSizeController):
    """Proportional-integral(-derivative) step-size control on the scaled error ratio.

    The error ratio is ``norm(error / (atol + rtol * max(|y0|, |y1|)))``; a step is accepted
    when it is at most 1. The next step is ``dt * factor`` with
    ``factor = safety * ratio**(-(icoeff + pcoeff + dcoeff) / k) * r1**((pcoeff + 2 dcoeff) / k)
    * r2**(-dcoeff / k)``, ``r1`` and ``r2`` the ratios of the last two accepted steps and
    ``k`` one more than the order of the error estimate, clipped to ``[dfactor, ifactor]``
    (Söderlind's three-term controller; diffrax's ``PIDController``, also importable under
    that name).
    An accepted step may be followed by a smaller one (as in Hairer's DOPRI5 and SciPy; torchdiffeq
    never shrinks after an accepted step, which costs rejections where the dynamics stiffen:
    on the Van der Pol benchmark 16 % more NFE for the same error); ``shrink_after_accept=False``
    is their rule (an accepted step's factor is at least 1). ``pcoeff=0`` (the default) is
    the integral controller; ``icoeff=0.3, pcoeff=0.4`` is Gustafsson's PI controller, and
    ``dcoeff > 0`` adds the derivative term (e.g. diffrax's suggested ``pcoeff=0.3,
    icoeff=0.3, dcoeff=0`` for the PI, or H211b-like choices with ``dcoeff``). The
    defaults with ``first_step=0.01, shrink_after_accept=False`` take diffrax 0.7's steps
    (``PIDController`` with ``dt0=None``, which starts every ODE at 0.01).

    Arguments:
        rtol: the relative tolerance: a number, or one per element (a tensor broadcasting
            against a tensor state, or one entry per element of a nested state's tensors
            flattened and concatenated in order).
        atol: the absolute tolerance, as ``rtol``.
        first_step: the first step size (default: chosen from the problem,
            [`select_initial_step`][neuralode.controllers.select_initial_step]).
        safety: the safety factor.
        ifactor: the largest factor a step may grow by.
        dfactor: the smallest factor a step may shrink by.
        icoeff: the integral coefficient, a finite number > 0.
        pcoeff: the proportional coefficient, a finite number >= 0.
        dcoeff: the derivative coefficient, a finite number >= 0 (0: a PI controller).
        predictive: Gustafsson's predictive controller (Hairer's RADAU5, SciPy's Radau):
            the integral factor times min(1, (h / h_last) (r_last / r)^(1 / k)), h_last and
            r_last the last accepted step's size and ratio, so that a step does not grow
            past the trend of the last two (with ``pcoeff = dcoeff = 0``). It saves
            rejections where the error's growth is steady, as with the stiff methods.
        min_step: the smallest step size (steps are clipped to it).
        max_step: the largest step size.
        shrink_after_accept: whether an accepted step may be followed by a smaller one
            (``False``: torchdiffeq's and diffrax's rule, the factor after an accepted step
            clipped to ``[1, ifactor]``).

    Raises:
        TypeError: a tolerance that is not a real number or a floating point tensor, or a
            ``predictive`` that is not a bool.
        ValueError: negative or NaN tolerances, both tolerances zero, a coefficient out of
            range, or ``predictive`` with ``pcoeff`` or ``dcoeff``.
    """

    needs_f0 = True

    def __init__(
        self,
        rtol: float = 1e-7,
        atol: float = 1e-9,
        *,
        first_step: float | None = None,
        safety: float = 0.9,
        ifactor: float = 10.0,
        dfactor: float = 0.2,
        icoeff: float = 1.0,
        pcoeff: float = 0.0,
        dcoeff: float = 0.0,
        predictive: bool = False,
        min_step: float = 0.0,
        max_step: float = math.inf,
        shrink_after_accept: bool = True,
    ):
        check_settings(
            rtol,
            atol,
            first_step,
            safety,
            ifactor,
            dfactor,
            icoeff,
            pcoeff,
            dcoeff,
            min_step,
            max_step,
        )
        predictive = flag("predictive", predictive)
        if predictive and (pcoeff or dcoeff):
            raise ValueError(
                "predictive=True is Gustafsson's predictive integral controller: it takes no "
                f"pcoeff or dcoeff (got pcoeff={pcoeff!r}, dcoeff={dcoeff!r}); leave them 0, "
                "or use predictive=False"
            )
        self.rtol = rtol
        self.atol = atol
        self.first_step = first_step
        self.safety = safety
        self.ifactor = ifactor
        self.dfactor = dfactor
        self.icoeff = icoeff
        self.pcoeff = pcoeff
        self.dcoeff = dcoeff
        self.predictive = predictive
        self.min_step = min_step
        self.max_step = max_step
        self.shrink_after_accept = shrink_after_accept

    def error_ratio(
        self, y0: torch.Tensor, y1: torch.Tensor, error: torch.Tensor, state: PIState
    ) -> torch.Tensor:
        """The scaled error of a step, with the solve's tolerances and norm from ``state``.

        Pure tensor code, for a step compiled together with its error (``compile_step``):
        pass its value to ``adapt`` as ``ratio``.

        Arguments:
            y0: the state at the start of the step.
            y1: the proposed state at its end.
            error: the solver's error estimate of ``y1``, shaped like ``y1``.
            state: the controller's state from ``init``.

        Returns:
            ``norm(error / (atol + rtol * max(|y0|, |y1|)))`` as a 0-dim tensor; at most 1
                when the step meets the tolerances.
        """
        scaled = scaled_error(y0.abs(), y1.abs(), error, state.rtol, state.atol)
        return state.norm(scaled)

    def init(
        self,
        term: ODETerm,
        solver: Solver,
        ts: list[float],
        y0: torch.Tensor,
        f0: torch.Tensor | None,
        norm: Norm,
    ) -> tuple[float, Any]:
        """Start a solve: the first step from ``first_step`` or ``select_initial_step``.

        Arguments:
            term: the vector field being solved.
            solver: the solver taking the steps; it must be adaptive.
            ts: the output times as Python floats; ``ts[0]`` is the initial time.
            y0: the initial state.
            f0: ``term(ts[0], y0)``; needed when ``first_step`` is ``None``.
            norm: the norm measuring a step's scaled error.

        Returns:
            ``(t1, state)``: the end of the first step (its size clipped to
                ``[min_step, max_step]``) and the controller's state.

        Raises:
            ValueError: the solver has no error estimate.
        """
        exponent, direction, rtol, atol = self._setup(solver, ts, y0)
        if self.first_step is None:
            assert f0 is not None
            span = solve_span(ts[0], ts[-1])
            dt = select_initial_step(
                term, ts[0], y0, f0, direction, exponent, rtol, atol, norm, span
            )
        else:
            dt = self.first_step
        memory = self.initial_memory()
        state = PIState(norm, exponent, memory, rtol, atol, hold=solver.hold_after_reject)
        return self._first_proposal(ts, direction, dt), state

    def init_compiled(
        self, term: ODETerm, solver: Solver, ts: list[float], y0: torch.Tensor, norm: Norm
    ) -> tuple[torch.Tensor, float, Any]:
        """``init`` for ``compile_step``, which also evaluates ``f0 = term(ts[0], y0)``.

        f0 and the first step size come from one compiled graph (two evaluations of f, one
        read-back) instead of ~10 eager operations and two reads.

        Arguments:
            term: the vector field being solved.
            solver: the solver taking the steps; it must be adaptive.
            ts: the output times as Python floats; ``ts[0]`` is the initial time.
            y0: the initial state.
            norm: the norm measuring a step's scaled error.

        Returns:
            ``(f0, t1, state)``: f(ts[0], y0), the end of the first step and the controller's
                state.

        Raises:
            ValueError: the solver has no error estimate.
        """
        exponent, direction, rtol, atol = self._setup(solver, ts, y0)
        if self.first_step is not None:
            f0, dt = term(ts[0], y0), self.first_step
        else:
            t0 = torch.tensor(ts[0], dtype=torch.float64, device=y0.device)
            span = torch.tensor(solve_span(ts[0], ts[-1]), dtype=torch.float64, device=y0.device)
            start = compiled(first_evaluations, type(solver))
            f0, pair = term.call_uncounted(
                start, term, t0, y0, direction, exponent, rtol, atol, norm, span
            )
            term.nfe += 2
            dt, d1 = pair.tolist()
            check_f0_norm(d1, ts[0])
        memory = self.initial_memory()
        state = PIState(norm, exponent, memory, rtol, atol, hold=solver.hold_after_reject)
        return f0, self._first_proposal(ts, direction, dt), state

    def _setup(
        self, solver: Solver, ts: list[float], y0: torch.Tensor
    ) -> tuple[float, float, torch.Tensor, torch.Tensor]:
        """The error exponent, the direction of time and the tolerances as tensors."""
        if not solver.adaptive:
            raise ValueError(
                f"{solver.name} has no error estimate and cannot adapt its step size; "
                "use a fixed grid (FixedGrid / options step_size) or an adaptive method"
            )
        exponent = 1.0 / (solver.error_order + 1)
        direction = 1.0 if ts[-1] >= ts[0] else -1.0
        return exponent, direction, cached_tolerance(self.rtol, y0), cached_tolerance(self.atol, y0)

    def _first_proposal(self, ts: list[float], direction: float, dt: float) -> float:
        return ts[0] + direction * min(max(dt, self.min_step), self.max_step)

    def adapt(
        self,
        t0: float,
        t1: float,
        y0: torch.Tensor,
        y1: torch.Tensor,
        error: torch.Tensor,
        state: PIState,
        ratio: float | None = None,
    ) -> tuple[bool, float, PIState]:
        """Judge a step by its error, or by its ``ratio`` when already computed.

        After a rejected attempt, an accepted step is not followed by a larger one where the
        solver asks for it (``Solver.hold_after_reject``: the implicit methods, which run on
        this host loop only; Hairer's rule in RADAU5).

        Arguments:
            t0: the start time of the step.
            t1: the end time of the step.
            y0: the state at ``t0``.
            y1: the proposed state at ``t1``.
            error: the solver's error estimate of ``y1``.
            state: the controller's state; its PI memory is updated on acceptance.
            ratio: the step's scaled error (``error_ratio``) when already computed.

        Returns:
            ``(accepted, t_next, state)``: whether the step is accepted (scaled error at
                most 1, or a step at ``min_step``), the end of the next step (from ``t1`` if
                accepted, else from ``t0``) and the state.

        Raises:
            NonFiniteError: the step failed with non-finite values while ``y0`` is within
                a factor 1024 of its dtype's largest value (the solution overflows).
        """
        dt = t1 - t0
        if ratio is None and torch.is_grad_enabled():
            with torch.no_grad():
                ratio = error_ratio(y0, y1, error, state)
        elif ratio is None:  # entering no_grad costs a tensor operation: not in graph-free loops
            ratio = error_ratio(y0, y1, error, state)
        if not math.isfinite(ratio):
            # NaN or inf in the step: shrink hard and retry; the loop reports a step underflow.
            check_overflow(t0, y0)
        accept, new_size, previous = self.decide(
            ratio, abs(dt), state.previous_ratio, state.exponent
        )
        if accept and state.hold and state.rejected:  # (the solver's hold_after_reject)
            new_size = min(new_size, abs(dt))
        state.rejected = not accept
        if accept and not ratio <= 1 and not state.warned_min_step:  # (forced: at min_step)
            state.warned_min_step = True
            warnings.warn(
                f"hitting the minimum step size: steps at min_step={self.min_step:g} are "
                "accepted with errors above the tolerance; lower min_step (dt_min) for the "
                "accuracy rtol/atol ask (warned once per solve)",
                stacklevel=user_stacklevel(),
            )
        new_dt = math.copysign(new_size, dt)
        if accept:
            state.previous_ratio = previous
            return True, t1 + new_dt, state
        return False, t0 + new_dt, state

    def __repr__(self) -> str:
        return f"PIController(rtol={self.rtol}, atol={self.atol})"


PIDController = PIController  # diffrax's name: the D term is ``dcoeff``
