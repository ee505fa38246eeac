"""Delay differential equations by the method of steps on ``neuralode.solve``.

The span [t0, t1] is cut at t0 + k tau_min (k = 1, 2, ...) and at t0 + tau_j for every
delay: on each interval every delayed time t - tau_j lies on one side of t0 for the whole
interval (the history before t0, the solution after it), and is no later than the
interval's start, where the solution is already known. Each interval is one ordinary
``neuralode.solve(..., dense=True)``; the delayed states come from the dense solutions of the
intervals before it (``DenseSolution.at``: the dense output at one float time, the weights
of ``Solution.evaluate`` on one step's rows) or from the history. No integration loop here.

Derivative discontinuities: a jump of y or of y' at t0 propagates to t0 + sum_j n_j tau_j,
one derivative smoother per generation. The points of up to ``solver.order + 1``
generations inside an interval are its ``step_t``: f is continuous there (only its
derivatives jump), so the steps must land on them but f need not be re-evaluated, which is
all ``jump_t`` would add (but for a multistep method, whose history of f it restarts). f
itself jumps only at t0 + tau_j when y0 differs from the history at t0, and those points
are interval ends, where one solve stops and the next starts from f just past the jump.
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.utils.checkpoint

from .._args import DEFAULT_MAX_STEPS, function, step_limit
from .._autograd import FirstOrder
from .._errors import MaxStepsError
from .._graph_break import outside_dynamo
from .._progress import Progress, ProgressMeter, _Tracker, tracker_of
from .._solution import Solution, SolveStats
from .._solve import solve
from .._validate import coerce_strategies
from ..adjoint.checkpointed import Checkpointed
from ..adjoint.direct import Direct
from ..controllers.base import StepSizeController
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..solvers.base import Solver
from ..solvers.dopri5 import Dopri5

History = Callable[[torch.Tensor], torch.Tensor] | torch.Tensor


def solve_dde(
    func: Callable[[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]], torch.Tensor],
    history: History,
    ts: torch.Tensor,
    delays: float | torch.Tensor | Sequence[float | torch.Tensor],
    *,
    y0: torch.Tensor | None = None,
    solver: Solver | str | None = None,
    controller: StepSizeController | None = None,
    norm: Any = None,
    gradient: Any = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    dense: bool = False,
    progress_meter: ProgressMeter | None = None,
) -> Solution:
    """Solve the delay differential equation dy/dt = func(t, y(t), (y(t - tau_1), ...,
    y(t - tau_k))) for t in [ts[0], ts[-1]], with y(t) = history(t) for t < ts[0].

    The method of steps on [`solve`][neuralode.solve]: the span is cut into intervals no
    longer than the smallest delay (at t0 + k tau_min and at t0 + tau_j), each solved by one
    dense ``solve`` whose delayed states come from the dense solutions of the intervals
    before it or from ``history``. The points where derivative discontinuities propagate
    (t0 + sum_j n_j tau_j, up to the method's order + 1 generations) are steps' ends
    (``step_t``; ``jump_t`` for the Adams methods, which restart their history there), so
    the methods keep their order with several delays, as far as their dense output has it
    (the collocation methods' is of order s).

    Arguments:
        func: the vector field, called as ``func(t, y, y_delayed)`` with ``t`` a 0-dim tensor,
            ``y`` of ``y0``'s shape and ``y_delayed`` a tuple of one tensor of ``y0``'s shape
            per delay, in the order of ``delays`` (a tuple also for one delay); returns dy/dt
            of ``y0``'s shape. It must not modify its arguments in place.
        history: y(t) for t <= ts[0]: a callable ``history(t)`` (``t`` a 0-dim tensor of
            ``ts``'s dtype; it may hold learnable parameters) returning a tensor of ``y0``'s
            shape and dtype, or a tensor (a constant history).
        ts: the output times, a 1-D strictly increasing tensor; ``ts[0]`` is t0.
        delays: the constant delays tau_j > 0: a number, a 0-dim tensor, a 1-D tensor or a
            sequence of numbers and 0-dim tensors. A tensor that requires grad gets the
            gradient d/dtau y(t - tau) = -y'(t - tau).
        y0: the state at t0; defaults to ``history(t0)``. A different value is a jump at t0
            (handled exactly: f's discontinuities at t0 + tau_j are interval ends). A batch
            (batch, ...) shares the delays and the steps, as in ``solve``.
        solver: the method (a [`Solver`][neuralode.solvers.Solver] or a name); defaults to
            ``Dopri5()``. It needs dense output (every method of ``solve(..., dense=True)``).
        controller: the step-size controller of every interval, as in ``solve``
            (``FixedGrid(step_size=h)``: each interval's grid starts at the interval's start;
            a ``PIController`` without ``first_step`` starts each interval after the first
            from the size of the last steps before it).
        norm: the error norm, as in ``solve``.
        gradient: ``Direct()`` (or ``None``): backpropagation through every interval's solve
            and the dense look-ups, keeping f's activations at every stage of every step.
            ``Checkpointed()`` (its defaults only): the same gradients, to round-off, with
            f's activations dropped: each interval runs under
            ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, keeping its
            states and dense rows (O(steps x state) tensors, plus the autograd graph's
            nodes, whose size does not depend on f's width), and the backward pass
            recomputes one interval at a time (about one more forward solve; counted in
            ``stats.nfe_backward`` and ``stats.n_steps_backward``). Gradients reach every
            tensor the solve reads (y0, func's and history's parameters, tensor delays),
            higher derivatives included but for the delays' (first derivatives with
            respect to a tensor delay; a second one raises). Other strategies are refused:
            the adjoint of a delay equation has advanced terms.
        max_steps: the most steps of all intervals together; ``None`` for no limit.
        dense: keep the dense solution: ``Solution.evaluate(t)`` and
            ``Solution.derivative(t)`` then work anywhere in [ts[0], ts[-1]].
        progress_meter: shows the solve's progress while it runs (a
            [`ProgressMeter`][neuralode.ProgressMeter], e.g.
            [`TqdmProgressMeter`][neuralode.TqdmProgressMeter]): one meter over the whole
            span, the steps counted over all the intervals.

    Returns:
        A [`Solution`][neuralode.Solution]: ``ys`` (the states at ``ts``), ``ts``, ``stats``
            (function evaluations and steps summed over the intervals) and, with
            ``dense=True``, ``evaluate``/``derivative`` over the whole span.

    Raises:
        ValueError: bad input: a delay that is not positive and finite, no delays, ``ts`` not
            1-D or not strictly increasing, a history of another shape or dtype than ``y0``,
            a gradient strategy other than ``Direct()`` and ``Checkpointed()``,
            ``Checkpointed(params=...)``, a ``FixedGrid(grid=...)``, a solver whose stages
            pass the step's end (``kvaerno4``, ``kvaerno5``).
        TypeError: ``func`` not callable with three arguments, ``history``, ``y0``, ``ts``
            or a delay of the wrong type, or ``progress_meter`` not a ``ProgressMeter``.
        MaxStepsError: more than ``max_steps`` steps were needed (before any step where the
            span holds more intervals, multiples of the smallest delay, than ``max_steps``).
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _SOLVE_DDE_OUTSIDE_DYNAMO(locals())
    _check_func(func)
    solver, controller, gradient, norm = coerce_strategies(solver, controller, gradient, norm)
    solver = Dopri5() if solver is None else solver
    if solver.stage_reach > 1:
        raise ValueError(
            f"solve_dde does not support {solver!r}: its stages pass the step's end "
            f"(up to {solver.stage_reach:.3g} steps), where an interval's last step would read "
            "delayed states the interval does not hold yet; use kvaerno3, trbdf2 or radau "
            "for a stiff delay equation"
        )
    if controller is None and solver.adaptive:
        controller = PIController()
    _check_gradient(gradient)
    _check_controller(controller)
    times = _check_ts(ts)
    if dense and len(times) == 1:
        raise ValueError("dense=True needs a span: ts with at least two times")
    taus, delay_tensors = _check_delays(delays)
    t0, t1 = times[0], times[-1]
    constant, y0, jump = _initial_state(history, y0, ts, t0)
    max_steps = step_limit(max_steps)
    intervals = math.ceil((t1 - t0) / min(taus))  # (at least; each takes a step or more)
    if intervals > max_steps:
        raise MaxStepsError(
            f"solve_dde cuts [{t0:.6g}, {t1:.6g}] at every multiple of the smallest delay "
            f"{min(taus):.3g}: {intervals:,} intervals, each of at least one step, more than "
            f"max_steps={max_steps:,}; raise max_steps (or pass None), or check the delays"
        )

    eps = torch.finfo(ts.dtype).eps
    tol = 16 * eps * max(abs(t0), abs(t1), min(taus), 1.0)
    kinks = _discontinuities(t0, t1, taus, solver.order + 1, tol)
    second = [t for t, generation in kinks if generation == 2] if jump else []
    # (the interval ends as the solves' times hold them: in ts's dtype)
    ends = _interval_ends(t0, t1, taus, times, tol, second)
    bounds = sorted(set(torch.tensor(ends, dtype=ts.dtype).tolist()))
    past = _Piecewise(t0, tol)
    stats = SolveStats()
    pieces, n_out, next_out = [y0[None]], len(times), 1
    y_start, solution = y0, None
    tracker = tracker_of(progress_meter, times)  # (one meter over all the intervals)
    with contextlib.nullcontext() if tracker is None else tracker:
        for a, b in zip(bounds[:-1], bounds[1:]):
            inner = []
            while next_out < n_out and times[next_out] < b:
                inner.append(times[next_out])
                next_out += 1
            at_end = next_out < n_out and times[next_out] == b
            # each delay's side for the whole interval: the history, or the solution so far
            sides = [b - tau <= t0 + tol for tau in taus]
            field = _Field(
                func,
                history,
                constant,
                taus,
                delay_tensors,
                sides,
                past,
                t0,
                (a, b),
                ts,
                y0.shape,
            )
            remaining = max_steps - stats.n_steps
            if remaining < 1:
                raise MaxStepsError(
                    f"solve_dde took max_steps={max_steps:,} steps before t={a:.6g}, short of "
                    f"t1={t1:.6g}; raise max_steps, or loosen the tolerances"
                )
            landing = "jump_t" if solver.multistep else "step_t"
            run = _Interval(
                field,
                y_start,
                torch.tensor([a, *inner, b], dtype=ts.dtype, device=ts.device),
                dict(
                    solver=solver,
                    controller=_continued(controller, solution),
                    norm=norm,
                    max_steps=remaining,
                    # (a multistep method restarts its history there: f's derivatives jump)
                    **{landing: [t for t, _ in kinks if a + tol < t < b - tol]},
                    gradient=Direct(),
                    dense=True,
                ),
                jump=(jump, a, taus, delay_tensors, tol),
                stats=stats,
                meter=None if tracker is None else _IntervalMeter(tracker, stats),
            )
            try:
                if isinstance(gradient, Checkpointed) and torch.is_grad_enabled():
                    # the interval's outputs (ys, dense rows) are kept, f's activations
                    # dropped; the backward pass reruns ``run`` (the same steps) for them, one
                    # interval at a time. Non-reentrant: the graph keeps its edges to every
                    # tensor the interval reads (parameters, delays, the earlier intervals').
                    solution = torch.utils.checkpoint.checkpoint(
                        run, use_reentrant=False, early_stop=False
                    )
                else:
                    solution = run()
            except MaxStepsError as error:  # (the interval's share of max_steps ran out)
                raise MaxStepsError(
                    f"solve_dde took max_steps={max_steps:,} steps before t1={t1:.6g}, the last "
                    f"of them in [{a:.6g}, {b:.6g}]; raise max_steps (or pass None), or loosen "
                    "the tolerances"
                ) from error
            pieces.append(solution.ys[1 : len(inner) + 1])
            if at_end:
                pieces.append(solution.ys[-1:])
                next_out += 1
            past.add(solution, b)
            y_start = solution.ys[-1]
    stats.status = torch.zeros((), dtype=torch.long, device=ts.device)
    return Solution(
        ts=ts,
        ys=torch.cat(pieces),
        stats=stats,
        status=stats.status,
        interpolation=past if dense and len(times) > 1 else None,
    )


_SOLVE_DDE_OUTSIDE_DYNAMO = outside_dynamo(solve_dde)


def _continued(
    controller: StepSizeController | None, before: Solution | None
) -> StepSizeController | None:
    """The controller of the next interval: a ``PIController`` without a ``first_step``
    starts from the size of the last steps of the interval ``before`` (the solve goes on),
    not from a fresh initial-step estimate."""
    if not isinstance(controller, PIController) or controller.first_step is not None:
        return controller
    if before is None:
        return controller
    sizes = before.interpolation.h.abs()[-2:]  # (the last step is cut short at the end)
    continued = copy.copy(controller)
    continued.first_step = float(sizes.max())
    return continued


class _Interval:
    """The solve of one interval, called once for the forward pass and, under
    ``gradient=Checkpointed()``, once more per backward pass to recompute f's activations.

    Every call takes the same steps (the same inputs: ``y_start``, the earlier intervals'
    rows, the controller continued from the same step sizes). Only the first call counts
    its work in ``stats``' forward fields and reports to ``meter``; a recomputation counts
    into ``nfe_backward`` and ``n_steps_backward``."""

    def __init__(
        self,
        field: _Field,
        y_start: torch.Tensor,
        times: torch.Tensor,
        options: dict[str, Any],
        *,
        jump: tuple[bool, float, list[float], list[torch.Tensor | None], float],
        stats: SolveStats,
        meter: ProgressMeter | None,
    ):
        self.field, self.y_start, self.times, self.options = field, y_start, times, options
        self.jump, self.stats, self.meter = jump, stats, meter
        self.calls = 0

    def __call__(self) -> Solution:
        forward = self.calls == 0
        self.calls += 1
        work = SolveStats()
        y = self.y_start
        jump, a, taus, delay_tensors, tol = self.jump
        if jump and torch.is_grad_enabled():
            y = _jump_motion(self.field, y, a, taus, delay_tensors, tol, self.times, work)
        solution = solve(
            self.field,
            y,
            self.times,
            progress_meter=self.meter if forward else None,
            **self.options,
        )
        stats, done = self.stats, solution.stats
        if forward:
            stats.nfe += work.nfe + done.nfe
            stats.n_steps += done.n_steps
            stats.n_accepted += done.n_accepted
            stats.n_rejected += done.n_rejected
        else:
            stats.nfe_backward += work.nfe + done.nfe
            stats.n_steps_backward += done.n_steps
        return solution


class _IntervalMeter(ProgressMeter):
    """The meter of one interval's solve: it reports to the DDE's meter (``tracker``), the
    fraction measured on the whole span and the steps added to those of the intervals
    before (``stats``, summed after each interval)."""

    def __init__(self, tracker: _Tracker, stats: SolveStats):
        self.tracker, self.stats = tracker, stats

    def update(self, progress: Progress) -> None:
        tracker, stats = self.tracker, self.stats
        fraction = (progress.t - tracker.t0) / (tracker.t1 - tracker.t0)
        accepted = stats.n_accepted + progress.n_accepted
        tracker.report(fraction, progress.t, accepted, stats.n_rejected + progress.n_rejected)


class _Field:
    """f(t, y) of one interval: ``func(t, y, y_delayed)`` with each delayed state from the
    history (``sides[j]``) or from the dense solution of the intervals before (``past``)."""

    def __init__(
        self,
        func: Callable[..., torch.Tensor],
        history: History,
        constant: torch.Tensor | None,
        taus: list[float],
        delay_tensors: list[torch.Tensor | None],
        sides: list[bool],
        past: _Piecewise,
        t0: float,
        interval: tuple[float, float],
        ts: torch.Tensor,
        shape: torch.Size,
    ):
        self.func, self.history, self.constant = func, history, constant
        self.taus, self.delay_tensors, self.sides = taus, delay_tensors, sides
        self.past, self.t0, self.ts = past, t0, ts
        self.start, self.end = interval
        self.shape = shape

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.func(t, y, self.delayed(float(t)))
        if not isinstance(out, torch.Tensor) or out.shape != y.shape:
            got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else repr(out)
            raise ValueError(
                f"func(t, y, y_delayed) returned {got}; it must return dy/dt, a tensor of "
                f"y0's shape {tuple(y.shape)}"
            )
        return out

    def delayed(self, t: float, left: int | None = None) -> tuple[torch.Tensor, ...]:
        """The delayed states at ``t``; ``left``: delay ``left`` from the history (its
        value just before a jump at t0)."""
        return tuple(self.look_up(j, t, self.sides[j] or j == left) for j in range(len(self.taus)))

    def look_up(self, j: int, t: float, from_history: bool) -> torch.Tensor:
        """y(t - tau_j), differentiable with respect to a delay that requires grad."""
        delay = self.delay_tensors[j]
        tracked = delay is not None and delay.requires_grad and torch.is_grad_enabled()
        if from_history:
            if self.constant is not None:
                return self.constant
            # (clamped to t0: t - tau_j rounds to just past t0 at an interval's end)
            s = torch.tensor(min(t - self.taus[j], self.t0), dtype=self.ts.dtype)
            s = s.to(self.ts.device)
            if tracked:  # ds/dtau = -1, the value unchanged
                s = s + (delay.detach() - delay).to(s.dtype)
            value = self.history(s)
            if not isinstance(value, torch.Tensor) or value.shape != self.shape:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                raise ValueError(
                    f"history(t) returned {got} at t={float(s):.6g}; it must return a tensor "
                    f"of y0's shape {tuple(self.shape)} at every t <= t0"
                )
            return value
        s = min(max(t - self.taus[j], self.t0), self.start)  # (rounding at the ends)
        # on a past interval's end, the side this interval's delayed times lie on
        toward = (self.start + self.end) / 2 - self.taus[j]
        value = self.past.at(s, toward)
        if tracked:  # d/dtau y(s) = -y'(s): the interpolant's derivative there
            slope = self.past.at(s, toward, derivative=True)
            value = value + _first_order_shift(delay.detach() - delay, value) * slope
        return value


def _jump_motion(
    field: _Field,
    y: torch.Tensor,
    a: float,
    taus: list[float],
    delay_tensors: list[torch.Tensor | None],
    tol: float,
    ts: torch.Tensor,
    stats: SolveStats,
) -> torch.Tensor:
    """The state at the interval start ``a`` with the gradient of where f's jump lies.

    When y0 differs from the history at t0, f jumps at p = t0 + tau_j (where y(t - tau_j)
    passes t0), an interval end. Moving tau_j moves the jump: on [p, p + dtau] f takes
    its value from before the jump, so y after p changes by dtau (f(p-) - f(p+)). The
    returned state equals ``y`` and carries that derivative."""
    for j, tau in enumerate(taus):
        delay = delay_tensors[j]
        if delay is None or not delay.requires_grad or abs(a - (field.t0 + tau)) > tol:
            continue
        t = torch.tensor(a, dtype=ts.dtype, device=ts.device)
        before = field.func(t, y, field.delayed(a, left=j))
        after = field.func(t, y, field.delayed(a))
        stats.nfe += 2
        y = y + _first_order_shift(delay - delay.detach(), y) * (before - after)
    return y


# a second derivative involving a delay: the look-ups' and the jump's terms are first order
DELAY_SECOND_DERIVATIVES = (
    "second derivatives with respect to a tensor delay of solve_dde are not supported: "
    "d/dtau y(t - tau) = -y'(t - tau) is taken from the dense solution's derivative at the "
    "located time, and the jump of f at t0 + tau moves by its first-order term only. Take "
    "first derivatives with respect to the delays (second derivatives with respect to y0 "
    "and the parameters are supported), and second ones by finite differences of them"
)


def _first_order_shift(shift: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``shift`` (zero, tracking a delay) in ``like``'s dtype, whose derivative raises
    ``DELAY_SECOND_DERIVATIVES`` when differentiated again."""
    return FirstOrder.apply(shift.to(like.dtype), DELAY_SECOND_DERIVATIVES)


class _Piecewise:
    """The dense solutions of consecutive intervals, evaluated as one over [t0, their end]:
    ``Solution.interpolation`` of the DDE's solution."""

    def __init__(self, t0: float, tol: float):
        self.t0, self.tol = t0, tol
        self.ends: list[float] = []
        self.parts: list[Any] = []

    def add(self, solution: Solution, end: float) -> None:
        self.parts.append(solution.interpolation)
        self.ends.append(end)

    def at(self, s: float, toward: float, derivative: bool = False) -> torch.Tensor:
        """y(s) (y'(s)) at one time inside the intervals so far: on the interval holding
        ``s``; at an interval end, on the one on the side of ``toward`` (y' may jump there)."""
        i = bisect.bisect_left(self.ends, s - self.tol)
        if i < len(self.ends) - 1 and s >= self.ends[i] - self.tol and toward > s:
            i += 1
        i = min(i, len(self.ends) - 1)
        s = min(max(s, self.ends[i - 1] if i else self.t0), self.ends[i])  # (within tol)
        return self.parts[i].at(s, derivative)

    def __call__(self, t: Any, derivative: bool = False) -> torch.Tensor:
        t = torch.as_tensor(t).detach()
        name = "derivative" if derivative else "evaluate"
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"Solution.{name} needs real times, got a {t.dtype} t")
        flat = t.reshape(-1).to(torch.float64)
        outside = (flat < self.t0) | (flat > self.ends[-1])
        if bool(outside.any()):
            bad = float(flat[outside][0])
            raise ValueError(
                f"{name}: t={bad!r} is outside the solution's span from {self.t0!r} to "
                f"{self.ends[-1]!r}; dense output exists only inside the solved span"
            )
        if flat.numel() == 0:
            like = self.parts[0](torch.tensor(self.t0, dtype=torch.float64))
            return like.new_zeros(*t.shape, *like.shape)
        ends = torch.tensor(self.ends, dtype=torch.float64, device=flat.device)
        index = torch.searchsorted(ends, flat).clamp(max=len(self.ends) - 1)
        values, positions = [], []
        for i in index.unique().tolist():
            where = (index == i).nonzero().squeeze(1)
            values.append(self.parts[i](flat[where], derivative))
            positions.append(where)
        out = torch.cat(values)[torch.argsort(torch.cat(positions))]
        return out.reshape(*t.shape, *out.shape[1:])


def _interval_ends(
    t0: float, t1: float, taus: list[float], times: list[float], tol: float, more: list[float]
) -> list[float]:
    """t0, the cuts inside (t0, t1), and t1, increasing; a cut within ``tol`` of an output
    time is moved onto it. The cuts: t0 + k tau_min (each interval's delayed times lie
    before its start), t0 + tau_j (each delayed time on one side of t0 for a whole
    interval) and ``more``: with a jump at t0, the points t0 + tau_i + tau_j, since y'
    jumps at t0 + tau_i, and a step whose stages look up y'(t - tau_j) there (the gradient
    with respect to tau_j) must take it from the side the step lies on, which an interval
    end tells."""
    tau_min = min(taus)
    cuts = [t0 + k * tau_min for k in range(1, math.ceil((t1 - t0) / tau_min) + 1)]
    cuts += [t0 + tau for tau in taus] + list(more)
    ends = [t0]
    for cut in sorted(c for c in cuts if t0 + tol < c < t1 - tol):
        near = min(times, key=lambda t: abs(t - cut))
        cut = near if abs(near - cut) <= tol else cut
        if cut - ends[-1] > tol:
            ends.append(cut)
    return ends + [t1]


def _discontinuities(
    t0: float, t1: float, taus: list[float], generations: int, tol: float
) -> list[tuple[float, int]]:
    """(t0 + sum_j n_j tau_j, its generation: the least sum_j n_j reaching it) for
    1 <= sum_j n_j <= ``generations``, inside (t0, t1), by time."""
    found: dict[int, tuple[float, int]] = {}
    level = {0: 0.0}
    for generation in range(1, generations + 1):
        level = {
            round((s + tau) / tol): s + tau
            for s in level.values()
            for tau in taus
            if t0 + s + tau < t1 - tol
        }
        if not level:
            break
        for key, s in level.items():
            found.setdefault(key, (t0 + s, generation))
    return sorted(found.values())


def _check_func(func: Any) -> None:
    """``func`` must be callable with three arguments, (t, y, y_delayed)."""
    function("func", func, "callable as func(t, y, y_delayed)")
    try:
        parameters = inspect.signature(func)
    except (TypeError, ValueError):  # (a builtin without a signature: its call will tell)
        return
    try:
        parameters.bind(None, None, None)
    except TypeError:
        raise TypeError(
            f"func is called as func(t, y, y_delayed), y_delayed the tuple of the delayed "
            f"states y(t - tau_j), one per delay; its signature is {parameters}"
        ) from None


def _check_gradient(gradient: Any) -> None:
    if isinstance(gradient, Checkpointed):
        if gradient.params is not None:
            raise ValueError(
                f"solve_dde's Checkpointed() takes no params (got params={gradient.params!r}): "
                "it backpropagates through the recomputed intervals, so every tensor the solve "
                "reads that requires grad (y0, func's and history's parameters, tensor "
                "delays) gets its gradient. Use Checkpointed()"
            )
        return
    if gradient is not None and not isinstance(gradient, Direct):
        raise ValueError(
            f"solve_dde supports gradient=Direct() and Checkpointed() only, got {gradient!r}: "
            "the adjoint of a delay equation has advanced terms (the adjoint at t receives "
            "contributions from t + tau_j), which no ODE adjoint strategy of solve computes. "
            "Use Direct() (backpropagation through the intervals' solves) or, to save "
            "memory, Checkpointed() (the same gradients; each interval's f activations "
            "recomputed in the backward pass instead of kept)"
        )


def _check_controller(controller: StepSizeController | None) -> None:
    if isinstance(controller, FixedGrid):
        if controller.grid is not None:
            raise ValueError(
                "solve_dde cuts the span into intervals, so a FixedGrid(grid=...) over the "
                "whole span does not apply; use FixedGrid(step_size=h) (each interval's grid "
                "starts at its start) or an adaptive PIController"
            )
        if isinstance(controller.step_size, torch.Tensor):
            raise ValueError(
                "solve_dde solves one problem (a batch shares the steps): give FixedGrid a "
                "number step_size, not a per-sample tensor"
            )


def _check_ts(ts: Any) -> list[float]:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"ts must be a 1-D tensor of times, got {type(ts).__name__}")
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"ts must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}")
    if not ts.is_floating_point():
        raise TypeError(f"ts must be a floating point tensor, got dtype {ts.dtype}")
    times = ts.detach().tolist()
    if not all(map(math.isfinite, times)):
        raise ValueError(f"ts contains NaN or inf: {times}")
    for i in range(len(times) - 1):
        if not times[i] < times[i + 1]:
            raise ValueError(
                f"ts must be strictly increasing (solve_dde integrates forward in time, the "
                f"history lying before ts[0]); ts[{i}]={times[i]!r}, "
                f"ts[{i + 1}]={times[i + 1]!r}"
            )
    return times


def _check_delays(delays: Any) -> tuple[list[float], list[torch.Tensor | None]]:
    """The delays as floats, and as the tensors given (``None`` for numbers)."""
    if isinstance(delays, torch.Tensor):
        if delays.ndim > 1:
            raise ValueError(
                f"delays must be a number, a 0-dim or 1-D tensor or a sequence, got a tensor "
                f"of shape {tuple(delays.shape)}"
            )
        items: list[Any] = list(delays.unbind()) if delays.ndim == 1 else [delays]
    elif isinstance(delays, Sequence) and not isinstance(delays, str):
        items = list(delays)
    else:
        items = [delays]
    if not items:
        raise ValueError("solve_dde needs at least one delay; without delays use neuralode.solve")
    taus: list[float] = []
    tensors: list[torch.Tensor | None] = []
    for j, delay in enumerate(items):
        if isinstance(delay, torch.Tensor):
            if delay.numel() != 1 or delay.is_complex() or not delay.is_floating_point():
                raise TypeError(
                    f"delay {j} must be a real floating point number or 0-dim tensor, got a "
                    f"{delay.dtype} tensor of shape {tuple(delay.shape)}"
                )
            tensors.append(delay.reshape(()))
            value = float(delay.detach())
        elif isinstance(delay, (int, float)) and not isinstance(delay, bool):
            tensors.append(None)
            value = float(delay)
        else:
            raise TypeError(f"delay {j} must be a number or a 0-dim tensor, got {delay!r}")
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"delays must be positive and finite, got delay {j} = {value!r}; an equation "
                "without delay is an ODE (neuralode.solve)"
            )
        taus.append(value)
    return taus, tensors


def _initial_state(
    history: Any, y0: Any, ts: torch.Tensor, t0: float
) -> tuple[torch.Tensor | None, torch.Tensor, bool]:
    """(the constant history or ``None``, y0, whether y0 was given: a possible jump)."""
    if isinstance(history, torch.Tensor):
        constant, at_t0 = history, history
    elif callable(history):
        constant = None
        at_t0 = history(torch.tensor(t0, dtype=ts.dtype, device=ts.device))
        if not isinstance(at_t0, torch.Tensor):
            raise TypeError(
                f"history(t) must return a tensor (the state at t <= t0), got "
                f"{type(at_t0).__name__}"
            )
    else:
        nested = (
            " (solve_dde takes one tensor state; nested states are not supported)"
            if isinstance(history, (tuple, list, dict))
            else ""
        )
        raise TypeError(
            f"history must be a callable history(t) or a tensor (a constant history), got "
            f"{type(history).__name__}{nested}"
        )
    given = y0 is not None
    if y0 is None:
        y0 = at_t0
    if not isinstance(y0, torch.Tensor) or not y0.is_floating_point():
        raise TypeError(
            f"y0 must be a real floating point tensor, got "
            f"{y0.dtype if isinstance(y0, torch.Tensor) else type(y0).__name__}"
        )
    if at_t0.shape != y0.shape or at_t0.dtype != y0.dtype:
        raise ValueError(
            f"the history gives states of shape {tuple(at_t0.shape)} and dtype {at_t0.dtype} "
            f"but y0 has shape {tuple(y0.shape)} and dtype {y0.dtype}; the history must "
            "return (or be) a state like y0, a batch included"
        )
    return constant, y0, given
