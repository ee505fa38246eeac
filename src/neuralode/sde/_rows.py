"""SDEs per sample: the SDE methods on the device loop's rows, and what ``no.solve``
accepts for an ``SDETerm``.

``SDERows`` is an ``SDESolver`` as the device loop (``_per_sample``) runs it: every row its
own times and step sizes, the step-doubled step of ``SDESolver.advance`` on (batch,) times,
the Brownian motion asked for each row's own interval. ``check_sde_solve`` refuses, with
the reason and the fix, what a solve with an SDE cannot do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..solvers._step import RowFacts
from ._contract import warn_adaptive_euler
from ._engine import BoundSDETerm, SDESolver, SDETerm
from ._solvers import make_solver
from .settings import METHODS


class SDERows:
    """An ``SDESolver`` on the device loop's rows (``per_sample=True``): each row steps from
    its own ``t`` to ``t1`` with the method's step formulas (``SDESolver.advance`` with (batch,)
    times: ``f`` and ``g`` receive each row's time, the Brownian motion each row's interval),
    its step-doubling error decides the row's step; outputs are linear between the ends.
    The method keeps no stages and needs no f(t0, y0) or f(t1, y1). The Brownian motion over
    an attempt is drawn before it (``noise_rows``) and passed in, so that a compiled attempt
    (``compile='step'``) holds only the SDE's functions and the method's arithmetic."""

    row_fsal = False
    dense_extra_stages = 0

    def __init__(self, solver: SDESolver, term: BoundSDETerm):
        self.solver = solver
        self.error_order = solver.error_order
        dtype, device = term.sde_time_dtype, term.device
        self.stepper = make_solver(
            solver.method, term.forward, term.bm, dtype, device, solver.options
        )
        self.functions = term.functions  # (per-sample solves are not of an adjoint SDE)
        # the SDE's evaluations in one attempt (the same for every attempt), measured on the
        # first one by the device loop (``_attempt.Attempts``)
        self.calls: int | None = None

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        return RowFacts(stages=0, fsal=False, needs_f0=False, needs_f1=False, brownian=True)

    @contextlib.contextmanager
    def standing_in(self, wrap: Any) -> Iterator[None]:
        """Within: the method calls each of the SDE's functions ``fn`` as ``wrap(fn)``."""
        stepper = self.stepper
        original = stepper.sde
        stepper.sde = self.functions.wrapped(wrap)
        try:
            yield
        finally:
            stepper.sde = original

    def evaluations_per_attempt(self) -> int | None:
        return self.calls

    def noise_rows(self, t: torch.Tensor, t1: torch.Tensor) -> tuple:
        """The Brownian motion over each row's attempt from ``t`` to ``t1`` (and its halves)."""
        return self.solver.noise(self.stepper, t, t1)

    def propose_rows(
        self,
        call: Any,
        t: torch.Tensor,
        t1: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        f0: Any,
        buffer: Any,
        noise: tuple,
    ) -> tuple[torch.Tensor, torch.Tensor | None, None, torch.Tensor]:
        """Every row's step from ``t`` to ``t1`` on the Brownian motion ``noise``
        (``noise_rows``): ``(y1, error, None, no stages)``."""
        y1, error, _ = self.solver.advance(self.stepper, t, t1, y, (), noise)
        return y1, error, None, y.new_zeros((0, *y.shape))

    def dense(self, *args: Any) -> torch.Tensor:
        return self.solver.dense(*args)


def check_sde_solve(
    func: Any, ts: Any, solver: Any, gradient: Any, event: Any, execution: Any
) -> None:
    """Refuse, with the reason, what ``no.solve`` cannot do with an SDE.

    Raises:
        ValueError: an ``SDETerm`` with a non-SDE solver (or the reverse), a gradient other
            than ``Direct()``, output times that require gradients, an event,
            ``device_loop`` or ``cuda_graph``, or per-sample mode without a Brownian motion
            of per-row times, step doubling or with reversible Heun.
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
    if execution.device_loop:
        raise ValueError(
            "an SDETerm runs in the host loop or per sample (per_sample=True): device_loop "
            "is not supported for SDEs (solve without it)"
        )
    if execution.cuda_graph:
        raise ValueError(
            "cuda_graph is not supported for SDEs (the Brownian motion is drawn between step "
            "attempts): use compile='step'"
        )
    if solver.step_doubling:  # adaptive steps
        warn_adaptive_euler(solver.method, func.sde.noise_type)
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
