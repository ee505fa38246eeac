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

from ._crossing import crossed, refine
from ._events import Event, EventHit
from ._loop import integrate
from ._solution import Solution
from ._term import ODETerm
from ._tree import TreeSpec
from .adjoint.backsolve import Backsolve, adjoint_backward
from .adjoint.base import GradientStrategy, Problem
from .adjoint.direct import Direct
from .adjoint.params import resolve_params


class SampleEvents:
    """Watches ``event.fn(t, y)`` per sample: ``t`` is (batch,), ``y`` has shape (batch, ...)
    and the values have shape (batch,) or (batch, k); sample i's values are row i."""

    def __init__(self, event: Event, term: ODETerm, batch: int):
        self.event = event
        self.term = term
        self.batch = batch
        self.shape = tuple(int(n) for n in term.spec.shapes[0])
        self.previous: torch.Tensor | None = None
        self.after: torch.Tensor | None = None
        device = term.device
        #: terminal events: each sample's event time (NaN without one), the element of the
        #: event function that crossed, and whether the sample had its event
        self.event_t = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
        self.index = torch.zeros(batch, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, dtype=torch.bool, device=device)
        self._rows: list[torch.Tensor] = []  # event times of each step with a crossing

    def values(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The event values (batch, k) at per-sample times ``t`` and flat states (batch, n)."""
        g = self.event.values(t.to(self.term.time_dtype), y.reshape(self.shape))
        if g.ndim == 0 or g.shape[0] != self.batch:
            raise ValueError(
                "with per_sample=True the event function must return one row of values per "
                f"sample, shape ({self.batch},) or ({self.batch}, k); got shape {tuple(g.shape)}"
            )
        if g.is_complex():
            raise TypeError("the event function must return real values, got a complex tensor")
        return g.reshape(self.batch, -1)

    def start(self, t: torch.Tensor, y: torch.Tensor) -> None:
        self.previous = self.values(t, y)
        self.event.check_start(self.previous, float(t.reshape(-1)[0]))

    def check(self, t1: torch.Tensor, y1: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
        """Which samples' accepted steps crossed: (batch,) bool (no host synchronisation)."""
        self.after = self.values(t1, y1)
        return accept & crossed(self.previous, self.after, self.event.direction).any(1)

    def advance(self, accept: torch.Tensor) -> None:
        """Accepted steps end where their values were last taken."""
        self.previous = torch.where(accept[:, None], self.after, self.previous)

    def locate(
        self,
        hit: torch.Tensor,
        t: torch.Tensor,
        h: torch.Tensor,
        t1: torch.Tensor,
        y1: torch.Tensor,
        interpolate: Callable[[torch.Tensor], torch.Tensor],
        g_lo: torch.Tensor,
        g_hi: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first crossing in the step of every ``hit`` sample, whose event values are
        ``g_lo`` at ``t`` and ``g_hi`` at ``t1``, located on the dense output
        ``interpolate(offset)`` (offset from ``t``, per sample; ``_crossing.refine``): its
        time and state.

        The state is interpolated once more outside ``no_grad`` so that, with ``Direct()``,
        it is in the graph (at a fixed event time). Rows of samples not hit are meaningless.
        """

        def g_at(theta: torch.Tensor) -> torch.Tensor:
            return self.values(t + theta * h, interpolate(theta * h))

        with torch.no_grad():
            direction = self.event.direction
            hi, g_lo, g_hi = refine(g_at, g_lo, g_hi, t, h, hit, direction, self.event.tol)
            at_end = hi == 1
            t_event = torch.where(at_end, t1, t + hi * h)
            # the element that crossed (the first one, if several crossed in the bracket)
            index = crossed(g_lo, g_hi, direction).to(torch.uint8).argmax(1)
        y_event = torch.where(at_end[:, None], y1, interpolate(hi * h))
        if self.event.terminal:
            self.event_t = torch.where(hit, t_event, self.event_t)
            self.index = torch.where(hit, index, self.index)
            self.mask = self.mask | hit
        self._rows.append(torch.where(hit, t_event, math.nan))
        return t_event, y_event

    def event_ts(self) -> torch.Tensor:
        """Every sample's located event times in order, (batch, most events), NaN-padded."""
        if not self._rows:
            return self.event_t.new_empty(self.batch, 0)
        rows = torch.stack(self._rows, 1)  # (batch, steps with an event)
        missing = torch.isnan(rows)
        order = torch.argsort(missing.to(torch.uint8), dim=1, stable=True)
        rows = rows.gather(1, order)
        most = int((~missing).sum(1).max())
        return rows[:, :most]


class OneProblemEvents(SampleEvents):
    """The event of one system solved by ``device_loop`` (a batch of one): ``fn`` sees the
    standard loop's 0-dim time and state, and the results read as ``EventTracker``'s."""

    def __init__(self, event: Event, spec: TreeSpec, term: ODETerm):
        super().__init__(event, term, 1)
        self.spec = spec
        self.event_y: torch.Tensor | None = None  # (1, n): the state at a terminal event

    def values(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The event values (1, k) at the time ``t`` (1,) and the flat state ``y`` (1, n)."""
        time = t.reshape(()).to(self.term.time_dtype)
        return self.event.values(time, self.spec.unflatten(y[0])).reshape(1, -1)

    def locate(self, hit: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t_event, y_event = super().locate(hit, *args)
        if self.event.terminal:
            self.event_y = y_event  # in the graph with Direct()
        return t_event, y_event

    def terminal_hit(self) -> EventHit | None:
        """The event that ended the solve, if it was terminal (as ``EventTracker``'s)."""
        if not self.event.terminal or not bool(self.mask[0]):
            return None
        return EventHit(float(self.event_t[0]), int(self.index[0]), self.event_y[0])

    def times(self) -> list[float]:
        """The times of every located event, in order."""
        return self.event_ts()[0].tolist()


class SampleEventGradient(torch.autograd.Function):
    """The implicit-function gradient of every sample's event time, rerouted through its
    state at the event (``EventGradient`` vectorised over the batch).

    For sample i with g_i(t*_i, y_i(t*_i)) = 0 the incoming gradients of t*_i and y_i(t*_i)
    become one gradient of y_i(t*_i): grad_y - (grad_t + grad_y . f) / (dg/dt + dg/dy . f)
    dg/dy. Samples without an event pass ``grad_y`` through. The event function must treat
    samples independently (row i of its values depends on sample i only).
    """

    @staticmethod
    def forward(ctx: Any, events: SampleEvents, func: Callable, t_event, y_event):
        ctx.events = events
        ctx.func = func
        ctx.save_for_backward(t_event, y_event)
        return t_event.detach().clone(), y_event.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        events: SampleEvents = ctx.events
        t_event, y_event = ctx.saved_tensors
        mask = events.mask
        time_dtype = events.term.time_dtype
        with torch.enable_grad():
            t = torch.where(mask, t_event, 0.0).detach().requires_grad_(True)
            y = y_event.detach().requires_grad_(True)
            t_state = t.to(time_dtype)
            y_user = y.reshape(events.shape)
            f = ctx.func(t_state, y_user).reshape(events.batch, -1).detach()
            g = events.event.fn(t_state, y_user).reshape(events.batch, -1)
            g = g.gather(1, events.index[:, None])[:, 0]
            dg_dt, dg_dy = torch.autograd.grad(g.sum(), (t, y), allow_unused=True)
        dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
        slope = dg_dt + _dot(dg_dy, f)
        flat = mask & (slope == 0)
        if bool(flat.any()):
            i = int(flat.nonzero()[0])
            raise ValueError(
                f"the event function of sample {i} crosses zero tangentially (dg/dt = 0 along "
                "the solution), so its event time has no derivative"
            )
        grad_t = torch.where(mask, grad_t.to(torch.float64), 0.0)
        total_t = grad_t + _dot(grad_y, f)
        coefficient = torch.where(mask, total_t / torch.where(mask, slope, 1.0), 0.0)
        return None, None, None, grad_y - coefficient.to(y.real.dtype)[:, None] * dg_dy


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise real inner products, in float64."""
    prod = (u.conj() * v).real if u.is_complex() else u * v
    return prod.sum(1).to(torch.float64)


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
    events = SampleEvents(event, problem.term, batch)
    config = replace(problem.config, events=events)
    if isinstance(gradient, Direct):
        ys = integrate(problem.term, problem.y0, problem.times, config, problem.stats)
    else:
        with torch.no_grad():
            values = integrate(problem.term, problem.y0, problem.times, config, problem.stats)
        ys = _backsolve_through_events(gradient, problem, events, values)
    problem.stats.nfe = problem.term.nfe
    ys = ys.reshape(len(problem.times), batch, -1)
    mask = events.mask
    sign = 1.0 if problem.times[-1] > problem.times[0] else -1.0
    t_event, y_event = SampleEventGradient.apply(events, problem.func, events.event_t, ys[-1])
    # outputs after a sample's terminal event hold its state there (with the event's gradient)
    times = torch.tensor(problem.times, dtype=torch.float64, device=ts.device)
    held = mask[None, :] & (sign * (times[:, None] - events.event_t[None, :]) > 0)
    ys = torch.where(held[..., None], y_event[None], ys)
    nan = torch.full_like(y_event, math.nan)
    solution = Solution(ts=ts, ys=spec.unflatten(ys.reshape(len(problem.times), -1)))
    solution.stats = problem.stats
    solution.event_t = t_event.to(ts.dtype)
    solution.event_y = torch.where(mask[:, None], y_event, nan).reshape(spec.shapes[0])
    solution.event_mask = mask
    solution.event_ts = events.event_ts().to(ts.dtype)
    return solution


def _backsolve_through_events(
    gradient: Backsolve, problem: Problem, events: SampleEvents, values: torch.Tensor
) -> torch.Tensor:
    """``values`` (the outputs of the graph-free per-sample solve), differentiable by one
    batched adjoint solve.

    Sample i runs on its own clock t_i(s), piecewise linear in a common time s whose knots
    are the output times (an infinite last one replaced by the latest event): t_i(s_j) =
    ts_j, or t*_i once past its event, so every sample's outputs sit at the common knots.
    On each segment dy_i/ds = t_i'(s) f(t_i(s), y_i); a sample past its event has t_i' = 0.
    The event time is held constant here; its gradient comes from ``SampleEventGradient``.
    """
    times = problem.times
    sign = 1.0 if times[-1] > times[0] else -1.0
    f64 = dict(dtype=torch.float64, device=problem.y0.device)
    ts = torch.tensor(times, **f64)
    event_t = torch.where(events.mask, events.event_t, sign * math.inf)
    knots_t = (
        torch.minimum(ts[:, None], event_t[None])
        if sign > 0
        else torch.maximum(ts[:, None], event_t[None])
    )  # (len(ts), batch): each sample's clock at the knots
    if not bool(torch.isfinite(knots_t[-1]).all()):  # the integrator never allows this
        raise RuntimeError("a sample without an event reached an infinite end time")
    knots = list(times)
    if not math.isfinite(knots[-1]):
        last = float(knots_t[-1].max()) if sign > 0 else float(knots_t[-1].min())
        knots[-1] = last if last != knots[-2] else knots[-2] + sign
    knots_s = torch.tensor(knots, **f64)
    rates = (knots_t[1:] - knots_t[:-1]) / (knots_s[1:] - knots_s[:-1])[:, None]
    func = problem.func
    shape = (-1,) + (1,) * (len(events.shape) - 1)
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
