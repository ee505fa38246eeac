"""The one step attempt of the device loop and of the compiled whole solve.

Every row (a sample of a per-sample solve, or the one problem: a batch of one) has its own
time, step size and controller memory; an attempt proposes a step for every row (the
solver's ``propose_rows``: ``ExplicitRK``'s stages, or an SDE method's step-doubled step),
measures each row's error (RMS over the row) and lets the
controller decide (``PIController.decide`` on tensors; ``FixedGrid.rows_after`` on fixed
steps, which accept every attempt), merging accepted and rejected proposals with masks. No
host synchronisation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

from ._checkpoint_rows import Recomputed
from ._compile import compiled
from ._cuda_graph import GraphedStep
from ._finite_graph import finite_step
from ._host import wrapped
from ._landing import land
from ._norms import row_rms
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK


@dataclass(frozen=True)
class Constants:
    """The solver, the controller and the solve's settings a step attempt needs."""

    solver: ExplicitRK
    controller: PIController | FixedGrid
    rtol: torch.Tensor | None  # (None on fixed steps: no error is measured)
    atol: torch.Tensor | None
    sign: float
    exponent: float | None  # of the error ratio: 1 / (error order + 1)
    norm: Any = row_rms  # the error norm of each row ((batch, n) -> (batch,) float64)
    # the dtype f receives its times in: a step onto a jump evaluates f one ulp of it inside
    time_dtype: torch.dtype = torch.float64
    # the solver's first-same-as-last property, read once (a tableau recomputes it)
    fsal: bool = field(init=False)
    # fixed steps (``FixedGrid``): every attempt is accepted, the next ends on the grid
    fixed: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsal", self.solver.row_fsal)
        object.__setattr__(self, "fixed", isinstance(self.controller, FixedGrid))


class Step(NamedTuple):
    """A step attempt of every sample (``attempt``): its end and stages, the decisions, the
    updated controller state and counts, and the state and f0 each sample moves on with if
    nothing (a terminal event) intervenes."""

    t1: torch.Tensor
    h: torch.Tensor
    y1: torch.Tensor
    k_all: torch.Tensor
    k_last: torch.Tensor
    accept: torch.Tensor
    t_next: torch.Tensor
    proposal: torch.Tensor
    previous_ratio: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    still: torch.Tensor
    y_accepted: torch.Tensor
    f0_accepted: torch.Tensor | None
    # with landing points: where f(t1, y1) is evaluated (one ulp inside the step where it
    # ends on a jump) and the accepted steps ending on a jump (``_landing``)
    t1_inner: torch.Tensor | None = None
    jumped: torch.Tensor | None = None


def attempt(
    call: Any,
    k: Constants,
    buffer: tuple[torch.Tensor, Any, Any] | None,
    t: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    active: torch.Tensor,
    carried_ratio: torch.Tensor,
    n_steps: torch.Tensor,
    n_accepted: torch.Tensor,
    noise: Any = None,
    landing: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Step:
    """One step attempt of every sample: the solver's step (``propose_rows``), the
    error ratio of each sample, and the controller's decision and next proposal
    (``PIController.decide`` on tensors; on fixed steps every running sample accepts and
    its next step ends on its grid, ``FixedGrid.rows_after``). Finished samples sit at
    their end, so their steps have size zero and change nothing. ``buffer``: graph-free
    eager mode (f writes the stages into one reused buffer). ``noise``: an SDE method's
    Brownian motion over the attempt (``noise_rows``), drawn before it. ``landing``: each
    sample's next landing point and whether f jumps there (``_landing.next_landing``). No
    host synchronisation."""
    t1_inner = at_jump = None
    if landing is None:
        t1 = step_end(k.sign, proposal, t_stop)
    else:
        t1, t1_inner, at_jump = land(k.sign, proposal, t, *landing, k.time_dtype)
    h = t1 - t
    if noise is None:
        y1, error, k_last, k_all = k.solver.propose_rows(call, t, t1, h, y, f0, buffer, t1_inner)
    else:
        y1, error, k_last, k_all = k.solver.propose_rows(call, t, t1, h, y, f0, buffer, noise)
    with torch.no_grad():
        if k.fixed:  # every running row accepts; its next step ends on its grid
            accept, previous_ratio = active.clone(), carried_ratio  # (the grids)
            t_next = torch.where(accept, t1, t)
            proposal = k.controller.rows_after(carried_ratio, t_next, k.sign)
        else:
            y_abs, y1_abs = _plain(y).abs(), _plain(y1).abs()
            scale = torch.addcmul(k.atol, torch.maximum(y_abs, y1_abs), k.rtol)
            ratio = k.norm(_plain(error) / scale)
            accept, new_size, previous_ratio = k.controller.decide(
                ratio, h.abs(), carried_ratio, k.exponent, active
            )
            t_next = torch.where(accept, t1, t)
            proposal = t_next + k.sign * new_size
    # outside no_grad: y and f0 carry the gradients of Direct()
    accept_col = accept[:, None]
    fsal = k.fsal
    return Step(
        t1=t1,
        h=h,
        y1=y1,
        k_all=k_all,
        k_last=k_last,
        accept=accept,
        t_next=t_next,
        proposal=proposal,
        previous_ratio=previous_ratio,
        n_steps=n_steps + active,
        n_accepted=n_accepted + accept,
        still=(t_next != t_stop) & active,
        y_accepted=torch.where(accept_col, y1, y),
        f0_accepted=torch.where(accept_col, k_last, f0) if fsal else None,
        t1_inner=t1 if t1_inner is None else t1_inner,
        jumped=None if at_jump is None else at_jump & accept,
    )


def step_end(sign: float, proposal: torch.Tensor, t_stop: torch.Tensor) -> torch.Tensor:
    """Where each sample's attempt ends: its proposal, or its end when the proposal reaches
    it."""
    return torch.minimum(proposal, t_stop) if sign > 0 else torch.maximum(proposal, t_stop)


def retried_unchanged(
    step: Step,
    sign: float,
    t_stop: torch.Tensor,
    landing: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The running samples whose rejected attempt ``step`` would be attempted again
    unchanged, (batch,): its size is held at the controller's min_step (or it ends at the
    sample's end or landing point), so, steps being deterministic, it would fail until
    max_steps. Only a controller with min_step > 0 can hold a rejected step's size."""
    if landing is None:
        again = step_end(sign, step.proposal, t_stop)
    else:
        again = land(sign, step.proposal, step.t_next, *landing, torch.float64)[0]  # (the end)
    return step.still & ~step.accept & (again == step.t1)


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without the tangents of a torch.func transform (forward-mode AD ignores
    ``no_grad``, and the step-size decisions must not be differentiated)."""
    if torch.compiler.is_compiling():  # (a graph break otherwise; no transform there)
        return x
    return x.detach() if is_functorch_wrapped_tensor(x) else x


class Attempts:
    """How the device loop runs a solve's step attempts (``attempt``): eagerly, as one
    torch.compile graph (``compile_step``, f included) or captured once as a CUDA graph and
    replayed (``cuda_graph``). Inside a graph f's evaluations are not counted (an int
    changed there would be guarded on, recompiling the graph as it changes): ``f.count``
    adds them after each attempt.

    An SDE method's rows (``RowFacts.brownian``) draw the Brownian motion over each attempt
    before it, eagerly (``noise_rows``), so that a compiled attempt holds only the SDE's
    functions and the method's arithmetic and sees the Brownian values the eager one sees;
    their first attempt runs eagerly and counted, which measures the SDE's evaluations per
    attempt (``evaluations_per_attempt``), and every later one runs uncounted and adds them.

    An attempt recorded for autograd is read once for non-finite rows, which are then kept
    out of its graph (``_finite_graph``). With ``Checkpointed()`` each eager attempt is a
    checkpoint (``_checkpoint_rows``), its recomputations counted in ``stats``.
    """

    def __init__(
        self,
        term: Any,
        f: Any,
        k: Constants,
        config: Any,
        facts: Any,
        y0_flat: torch.Tensor,
        keep_steps: bool,
        most_pending: int,
        stats: Any = None,
    ):
        self.term, self.f, self.solver, self.sign = term, f, k.solver, k.sign
        self.brownian = facts.brownian
        self.calls = k.solver.evaluations_per_attempt()  # (SDE rows: measured, below)
        self.count_outside = config.compile_step or config.cuda_graph or self.brownian
        buffer = None
        if config.compile_step:
            # static shapes: one graph per batch size (a dynamic batch dimension costs time)
            step_fn = compiled(attempt, type(k.solver), dynamic=False)
        else:
            step_fn = attempt
            # (not under torch.func transforms: f's values cannot be written into a plain buffer)
            graph_free = not torch.is_grad_enabled() and not config.cuda_graph
            if graph_free and facts.stages and not wrapped(y0_flat):
                buffer = term.stage_buffer(facts.stages, y0_flat)  # stages reused by every step
        call = f.uncounted if self.count_outside else f
        self.run = functools.partial(step_fn, call, k, buffer)
        if config.checkpoint_attempts:  # (eager attempts: ``Checkpointed`` refuses compile)
            self.run = Recomputed(self.run, f, stats, attempts=True)
        # an attempt recorded for autograd is checked for non-finite rows (``finite_step``)
        self.guard, self.call, self.constants = torch.is_grad_enabled(), call, k
        self.counted = functools.partial(attempt, f, k, None)  # (SDE rows' first attempt)
        # recording a graph from rows that record none, the first attempt runs eagerly: the
        # compiled attempt then sees one requires_grad (the later rows', from f's parameters)
        # and compiles once, not once for y0 and again for the rest
        self.eager_first = (
            config.compile_step and torch.is_grad_enabled() and not y0_flat.requires_grad
        )
        if config.cuda_graph:
            if torch.is_grad_enabled():
                raise ValueError(
                    "cuda_graph=True records no autograd graph: solve under torch.no_grad(), "
                    "or use gradient=Backsolve() (its forward solve needs none)"
                )
            self.run = GraphedStep(self.run, copy_outputs=keep_steps)  # else: fed straight back
        # steps that wait keep their stages, copied out of the reused buffer
        self.copy_stages = buffer is not None and keep_steps and most_pending > 1

    def __call__(
        self,
        t: torch.Tensor,
        y: torch.Tensor,
        f0: Any,
        *carried: Any,
        landing: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Step:
        """The attempt from ``t`` (``carried``: ``attempt``'s arguments after ``f0``;
        ``landing``: its landing points, an ODE's only)."""
        if not self.brownian:
            eager, self.eager_first = self.eager_first, False
            run = self.counted if eager else self.run
            if landing is None:
                step = run(t, y, f0, *carried)
            else:
                step = run(t, y, f0, *carried, None, landing)
            if self.guard and step.y1.requires_grad:
                step = self._without_non_finite(step, t, y, f0, carried, landing=landing)
            if self.count_outside and not eager:
                self.f.count(self.calls)
            return step
        solver, term = self.solver, self.term
        noise = solver.noise_rows(t, step_end(self.sign, carried[0], carried[1]))
        if self.calls is None:  # the first attempt: eager and counted
            before = term.nfe
            step = self.counted(t, y, f0, *carried, noise)
            self.calls = solver.calls = term.nfe - before
            term.nfe = before
        else:
            step = term.call_uncounted(self.run, t, y, f0, *carried, noise)
        if self.guard and step.y1.requires_grad:
            step = self._without_non_finite(step, t, y, f0, carried, noise)
        self.f.count(self.calls)
        return step

    def _without_non_finite(
        self,
        step: Step,
        t: torch.Tensor,
        y: torch.Tensor,
        f0: Any,
        carried: tuple,
        noise: Any = None,
        landing: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> Step:
        """``step`` with an autograd graph free of its non-finite rows (``finite_step``)."""

        def again(stand_in: Any, f0_safe: torch.Tensor) -> Step:
            args = (self.constants, None, t, y, f0_safe, *carried)
            if noise is None:
                return attempt(stand_in(self.call), *args, landing=landing)
            with self.solver.standing_in(stand_in):  # the SDE's functions, called by the method
                return attempt(self.call, *args, noise)

        return finite_step(step, t, y, f0, again, self.f)
