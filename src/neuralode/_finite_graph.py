"""Autograd graphs of the device loop without its non-finite rows.

The device loop (``_per_sample``) merges every sample's attempt with masks: a rejected
attempt's rows stay in the autograd graph and receive a zero gradient. Where they went
non-finite (a step that overshoots out of f's domain, such as the square root of a state
that must stay positive, a blow-up, a failing sample), f's backward multiplies that zero by
its non-finite values or derivatives there (0 x NaN), which makes the gradient of every
parameter the samples share NaN, although the standard loop, which drops rejected steps,
has a finite one. So, recording a graph, each attempt (``finite_step``) and each evaluation
of f outside one (``FiniteGraph``) is checked with one host read; where rows are
non-finite, it is computed again with f evaluated at a finite point on those rows
(``_StandIn``: the row's start, or another row's) and its first values and decisions kept,
detached on those rows: the same forward values, and a graph free of them. The repeat is
autograd's, like a checkpoint's recomputation: its evaluations are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._host import across


def finite_step(
    step: Any,
    t: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    again: Callable[[Callable[[Any], Any], torch.Tensor], Any],
    f: Any,
) -> Any:
    """``step`` (an ``_attempt.Step`` from ``t``, ``y``, ``f0``), or where its stages or
    proposal have non-finite rows, ``again(stand_in, f0_safe)`` (the attempt repeated with
    each of f's functions ``fn`` called as ``stand_in(fn)``) with ``step``'s values on those
    rows, detached, and its decisions. ``f``: the loop's ``BatchTerm``, whose counts the
    repeat leaves alone."""
    with torch.no_grad():
        bad = _non_finite_rows(step.k_all.sum() + step.y1.sum(), step.k_all, step.y1)
        if bad is None:
            return step
        # a row's own start is a point of f's domain where f0 there is finite
        ok = torch.isfinite(f0).all(1) & torch.isfinite(y).all(1)
        points = _stand_in_points(t, y, ok)
        if points is None:
            return step
    bad_col = bad[:, None]
    f0_safe = torch.where(bad_col, 0, f0)  # (a NaN times a zero gradient is NaN)
    redo = _uncounted(f, again, lambda fn: _StandIn(fn, bad_col, *points), f0_safe)
    y1 = torch.where(bad_col, step.y1.detach(), redo.y1)
    k_last = step.k_last  # (None for an SDE method)
    if k_last is not None:
        k_last = torch.where(bad_col, k_last.detach(), redo.k_last)
    accept_col = step.accept[:, None]
    return step._replace(
        y1=y1,
        k_all=torch.where(bad_col, step.k_all.detach(), redo.k_all),
        k_last=k_last,
        y_accepted=torch.where(accept_col, y1, y),
        f0_accepted=None if step.f0_accepted is None else torch.where(accept_col, k_last, f0),
    )


class FiniteGraph:
    """f (a ``BatchTerm``) whose autograd graph has no non-finite rows: where ``f(t, y)``
    has some, the same values with f's graph evaluated at stand-in points on those rows, so
    that a sample that never starts, or an interpolant's evaluation at a rejected step's
    end, leaves the others' gradients finite."""

    def __init__(self, f: Any):
        self.f = f

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.f(t, y)
        if not out.requires_grad:
            return out
        with torch.no_grad():
            bad = _non_finite_rows(out.sum(), out)
            if bad is None:
                return out
            points = _stand_in_points(t, y, ~bad & torch.isfinite(y).all(1))
            if points is None:
                return out
        bad_col = bad[:, None]
        redo = _uncounted(self.f, _StandIn(self.f, bad_col, *points), t, y)
        return torch.where(bad_col, out.detach(), redo)


def _uncounted(f: Any, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` leaving the evaluation counts of ``f`` (a ``BatchTerm``) as they were."""
    counts = f.term.nfe, f.rows_evaluated
    try:
        return fn(*args)
    finally:
        f.term.nfe, f.rows_evaluated = counts


def _non_finite_rows(total: torch.Tensor, *values: torch.Tensor) -> torch.Tensor | None:
    """The rows (batch,) with a non-finite value in any of ``values`` ((..., batch, n)), or
    ``None`` when there are none. ``total``: the sum of every value, which decides with one
    host read in the common case (a sum overflowing on finite values costs the exact
    test)."""
    if bool(across(torch.isfinite(total), torch.all)):
        return None
    finite = None
    for v in values:
        rows = torch.isfinite(v).reshape(-1, *v.shape[-2:]).all(0).all(1)
        finite = rows if finite is None else finite & rows
    bad = ~finite
    return bad if bool(across(bad.any(), torch.any)) else None


def _stand_in_points(
    t: torch.Tensor, y: torch.Tensor, ok: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Points where f is finite for every row: each ``ok`` row's own (t, y), the first ``ok``
    row's for the others; ``None`` when no row is ``ok``."""
    if not bool(across(ok.any(), torch.any)):
        return None
    first = ok & (ok.cumsum(0) == 1)
    t_first = torch.where(first, t, 0).sum(0)
    y_first = torch.where(first[:, None], y, 0).sum(0)
    return torch.where(ok, t, t_first), torch.where(ok[:, None], y, y_first).detach()


class _StandIn:
    """f (or an SDE's function of ``(t, y, *more)``) with the rows ``bad`` ((batch, 1))
    evaluated at stand-in points (``t_safe``, ``y_safe``, where f is finite) and returning
    zeros, so that their stages, proposal and error stay finite and f's backward sees only
    finite values there."""

    def __init__(self, call: Any, bad: torch.Tensor, t_safe: torch.Tensor, y_safe: torch.Tensor):
        self.call, self.bad, self.t_safe, self.y_safe = call, bad, t_safe, y_safe

    def __call__(self, t: torch.Tensor, y: torch.Tensor, *more: Any) -> Any:
        t_in = torch.where(self.bad[:, 0], self.t_safe.to(t.dtype), t)
        y_in = torch.where(self._rows(y), self.y_safe.reshape(y.shape), y)
        out = self.call(t_in, y_in, *more)
        if isinstance(out, tuple):  # (f_and_g, f_and_g_prod)
            return tuple(self._zeros(x) for x in out)
        return self._zeros(out)

    def _zeros(self, out: torch.Tensor) -> torch.Tensor:
        return torch.where(self._rows(out), 0, out)

    def _rows(self, like: torch.Tensor) -> torch.Tensor:
        """``bad`` broadcasting over ``like``'s rows (dimension 0)."""
        return self.bad.reshape(-1, *(1,) * (like.ndim - 1))
