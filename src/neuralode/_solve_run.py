"""``solve``'s run of a validated problem: the gradient strategy's solve, the event search
around it, the non-finite checks or statuses and the solution's assembly."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._dispatch import run_gradient, solve_with_event
from ._errors import MaxStepsError, NonFiniteError, StepSizeUnderflowError
from ._event_tracker import OneProblemEvents
from ._events import Event
from ._saveat import SaveAt, saved
from ._solution import Solution
from ._status import Status, mark_non_finite
from ._tree import flat_to_rows
from ._validate import check_finite
from ._warm import remember
from .adjoint.base import GradientStrategy, Problem


def progress_run(
    problem: Problem,
    gradient: GradientStrategy,
    event: Event | None,
    saveat: SaveAt | None,
    key: Any,
    cleared: bool,
) -> Solution:
    """``run`` with the solve's progress meter open (when it has one)."""
    progress = problem.config.progress
    if progress is None:
        return run(problem, gradient, event, saveat, key, cleared)
    with progress:  # (opens the meter; closes it also when the solve raises)
        return run(problem, gradient, event, saveat, key, cleared)


def run(
    problem: Problem,
    gradient: GradientStrategy,
    event: Event | None,
    saveat: SaveAt | None,
    key: Any,
    cleared: Any,
) -> Solution:
    """``solve``'s run of a validated problem by ``gradient``: with ``event`` located,
    what ``saveat`` asks saved, and a warm call's graph kept under ``key``."""
    spec, func, y0_flat, times = problem.spec, problem.func, problem.y0, problem.times
    ts = problem.ts
    config, stats, term = problem.config, problem.stats, problem.term
    throw, execution = config.throw, config.execution
    if event is None:
        ys = run_gradient(gradient, problem)
        if key is not None:
            remember(key, spec, func, y0_flat, config, cleared, len(times))
        stats.nfe = term.nfe
        if throw:
            check_finite(ys, times)
        else:
            batch = spec.shapes[0][0] if execution.per_sample else None
            rows = ys if batch is None or spec.is_leaf else flat_to_rows(spec, ys)  # (a pair)
            stats.status = mark_non_finite(stats.status, rows, batch)
        if saveat is not None:
            solution = saved(saveat, config.save, problem, ys)
            solution.status = stats.status
            return solution
        return Solution(ts=ts, ys=spec.unflatten(ys), stats=stats, status=stats.status)
    try:
        if execution.per_sample:
            from ._per_sample_events import solve_with_sample_events

            solution = solve_with_sample_events(gradient, problem, event)
        else:
            solution = solve_with_event(gradient, problem, OneProblemEvents(event, spec, term))
        solution.status = stats.status
        if not execution.per_sample and solution.event_t is not None and solution.succeeded:
            stats.status = torch.full_like(stats.status, int(Status.EVENT))
            solution.status = stats.status
        return solution
    except (MaxStepsError, StepSizeUnderflowError, NonFiniteError) as error:
        if isinstance(times, torch.Tensor) or math.isfinite(times[-1]):
            raise
        if isinstance(error, MaxStepsError):  # its advice (stiffness) does not apply
            reason = f"no sign change ({str(error).split(' (')[0]})"
        else:
            reason = f"the search stopped ({error})"
        raise type(error)(
            f"the event never fired: searching from t0={times[0]:.6g} towards "
            f"t={times[-1]}, {reason}. Check that the event function changes sign along the "
            "solution (a NaN or constant value never does), raise max_steps (options "
            "max_num_steps) to search further, or give a finite end time."
        ) from error
