"""SDEs in the core API: ``no.solve(SDETerm(sde, bm), y0, ts, solver=SDESolver(...))``.

``SDETerm`` (``_term``) pairs an SDE (torchsde's interface) with its Brownian motion;
``SDESolver`` is a ``Solver`` of the one integration loop (``_loop.integrate``) whose steps
are the SDE methods of ``_solvers`` (the same step formulas ``sdeint`` runs), drawing their
Brownian increments from the term's Brownian motion. Fixed steps come from ``FixedGrid``;
adaptive steps from the ``PIController`` on the step-doubling error estimate (one step of
``h`` against two of ``h / 2``). Outputs between steps are linear interpolations, as in torchsde.

With ``per_sample=True`` the device loop (``_per_sample``) runs the same steps row by row
(``_rows.SDERows``): every sample its own times, step sizes, step-doubling error and PI decisions,
the Brownian motion asked for each row's own interval (a ``VirtualBrownianTree``).

With ``compile='step'`` (or ``True``) both loops run each step attempt as one compiled graph;
the Brownian motion over the attempt is drawn before it, eagerly (``SDESolver.noise``), and
passed in, and the SDE's evaluations are counted outside the graph (``_term``).
"""

from __future__ import annotations

import math
import sys
from array import array
from typing import TYPE_CHECKING, Any

import torch

from .._loop import LoopConfig, integrate
from .._norms import rms_norm
from .._progress import tracker_of
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import tree_spec
from ..controllers._ops import uniform_steps
from ..controllers.base import StepSizeController
from ..solvers._step import Step
from ..solvers.base import Solver
from ._solvers import make_solver
from ._term import BoundSDETerm, SDETerm
from .settings import METHODS

if TYPE_CHECKING:
    from ._rows import SDERows

# the strong order of each method (for general noise the Stratonovich methods reach 0.5)
_STRONG_ORDER = {
    METHODS.euler: 0.5,
    METHODS.milstein: 1.0,
    METHODS.srk: 1.5,
    METHODS.midpoint: 1.0,
    METHODS.heun: 1.0,
    METHODS.euler_heun: 1.0,
    METHODS.log_ode_midpoint: 1.0,
    METHODS.reversible_heun: 0.5,
}
_NO_STEP_LIMIT = 2**62  # torchsde has no step limit
_HALVES = ((0, 2), (0, 1), (1, 2))  # step doubling's steps between (t0, t_mid, t1)


class SDESolver(Solver):
    """An SDE method as a solver of the one loop: ``no.solve(SDETerm(sde, bm), y0, ts,
    solver=SDESolver("milstein"), controller=no.FixedGrid(step_size=1e-2))``.

    Arguments:
        method: one of ``neuralode.sde.settings.METHODS`` (not ``adjoint_reversible_heun``)
            that fits the SDE's type and noise (checked when the solve starts).
        options: the method's options, e.g. ``{"grad_free": True}`` for Milstein.
        step_doubling: estimate each step's error by one step of ``h`` against two of
            ``h / 2`` (the result is the two half steps), for adaptive steps with
            ``no.PIController(rtol, atol, first_step=...)``; without it the solver runs on
            fixed steps only.

    Raises:
        ValueError: an unknown method.
    """

    multistep = False

    def __init__(
        self, method: str, options: dict[str, Any] | None = None, step_doubling: bool = False
    ):
        if method not in _STRONG_ORDER:
            raise ValueError(
                f"unknown SDE method {method!r}; available: {', '.join(_STRONG_ORDER)}"
            )
        self.method = method
        self.options = dict(options or {})
        self.step_doubling = bool(step_doubling)
        self.order = _STRONG_ORDER[method]
        self.error_order = self.order if step_doubling else None

    @property
    def name(self) -> str:
        """``SDESolver('<method>')``, for messages."""
        return f"SDESolver({self.method!r})"

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """Bind the method to the term's SDE and Brownian motion.

        Arguments:
            term: the bound ``SDETerm``.
            t0: the initial time.
            y0: the flat initial state.
            f0: unused.

        Returns:
            The state ``(method, extra)``: the bound method and its extra state (the
                term's initial one, else the method's own for ``(t0, y0)``).

        Raises:
            TypeError: ``term`` is not an ``SDETerm``.
        """
        if not isinstance(term, BoundSDETerm):
            raise TypeError(
                f"{self.name} solves SDEs: pass the SDE as no.solve(SDETerm(sde, bm), ...)"
            )
        dtype, device = term.sde_time_dtype, term.device
        stepper = make_solver(self.method, term.forward, term.bm, dtype, device, self.options)
        extra = term.initial_extra
        if not extra:  # none given, or () (the extra state of a method that keeps none)
            extra = stepper.init_extra_solver_state(t0, y0.view(term.shape))
        term.extra = extra
        return stepper, extra

    def advance(
        self,
        stepper: Any,
        t0: Any,
        t1: Any,
        y: torch.Tensor,
        extra: Any,
        noise: tuple | None = None,
    ) -> tuple:
        """The method's step from ``t0`` to ``t1`` on the (batch, channels) state.

        With step doubling ``y1`` is two half steps (meeting at the midpoint) and ``error``
        their difference from one full step.

        Arguments:
            stepper: the bound method (the state's first entry).
            t0: the start time: a float, a 0-dim tensor, or (batch,) (each row its own step).
            t1: the end time, as ``t0``.
            y: the state, (batch, channels).
            extra: the method's extra state.
            noise: the Brownian motion over each step taken, drawn already (``noise``);
                ``None``: each step asks the Brownian motion.

        Returns:
            ``(y1, error, extra1)``: the new state, the error estimate (``None`` without
                step doubling) and the method's new extra state.
        """
        drawn = (None, None, None) if noise is None else noise
        if not self.step_doubling:
            y1, extra1 = stepper.step(t0, t1, y, extra, drawn[0])
            return y1, None, extra1
        y_full, _ = stepper.step(t0, t1, y, extra, drawn[0])
        t_mid = midpoint(t0, t1)
        y_mid, extra_mid = stepper.step(t0, t_mid, y, extra, drawn[1])
        y1, extra1 = stepper.step(t_mid, t1, y_mid, extra_mid, drawn[2])
        return y1, y_full - y1, extra1

    def noise(self, stepper: Any, t0: Any, t1: Any) -> tuple:
        """The Brownian motion over the steps ``advance`` takes from ``t0`` to ``t1``.

        Drawn before the step (outside a compiled graph), with one bisection for the three
        times where the Brownian motion offers ``points`` (a ``VirtualBrownianTree``).

        Arguments:
            stepper: the bound method.
            t0: the start time.
            t1: the end time.

        Returns:
            The increments as the method uses them: one tuple entry for the step, or with
                step doubling three (the full step and its two halves).
        """
        if not self.step_doubling:
            return (stepper.brownian(t0, t1),)
        t_mid = midpoint(t0, t1)
        bm = stepper.bm
        if not (hasattr(bm, "points") and isinstance(t0, torch.Tensor)):
            return tuple(stepper.brownian(a, b) for a, b in ((t0, t1), (t0, t_mid), (t_mid, t1)))
        times = (t0, t_mid, t1)
        at = bm.points(times)
        flags = stepper.brownian_flags
        return tuple(bm.between(times[a], times[b], at[a], at[b], **flags) for a, b in _HALVES)

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """One step of the SDE method (two half steps and a full one with step doubling).

        Arguments:
            term: the bound ``SDETerm``.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: ``(method, extra)``, with the drawn noise in a compiled step.
            perturb: unused.

        Returns:
            The [`Step`][neuralode.solvers.Step], its new state in ``extra["state"]``.
        """
        stepper, extra, *drawn = state  # (the compiled step's noise: ``compiled_state``)
        y = y0.view(term.shape)
        if drawn:
            y1, error, extra1 = self.advance(stepper, t0, t1, y, extra, drawn[0])
        else:  # eager: measures the SDE's evaluations a step makes, for the compiled steps
            before = term.nfe
            y1, error, extra1 = self.advance(stepper, t0, t1, y, extra)
            term.calls_per_step = term.nfe - before
        error = None if error is None else error.reshape(-1)
        return Step(t0, t1, y0, y1.reshape(-1), error, [], extra={"state": (stepper, extra1)})

    def compiles(self, term: ODETerm) -> bool:
        """Whether the next step may run compiled.

        Arguments:
            term: the bound ``SDETerm``.

        Returns:
            ``False`` until an eager first step has measured the SDE's evaluations per step.
        """
        return term.calls_per_step is not None

    def compiled_state(self, term: ODETerm, t0: float, t1: float, state: Any) -> Any:
        """The state of a compiled step, with its Brownian motion drawn here.

        Arguments:
            term: the bound ``SDETerm``.
            t0: the start time of the step.
            t1: the end time of the step.
            state: ``(method, extra)``.

        Returns:
            ``(method, extra, noise)``: the noise drawn by the loop's float times, as the
                eager step draws it.
        """
        return (*state, self.noise(state[0], t0, t1))

    def compiled_evaluations(self, term: ODETerm, step: Step, state: Any) -> int:
        """The SDE's evaluations in a compiled step.

        Arguments:
            term: the bound ``SDETerm``.
            step: the compiled step (unused).
            state: its state (unused).

        Returns:
            The evaluations per step the first, eager step measured.
        """
        return term.calls_per_step

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        """Keep the method's extra state of an accepted step (and record its end time).

        Arguments:
            term: the bound ``SDETerm``; its ``extra`` is updated.
            step: the accepted step.
            perturb: unused.

        Returns:
            The state for the next step, ``(method, extra)``.
        """
        state = step.extra["state"]
        term.extra = state[1]
        if term.record is not None:
            term.record.append(step.t1)
        return state

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """Linear between the step's ends (torchsde's outputs between steps).

        Arguments:
            term: the bound ``SDETerm`` (unused).
            step: the accepted step.
            thetas: the step fractions, float64 (m,).

        Returns:
            The states, (m, numel).
        """
        return self.dense(step.y0[None], step.y1[None], None, None, None, thetas)

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        h: Any,
        stacked: Any,
        f1: Any,
        theta: torch.Tensor,
    ) -> torch.Tensor:
        """The states at the step fractions ``theta``, linear between the ends.

        Arguments:
            y0: the start states: one step's (1, n), or per sample (batch, n).
            y1: the end states, as ``y0``.
            h: unused.
            stacked: unused.
            f1: unused.
            theta: the step fractions, float64: (m,) for one step, (batch,) per sample.

        Returns:
            (m, n) for one step, (batch, n) per sample.
        """
        th = theta.to(device=y0.device, dtype=y0.dtype)[:, None]
        return torch.lerp(y0, y1, th)

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> SDERows:
        """The method as the device loop runs it (``per_sample=True``).

        Arguments:
            term: the bound ``SDETerm``.
            like: a tensor of the state's dtype and device (unused).

        Returns:
            An ``SDERows``, the per-row interface of the method.

        Raises:
            TypeError: ``term`` is not an ``SDETerm``.
        """
        if not isinstance(term, BoundSDETerm):
            raise TypeError(
                f"{self.name} solves SDEs: pass the SDE as no.solve(SDETerm(sde, bm), ...)"
            )
        from ._rows import SDERows  # (it builds on this module)

        return SDERows(self, term)

    def __repr__(self) -> str:
        return f"SDESolver({self.method!r}, step_doubling={self.step_doubling})"


def midpoint(t0: Any, t1: Any) -> Any:
    """The point where step doubling's two half steps meet."""
    return 0.5 * (t0 + t1)


def fixed_grid(ts: list[float], dt: float, eps: float = sys.float_info.epsilon) -> array:
    """The step ends from ``ts[0]`` to ``ts[-1]`` in steps of ``dt`` (the last one shorter;
    a remainder within round-off of the ends, in times of resolution ``eps``, is no step:
    ``uniform_steps``), with points within round-off of an output time moved onto it (so
    outputs on the grid are exact, as torchsde's) where that keeps the grid strictly
    monotonic; an array of doubles, 8 bytes a step.

    Raises:
        ValueError: ``dt`` is not a positive finite number.
    """
    if not (isinstance(dt, (int, float)) and 0 < dt < math.inf):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    t0, t_end = ts[0], ts[-1]
    n = max(1, uniform_steps(t_end - t0, dt, max(abs(t0), abs(t_end)), eps))
    grid = array("d", (t0 + k * dt for k in range(n)))
    grid.append(t_end)
    # the round-off of t0 + k dt: relative to the times' magnitude, never near a step
    scale = min(64 * sys.float_info.epsilon * max(abs(t0), abs(t_end), dt), 1e-3 * dt)
    j = 1
    for k in range(1, n):
        while j < len(ts) - 1 and ts[j] < grid[k] - scale:
            j += 1
        if abs(grid[k] - ts[j]) <= scale and grid[k - 1] < ts[j] < grid[k + 1]:
            grid[k] = ts[j]
    return grid


def run(
    term: SDETerm,
    y0: torch.Tensor,
    ts: list[float],
    solver: SDESolver,
    controller: StepSizeController,
    *,
    time_dtype: torch.dtype | None = None,
    extra: Any = None,
    record: array | None = None,
    stats: SolveStats | None = None,
    progress: Any = None,
) -> tuple[torch.Tensor, Any]:
    """Solves ``term`` from ``y0`` at ``ts[0]`` in the one loop (``_loop.integrate``) and
    returns the states at ``ts`` stacked, (len(ts), *y0.shape), and the method's final extra
    state: what ``sdeint`` and ``sdeint_adjoint``'s passes run. ``record`` receives
    ``ts[0]`` and the accepted steps' ends; ``progress`` is a ``ProgressMeter`` (or
    ``None``) shown while it runs."""
    spec, _ = tree_spec(y0, "y0")
    bound = BoundSDETerm(term, spec, y0)
    if time_dtype is not None:
        bound.sde_time_dtype = time_dtype
    bound.initial_extra = extra
    if record is not None:
        record.append(ts[0])
        bound.record = record
    tracker = tracker_of(progress, ts)
    config = LoopConfig(
        solver=solver,
        controller=controller,
        norm=rms_norm,
        max_steps=_NO_STEP_LIMIT,
        progress=tracker,
    )
    solver.set_tolerances(getattr(controller, "rtol", None), getattr(controller, "atol", None))
    stats = SolveStats() if stats is None else stats
    if tracker is None:
        ys = integrate(bound, y0.reshape(-1), ts, config, stats)
    else:
        with tracker:  # (closes the meter also when the solve raises)
            ys = integrate(bound, y0.reshape(-1), ts, config, stats)
    if bound.extra is None:  # no step was taken (a single output time): the method's own
        bound.extra = solver.init(bound, ts[0], y0.reshape(-1), None)[1]
    return ys.view(len(ts), *y0.shape), bound.extra
