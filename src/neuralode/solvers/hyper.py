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
from ._hermite import hermite, hermite_interpolate
from ._step import RowFacts, Step
from .base import Solver
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
    ``PIController`` is refused. Per sample (``per_sample=True`` on a ``FixedGrid``) each
    sample takes its lone solve's steps (``HyperRows``); the correction is then called on
    every sample's rows with ``t`` and ``dt`` of shape (batch,). Gradients: ``Direct()``
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

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> HyperRows:
        """The hypersolver as the device loop runs it (``per_sample=True``).

        Arguments:
            term: the vector field.
            like: a tensor of the state's dtype and device.

        Returns:
            A ``HyperRows``: the base method's row step plus the correction.
        """
        return HyperRows(self, term, like)

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


class HyperRows:
    """A ``HyperSolver`` on the device loop's rows (``per_sample=True``, on a ``FixedGrid``):
    each row's step is the base method's row step (``ExplicitRK.propose_rows``) plus
    dt^(p+1) times the correction, called once per attempt on every row with ``t`` and ``dt``
    of shape (batch,), each row's own, and ``y``, ``dy`` in ``y0``'s shape. Outputs between
    a step's ends are cubic Hermite through them, as ``HyperSolver.interpolate``."""

    row_fsal = False  # (the base's f(t1, y1) is at its own y1, not the corrected one)
    dense_extra_stages = 0
    error_order = None

    def __init__(self, solver: HyperSolver, term: ODETerm, like: torch.Tensor):
        self.solver = solver
        self.base = solver.base.for_rows(term, like)
        self.shape = tuple(term.spec.shapes[0])
        self.time_dtype = term.time_dtype

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        """The base method's stages, f(t0, y0) at each attempt's start and f(t1, y1) for the
        cubic Hermite outputs.

        Arguments:
            like: a tensor of the state's dtype and device.

        Returns:
            The ``RowFacts``.
        """
        stages = self.base.row_facts(like).stages
        return RowFacts(stages, fsal=False, needs_f0=True, needs_f1=True)

    def evaluations_per_attempt(self) -> int:
        """Evaluations of f in one attempt besides f0: the base method's.

        Returns:
            The base tableau's stages less one.
        """
        return self.base.evaluations_per_attempt()

    def propose_rows(
        self,
        call: Any,
        t: torch.Tensor,
        t1: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        f0: torch.Tensor,
        buffer: Any,
        t1_inner: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
        """Every row's corrected step from ``t`` to ``t1`` (``ExplicitRK.propose_rows``'s
        arguments).

        Returns:
            ``(y1, None, k_last, stacked)``: the corrected proposals, no error estimate, the
                base method's last stage and its stages stacked (stages, batch, n).
        """
        y1, _, k_last, stacked = self.base.propose_rows(call, t, t1, h, y, f0, buffer, t1_inner)
        if buffer is not None:  # (the stages live in the reused buffer; f0 is its first row)
            f0 = stacked[0]
        batch = y.shape[0]
        times = t.to(self.time_dtype)
        steps = h.to(self.time_dtype)
        g = self.solver.correction(times, y.reshape(self.shape), f0.reshape(self.shape), steps)
        if not isinstance(g, torch.Tensor) or tuple(g.shape) != self.shape:
            got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise ValueError(
                f"the correction of {self.solver.name} has shape {got}; expected "
                f"{self.shape}, the shape of the state"
            )
        scale = (h ** (self.solver.order + 1)).to(y.real.dtype)[:, None]
        return y1 + scale * g.reshape(batch, -1), None, k_last, stacked

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        h: torch.Tensor,
        stacked: torch.Tensor,
        f1: torch.Tensor,
        theta: torch.Tensor,
    ) -> torch.Tensor:
        """Cubic Hermite through each row's step ends (``stacked[0]`` is f(t0, y0)).

        Returns:
            The rows' states at their step fractions ``theta``, (rows, n).
        """
        th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
        return hermite(th, y0, y1, stacked[0], f1, h)


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
