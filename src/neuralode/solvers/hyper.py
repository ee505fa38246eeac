"""Hypersolvers (Poli et al., "Hypersolvers: Toward Fast Continuous-Depth Models", NeurIPS
2020): a fixed-step explicit Runge-Kutta method of order p plus a learned correction of its
local truncation error,

    y_{n+1} = y_n + dt psi(t_n, y_n, dt) + dt^(p+1) g(t_n, y_n, f(t_n, y_n), dt).

The base method's step is taken as it is (its stages, its graph-free buffers, its compiled
form); the correction is added to its end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._term import ODETerm
from .base import Solver, Step, hermite_interpolate
from .explicit_rk import ExplicitRK

#: ``correction(t, y, dy, dt)``: the time and step size as 0-dim tensors of the state's real
#: dtype, the state and f(t, y) in the structure of ``y0``; returns that structure.
Correction = Callable[[torch.Tensor, Any, Any, torch.Tensor], Any]


def fixed_step_methods() -> list[str]:
    """The names of the methods a hypersolver can be built on: the explicit Runge-Kutta
    methods of ``METHODS`` without an embedded error estimate.

    Returns:
        The names, in ``METHODS``' order (``euler``, ``midpoint``, ``heun2``, ...).
    """
    from . import METHODS  # (the package imports this module)

    return [
        name
        for name, cls in METHODS.items()
        if issubclass(cls, ExplicitRK) and cls.tableau.error_order is None
    ]


class HyperSolver(Solver):
    """A hypersolver: the fixed-step explicit Runge-Kutta method ``base`` of order p plus a
    learned correction of its local truncation error,

        y_{n+1} = y_n + dt psi(t_n, y_n, dt) + dt^(p+1) correction(t_n, y_n, f(t_n, y_n), dt)

    (Poli et al., NeurIPS 2020). ``dt psi`` is the base method's step, taken by the base
    solver itself; f(t_n, y_n) is its first stage, so a step costs the base method's
    evaluations of f plus one call of the correction. The correction that makes the step
    exact is g* = (y(t_n + dt) - y_n - dt psi) / dt^(p+1);
    [`fit_hypersolver`][neuralode.training.fit_hypersolver] fits a network to it.

    Fixed steps only (``FixedGrid``, ``step_size``): there is no error estimate, so a
    ``PIController`` and ``per_sample=True`` are refused. Gradients: ``Direct()``
    backpropagates through the correction too (its parameters, y0 and func's parameters
    receive the gradients of the discrete solve); ``Checkpointed()`` differentiates the
    correction's parameters (``parameters()``) with func's; ``Backsolve()``'s continuous
    adjoint does not see the correction, so it refuses a correction with parameters that
    require grad, and solves the adjoint system with the base method otherwise;
    ``Reversible()`` refuses it. ``compile="step"`` compiles the base step and the
    correction together. Between steps the outputs are cubic Hermite through the step's
    ends (f(t1, y1) evaluated once per step with outputs inside it).

    Arguments:
        base: the base method: a name among the fixed-step explicit methods (``"euler"``,
            ``"midpoint"``, ``"heun2"``, ``"heun3"``, ``"rk4"``) or such a solver object.
        correction: ``correction(t, y, dy, dt)``, typically an ``nn.Module``: ``t`` and
            ``dt`` 0-dim tensors of the state's real dtype, ``y`` the state and ``dy``
            f(t, y), both in the structure of ``y0``; it returns that structure and shape.

    Raises:
        ValueError: ``base`` is an unknown name, or not a fixed-step explicit Runge-Kutta
            method (adaptive, implicit, multistep, symplectic).
        TypeError: ``correction`` is not callable.
    """

    error_order = None

    def __init__(self, base: str | ExplicitRK, correction: Correction):
        self.base = _base_method(base)
        if not callable(correction):
            raise TypeError(
                f"correction must be callable as correction(t, y, dy, dt) (an nn.Module), "
                f"got {type(correction).__name__}"
            )
        self.correction = correction

    @property
    def order(self) -> int:  # type: ignore[override]
        """The base method's order p (the correction is scaled by dt^(p+1))."""
        return self.base.order

    @property
    def name(self) -> str:
        """``hyper_`` and the base method's name (``hyper_euler``)."""
        return f"hyper_{self.base.name}"

    @property
    def stage_reach(self) -> float:
        """The base method's (1.0 for every fixed-step explicit method)."""
        return self.base.stage_reach

    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The correction's parameters (``correction.parameters()`` for an ``nn.Module``).

        Returns:
            The tensors, or ``()`` for a correction that is not an ``nn.Module``.
        """
        if isinstance(self.correction, torch.nn.Module):
            return tuple(self.correction.parameters())
        return ()

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """The base method's state at the start of a solve.

        Arguments:
            term: the vector field.
            t0: the initial time.
            y0: the flat initial state.
            f0: ``term(t0, y0)`` when already known, else ``None``.

        Returns:
            The base method's state.
        """
        return self.base.init(term, t0, y0, f0)

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """The base method's step from ``(t0, y0)`` to ``t1`` plus the scaled correction.

        Arguments:
            term: the vector field.
            t0: the start time (a float, or a 0-dim float64 tensor in a compiled step).
            t1: the end time, as ``t0``.
            y0: the flat state at ``t0``.
            state: the base method's state (f(t0, y0) when known).
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step]: the corrected ``y1``, no error estimate,
                the base method's stages (the first is f(t0, y0)), ``f1`` unknown.

        Raises:
            ValueError: the correction returned another structure or shape than the state's.
        """
        step = self.base.step(term, t0, t1, y0, state, perturb)
        dt = t1 - t0
        g = self.correct(term, t0, y0, step.stages[0], dt)
        scale = dt ** (self.order + 1)
        y1 = step.y1 + scale * g
        # (a base method's f(t1, y1) would be at its own y1, not the corrected one)
        return Step(t0, t1, y0, y1, None, step.stages, None, step.extra, step.end_perturb)

    def correct(
        self, term: ODETerm, t0: Any, y0: torch.Tensor, f0: torch.Tensor, dt: Any
    ) -> torch.Tensor:
        """The correction at the start of a step, on the flat state.

        Arguments:
            term: the vector field.
            t0: the step's start time (a float or a 0-dim tensor).
            y0: the flat state at ``t0``.
            f0: f(t0, y0), flat.
            dt: the step size (a float or a 0-dim tensor).

        Returns:
            ``correction(t0, y0, f0, dt)`` flattened, shaped like ``y0``.

        Raises:
            ValueError: the correction returned another structure or shape than the state's.
        """
        spec = term.spec
        out = self.correction(term.time(t0), spec.unflatten(y0), spec.unflatten(f0), term.time(dt))
        return spec.flatten(out, f"the correction of {self.name}")

    def reject(self, step: Step, state: Any) -> Any:
        """The base method's state for retrying a step (never needed on a fixed grid).

        Arguments:
            step: the rejected step.
            state: the state the step started from.

        Returns:
            The base method's retry state.
        """
        return self.base.reject(step, state)

    def for_adjoint_system(self) -> Solver:
        """The base method: the correction is learned for f, not for ``Backsolve``'s
        adjoint system.

        Returns:
            The base solver.
        """
        return self.base.for_adjoint_system()

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """Cubic Hermite through the step's ends (the corrected ``y1``), f(t1, y1) evaluated
        if unknown.

        Arguments:
            term: the vector field.
            step: the accepted step.
            thetas: the step fractions, a float64 CPU tensor (m,).

        Returns:
            The states at ``t0 + theta * dt``, (m, numel).
        """
        return hermite_interpolate(term, step, thetas, step.stages[0])

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        """f(t0, y0) of an accepted step: its first stage.

        Arguments:
            term: the vector field.
            step: the accepted step.

        Returns:
            f(t0, y0), shaped like ``step.y0``.
        """
        return step.stages[0]

    def __repr__(self) -> str:
        correction = type(self.correction).__name__
        return f"{type(self).__name__}(base={self.base.name!r}, correction={correction})"


class HyperEuler(HyperSolver):
    """HyperEuler: forward Euler (p = 1) plus a learned correction scaled by dt^2; see
    [`HyperSolver`][neuralode.solvers.HyperSolver].

    Arguments:
        correction: ``correction(t, y, dy, dt)``, as for ``HyperSolver``.
    """

    def __init__(self, correction: Correction):
        super().__init__("euler", correction)


class HyperMidpoint(HyperSolver):
    """HyperMidpoint: the explicit midpoint method (p = 2) plus a learned correction scaled
    by dt^3; see [`HyperSolver`][neuralode.solvers.HyperSolver].

    Arguments:
        correction: ``correction(t, y, dy, dt)``, as for ``HyperSolver``.
    """

    def __init__(self, correction: Correction):
        super().__init__("midpoint", correction)


class HyperHeun(HyperSolver):
    """HyperHeun: Heun's method (``heun2``, p = 2) plus a learned correction scaled by
    dt^3; see [`HyperSolver`][neuralode.solvers.HyperSolver].

    Arguments:
        correction: ``correction(t, y, dy, dt)``, as for ``HyperSolver``.
    """

    def __init__(self, correction: Correction):
        super().__init__("heun2", correction)


def _base_method(base: Any) -> ExplicitRK:
    """``base`` as a fixed-step explicit Runge-Kutta solver, or a clear error."""
    names = fixed_step_methods()
    if isinstance(base, str):
        from . import method_class  # (the package imports this module)

        cls = method_class(base)
        if cls is None:
            raise ValueError(
                f"unknown base method {base!r} for a hypersolver; available: {', '.join(names)}"
            )
        base = cls()
    if isinstance(base, ExplicitRK) and not base.adaptive:
        return base
    name = base.name if isinstance(base, Solver) else type(base).__name__
    if isinstance(base, ExplicitRK):
        why = "an adaptive method (its error estimate would not see the correction)"
    elif isinstance(base, Solver):
        why = "not an explicit Runge-Kutta method"
    else:
        why = "not a solver"
    raise ValueError(
        f"a hypersolver's base must be a fixed-step explicit Runge-Kutta method "
        f"({', '.join(names)}); {name} is {why}"
    )
