"""Events: stop (or record) where an element of g(t, y) crosses zero, located on dense output.

One tracker for every mode (``Events``): each row of a batch (a sample of a per-sample solve,
or the one problem of the host loop or the device loop: a batch of one, ``OneProblemEvents``)
compares the signs of its event values at the ends of its accepted steps; the rows with a
crossing locate it together on their own dense output (``_crossing.refine``: the ITP
method). One implicit-function gradient (``EventGradient``) serves them all.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._crossing import crossed, refine
from ._term import ODETerm
from ._tree import TreeSpec
from .solvers.base import Solver, Step


@dataclass(frozen=True)
class Event:
    """An event function ``fn(t, y) -> tensor``: an event happens where an element crosses 0.

    The time is located on the solver's dense output (the ITP method) to ``tol``.

    Arguments:
        fn: the event function, ``fn(t, y)`` returning a real tensor whose sign changes at
            the event.
        direction: 1 counts only rising crossings (negative to non-negative), -1 only falling
            ones, 0 both.
        terminal: a terminal event ends the solve; a non-terminal one is recorded (in
            ``Solution.event_ts``) and the solve goes on.
        tol: the time tolerance of the location (default: the resolution of float64).

    Raises:
        ValueError: ``direction`` is not -1, 0 or 1.
        TypeError: ``fn`` is not callable.
    """

    fn: Callable[[torch.Tensor, Any], torch.Tensor]
    direction: int = 0
    terminal: bool = True
    tol: float | None = None

    def __post_init__(self) -> None:
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"event direction must be -1, 0 or 1, got {self.direction!r}")
        if not callable(self.fn):
            raise TypeError(f"the event function must be callable, got {type(self.fn).__name__}")

    def values(self, t: torch.Tensor, y: Any) -> torch.Tensor:
        """``fn(t, y)`` without a graph (for locating events), checked to be a tensor."""
        with torch.no_grad():
            g = self.fn(t, y)
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"the event function must return a tensor, got {type(g).__name__}")
        if g.dtype == torch.bool:
            raise TypeError(
                "the event function returned a bool tensor, which has no zero crossing to "
                "locate; return a real value whose sign changes at the event (e.g. y[0] - 1 "
                "rather than y[0] > 1)"
            )
        return g

    def check_start(self, g: torch.Tensor, t0: float) -> None:
        """Raise a clear error when the event values ``g`` at the start contain NaN (a NaN
        never changes sign, so the event could never fire)."""
        if bool(torch.isnan(g).any()):
            raise ValueError(
                f"the event function returns NaN at t0={t0:.6g}, so no crossing can be "
                "found; it must return finite real values whose sign changes at the event"
            )


@dataclass
class EventHit:
    """One located event: its time, the index of the element that crossed, the state there."""

    t: float
    index: int
    y: torch.Tensor


class Events:
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

    def fields(
        self, func: Callable, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """f and the event values at the rows' times ``t`` (batch,) and flat states ``y``
        (batch, n), differentiably: (batch, n) and (batch, k) (for ``EventGradient``)."""
        y_user = y.reshape(self.shape)
        f = func(t, y_user).reshape(self.batch, -1)
        return f, self.event.fn(t, y_user).reshape(self.batch, -1)

    def label(self, i: int) -> str:
        """Row ``i`` as error messages name it."""
        return f" of sample {i}"

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


class OneProblemEvents(Events):
    """The event of one system (a batch of one), solved by the host loop or the device
    loop: ``fn`` sees the problem's 0-dim time and state, and the results read as one
    problem's (``terminal_hit``, ``times``)."""

    def __init__(self, event: Event, spec: TreeSpec, term: ODETerm):
        super().__init__(event, term, 1)
        self.spec = spec
        self.event_y: torch.Tensor | None = None  # (1, n): the state at a terminal event

    def values(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The event values (1, k) at the time ``t`` (1,) and the flat state ``y`` (1, n)."""
        time = t.reshape(()).to(self.term.time_dtype)
        return self.event.values(time, self.spec.unflatten(y[0])).reshape(1, -1)

    def fields(
        self, func: Callable, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        time, user = t.reshape(()), self.spec.unflatten(y[0])
        f = self.spec.flatten(func(time, user), "func's output").reshape(1, -1)
        return f, self.event.fn(time, user).reshape(1, -1)

    def label(self, i: int) -> str:
        return ""

    def start(self, t: Any, y: torch.Tensor) -> None:
        """``t``: a number (the host loop) or a (1,) tensor; ``y`` flat (n,) or (1, n)."""
        if not isinstance(t, torch.Tensor):
            t = torch.full((1,), t, dtype=torch.float64, device=y.device)
        super().start(t, y.reshape(1, -1))

    def check_step(self, solver: Solver, term: ODETerm, step: Step) -> EventHit | None:
        """The host loop's accepted ``step`` (Python-float times): the first crossing in
        it, located on the solver's dense output, or ``None``."""
        f64 = dict(dtype=torch.float64, device=step.y1.device)
        t1 = torch.full((1,), step.t1, **f64)
        accept = torch.ones(1, dtype=torch.bool, device=step.y1.device)
        hit = self.check(t1, step.y1[None], accept)
        previous, after = self.previous, self.after
        self.advance(accept)
        if not bool(hit[0]):
            return None
        t0, h = torch.full((1,), step.t0, **f64), torch.full((1,), step.dt, **f64)

        def dense(offset: torch.Tensor) -> torch.Tensor:
            return solver.interpolate(term, step, (offset / h).cpu())

        t_event, y_event = self.locate(hit, t0, h, t1, step.y1[None], dense, previous, after)
        index = int(crossed(previous, after, self.event.direction)[0].nonzero()[0])
        if self.event.terminal:
            index = int(self.index[0])
        return EventHit(float(t_event[0]), index, y_event[0])

    def locate(self, hit: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t_event, y_event = super().locate(hit, *args)
        if self.event.terminal:
            self.event_y = y_event  # in the graph with Direct()
        return t_event, y_event

    def terminal_hit(self) -> EventHit | None:
        """The event that ended the solve, if it was terminal."""
        if not self.event.terminal or not bool(self.mask[0]):
            return None
        return EventHit(float(self.event_t[0]), int(self.index[0]), self.event_y[0])

    def times(self) -> list[float]:
        """The times of every located event, in order."""
        return self.event_ts()[0].tolist()


class EventGradient(torch.autograd.Function):
    """The implicit-function gradient of every row's event time (a sample's, or the one
    problem's: a batch of one), rerouted through its state at the event; the one event
    gradient of every mode and gradient strategy.

    For sample i with g_i(t*_i, y_i(t*_i)) = 0 the incoming gradients of t*_i and y_i(t*_i)
    become one gradient of y_i(t*_i): grad_y - (grad_t + grad_y . f) / (dg/dt + dg/dy . f)
    dg/dy. Samples without an event pass ``grad_y`` through. The event function must treat
    samples independently (row i of its values depends on sample i only).
    """

    @staticmethod
    def forward(ctx: Any, events: Events, func: Callable, t_event, y_event):
        ctx.events = events
        ctx.func = func
        ctx.save_for_backward(t_event, y_event)
        return t_event.detach().clone(), y_event.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        events: Events = ctx.events
        t_event, y_event = ctx.saved_tensors
        mask = events.mask
        time_dtype = events.term.time_dtype
        with torch.enable_grad():
            t = torch.where(mask, t_event, 0.0).detach().requires_grad_(True)
            y = y_event.detach().requires_grad_(True)
            f, g = events.fields(ctx.func, t.to(time_dtype), y)
            f = f.detach()
            g = g.gather(1, events.index[:, None])[:, 0]
            dg_dt, dg_dy = torch.autograd.grad(g.sum(), (t, y), allow_unused=True)
        dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
        slope = dg_dt + _dot(dg_dy, f)
        flat = mask & (slope == 0)
        if bool(flat.any()):
            i = int(flat.nonzero()[0])
            raise ValueError(
                f"the event function{events.label(i)} crosses zero tangentially (dg/dt = 0 along "
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
