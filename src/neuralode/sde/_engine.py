"""SDEs in the core API: ``no.solve(SDETerm(sde, bm), y0, ts, solver=SDESolver(...))``.

``SDETerm`` pairs an SDE (torchsde's interface) with its Brownian motion; ``SDESolver`` is a
``Solver`` of the one integration loop (``_loop.integrate``) whose steps are the SDE methods
of ``_solvers`` (the same step formulas ``sdeint`` runs), drawing their Brownian increments
from the term's Brownian motion. Fixed steps come from ``FixedGrid``; adaptive steps from the
``PIController`` on the step-doubling error estimate (one step of ``h`` against two of
``h / 2``). Outputs between steps are linear interpolations, as in torchsde.

With ``per_sample=True`` the device loop (``_per_sample``) runs the same steps row by row
(``_SDERows``): every sample its own times, step sizes, step-doubling error and PI decisions,
the Brownian motion asked for each row's own interval (a ``VirtualBrownianTree``).
"""

from __future__ import annotations

import math
from array import array
from typing import Any

import torch

from .._loop import LoopConfig, integrate
from .._norms import rms_norm
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec, tree_spec
from ..controllers.base import StepSizeController
from ..solvers.base import RowFacts, Solver, Step
from ._base import _Forward
from ._solvers import make_solver
from .settings import METHODS, NOISE_TYPES, SDE_TYPES

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
_FUNCTIONS = ("f", "g", "f_and_g", "g_prod", "f_and_g_prod")
_NO_STEP_LIMIT = 2**62  # torchsde has no step limit


class SDETerm:
    """An SDE and the Brownian motion that drives it, the ``func`` of ``no.solve`` for SDEs.

    Example:
        ```python
        import torch
        import neuralode as no
        from neuralode.sde import BrownianInterval, SDESolver, SDETerm

        class GBM(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"
            def f(self, t, y): return 0.5 * y
            def g(self, t, y): return 0.2 * y

        bm = BrownianInterval(0.0, 1.0, size=(16, 1), entropy=0)
        sol = no.solve(SDETerm(GBM(), bm), torch.ones(16, 1), torch.linspace(0, 1, 5),
                       solver=SDESolver("euler"), controller=no.FixedGrid(step_size=0.01))
        sol.ys.shape, sol.stats.n_steps  # (5, 16, 1), 100
        ```

    Arguments:
        sde: an object with ``noise_type``, ``sde_type`` and the drift ``f(t, y)`` and
            diffusion ``g(t, y)`` (or ``f_and_g``, ``g_prod``, ``f_and_g_prod``), as
            ``sdeint`` takes.
        bm: the Brownian motion, ``bm(ta, tb)`` the increment over ``[ta, tb]`` (e.g. a
            ``BrownianInterval`` of shape (batch, noise channels) covering the output times).

    Raises:
        ValueError: an SDE without a known ``noise_type`` or ``sde_type``, or a ``bm`` that
            is not a Brownian motion.
    """

    def __init__(self, sde: Any, bm: Any):
        if getattr(sde, "noise_type", None) not in NOISE_TYPES:
            raise ValueError(
                f"sde must have a noise_type in {NOISE_TYPES}, got "
                f"{getattr(sde, 'noise_type', None)!r}"
            )
        if getattr(sde, "sde_type", None) not in SDE_TYPES:
            raise ValueError(
                f"sde must have an sde_type in {SDE_TYPES}, got {getattr(sde, 'sde_type', None)!r}"
            )
        if not callable(bm) or not hasattr(bm, "shape"):
            raise ValueError(
                "bm must be a Brownian motion: callable as bm(ta, tb), with a shape (e.g. "
                "neuralode.sde.BrownianInterval)"
            )
        self.sde = sde
        self.bm = bm

    def bind(self, spec: TreeSpec, like: torch.Tensor) -> BoundSDETerm:
        """The term on the loop's flat state (``no.solve`` calls it).

        Raises:
            ValueError: ``y0`` is not one tensor of shape (batch, channels).
        """
        if not spec.is_leaf or len(spec.shapes[0]) != 2:
            raise ValueError(
                "an SDE's y0 must be one tensor of shape (batch, channels), got "
                f"{'a tree' if not spec.is_leaf else tuple(spec.shapes[0])}"
            )
        return BoundSDETerm(self, spec, like)

    def __repr__(self) -> str:
        return f"SDETerm(sde={type(self.sde).__name__}, bm={self.bm!r})"


class _Counted:
    """The user's SDE with each call of its functions counted in ``term.nfe``."""

    def __init__(self, sde: Any, term: BoundSDETerm):
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        for name in _FUNCTIONS:
            fn = getattr(sde, name, None)
            if fn is not None:
                setattr(self, name, self._counting(fn, term))

    @staticmethod
    def _counting(fn: Any, term: BoundSDETerm) -> Any:
        def counted(*args: Any) -> Any:
            term.nfe += 1
            return fn(*args)

        return counted


class BoundSDETerm(ODETerm):
    """An ``SDETerm`` on the loop's flat state: as an ``ODETerm`` it is the drift (what the
    controller's first-step heuristic evaluates); ``forward`` is the SDE as the methods see
    it (the adjoint SDE of ``sdeint_adjoint`` as it is), ``bm`` the Brownian motion,
    ``shape`` the state's shape, ``sde_time_dtype`` the dtype of the times ``f`` and ``g``
    receive, ``initial_extra`` the method's state to start from (``None``: its own),
    ``extra`` its state after the last accepted step and ``record`` (when not ``None``) an
    array that receives the accepted steps' ends."""

    def __init__(self, term: SDETerm, spec: TreeSpec, like: torch.Tensor):
        if getattr(term.sde, "is_adjoint", False):
            forward = term.sde
        else:
            forward = _Forward(_Counted(term.sde, self))
        super().__init__(forward.f, spec, like)
        self.counting = False  # the methods' evaluations are counted by ``_Counted``
        self.forward = forward
        self.bm = term.bm
        self.shape = tuple(int(n) for n in spec.shapes[0])
        self.sde_time_dtype = self.time_dtype
        self.extra: Any = None
        self.initial_extra: Any = None
        self.record: array | None = None


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
        return f"SDESolver({self.method!r})"

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """Binds the method to the term's SDE and Brownian motion; the state is ``(method,
        the method's extra state)``."""
        if not isinstance(term, BoundSDETerm):
            raise TypeError(
                f"{self.name} solves SDEs: pass the SDE as no.solve(SDETerm(sde, bm), ...)"
            )
        dtype, device = term.sde_time_dtype, term.device
        stepper = make_solver(self.method, term.forward, term.bm, dtype, device, self.options)
        extra = term.initial_extra
        if extra is None:
            extra = stepper.init_extra_solver_state(t0, y0.view(term.shape))
        term.extra = extra
        return stepper, extra

    def advance(
        self, stepper: Any, t0: Any, t1: Any, y: torch.Tensor, extra: Any, t_mid: Any = None
    ) -> tuple:
        """The method's step from ``t0`` to ``t1`` (floats, or (batch,) tensors: each row its
        own step) on the (batch, channels) state: ``(y1, error, extra1)``; with step
        doubling ``y1`` is two half steps (meeting at ``t_mid``, by default the midpoint)
        and ``error`` their difference from one full step (else ``None``)."""
        if not self.step_doubling:
            y1, extra1 = stepper.step(t0, t1, y, extra)
            return y1, None, extra1
        y_full, _ = stepper.step(t0, t1, y, extra)
        t_mid = midpoint(t0, t1) if t_mid is None else t_mid
        y_mid, extra_mid = stepper.step(t0, t_mid, y, extra)
        y1, extra1 = stepper.step(t_mid, t1, y_mid, extra_mid)
        return y1, y_full - y1, extra1

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        stepper, extra = state
        y1, error, extra1 = self.advance(stepper, t0, t1, y0.view(term.shape), extra)
        error = None if error is None else error.reshape(-1)
        return Step(t0, t1, y0, y1.reshape(-1), error, [], extra={"state": (stepper, extra1)})

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        state = step.extra["state"]
        term.extra = state[1]
        if term.record is not None:
            term.record.append(step.t1)
        return state

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """Linear between the step's ends (torchsde's outputs between steps)."""
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
        """The states at the step fractions ``theta`` (float64), linear between the ends
        ``y0`` and ``y1``: ``theta`` (m,) against one step's (1, n) ends gives (m, n), or
        (batch,) against per-sample (batch, n) ends gives (batch, n)."""
        th = theta.to(device=y0.device, dtype=y0.dtype)[:, None]
        return torch.lerp(y0, y1, th)

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> _SDERows:
        """The method as the device loop runs it (``per_sample=True``): ``_SDERows``.

        Raises:
            ValueError: a Brownian motion whose batch is not the state's.
        """
        if not isinstance(term, BoundSDETerm):
            raise TypeError(
                f"{self.name} solves SDEs: pass the SDE as no.solve(SDETerm(sde, bm), ...)"
            )
        bm_rows = tuple(term.bm.shape[:1])
        if bm_rows != term.shape[:1]:
            raise ValueError(
                f"per_sample=True: the Brownian motion has {bm_rows[0] if bm_rows else 1} "
                f"rows but y0 has {term.shape[0]} samples; make it with size=(batch, noise "
                "channels)"
            )
        return _SDERows(self, term)

    def __repr__(self) -> str:
        return f"SDESolver({self.method!r}, step_doubling={self.step_doubling})"


def midpoint(t0: Any, t1: Any) -> Any:
    """The point where step doubling's two half steps meet."""
    return 0.5 * (t0 + t1)


class _AttemptBrownian:
    """The rows' Brownian motion during one attempt (``_SDERows``): the path at the
    attempt's times (start, midpoint, end) comes from one bisection (``prepare``), and the
    method's queries between them are answered from it; any other query goes to the
    Brownian motion itself. The values are the Brownian motion's, bit for bit."""

    def __init__(self, bm: Any):
        self.bm = bm
        self.shape = bm.shape
        self.levy_area_approximation = bm.levy_area_approximation
        self._times: tuple = ()
        self._points: list = []

    def prepare(self, times: tuple) -> None:
        self._times = times  # kept: the ids below stay theirs
        self._points = self.bm.points(times)

    def __call__(self, ta: Any, tb: Any, return_U: bool = False, return_A: bool = False) -> Any:  # noqa: N803
        ids = [id(t) for t in self._times]
        if id(ta) in ids and id(tb) in ids:
            a, b = self._points[ids.index(id(ta))], self._points[ids.index(id(tb))]
            return self.bm.between(ta, tb, a, b, return_U, return_A)
        return self.bm(ta, tb, return_U=return_U, return_A=return_A)


class _SDERows:
    """An ``SDESolver`` on the device loop's rows (``per_sample=True``): each row steps from
    its own ``t`` to ``t1`` with the method's step formulas (``SDESolver.advance`` with (batch,)
    times: ``f`` and ``g`` receive each row's time, the Brownian motion each row's interval),
    its step-doubling error decides the row's step; outputs are linear between the ends.
    The method keeps no stages and needs no f(t0, y0) or f(t1, y1)."""

    row_fsal = False
    dense_extra_stages = 0

    def __init__(self, solver: SDESolver, term: BoundSDETerm):
        self.solver = solver
        self.term = term
        self.error_order = solver.error_order
        dtype, device = term.sde_time_dtype, term.device
        points = hasattr(term.bm, "points") and hasattr(term.bm, "between")
        self.bm = _AttemptBrownian(term.bm) if points else None
        bm = term.bm if self.bm is None else self.bm
        self.stepper = make_solver(solver.method, term.forward, bm, dtype, device, solver.options)
        self.calls = 0  # f and g evaluations of one attempt (the same for every attempt)

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        return RowFacts(stages=0, fsal=False, needs_f0=False, needs_f1=False)

    def evaluations_per_attempt(self) -> int:
        return self.calls

    def propose_rows(
        self,
        call: Any,
        t: torch.Tensor,
        t1: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        f0: Any,
        buffer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, None, torch.Tensor]:
        """Every row's step from ``t`` to ``t1``: ``(y1, error, None, no stages)``."""
        before = self.term.nfe
        t_mid = midpoint(t, t1) if self.solver.step_doubling else None
        if self.bm is not None:
            self.bm.prepare((t, t1) if t_mid is None else (t, t_mid, t1))
        y1, error, _ = self.solver.advance(self.stepper, t, t1, y, (), t_mid)
        self.calls = self.term.nfe - before
        return y1, error, None, y.new_zeros((0, *y.shape))

    def dense(self, *args: Any) -> torch.Tensor:
        return self.solver.dense(*args)


def check_sde_solve(
    func: Any, ts: Any, solver: Any, gradient: Any, event: Any, execution: Any
) -> None:
    """Refuse, with the reason, what ``no.solve`` cannot do with an SDE.

    Raises:
        ValueError: an ``SDETerm`` with a non-SDE solver (or the reverse), a gradient other
            than ``Direct()``, output times that require gradients, an event, compilation,
            or per-sample mode without a Brownian motion of per-row times, step doubling or
            with reversible Heun.
    """
    is_term = isinstance(func, SDETerm)
    if isinstance(solver, SDESolver) and not is_term:
        raise ValueError(f"{solver.name} solves SDEs: pass no.solve(SDETerm(sde, bm), ...)")
    if not is_term:
        return
    from ..adjoint.direct import Direct

    if not isinstance(solver, SDESolver):
        raise ValueError(
            "an SDETerm needs an SDE solver: solver=neuralode.sde.SDESolver('euler') (or "
            f"another method of neuralode.sde.settings.METHODS), got {solver!r}"
        )
    if gradient is not None and not isinstance(gradient, Direct):
        raise ValueError(
            "an SDETerm supports gradient=Direct() (backprop through the solver); for the "
            "stochastic adjoint use neuralode.sde.sdeint_adjoint"
        )
    if isinstance(ts, torch.Tensor) and ts.requires_grad:
        raise ValueError(
            "an SDETerm does not differentiate with respect to the output times: pass ts.detach()"
        )
    if event is not None:
        raise ValueError("an SDETerm does not support events")
    if execution.device_loop or execution.compile or execution.cuda_graph:
        raise ValueError(
            "an SDETerm runs in the host loop or per sample (per_sample=True): device_loop, "
            "compile and cuda_graph are not supported for SDEs"
        )
    if execution.per_sample:
        _check_per_sample(func, solver, execution)


def _check_per_sample(term: SDETerm, solver: SDESolver, execution: Any) -> None:
    """Refuse, with the fix, a per-sample SDE solve that cannot run."""
    if execution.skip_finished:
        raise ValueError(
            "per_sample='skip_finished' is not supported for SDEs (the methods evaluate f and "
            "g on every row): use per_sample=True"
        )
    if not getattr(term.bm, "per_row_times", False):
        raise ValueError(
            "per_sample=True with an SDE needs a Brownian motion that takes one time per "
            f"sample, got {type(term.bm).__name__}: use bm=neuralode.sde.VirtualBrownianTree("
            f"t0, t1, size={tuple(term.bm.shape)}, ...) (each sample then steps on its own path)"
        )
    if not solver.step_doubling:
        raise ValueError(
            "per_sample=True with an SDE takes adaptive steps: use SDESolver(method, "
            "step_doubling=True) with a no.PIController (fixed steps are the same for every "
            "sample: solve without per_sample)"
        )
    if solver.method == METHODS.reversible_heun:
        raise ValueError(
            "per_sample=True does not support 'reversible_heun' (its state carries f and g "
            "between steps): use 'heun' or 'midpoint', or solve without per_sample"
        )


def fixed_grid(ts: list[float], dt: float) -> array:
    """The step ends from ``ts[0]`` to ``ts[-1]`` in steps of ``dt`` (the last one shorter),
    with points within round-off of an output time moved onto it (so outputs on the grid are
    exact, as torchsde's); an array of doubles, 8 bytes a step."""
    t0, t_end = ts[0], ts[-1]
    n = max(1, math.ceil((t_end - t0) / dt - 1e-9))
    grid = array("d", (t0 + k * dt for k in range(n)))
    grid.append(t_end)
    j = 1
    scale = 1e-9 * max(1.0, abs(t_end), abs(t0))
    for k in range(1, n):
        while j < len(ts) - 1 and ts[j] < grid[k] - scale:
            j += 1
        if abs(grid[k] - ts[j]) <= scale:
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
) -> tuple[torch.Tensor, Any]:
    """Solves ``term`` from ``y0`` at ``ts[0]`` in the one loop (``_loop.integrate``) and
    returns the states at ``ts`` stacked, (len(ts), *y0.shape), and the method's final extra
    state: what ``sdeint`` and ``sdeint_adjoint``'s passes run. ``record`` receives
    ``ts[0]`` and the accepted steps' ends."""
    spec, _ = tree_spec(y0, "y0")
    bound = BoundSDETerm(term, spec, y0)
    if time_dtype is not None:
        bound.sde_time_dtype = time_dtype
    bound.initial_extra = extra
    if record is not None:
        record.append(ts[0])
        bound.record = record
    config = LoopConfig(
        solver=solver, controller=controller, norm=rms_norm, max_steps=_NO_STEP_LIMIT
    )
    solver.set_tolerances(getattr(controller, "rtol", None), getattr(controller, "atol", None))
    ys = integrate(bound, y0.reshape(-1), ts, config, SolveStats() if stats is None else stats)
    if bound.extra is None:  # no step was taken (a single output time)
        bound.extra = () if extra is None else extra
    return ys.view(len(ts), *y0.shape), bound.extra
