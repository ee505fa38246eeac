"""Per-sample events: every sample of a batch watches its own event function values.

Inside the per-sample integrator (``solve(..., per_sample=True, event=Event(...))``) each
sample compares the signs of its event values at the ends of its accepted steps; at the
loop's next termination check the samples with a crossing locate it together on their own
dense output (``_crossing.refine``: the ITP method), to ``event.tol`` each. A terminal
event ends that sample at its event time (its later outputs hold the state there) while the
others go on; a non-terminal one is recorded.

Gradients of the event times and states follow the implicit function theorem per sample,
dt*/dtheta = -(dg/dy . dy/dtheta) / (dg/dt + dg/dy . f), with ``Direct()`` (through the
per-sample solve) or ``Backsolve()`` (one batched adjoint solve in a time reparametrised per
sample so that every sample ends at a common time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ._event_gradient import EventGradient, with_event_parameters
from ._event_tracker import Events
from ._events import Event
from ._loop import integrate
from ._solution import Solution
from ._status import Status
from .adjoint._backward import adjoint_backward
from .adjoint.backsolve import Backsolve
from .adjoint.base import GradientStrategy, Problem
from .adjoint.direct import Direct
from .adjoint.params import resolve_params


def solve_with_sample_events(
    gradient: GradientStrategy, problem: Problem, event: Event
) -> Solution:
    """A per-sample solve with ``event``; ``gradient`` is ``Direct()`` or ``Backsolve()``."""
    spec, ts = problem.spec, problem.ts
    if torch.is_grad_enabled() and ts.requires_grad:
        raise ValueError(
            "gradients with respect to t are not supported with per-sample events; detach t"
        )
    batch = int(spec.shapes[0][0])
    events = Events(event, problem.term, batch)
    config = replace(problem.config, events=events)
    if isinstance(gradient, Direct):
        ys = integrate(problem.term, problem.y0, problem.times, config, problem.stats)
    else:
        with torch.no_grad():
            values = integrate(problem.term, problem.y0, problem.times, config, problem.stats)
        ys = _backsolve_through_events(gradient, problem, events, values)
    problem.stats.nfe = problem.term.nfe
    times, sign = _columns(problem.times, ts.device)
    ys = ys.reshape(times.shape[0], batch, -1)
    mask = events.mask
    t_event, y_event = EventGradient.apply(events, problem.func, events.event_t, ys[-1])
    t_event, y_event = with_event_parameters(events, problem.func, t_event, y_event)
    # outputs after a sample's terminal event hold its state there (with the event's gradient)
    held = mask[None, :] & (sign * (times - events.event_t[None, :]) > 0)
    ys = torch.where(held[..., None], y_event[None], ys)
    nan = torch.full_like(y_event, math.nan)
    solution = Solution(ts=ts, ys=spec.unflatten(ys.reshape(times.shape[0], -1)))
    solution.stats = problem.stats
    problem.stats.status = torch.where(mask, int(Status.EVENT), problem.stats.status)
    solution.event_t = t_event.to(ts.dtype)
    solution.event_y = torch.where(mask[:, None], y_event, nan).reshape(spec.shapes[0])
    solution.event_mask = mask
    solution.event_ts = events.event_ts().to(ts.dtype)
    return solution


def _columns(times: list[float] | torch.Tensor, device: torch.device):
    """The output times as a float64 (n, batch) tensor (per-sample times, (batch, n)) or
    (n, 1) (shared ones), and the direction of integration."""
    if isinstance(times, torch.Tensor):
        return times.T, (1.0 if float(times[0, -1] - times[0, 0]) > 0 else -1.0)
    columns = torch.tensor(times, dtype=torch.float64, device=device)[:, None]
    return columns, (1.0 if times[-1] > times[0] else -1.0)


def _backsolve_through_events(
    gradient: Backsolve, problem: Problem, events: Events, values: torch.Tensor
) -> torch.Tensor:
    """``values`` (the outputs of the graph-free per-sample solve), differentiable by one
    batched adjoint solve on per-sample clocks (``backsolve_on_clocks``) that stop at each
    sample's terminal event: t_i(s_j) = ts_j, or t*_i once past its event (an infinite last
    output time replaced by the latest event). The event time is held constant here; its
    gradient comes from ``EventGradient``."""
    times, sign = _columns(problem.times, problem.y0.device)
    event_t = torch.where(events.mask, events.event_t, sign * math.inf)
    knots_t = torch.minimum(times, event_t) if sign > 0 else torch.maximum(times, event_t)
    if not bool(torch.isfinite(knots_t[-1]).all()):  # the integrator never allows this
        raise RuntimeError("a sample without an event reached an infinite end time")
    if isinstance(problem.times, torch.Tensor):
        knots = times.mean(1).tolist()
    else:
        knots = list(problem.times)
        if not math.isfinite(knots[-1]):
            last = float(knots_t[-1].max()) if sign > 0 else float(knots_t[-1].min())
            knots[-1] = last if last != knots[-2] else knots[-2] + sign
    return backsolve_on_clocks(gradient, problem, knots_t, values, knots)


def backsolve_on_clocks(
    gradient: Backsolve,
    problem: Problem,
    knots_t: torch.Tensor,
    values: torch.Tensor,
    knots: list[float] | None = None,
) -> torch.Tensor:
    """``values`` (the outputs of a graph-free per-sample solve), differentiable by one
    batched adjoint solve.

    Sample i runs on its own clock t_i(s), piecewise linear in a common time s: at the knots
    s_j (``knots``; default: the mean of ``knots_t``'s rows) t_i(s_j) = ``knots_t[j, i]``
    ((n, batch) float64, monotonic per sample), so every sample's outputs sit at the common
    knots. On each segment dy_i/ds = t_i'(s) f(t_i(s), y_i); a sample whose clock stands
    still (past its event) has t_i' = 0.
    """
    f64 = dict(dtype=torch.float64, device=problem.y0.device)
    knots = knots_t.mean(1).tolist() if knots is None else knots
    knots_s = torch.tensor(knots, **f64)
    rates = (knots_t[1:] - knots_t[:-1]) / (knots_s[1:] - knots_s[:-1])[:, None]
    func = problem.func
    shape = (-1,) + (1,) * (len(problem.spec.shapes[0]) - 1)
    time_dtype = problem.term.time_dtype

    def segment_field(j: int) -> Callable:
        start_t, rate, start_s = knots_t[j], rates[j], knots[j]
        scale = rate.to(problem.y0.real.dtype).reshape(shape)

        def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            t = start_t + (s.to(torch.float64) - start_s) * rate
            return scale * func(t.to(time_dtype), y)

        return field

    knot_problem = replace(problem, times=knots, ts=knots_s.to(problem.ts.dtype))
    params = resolve_params(problem.func, gradient.params)
    return _KnotBacksolve.apply(gradient, knot_problem, segment_field, values, problem.y0, *params)


class _KnotBacksolve(torch.autograd.Function):
    """Outputs computed already (graph-free); gradients by the adjoint on per-sample clocks."""

    @staticmethod
    def forward(ctx: Any, strategy, problem, segment_field, values, y0, *params):
        ctx.strategy, ctx.problem, ctx.segment_field, ctx.params = (
            strategy,
            problem,
            segment_field,
            params,
        )
        ctx.values = values
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad_ys: torch.Tensor):
        adjoint, _, grad_params = adjoint_backward(
            ctx.strategy,
            ctx.problem,
            ctx.params,
            ctx.values,
            grad_ys,
            False,
            ctx.segment_field,
        )
        return (None, None, None, None, adjoint, *grad_params)
