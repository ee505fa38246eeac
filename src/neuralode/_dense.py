"""What a solve saves (``SaveAt``) and the dense solution it can keep.

A dense solution keeps, for every step, what the method's own continuous extension needs
(its start and end, size and stages: ``Solver.dense_record``), stacked as (steps, batch)
tensors; one problem is a batch of one. ``evaluate(t)`` finds each time's step with one
``searchsorted`` over the step ends and applies the method's dense output as weights
(``Solver.dense_weights``: the same polynomials the solve's outputs use) to those steps'
kept rows, all points in one sparse matrix product: no Python loop over points or steps,
no copy of the steps' stages per point. Per sample, every step attempt of the
batch is kept with its accept mask; a rejected attempt's end is ``-inf`` in the running
maximum of the step ends, so the search never lands on it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils import _pytree

from ._tree import TreeSpec
from .solvers.base import Solver


@dataclass(frozen=True)
class SaveAt:
    """What [`solve`][neuralode.solve] saves (diffrax's ``SaveAt`` is the model).

    By default the states at every time of ``ts``. ``ts`` stays the span in every case:
    ``ts[0]`` is the start and ``ts[-1]`` the end.

    Arguments:
        t1: save only the end of the span: ``Solution.ts`` is ``ts[-1:]`` and ``ys`` has one
            entry.
        steps: save the start and the end of every accepted step instead of ``ts``:
            ``Solution.ts`` holds those times. Per sample, each sample takes its own number
            of steps: ``ts`` is (batch, most steps + 1) and ``ys`` (most steps + 1, batch,
            ...), NaN after each sample's last step.
        dense: keep every step for [`Solution.evaluate`][neuralode.Solution.evaluate] and
            [`Solution.derivative`][neuralode.Solution.derivative] anywhere in the span, on
            the method's own continuous extension. Costs the memory of the steps (and, for
            dopri8, the four extra evaluations of f per step of its extension).
        fn: a function ``fn(t, y)`` applied to the state before saving it: ``ys`` holds
            ``fn(t, y)`` at each saved time (``t`` a 0-dim tensor, ``y`` the state there, in
            ``y0``'s structure: per sample, the batch), stacked on a new dimension 0 of every
            tensor it returns. Dense output is not affected.

    Raises:
        ValueError: ``t1`` and ``steps`` together.
        TypeError: ``fn`` that is not callable.
    """

    t1: bool = False
    steps: bool = False
    dense: bool = False
    fn: Callable[[torch.Tensor, Any], Any] | None = None

    def __post_init__(self) -> None:
        for name in ("t1", "steps", "dense"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SaveAt({name}=...) must be a bool, got {getattr(self, name)!r}")
        if self.t1 and self.steps:
            raise ValueError("SaveAt(t1=True, steps=True): choose one, the end or every step")
        if self.fn is not None and not callable(self.fn):
            raise TypeError(f"SaveAt(fn=...) must be callable as fn(t, y), got {self.fn!r}")

    @property
    def records(self) -> bool:
        """Whether the solve keeps its steps."""
        return self.steps or self.dense


def check_saveat(
    saveat: Any, dense: Any, execution: Any, solver: Solver, gradient: Any, event: Any, n: int
) -> SaveAt | None:
    """The one place that validates what to save against the rest of the solve: the
    ``SaveAt`` (or ``None`` for the states at ``ts``), with ``dense=True`` folded in."""
    if saveat is None and dense is False:  # the states at ts (the common case)
        return None
    from .adjoint.direct import Direct

    if saveat is not None and not isinstance(saveat, SaveAt):
        raise TypeError(f"saveat must be a no.SaveAt, got {type(saveat).__name__}")
    if not isinstance(dense, bool):
        raise TypeError(f"dense must be True or False, got {dense!r}")
    if dense:
        saveat = replace(saveat or SaveAt(), dense=True)
    if saveat is None or saveat == SaveAt():
        return None
    if not saveat.records:
        return saveat
    what = "dense=True" if saveat.dense else "SaveAt(steps=True)"
    if type(solver).hermite_f0 is Solver.hermite_f0 and "dense_record" not in vars(type(solver)):
        raise ValueError(f"{what}: {solver!r} has no dense output; use a Runge-Kutta method")
    if event is not None:
        raise ValueError(
            f"{what} does not support events: solve to Solution.event_t first, then solve "
            "again with that end time and dense=True"
        )
    if gradient is not None and not isinstance(gradient, Direct):
        raise ValueError(
            f"{what} keeps the steps in the autograd graph, so it needs gradient=Direct() "
            f"(the default), got {gradient!r}; for O(1) memory gradients save at ts instead"
        )
    if n < 2:
        raise ValueError(f"{what} needs a span: ts with at least two times")
    if execution.skip_finished:
        raise ValueError(
            f"{what} with skip_finished: finished samples are not evaluated, so their last "
            "step's dense output is incomplete; use per_sample=True"
        )
    return saveat


@dataclass
class _Attempt:
    """A step attempt of every sample (one problem: a batch of one), kept for dense output."""

    t: Any  # (batch,) float64 (the host loop: a float until ``Recorder._host_times``)
    t1: Any
    y: torch.Tensor  # (batch, n)
    y1: torch.Tensor
    stacked: torch.Tensor  # (K, batch, n): ``dense_record``'s, or the stages until finished
    accept: Any  # (batch,) bool (the host loop: None until ``Recorder._host_times``)
    f1: torch.Tensor | None = None


class Recorder:
    """Collects the steps of a solve (``LoopConfig.save``): ``add`` from the host loop (an
    accepted ``Step``), ``add_batch``/``set_f1``/``finish_batch`` from the device loop."""

    def __init__(self) -> None:
        self.attempts: list[_Attempt] = []
        self.t_end: torch.Tensor | None = None

    def add(self, solver: Solver, term: Any, step: Any) -> None:
        """An accepted step of the host loop."""
        stacked = solver.dense_record(term, step)[:, None]
        y0, y1 = step.y0.reshape(1, -1), step.y1.reshape(1, -1)
        # the times stay floats until the end (no tensor, no device copy per step)
        self.attempts.append(_Attempt(step.t0, step.t1, y0, y1, stacked, None))

    def add_batch(self, *values: torch.Tensor | None) -> None:
        """A step attempt of the device loop: t, t1, y, y1, stages, accept, f1 (or None)."""
        if not torch.is_grad_enabled():  # graph-free: the loop reuses its buffers
            values = tuple(None if v is None else v.clone() for v in values)
        self.attempts.append(_Attempt(*values))

    def set_f1(self, f1: torch.Tensor) -> None:
        """f(t1, y1) of the last attempt, where accepted (the next step's f0)."""
        self.attempts[-1].f1 = f1 if torch.is_grad_enabled() else f1.clone()

    def finish_batch(self, solver: Any, f: Callable, t_end: torch.Tensor) -> int:
        """Turn the device loop's stages into ``dense_record``'s (evaluating f(t1, y1) and
        the extension's extra stages where the method needs them); return the batched
        evaluations of f this made."""
        dense, calls = solver.tableau.dense, 0
        self.t_end = t_end
        for a in self.attempts:
            if (dense is None or dense.extra_c) and a.f1 is None:
                a.f1, calls = f(a.t1, a.y1), calls + 1
            h = (a.t1 - a.t).to(a.y.real.dtype)[:, None]
            if dense is None:
                a.stacked = torch.stack([a.stacked[0], a.f1])
            elif dense.extra_c:
                a.stacked = solver.dense_stages(
                    a.y, h, a.stacked.unbind(0), lambda a=a: a.f1,
                    lambda c, y, a=a: f(a.t + c * (a.t1 - a.t), y),
                )  # fmt: skip
                calls += sum(c != 1 for c in dense.extra_c)
        return calls

    def _host_times(self) -> None:
        """The host loop's float times and accept masks as the device loop's tensors."""
        a = self.attempts
        if a[0].accept is not None:
            return
        device = a[0].y.device
        t0 = torch.tensor([[x.t] for x in a], dtype=torch.float64, device=device)
        t1 = torch.tensor([[x.t1] for x in a], dtype=torch.float64, device=device)
        accept = torch.ones(1, dtype=torch.bool, device=device)
        for x, start, end in zip(a, t0, t1):
            x.t, x.t1, x.accept = start, end, accept
        self.t_end = t1[-1]

    def step_times(self, per_sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The saved steps: the start and every accepted step's end. One problem: the times
        (steps + 1,) and flat states (steps + 1, n); per sample: (batch, most steps + 1)
        and (most steps + 1, batch x n), each sample's after its last step NaN."""
        self._host_times()
        a = self.attempts
        t0, t1 = torch.stack([x.t for x in a]), torch.stack([x.t1 for x in a])
        y1 = torch.stack([x.y1 for x in a])  # (attempts, batch, n)
        # accepted steps that move (a finished sample takes steps of size zero)
        kept = torch.stack([x.accept.expand(t1.shape[1]) for x in a]) & (t1 != t0)
        position = kept.long().cumsum(0)  # each kept step's place after the start
        step, sample = kept.nonzero(as_tuple=True)
        where = (position[step, sample], sample)
        width = int(position[-1].max()) + 1
        batch, n = y1.shape[1], y1.shape[2]
        ts = t1.new_full((width, batch), torch.nan).index_put(where, t1[step, sample])
        ts[0] = a[0].t
        ys = y1.new_full((width, batch, n), torch.nan).index_put(where, y1[step, sample])
        ys = torch.cat([a[0].y[None], ys[1:]])
        if per_sample:  # the flat states of the whole batch, as the solve's outputs
            return ts.T, ys.reshape(width, batch * n)
        return ts[:, 0], ys[:, 0]

    def solution(self, solver: Solver, spec: TreeSpec, per_sample: bool) -> DenseSolution:
        self._host_times()
        a = self.attempts

        def stack(name: str, dim: int = 0) -> torch.Tensor:
            return torch.stack([getattr(x, name) for x in a], dim)

        # (steps, batch, 2 + K, n): y0, y1 and the dense record of each step of each sample
        rows = torch.stack([torch.cat([x.y[None], x.y1[None], x.stacked]) for x in a], 0)
        rows = rows.transpose(1, 2)
        t0, t1, accept = stack("t"), stack("t1"), stack("accept")
        return DenseSolution(solver, spec, per_sample, t0, t1, rows, accept, a[0].t, self.t_end)


class DenseSolution:
    """Every step of a solve, (steps, batch), evaluated anywhere in the span."""

    def __init__(
        self,
        solver: Solver,
        spec: TreeSpec,
        per_sample: bool,
        t0: torch.Tensor,
        t1: torch.Tensor,
        rows: torch.Tensor,
        accept: torch.Tensor,
        t_start: torch.Tensor,
        t_end: torch.Tensor,
    ):
        """``rows``: (steps, batch, 2 + K, n), each step's y0, y1 and ``dense_record``."""
        self.solver, self.spec, self.per_sample = solver, spec, per_sample
        self.t0, self.h, self.t_start, self.t_end = t0, t1 - t0, t_start, t_end
        self.width = rows.shape[2]
        self.rows = rows.reshape(-1, rows.shape[-1])  # (steps * batch * (2 + K), n)
        self.sign = 1.0 if bool((t_end >= t_start).all()) else -1.0
        ends = torch.where(accept, self.sign * t1, -torch.inf)
        self.reach = ends.cummax(0).values.T.contiguous()  # (batch, steps), sorted rows

    def __call__(self, t: Any, derivative: bool = False) -> Any:
        """y(t) (dy/dt with ``derivative``) for ``t`` of any shape (per sample: (batch,) or
        (batch, n)): ``t.shape`` followed by a sample's shape, in ``y0``'s structure."""
        t = torch.as_tensor(t).detach().to(dtype=torch.float64, device=self.t0.device)
        batch = self.reach.shape[0]
        if self.per_sample:
            if t.ndim not in (1, 2) or t.shape[0] != batch:
                raise ValueError(
                    f"per-sample evaluate needs t of shape ({batch},) or ({batch}, n): one "
                    f"time or a row of times per sample, got shape {tuple(t.shape)}"
                )
        queries = t.reshape(batch, -1)
        self._check_span(queries)
        # the step of each time: the first whose end reaches it (rejected attempts: -inf)
        index = torch.searchsorted(self.reach, (self.sign * queries).contiguous())
        index = index.clamp(max=self.reach.shape[1] - 1).reshape(-1)
        sample = torch.arange(batch, device=t.device).repeat_interleave(queries.shape[1])
        h = self.h[index, sample]
        theta = (queries.reshape(-1) - self.t0[index, sample]) / h
        out = self._combine(index * batch + sample, theta, h, derivative)
        if self.per_sample:
            return out.reshape(*t.shape, *self.spec.shapes[0][1:])
        return self.spec.unflatten(out.reshape(*t.shape, -1))

    def _combine(
        self, step: torch.Tensor, theta: torch.Tensor, h: torch.Tensor, derivative: bool
    ) -> torch.Tensor:
        """The dense output at ``theta`` of the kept steps ``step`` (flat step-sample
        indices), (m, n): the method's weights (``Solver.dense_weights``) applied to each
        step's rows as one sparse (m, rows) x (rows, n) product, nothing gathered."""
        width, m = self.width, len(theta)
        weights = self.solver.dense_weights(theta, h, self.rows, derivative)
        columns = (step * width)[:, None] + torch.arange(width, device=step.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            matrix = torch.sparse_csr_tensor(
                torch.arange(0, m * width + 1, width, device=step.device),
                columns.reshape(-1),
                weights.reshape(-1),
                size=(m, self.rows.shape[0]),
                check_invariants=False,
            )
        out = matrix @ self.rows
        if not derivative:  # a step's end: its end state y1 exactly
            ends = (theta == 1).nonzero().squeeze(1)
            out = out.index_copy(0, ends, self.rows.index_select(0, step[ends] * width + 1))
        return out

    def _check_span(self, queries: torch.Tensor) -> None:
        signed = self.sign * queries
        lo, hi = self.sign * self.t_start[:, None], self.sign * self.t_end[:, None]
        outside = ~((signed >= lo) & (signed <= hi))
        if bool(outside.any()):
            sample, column = (int(i) for i in outside.nonzero()[0])
            which = f" (sample {sample})" if self.per_sample else ""
            raise ValueError(
                f"evaluate: t={float(queries[sample, column])!r} is outside the solution's "
                f"span from {float(self.t_start[sample])!r} to {float(self.t_end[sample])!r}"
                f"{which}; dense output exists only inside the solved span"
            )


def saved(saveat: SaveAt, recorder: Recorder | None, problem: Any, ys: torch.Tensor) -> Any:
    """The ``Solution`` of a solve with ``saveat``, from the flat states at ``ts``."""
    from ._solution import Solution

    spec, ts = problem.spec, problem.ts
    if saveat.steps:
        times, ys = recorder.step_times(problem.config.execution.per_sample)
        ts = times.to(ts.dtype)
    elif saveat.t1:  # per-sample output times (batch, n): each sample's last
        ts, ys = ts[..., -1:], ys[-1:]
    if saveat.fn is None:
        values = spec.unflatten(ys)
    else:  # per-sample output times: fn gets every sample's j-th time, (batch,)
        outs = [saveat.fn(t, spec.unflatten(y)) for t, y in zip(ts.T if ts.ndim == 2 else ts, ys)]
        values = _pytree.tree_map(lambda *x: torch.stack(x), outs[0], *outs[1:])
    solution = Solution(ts=ts, ys=values, stats=problem.stats)
    if saveat.dense:
        per_sample = problem.config.execution.per_sample
        solution.interpolation = recorder.solution(problem.config.solver, spec, per_sample)
    return solution
