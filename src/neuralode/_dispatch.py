"""How ``solve`` runs a validated problem: by its gradient strategy, with an event, or with
output times that require gradients."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ._event_gradient import EventGradient, with_event_parameters
from ._event_tracker import OneProblemEvents
from ._loop import integrate
from ._solution import Solution
from ._spans import run_spans
from ._status import mark_non_finite
from ._term import SEPARABLE_HALVES, separable_halves
from ._validate import check_finite
from .adjoint.base import GradientStrategy, Problem, time_derivative_inputs
from .adjoint.direct import Direct
from .adjoint.params import not_a_module


class BatchTime(torch.nn.Module):
    """``func`` called with one time per sample: a 0-dim ``t`` (from the adjoint's backward
    solve or the time-gradient terms, which run the batch as one system) is expanded. The
    halves of a separable field (``SEPARABLE_HALVES``) are offered too, called the same way."""

    def __init__(self, func: Callable, batch: int):
        super().__init__()
        self.batch = batch
        if isinstance(func, torch.nn.Module):
            self.module = func
        else:
            self.plain = func
        # f for ``forward`` as a plain attribute: a submodule is found only through
        # nn.Module.__getattr__, and ``hasattr`` of a missing one raises inside (~1 us a call)
        self.__dict__["_func"] = func
        for name, half in zip(SEPARABLE_HALVES, separable_halves(func) or ()):
            self.__dict__[name] = _BatchTimeHalf(half, batch)

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        return self._func(t.expand(self.batch) if t.ndim == 0 else t, y)

    def parameters(self, recurse: bool = True):
        if hasattr(self, "module"):
            return self.module.parameters(recurse)
        raise not_a_module(self._func)


class _BatchTimeHalf:
    """A half of a separable field called with one time per sample (as ``BatchTime``)."""

    def __init__(self, half: Callable, batch: int):
        self.half, self.batch = half, batch

    def __call__(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.half(t.expand(self.batch) if t.ndim == 0 else t, x)


def run_gradient(gradient: GradientStrategy, problem: Problem) -> torch.Tensor:
    spans = isinstance(problem.times, torch.Tensor)  # per-sample output times
    if time_derivative_inputs(problem) and (spans or not gradient.handles_time_gradients):
        return run_with_time_gradients(gradient, problem)
    return run_spans(gradient, problem) if spans else gradient.run(problem)


def solve_with_event(
    gradient: GradientStrategy, problem: Problem, tracker: OneProblemEvents
) -> Solution:
    """Direct: one solve, the event state is in the graph. Other strategies: locate the event
    in a graph-free solve, then solve up to it with the strategy."""
    config, stats, ts = problem.config, problem.stats, problem.ts
    sign = 1.0 if problem.times[-1] > problem.times[0] else -1.0
    if isinstance(gradient, Direct):
        problem.config = replace(config, events=tracker)
        ys = run_gradient(gradient, problem)
        hit = tracker.terminal_hit()
        event_y = None if hit is None else hit.y
        if hit is not None:  # the device loop writes every output, holding the event state
            ys = ys[: sum(1 for t in problem.times if sign * (t - hit.t) <= 0)]
    else:
        with torch.no_grad():
            integrate(
                problem.term, problem.y0, problem.times, replace(config, events=tracker), stats
            )
        hit = tracker.terminal_hit()
        at_output = False  # an output time exactly at the event keeps its output, as in Direct
        if hit is not None:
            before = sum(1 for t in problem.times if sign * (hit.t - t) > 0)
            at_output = before < len(problem.times) and problem.times[before] == hit.t
            # the solve runs on to the end of the step that holds the event: its steps are
            # the search's, and the event state is that step's dense output at the event
            # time, as located (a solve ending at the event would shorten the last step)
            tail = [hit.t] if hit.step_end == hit.t else [hit.t, hit.step_end]
            t_tail = torch.tensor(tail, dtype=ts.dtype, device=ts.device)
            problem.ts = torch.cat([ts[:before], t_tail])
            problem.times = problem.times[:before] + tail
        # (the solve repeats the search's steps, which the progress meter has shown)
        problem.config = replace(problem.config, progress=None)
        ys = run_gradient(gradient, problem)
        event_y = None
        if hit is not None:
            event_y = ys[before]
            ys = ys[: before + 1] if at_output else ys[:before]
    stats.nfe = problem.term.nfe
    if config.throw:
        check_finite(ys, problem.times)
    else:  # a failed solve shows in the status, its later outputs NaN (as without an event)
        stats.status = mark_non_finite(stats.status, ys, None)
    solution = Solution(ts=ts[: ys.shape[0]], ys=problem.spec.unflatten(ys), stats=stats)
    solution.event_ts = torch.tensor(tracker.times(), dtype=ts.dtype, device=ts.device)
    if hit is not None:
        t_event = torch.tensor(hit.t, dtype=torch.float64, device=ts.device)
        event_t, event_y = EventGradient.apply(tracker, problem.func, t_event[None], event_y[None])
        event_t, event_y = with_event_parameters(tracker, problem.func, event_t, event_y)
        solution.event_t = event_t[0].to(ts.dtype)
        solution.event_y = problem.spec.unflatten(event_y[0])
    return solution


def run_with_time_gradients(gradient: GradientStrategy, problem: Problem) -> torch.Tensor:
    """Make the outputs differentiable in ``ts`` by the exact flow's derivatives.

    With s = t - t.detach() (zero in value, carrying the derivative), output i is
    y_i + s_i g_i(s_i), g_i(s) = f(t_i + s / 2, y_i + (s / 2) f(t_i, y_i)): its first
    derivative in t_i is f(t_i, y_i) and its second f_t + f_y f, the flow's (the midpoint
    rule is exact to second order). The start moves to y0 - s_0 f(t_0 + s_0 / 2, y0 -
    (s_0 / 2) f(t_0, y0)), to second order the state at t0 of the solution through y0 at
    t0 + s_0. Third and higher derivatives in the times are not the flow's. With
    per-sample times (batch, n) each sample's times shift its own rows of the flat state.
    """
    term, times = problem.term, problem.times
    shift = (problem.ts - problem.ts.detach()).to(term.time_dtype)
    spans = isinstance(times, torch.Tensor)
    if spans:  # (n, batch x d): sample i's shift on its rows; its time (n, batch)
        shift_t = shift.T
        shift = shift_t.repeat_interleave(problem.y0.numel() // shift.shape[0], dim=1)
        times = times.T  # times[j]: every sample's j-th time, (batch,)
    else:
        shift_t, shift = shift, shift[:, None]

    def slope(i: int, y: torch.Tensor, sign: float) -> torch.Tensor:
        """f at the midpoint, in time t_i + s_i / 2, of the solution through y at t_i
        (``sign`` 1) or at t_i + s_i (``sign`` -1): the midpoint rule over the shift."""
        middle = y + (0.5 * sign * shift[i]) * term(times[i], y)
        return term(times[i] + 0.5 * shift_t[i], middle)

    moved = shift[0] * slope(0, problem.y0, -1.0)
    problem.y0 = problem.y0 - moved
    ys = run_spans(gradient, problem) if spans else gradient.run(problem)
    # the first output is y0 itself, whatever t0; a terminal event ends the outputs early
    later = [ys[i] + shift[i] * slope(i, ys[i], 1.0) for i in range(1, len(ys))]
    return torch.stack([ys[0] + moved, *later])
