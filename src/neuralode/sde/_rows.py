"""SDEs per sample: the SDE methods on the device loop's rows, and what ``no.solve``
accepts for an ``SDETerm``.

``SDERows`` is an ``SDESolver`` as the device loop (``_per_sample``) runs it: every row its
own times and step sizes, the step-doubled step of ``SDESolver.advance`` on (batch,) times,
the Brownian motion asked for each row's own interval. ``check_sde_solve`` refuses, with
the reason and the fix, what a solve with an SDE cannot do.
"""

from __future__ import annotations

from typing import Any

import torch

from ..solvers.base import RowFacts
from ._engine import BoundSDETerm, SDESolver, SDETerm, midpoint
from ._solvers import make_solver
from .settings import METHODS


class _AttemptBrownian:
    """The rows' Brownian motion during one attempt (``SDERows``): the path at the
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


class SDERows:
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
