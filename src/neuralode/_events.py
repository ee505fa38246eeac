"""Events: stop (or record) where an element of g(t, y) crosses zero, located on dense output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
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


@dataclass
class EventTracker:
    """Watches the sign of the event function over accepted steps."""

    event: Event
    spec: TreeSpec
    term: ODETerm
    hits: list[EventHit] = field(default_factory=list)
    _previous: torch.Tensor | None = None

    def value(self, t: float, y: torch.Tensor) -> torch.Tensor:
        g = self.event.values(self.term.time(t), self.spec.unflatten(y))
        return g.reshape(-1)

    def start(self, t0: float, y0: torch.Tensor) -> None:
        self._previous = self.value(t0, y0)
        self.event.check_start(self._previous, t0)

    def terminal_hit(self) -> EventHit | None:
        """The event that ended the solve, if it was terminal."""
        return self.hits[-1] if self.hits and self.event.terminal else None

    def times(self) -> list[float]:
        """The times of every located event, in order."""
        return [hit.t for hit in self.hits]

    def check(self, solver: Solver, term: ODETerm, step: Step) -> EventHit | None:
        """The first crossing inside an accepted step, or None (then remember the end)."""
        after = self.value(step.t1, step.y1)
        direction = self.event.direction
        if not bool(crossed(self._previous, after, direction).any()):
            self._previous = after
            return None
        dt = step.dt

        def g_at(theta: torch.Tensor) -> torch.Tensor:  # on the host, as the step's times
            y = solver.interpolate(term, step, theta)[0]
            return self.value(step.t0 + float(theta) * dt, y)[None].cpu()

        with torch.no_grad():
            hi, g_lo, g_hi = refine(
                g_at,
                self._previous[None].cpu(),
                after[None].cpu(),
                torch.tensor([step.t0], dtype=torch.float64),
                torch.tensor([dt], dtype=torch.float64),
                torch.ones(1, dtype=torch.bool),
                direction,
                self.event.tol,
            )
        hi = float(hi)
        index = int(crossed(g_lo, g_hi, direction)[0].nonzero()[0])
        t_event = step.t1 if hi == 1.0 else step.t0 + hi * dt
        if hi == 1.0:
            y_event = step.y1
        else:
            y_event = solver.interpolate(term, step, torch.tensor([hi], dtype=torch.float64))[0]
        hit = EventHit(t_event, index, y_event)
        self.hits.append(hit)
        self._previous = self.value(t_event, y_event)
        return hit


class EventGradient(torch.autograd.Function):
    """Implicit-function gradient of the event time, rerouted through the state at the event.

    With g(t*, y(t*)) = 0, dt*/dtheta = -(dg/dy . dy/dtheta) / (dg/dt + dg/dy . f). The
    incoming gradients of t* and y(t*) are turned into one gradient of y(t*), which then flows
    back through the solve (whatever its gradient strategy).
    """

    @staticmethod
    def forward(ctx: Any, tracker: EventTracker, index: int, t_event, y_event):
        ctx.tracker = tracker
        ctx.index = index
        ctx.save_for_backward(t_event, y_event)
        return t_event.detach().clone(), y_event.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        tracker: EventTracker = ctx.tracker
        t_event, y_event = ctx.saved_tensors
        spec, func = tracker.spec, tracker.term.func
        with torch.enable_grad():
            t = t_event.detach().requires_grad_(True)
            y = y_event.detach().requires_grad_(True)
            t_state = t.to(tracker.term.time_dtype)
            f = spec.flatten(func(t_state, spec.unflatten(y)), "func's output").detach()
            g = tracker.event.fn(t_state, spec.unflatten(y)).reshape(-1)[ctx.index]
            dg_dt, dg_dy = torch.autograd.grad(g, (t, y), allow_unused=True)
        dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
        slope = dg_dt + _dot(dg_dy, f)
        if float(slope) == 0:
            raise ValueError(
                "the event function crosses zero tangentially (dg/dt = 0 along the solution), "
                "so the event time has no derivative"
            )
        total_t = grad_t + _dot(grad_y, f)
        return None, None, None, grad_y - (total_t / slope).to(y.dtype) * dg_dy


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (u.conj() * v).real.sum() if u.is_complex() else (u * v).sum()
