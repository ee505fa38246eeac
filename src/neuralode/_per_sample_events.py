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

import copy
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
from ._tree import flat_to_rows, rows_to_flat, rows_tree, tree_rows
from .adjoint._backward import adjoint_backward
from .adjoint.backsolve import Backsolve
from .adjoint.base import GradientStrategy, Problem
from .adjoint.checkpointed import Checkpointed
from .adjoint.direct import Direct
from .adjoint.params import resolve_params
from .controllers._ops import indistinct


def solve_with_sample_events(
    gradient: GradientStrategy, problem: Problem, event: Event
) -> Solution:
    """A per-sample solve with ``event``; ``gradient`` is ``Direct()``, ``Checkpointed()`` or
    ``Backsolve()``."""
    spec, ts = problem.spec, problem.ts
    if torch.is_grad_enabled() and ts.requires_grad:
        raise ValueError(
            "gradients with respect to t are not supported with per-sample events; detach t"
        )
    batch = int(spec.shapes[0][0])
    events = Events(event, problem.term, batch)
    config = replace(problem.config, events=events)
    if isinstance(gradient, (Direct, Checkpointed)):  # one solve recording its graph
        problem.config = config
        ys = gradient.run(problem)
    else:
        with torch.no_grad():
            values = integrate(problem.term, problem.y0, problem.times, config, problem.stats)
        ys = _backsolve_through_events(gradient, problem, events, values)
    problem.stats.nfe = problem.term.nfe
    times, sign = _columns(problem.times, ts.device)
    nested = not spec.is_leaf  # (each sample's part of every tensor side by side)
    ys = flat_to_rows(spec, ys) if nested else ys.reshape(times.shape[0], batch, -1)
    mask = events.mask
    t_event, y_event = EventGradient.apply(events, problem.func, events.event_t, ys[-1])
    t_event, y_event = with_event_parameters(events, problem.func, t_event, y_event)
    # outputs after a sample's terminal event hold its state there (with the event's gradient)
    held = mask[None, :] & (sign * (times - events.event_t[None, :]) > 0)
    ys = torch.where(held[..., None], y_event[None], ys)
    nan = torch.full_like(y_event, math.nan)
    flat = rows_to_flat(spec, ys) if nested else ys.reshape(times.shape[0], -1)
    solution = Solution(ts=ts, ys=spec.unflatten(flat))
    solution.stats = problem.stats
    problem.stats.status = torch.where(mask, int(Status.EVENT), problem.stats.status)
    solution.event_t = t_event.to(ts.dtype)
    y_event = torch.where(mask[:, None], y_event, nan)
    solution.event_y = rows_tree(spec, y_event) if nested else y_event.reshape(spec.shapes[0])
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

    The backward solve's landing points (``step_t``, ``jump_t``: Backsolve's, else the
    forward solve's) are times t of every sample: the solve lands on each sample's s of
    them (``_clock_landings``), and f is evaluated on the side of a jump that s is on (one
    ulp of f's time dtype from it where the clock's round-off would put t on or across it).
    """
    f64 = dict(dtype=torch.float64, device=problem.y0.device)
    knots = knots_t.mean(1).tolist() if knots is None else knots
    knots_s = torch.tensor(knots, **f64)
    rates = (knots_t[1:] - knots_t[:-1]) / (knots_s[1:] - knots_s[:-1])[:, None]
    func, spec = problem.func, problem.spec
    shape = (-1,) + (1,) * (len(spec.shapes[0]) - 1)
    batch = int(spec.shapes[0][0])
    time_dtype = problem.term.time_dtype
    config = problem.config
    step_t = config.step_t if gradient.step_t is None else gradient.step_t
    jump_t = config.jump_t if gradient.jump_t is None else gradient.jump_t
    clock_steps, clock_jumps = _clock_landings(step_t, jump_t, knots_t, knots_s)
    if step_t or jump_t:  # the backward solve lands on the landing points' s
        gradient = copy.copy(gradient)
        gradient.step_t, gradient.jump_t = _landing_s(clock_steps), _landing_s(clock_jumps)

    def segment_field(j: int) -> Callable:
        start_t, rate, start_s = knots_t[j], rates[j], knots[j]
        scale = rate.to(problem.y0.real.dtype).reshape(shape)
        jumps = None if clock_jumps is None else (clock_jumps[0], clock_jumps[1][j])

        def field(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            s = s.to(torch.float64)
            t = start_t + (s - start_s) * rate
            if jumps is not None:
                t = _jump_side(t, s, rate, *jumps, time_dtype)
            out = func(t.to(time_dtype), y)
            if spec.is_leaf:
                return scale * out
            # a nested state: each sample's rate on its part of every tensor
            rows = tree_rows(spec, out, batch, "func's output")
            return rows_tree(spec, rows * scale.reshape(-1, 1))

        return field

    knot_problem = replace(problem, times=knots, ts=knots_s.to(problem.ts.dtype))
    params = resolve_params(problem.func, gradient.params)
    return _KnotBacksolve.apply(gradient, knot_problem, segment_field, values, problem.y0, *params)


def _clock_landings(
    step_t: tuple[float, ...],
    jump_t: tuple[float, ...],
    knots_t: torch.Tensor,
    knots_s: torch.Tensor,
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, ...]:
    """The landing points ``step_t`` and ``jump_t`` (times t) on the per-sample clocks: for
    each, the times (m,) and, per segment, each sample's s of each, (segments, batch, m),
    NaN where the sample's segment does not hold it strictly inside (``None``: no times).
    The s of different samples within round-off of each other (``indistinct``) are made
    one: the loop could not step from one to the other."""
    found = []
    for times in (step_t, jump_t):
        if not times:
            found.append(None)
            continue
        points = torch.tensor(times, dtype=torch.float64, device=knots_t.device)
        start, end = knots_t[:-1, :, None], knots_t[1:, :, None]  # (segments, batch, 1)
        inside = (points - start) * (end - points) > 0  # (a standing clock holds none)
        s0, s1 = knots_s[:-1, None, None], knots_s[1:, None, None]
        s = s0 + (points - start) / (end - start).where(inside, 1.0) * (s1 - s0)
        found.append((points, torch.where(inside, s, torch.nan)))
    if found == [None, None]:
        return None, None
    every = torch.cat([f[1].reshape(-1) for f in found if f is not None])
    ordered = every[~torch.isnan(every)].unique()  # (sorted)
    if ordered.numel() < 2:
        return tuple(found)
    first = torch.cat(
        [ordered.new_ones(1, dtype=torch.bool), ~indistinct(ordered[1:], ordered[:-1])]
    )
    merged = ordered[first][torch.cumsum(first, 0) - 1]  # each s's group's first s
    for k, f in enumerate(found):
        if f is not None:
            s = f[1]
            index = torch.searchsorted(ordered, s.nan_to_num(0.0).contiguous()).clamp(
                max=ordered.numel() - 1
            )
            found[k] = (f[0], torch.where(torch.isnan(s), s, merged[index]))
    return tuple(found)


def _landing_s(landings: tuple[torch.Tensor, torch.Tensor] | None) -> tuple[float, ...]:
    """The distinct s of ``_clock_landings``' points, for the backward solve's loop."""
    if landings is None:
        return ()
    s = landings[1]
    return tuple(sorted(set(s[~torch.isnan(s)].tolist())))


def _jump_side(
    t: torch.Tensor,
    s: torch.Tensor,
    rate: torch.Tensor,
    jumps: torch.Tensor,
    jump_s: torch.Tensor,
    time_dtype: torch.dtype,
) -> torch.Tensor:
    """Each sample's time t (batch,) at s on the side of its jumps that s is on: exactly the
    jump at the jump's s, else one ulp of ``time_dtype`` from the jump where the clock's
    round-off puts t on it or across it (f's left and right limits at the backward solve's
    landings). ``jumps``: (m,); ``jump_s``: (batch, m), their s in this segment (NaN: not
    in it)."""
    side = torch.sign(s - jump_s) * torch.sign(rate)[:, None]  # (batch, m): where t must be
    points = jumps.to(time_dtype).expand_as(jump_s)  # (compared as f receives them)
    seen = t.to(time_dtype)[:, None]
    wrong = ~torch.isnan(jump_s) & (torch.sign(seen - points) != side.to(time_dtype))
    if not bool(wrong.any()):
        return t
    column = wrong.to(torch.int8).argmax(1, keepdim=True)
    point = points.gather(1, column)[:, 0]
    direction = side.gather(1, column)[:, 0].to(time_dtype)
    moved = torch.where(direction == 0, point, torch.nextafter(point, point + direction))
    return torch.where(wrong.any(1), moved.to(t.dtype), t)


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
