"""The dense solution of a solve: every kept step, evaluated anywhere in the span.

A dense solution keeps, for every step, what the method's own continuous extension needs
(its start and end, size and stages: ``Solver.dense_record``), stacked as (steps, batch)
tensors; one problem is a batch of one. ``evaluate(t)`` finds each time's step with one
``searchsorted`` over the step ends and applies the method's dense output as weights
(``Solver.dense_weights``: the same polynomials the solve's outputs use) to those steps'
kept rows, all points in one sparse matrix product: no Python loop over points or steps,
no copy of the steps' stages per point. Per sample, every step attempt of the
batch is kept with its accept mask; a rejected attempt's end is ``-inf`` in the running
maximum of the step ends, so the search never lands on it. The steps are collected by
``_recorder.Recorder``.

``at(t)`` is the same dense output at one Python-float time of one problem, for callers
that evaluate one time at a time (the delayed states of ``neuralode.dde``): the step by
``bisect`` on the step ends as floats, the method's weights (``Solver.dense_weights``) times
that step's rows as one small dense product, whose gradient reaches that step's rows only.
"""

from __future__ import annotations

import bisect
import warnings
from typing import Any

import torch
from torch.utils._pytree import tree_map

from ._norms import LOW_PRECISION
from ._tree import TreeSpec, rows_tree
from .solvers.base import Solver


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
        # samples that failed with ``throw=False`` (``stopped``): NaN between where they
        # stopped and the end asked for, as their outputs there
        self.stopped: torch.Tensor | None = None
        self.t_asked: torch.Tensor | None = None
        # ``at``'s step table (floats) and per-step rows, made at its first call
        self._table: tuple[list[float], list[float], list[float]] | None = None
        self._span = (0.0, 0.0)
        self._steps: tuple[bool, tuple[torch.Tensor, ...]] | None = None

    def stop(self, failed: torch.Tensor, t_asked: torch.Tensor) -> None:
        """Mark the samples ``failed`` ((batch,) bool) as stopped before their end asked for,
        ``t_asked`` ((batch,) float64): ``evaluate`` gives NaN for them after where they
        stopped, up to ``t_asked``."""
        if bool(failed.any()):
            self.stopped, self.t_asked = failed, t_asked

    def __call__(self, t: Any, derivative: bool = False) -> Any:
        """y(t) (dy/dt with ``derivative``) for ``t`` of any shape (per sample: (batch,) or
        (batch, n)): ``t.shape`` followed by a sample's shape, in ``y0``'s structure. A ``t``
        that records gradients gets dy/dt as the states' derivative with respect to it."""
        if isinstance(t, torch.Tensor) and t.requires_grad and torch.is_grad_enabled():
            if derivative:
                raise ValueError(
                    "Solution.derivative(t) is not differentiable with respect to t (that "
                    "would be the interpolant's second derivative): pass t.detach()"
                )
            states = self(t.detach())
            with torch.no_grad():
                slopes = self(t.detach(), derivative=True)
            return tree_map(lambda y, dy: y + _AlongTime.apply(t, dy), states, slopes)
        t = torch.as_tensor(t).detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(
                f"Solution.{'derivative' if derivative else 'evaluate'} needs real times, got "
                f"a {t.dtype} t; pass t.real if the times are real numbers stored as complex"
            )
        t = t.to(dtype=torch.float64, device=self.t0.device)
        batch = self.reach.shape[0]
        if self.per_sample:
            if t.ndim not in (1, 2) or t.shape[0] != batch:
                raise ValueError(
                    f"per-sample evaluate needs t of shape ({batch},) or ({batch}, n): one "
                    f"time or a row of times per sample, got shape {tuple(t.shape)}"
                )
        if t.numel() == 0:  # no times: the empty result of their shape
            if self.per_sample:
                return self._sample_rows(self.rows.new_zeros(0, self.rows.shape[-1]), t.shape)
            return self.spec.unflatten(self.rows.new_zeros(*t.shape, self.rows.shape[-1]))
        queries = t.reshape(batch, -1)
        self._check_span(queries)
        # the step of each time: the first whose end reaches it (rejected attempts: -inf)
        index = torch.searchsorted(self.reach, (self.sign * queries).contiguous())
        index = index.clamp(max=self.reach.shape[1] - 1).reshape(-1)
        sample = torch.arange(batch, device=t.device).repeat_interleave(queries.shape[1])
        h = self.h[index, sample]
        theta = (queries.reshape(-1) - self.t0[index, sample]) / h
        out = self._combine(index * batch + sample, theta, h, derivative)
        if self.stopped is not None:  # NaN after where a failed sample stopped
            after = self.stopped[:, None] & (self.sign * queries > self.sign * self.t_end[:, None])
            out = torch.where(after.reshape(-1, 1), torch.nan, out)
        if self.per_sample:
            return self._sample_rows(out, t.shape)
        return self.spec.unflatten(out.reshape(*t.shape, -1))

    def _sample_rows(self, out: torch.Tensor, shape: torch.Size) -> Any:
        """Per-sample results, one row (a sample's part of every tensor) per time (m, r),
        as ``shape`` followed by a sample's shape, in ``y0``'s structure."""
        if self.spec.is_leaf:
            return out.reshape(*shape, *self.spec.shapes[0][1:])
        return rows_tree(self.spec, out, tuple(shape))

    def at(self, t: float, derivative: bool = False) -> Any:
        """y(t) (dy/dt with ``derivative``) at one time ``t``, a Python float inside the span,
        of a solution of one problem (not per sample): ``evaluate``'s value at a 0-dim ``t``,
        in ``y0``'s structure, from the same weights, to round-off.

        Raises:
            ValueError: a per-sample solution, or ``t`` outside the solved span.
        """
        if self.per_sample or self.stopped is not None:
            if self.per_sample:
                raise ValueError("DenseSolution.at evaluates a solution of one problem only")
            return self(torch.tensor(t, dtype=torch.float64), derivative)
        if self._table is None:
            accepted = self.reach[0].tolist()  # (running maximum: rejected attempts skipped)
            self._table = (accepted, self.t0[:, 0].tolist(), self.h[:, 0].tolist())
            self._span = (float(self.t_start[0]), float(self.t_end[0]))
        reach, starts, sizes = self._table
        lo, hi = self._span
        if not (min(lo, hi) <= t <= max(lo, hi)):
            raise ValueError(
                f"evaluate: t={t!r} is outside the solution's span from {lo!r} to {hi!r}; "
                "dense output exists only inside the solved span"
            )
        # the step of t: the first whose end reaches it, as ``searchsorted`` in ``__call__``
        i = min(bisect.bisect_left(reach, self.sign * t), len(reach) - 1)
        theta = (t - starts[i]) / sizes[i]
        rows = self._step_rows()[i]
        if theta == 1 and not derivative:  # a step's end: its end state y1 exactly
            return self.spec.unflatten(rows[1])
        like = rows.float() if rows.dtype in LOW_PRECISION else rows
        weights = self.solver.dense_weights(theta, sizes[i], like, derivative)
        return self.spec.unflatten((weights[0] @ like).to(rows.dtype))

    def _step_rows(self) -> tuple[torch.Tensor, ...]:
        """The rows of every step, (2 + K, n) each: views made once per autograd mode, so
        that ``at``'s gradients reach one step's rows (no full-size gradient per call)."""
        grad = torch.is_grad_enabled()
        if self._steps is None or self._steps[0] != grad:
            self._steps = (grad, self.rows.split(self.width))
        return self._steps[1]

    def _combine(
        self, step: torch.Tensor, theta: torch.Tensor, h: torch.Tensor, derivative: bool
    ) -> torch.Tensor:
        """The dense output at ``theta`` of the kept steps ``step`` (flat step-sample
        indices), (m, n): the method's weights (``Solver.dense_weights``) applied to each
        step's rows as one sparse (m, rows) x (rows, n) product, nothing gathered."""
        width, m = self.width, len(theta)
        rows = self.rows
        if rows.dtype in LOW_PRECISION:  # (sparse products have no 16-bit CPU kernels)
            rows = rows.float()
        weights = self.solver.dense_weights(theta, h, rows, derivative)
        columns = (step * width)[:, None] + torch.arange(width, device=step.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore")
            matrix = torch.sparse_csr_tensor(
                torch.arange(0, m * width + 1, width, device=step.device),
                columns.reshape(-1),
                weights.reshape(-1),
                size=(m, rows.shape[0]),
                check_invariants=False,
            )
        out = (matrix @ rows).to(self.rows.dtype)
        if not derivative:  # a step's end: its end state y1 exactly
            ends = (theta == 1).nonzero().squeeze(1)
            out = out.index_copy(0, ends, self.rows.index_select(0, step[ends] * width + 1))
        return out

    def _check_span(self, queries: torch.Tensor) -> None:
        signed = self.sign * queries
        t_end = self.t_end
        if self.stopped is not None:  # up to the end asked for
            t_end = torch.where(self.stopped, self.t_asked, t_end)
        lo, hi = self.sign * self.t_start[:, None], self.sign * t_end[:, None]
        outside = ~((signed >= lo) & (signed <= hi))
        if bool(outside.any()):
            sample, column = (int(i) for i in outside.nonzero()[0])
            which = f" (sample {sample})" if self.per_sample else ""
            raise ValueError(
                f"evaluate: t={float(queries[sample, column])!r} is outside the solution's "
                f"span from {float(self.t_start[sample])!r} to {float(t_end[sample])!r}"
                f"{which}; dense output exists only inside the solved span"
            )


class _AlongTime(torch.autograd.Function):
    """Zeros shaped as the states, whose gradient with respect to the query times ``t`` is
    the states' time derivative ``slope`` (t.shape followed by a state's shape): added to
    the states, it makes ``evaluate`` differentiable with respect to ``t`` (first order)."""

    @staticmethod
    def forward(ctx: Any, t: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slope)
        ctx.t_ndim, ctx.t_dtype = t.ndim, t.dtype
        return torch.zeros_like(slope)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if torch.is_grad_enabled():  # (create_graph: its own derivative in t would be 0)
            raise RuntimeError(
                "Solution.evaluate(t) is differentiable once with respect to t (dy/dt; its "
                "second derivative in t is not kept): a backward pass with create_graph=True "
                "cannot go through it. Pass t.detach() where t's gradient is not needed"
            )
        (slope,) = ctx.saved_tensors
        dims = tuple(range(ctx.t_ndim, slope.ndim))
        product = grad * slope
        return (product.sum(dims) if dims else product).to(ctx.t_dtype), None
