"""SDEs in the core API: ``no.solve(SDETerm(sde, bm), y0, ts, solver=SDESolver(...))``.

``SDETerm`` pairs an SDE (torchsde's interface) with its Brownian motion; ``SDESolver`` is a
``Solver`` of the one integration loop (``_loop.integrate``) whose steps are the SDE methods
of ``_solvers`` (the same step formulas ``sdeint`` runs), drawing their Brownian increments
from the term's Brownian motion. Fixed steps come from ``FixedGrid``; adaptive steps from the
``PIController`` on the step-doubling error estimate (one step of ``h`` against two of
``h / 2``). Outputs between steps are linear interpolations, as in torchsde.

With ``per_sample=True`` the device loop (``_per_sample``) runs the same steps row by row
(``_rows.SDERows``): every sample its own times, step sizes, step-doubling error and PI decisions,
the Brownian motion asked for each row's own interval (a ``VirtualBrownianTree``).
"""

from __future__ import annotations

import math
from array import array
from typing import TYPE_CHECKING, Any

import torch

from .._loop import LoopConfig, integrate
from .._norms import rms_norm
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec, tree_spec
from ..controllers.base import StepSizeController
from ..solvers.base import Solver, Step
from ._base import _Forward
from ._solvers import make_solver
from .settings import METHODS, NOISE_TYPES, SDE_TYPES

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

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> SDERows:
        """The method as the device loop runs it (``per_sample=True``): ``_rows.SDERows``.

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
        from ._rows import SDERows  # (it builds on this module)

        return SDERows(self, term)

    def __repr__(self) -> str:
        return f"SDESolver({self.method!r}, step_doubling={self.step_doubling})"


def midpoint(t0: Any, t1: Any) -> Any:
    """The point where step doubling's two half steps meet."""
    return 0.5 * (t0 + t1)


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
