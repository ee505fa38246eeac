"""The event tracker of every mode: which rows' accepted steps crossed zero, and where.

``Events`` watches ``event.fn(t, y)`` per row (a sample of a per-sample solve);
``OneProblemEvents`` is the one problem of the host loop or the device loop, a batch of one.
The rows with a crossing locate it together on their own dense output (``_crossing.refine``:
the ITP method). An event function that returns NaN (which never changes sign, so the
event could not fire) raises ``ValueError`` naming the time: at the start at once, later at
the loop's next read of the device (``check_nan``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._crossing import crossed, refine
from ._events import Event
from ._term import ODETerm
from ._tree import TreeSpec, rows_tree, tree_rows
from .solvers._step import Step
from .solvers.base import Solver


@dataclass
class EventHit:
    """One located event: its time, the index of the element that crossed, the state there
    and the end of the accepted step whose dense output holds it."""

    t: float
    index: int
    y: torch.Tensor
    step_end: float


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
        #: terminal events: each sample's event time (NaN without one), the end of the step
        #: it lies in, the element of the event function that crossed, and whether the
        #: sample had its event
        self.event_t = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
        self.step_end = torch.full((batch,), math.nan, dtype=torch.float64, device=device)
        self.index = torch.zeros(batch, dtype=torch.long, device=device)
        self.mask = torch.zeros(batch, dtype=torch.bool, device=device)
        self._rows: list[torch.Tensor] = []  # event times of each step with a crossing
        #: where each sample's event function first returned NaN (at a finite state)
        self.nan_seen = torch.zeros(batch, dtype=torch.bool, device=device)
        self.nan_t = torch.zeros(batch, dtype=torch.float64, device=device)

    def _user(self, y: torch.Tensor) -> Any:
        """The rows (batch, n) in the state's structure, as f sees them."""
        spec = self.term.spec
        return y.reshape(self.shape) if spec.is_leaf else rows_tree(spec, y)

    def values(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The event values (batch, k) at per-sample times ``t`` and flat states (batch, n)."""
        g = self.event.values(t.to(self.term.time_dtype), self._user(y))
        if g.ndim == 0 or g.shape[0] != self.batch:
            raise ValueError(
                "with per_sample=True the event function must return one row of values per "
                f"sample, shape ({self.batch},) or ({self.batch}, k); got shape {tuple(g.shape)}"
            )
        return g.reshape(self.batch, -1)

    def watch_nan(
        self, g: torch.Tensor, t: torch.Tensor, y: torch.Tensor, rows: torch.Tensor
    ) -> None:
        """Note the ``rows`` (batch,) whose event values ``g`` (batch, k) at the times ``t``
        (batch,) hold a NaN, where their states ``y`` (batch, n) are finite (a non-finite
        state is the solver's failure, reported as such); no host synchronisation."""
        new = rows & torch.isnan(g).any(1) & torch.isfinite(y).all(1) & ~self.nan_seen
        self.nan_t = torch.where(new, t.to(self.nan_t.dtype), self.nan_t)
        self.nan_seen = self.nan_seen | new

    def check_nan(self, at_start: bool = False) -> None:
        """Raise where an event function returned NaN (one host sync).

        Raises:
            ValueError: a sample's event function returned NaN, named with its time.
        """
        if not bool(self.nan_seen.any()):
            return
        i = int(self.nan_seen.nonzero()[0])
        when = f"t0={float(self.nan_t[i]):.6g}" if at_start else f"t={float(self.nan_t[i]):.6g}"
        raise ValueError(
            f"the event function{self.label(i)} returns NaN at {when}, so no crossing can be "
            "found (a NaN never changes sign); it must return finite real values whose sign "
            "changes at the event"
        )

    def start(self, t: torch.Tensor, y: torch.Tensor) -> None:
        self.previous = self.values(t, y)
        every = torch.ones(self.batch, dtype=torch.bool, device=self.nan_seen.device)
        self.watch_nan(self.previous, t.reshape(-1).expand(self.batch), y, every)
        self.check_nan(at_start=True)

    def fields(
        self, func: Callable | None, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """f and the event values at the rows' times ``t`` (batch,) and flat states ``y``
        (batch, n), differentiably: (batch, n) and (batch, k) (for ``EventGradient``); f is
        ``None`` without ``func``."""
        spec, y_user = self.term.spec, self._user(y)
        f = None if func is None else func(t, y_user)
        if f is not None:
            f = f.reshape(self.batch, -1) if spec.is_leaf else tree_rows(spec, f, self.batch, "f")
        return f, self.event.fn(t, y_user).reshape(self.batch, -1)

    def label(self, i: int) -> str:
        """Row ``i`` as error messages name it."""
        return f" of sample {i}"

    def check(self, t1: torch.Tensor, y1: torch.Tensor, accept: torch.Tensor) -> torch.Tensor:
        """Which samples' accepted steps crossed: (batch,) bool (no host synchronisation)."""
        self.after = self.values(t1, y1)
        self.watch_nan(self.after, t1, y1, accept)
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
        it is in the graph and carries forward-mode tangents, at a fixed event time. Rows of
        samples not hit are meaningless.
        """

        def g_at(theta: torch.Tensor) -> torch.Tensor:
            t_at, y_at = t + theta * h, interpolate(theta * h)
            g = self.values(t_at, y_at)
            self.watch_nan(g, t_at, y_at, hit)
            return g

        with torch.no_grad():
            direction = self.event.direction
            hi, g_lo, g_hi = refine(g_at, g_lo, g_hi, t, h, hit, direction, self.event.tol)
            at_end = hi == 1
            t_event = torch.where(at_end, t1, t + hi * h)
            # the element that crossed (the first one, if several crossed in the bracket)
            index = crossed(g_lo, g_hi, direction).to(torch.uint8).argmax(1)
        # forward mode runs through no_grad: the root finder's iterates would carry
        # tangents, which are not the event time's (``EventGradient`` gives that)
        hi, t_event = hi.detach(), t_event.detach()
        # the state at the fixed event time: where the device loop's step start t and size h
        # carry derivatives (of the step-size control), the offset from t carries -dt (a
        # term zero in value), as the outputs' t_out - t does
        offset = hi * h.detach() - (t - t.detach())
        y_event = torch.where(at_end[:, None], y1, interpolate(offset))
        if self.event.terminal:
            self.event_t = torch.where(hit, t_event, self.event_t)
            self.step_end = torch.where(hit, t1, self.step_end)
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
        self, func: Callable | None, t: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        time, user = t.reshape(()), self.spec.unflatten(y[0])
        f = None if func is None else func(time, user)
        f = None if f is None else self.spec.flatten(f, "func's output").reshape(1, -1)
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
        crossing, nan = torch.cat((hit, self.nan_seen)).tolist()  # one host sync
        if nan:
            self.check_nan()
        if not crossing:
            return None
        t0, h = torch.full((1,), step.t0, **f64), torch.full((1,), step.dt, **f64)
        if torch.is_grad_enabled():
            # the dense output's lazily evaluated f(t1, y1) and extra stages are kept in the
            # step, reused by the event state, the outputs and the next step: evaluated here
            # in the graph, not inside the location's no_grad
            solver.interpolate(term, step, torch.ones(1, dtype=torch.float64))

        def dense(offset: torch.Tensor) -> torch.Tensor:
            return solver.interpolate(term, step, (offset / h).cpu())

        t_event, y_event = self.locate(hit, t0, h, t1, step.y1[None], dense, previous, after)
        self.check_nan()  # the location's own evaluations
        index = int(crossed(previous, after, self.event.direction)[0].nonzero()[0])
        if self.event.terminal:
            index = int(self.index[0])
        return EventHit(float(t_event[0]), index, y_event[0], step.t1)

    def locate(self, hit: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
        t_event, y_event = super().locate(hit, *args)
        if self.event.terminal:
            self.event_y = y_event  # in the graph with Direct()
        return t_event, y_event

    def terminal_hit(self) -> EventHit | None:
        """The event that ended the solve, if it was terminal."""
        if not self.event.terminal or not bool(self.mask[0]):
            return None
        t_event, step_end = self.event_t[0], self.step_end[0]
        return EventHit(float(t_event), int(self.index[0]), self.event_y[0], float(step_end))

    def times(self) -> list[float]:
        """The times of every located event, in order."""
        return self.event_ts()[0].tolist()
