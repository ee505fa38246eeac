"""The reversible pair method of ``Reversible``: the base explicit Runge-Kutta method's
forward and backward steps on the flat pair [y; z], and the host-loop solve that runs it (the
formulas are in ``reversible``'s docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .._loop import StepRecord, integrate
from .._norms import Norm, lay_out_tolerances
from .._term import ODETerm
from .._tree import TreeSpec, leaf_spec
from ..solvers._step import Step
from ..solvers.base import Solver
from ..solvers.explicit_rk import ExplicitRK
from .base import Problem


class ReversibleRK(Solver):
    """The reversible pair method of an explicit Runge-Kutta method, on the flat pair
    state [y; z] (``Reversible``'s forward solve).

    Each step calls the base method's ``step`` twice, each from a fresh start state; its
    error estimate is [F's estimate; B's estimate], for a norm such as ``pair_norm``. It
    has no dense output: the solve's steps land on the output times.

    Arguments:
        base: the explicit Runge-Kutta method.
        term: the vector field on one half (the user's, counting evaluations).
        coupling: the coupling in (0, 1].
        jumps: the times where f jumps; a step starting at one evaluates f just past it.
    """

    def __init__(
        self, base: ExplicitRK, term: ODETerm, coupling: float, jumps: Sequence[float] = ()
    ):
        self.base = base
        self.term = term
        self.coupling = coupling
        self.jumps = frozenset(jumps)
        self.n = term.spec.numel
        self.hold_after_reject = base.hold_after_reject

    @property
    def order(self) -> int:  # type: ignore[override]
        """The base method's order (McCallum & Foster's theorem)."""
        return self.base.order

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        """The base method's embedded error order (``None``: fixed steps only)."""
        return self.base.error_order

    @property
    def name(self) -> str:
        """``Reversible(<base>)``."""
        return f"Reversible({self.base.name})"

    def failure_hint(self) -> str:
        """The base method's hint.

        Returns:
            A sentence, or ``""``.
        """
        return self.base.failure_hint()

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """No state: each base step starts from its own fresh start state.

        Arguments:
            term: the pair's vector field (unused).
            t0: the initial time.
            y0: the flat pair state.
            f0: unused.

        Returns:
            ``None``.
        """
        return None

    def compiles(self, term: ODETerm) -> bool:
        """Never compiled (``Reversible`` refuses compiled solves).

        Arguments:
            term: the pair's vector field.

        Returns:
            ``False``.
        """
        return False

    def base_step(
        self, t0: float, t1: float, x: torch.Tensor, perturb: bool
    ) -> Step:  # (the backward pass recomputes exactly these)
        """The base method's step from ``(t0, x)`` to ``t1`` from a fresh start state.

        Arguments:
            t0: the start time.
            t1: the end time (before ``t0`` for the backward step B).
            x: one half of the pair.
            perturb: the evaluations at the ends are moved inside the step.

        Returns:
            The base method's ``Step``.
        """
        state = self.base.init(self.term, t0, x, None)
        return self.base.step(self.term, t0, t1, x, state, perturb)

    def perturbed(self, t0: float, perturb: bool) -> bool:
        """Whether a step from ``t0`` perturbs its base steps' end evaluations: the loop
        asks it (a step ending on a jump), or the step starts on a jump (f there is its
        limit from inside the step).

        Arguments:
            t0: the step's start time.
            perturb: the loop's flag for the step.

        Returns:
            The flag for both base steps.
        """
        return perturb or t0 in self.jumps

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """One reversible step of the pair [y; z] from ``t0`` to ``t1``.

        Arguments:
            term: the pair's vector field (unused: the base steps evaluate the user's f).
            t0: the start time.
            t1: the end time.
            y0: the flat pair [y_n; z_n].
            state: unused.
            perturb: move the evaluations at the ends of both base steps inside the step.

        Returns:
            The ``Step``: ``y1`` the pair [y_{n+1}; z_{n+1}], ``error`` the two base steps'
                estimates [F's; B's] (``None`` without an embedded method).
        """
        n, c = self.n, self.coupling
        y, z = y0[:n], y0[n:]
        perturb = self.perturbed(t0, perturb)
        forward = self.base_step(t0, t1, z, perturb)
        y1 = c * y + (1.0 - c) * z + (forward.y1 - z) if c != 1.0 else y + (forward.y1 - z)
        backward = self.base_step(t1, t0, y1, perturb)
        z1 = z + (y1 - backward.y1)
        error = None
        if forward.error is not None and backward.error is not None:
            error = torch.cat([forward.error, backward.error])
        return Step(t0, t1, y0, torch.cat([y1, z1]), error, [])

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """Never needed: the reversible solve's steps land on the output times.

        Arguments:
            term: the pair's vector field.
            step: an accepted step.
            thetas: step fractions.

        Raises:
            RuntimeError: always.
        """
        raise RuntimeError(
            "the reversible method has no dense output: its steps land on the output times"
        )


class _Halves:
    """f on the pair [y; z]: [f(y); f(z)], by the user's term (which counts each
    evaluation); once when the halves are equal (at the start, z_0 = y_0). The controller's
    first-step estimate and the loop's evaluation after a jump call it."""

    def __init__(self, term: ODETerm):
        self.term = term
        self.n = term.spec.numel

    def __call__(self, t: torch.Tensor, pair: torch.Tensor) -> torch.Tensor:
        y, z = pair[: self.n], pair[self.n :]
        fy = self.term.at(t, y)
        return torch.cat([fy, fy if torch.equal(y, z) else self.term.at(t, z)])


class _YCallbacks:
    """The user's callbacks called with the y half of the pair."""

    def __init__(self, callbacks: Any, n: int):
        self.callbacks = callbacks
        self.n = n

    def step(self, t: float, y: torch.Tensor, dt: float) -> None:
        self.callbacks.step(t, y[: self.n], dt)

    def accept(self, t: float, y: torch.Tensor, dt: float) -> None:
        self.callbacks.accept(t, y[: self.n], dt)

    def reject(self, t: float, y: torch.Tensor, dt: float) -> None:
        self.callbacks.reject(t, y[: self.n], dt)


def pair_norm(norm: Norm, n: int) -> Norm:
    """The error norm of the pair [y; z]: the solve's ``norm`` of each half, the larger.

    Arguments:
        norm: the solve's norm on one half.
        n: the size of one half.

    Returns:
        The norm on the flat pair.
    """

    def measure(x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(norm(x[:n]), norm(x[n:]))

    return measure


def _pair_controller(controller: Any, spec: TreeSpec) -> Any:
    """The controller with per-element tolerances laid out for both halves of the pair."""
    laid_out = lay_out_tolerances(controller, spec)
    if laid_out is not controller:  # (a copy, with per-element tolerances)
        for name in ("rtol", "atol"):
            tol = getattr(laid_out, name)
            if isinstance(tol, torch.Tensor) and tol.numel() > 1:
                setattr(laid_out, name, torch.cat([tol, tol]))
    return laid_out


class PairSolve:
    """The reversible solve of a problem: the pair's term, initial state and loop settings.

    Arguments:
        problem: the validated problem.
        coupling: the coupling in (0, 1].
    """

    def __init__(self, problem: Problem, coupling: float):
        config, term = problem.config, problem.term
        self.n = problem.y0.numel()
        self.solver = ReversibleRK(config.solver, term, coupling, config.jump_t)
        like = problem.y0.new_empty(2 * self.n)
        self.term = ODETerm(_Halves(term), leaf_spec(torch.Size([2 * self.n])), like)
        inside = tuple(problem.times[1:-1])  # the outputs are step ends
        self.config = replace(
            config,
            solver=self.solver,
            controller=_pair_controller(config.controller, problem.spec),
            norm=pair_norm(config.norm, self.n),
            step_t=config.step_t + inside,
            callbacks=None if config.callbacks is None else _YCallbacks(config.callbacks, self.n),
        )

    def run(
        self,
        y0: torch.Tensor,
        times: list[float],
        stats: Any,
        records: list[StepRecord] | None = None,
    ) -> torch.Tensor:
        """The pair's states at ``times`` from y_0 = z_0 = ``y0``: (len(times), 2n).

        Arguments:
            y0: the flat initial state.
            times: the output times.
            stats: the statistics the solve fills in.
            records: receives each accepted step's record, without states.

        Returns:
            The flat pairs [y; z] at ``times``.
        """
        pair = torch.cat([y0, y0])
        return integrate(self.term, pair, times, self.config, stats, records, record_states=False)
