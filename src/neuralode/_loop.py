"""The one integration loop: init -> step -> adapt -> save, for every solver and controller."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import _whole_solve
from ._compile import compiled
from ._errors import (
    MaxStepsError,
    NonFiniteError,
    StepSizeUnderflowError,
    max_steps_error,
    raise_repeated,
    raise_stalled,
)
from ._execution import Execution
from ._landing import landings
from ._norms import Norm
from ._solution import SolveStats
from ._status import code_of, success
from ._term import ODETerm
from .controllers._ops import indistinct, solve_span, step_floor, stuck
from .controllers.base import StepSizeController
from .controllers.pi import PIController
from .solvers.base import Solver


@dataclass
class LoopConfig:
    """Everything the loop needs besides the term, the state and the times."""

    solver: Solver
    controller: StepSizeController
    norm: Norm
    max_steps: int
    step_t: tuple[float, ...] = ()
    jump_t: tuple[float, ...] = ()
    perturb: bool = False
    callbacks: Any = None
    events: Any = None  # ``_event_tracker.Events``: OneProblemEvents, or one row per sample
    execution: Execution = Execution()  # how the loop runs (``_execution``)
    # False: a failure stops the solve (or its sample) with a ``Status`` instead of raising
    throw: bool = True
    save: Any = None  # ``_recorder.Recorder``: keeps the steps (dense output, SaveAt(steps))
    # the compiled whole solve's plans by direction of time, kept for warm calls (``_warm``)
    whole_plans: dict[float, Any] | None = None
    progress: Any = None  # ``_progress._Tracker``: the solve's progress meter, or None
    # the device loop's attempts as checkpoints (``Checkpointed()``: ``_checkpoint_rows``)
    checkpoint_attempts: bool = False

    @property
    def per_sample(self) -> bool:
        return self.execution.per_sample

    @property
    def skip_finished(self) -> bool:
        return self.execution.skip_finished

    @property
    def compile_step(self) -> bool:
        """Each step attempt one graph: ``compile='step'``, or the fallback of ``'solve'``."""
        return self.execution.compile is not None

    @property
    def device_loop(self) -> bool:
        return self.execution.device_loop

    @property
    def cuda_graph(self) -> bool:
        return self.execution.cuda_graph


@dataclass
class StepRecord:
    """An accepted step, as the checkpointed and reversible gradients need to recompute it.

    ``y0`` is ``None`` (and so is ``replay``) when the solve records without states
    (``integrate(record_states=False)``): the reversible gradient reconstructs each step's
    start from its end, so its records hold floats and flags alone, O(1) memory a step.
    """

    t0: float
    t1: float
    y0: torch.Tensor | None
    perturb: bool  # evaluations at the step's ends were perturbed
    after_jump: bool  # f(t0, y0) was evaluated just past a jump
    outputs: list[int]  # indices of the output times inside (t0, t1]
    thetas: list[float]  # their positions in the step; 1.0 means exactly t1
    replay: Any = None  # the solver's state to repeat the step exactly (``replay_state``)


def integrate(
    term: ODETerm,
    y0: torch.Tensor,
    ts: list[float],
    config: LoopConfig,
    stats: SolveStats,
    record: list[StepRecord] | None = None,
    record_states: bool = True,
) -> torch.Tensor:
    """Solve from ``ts[0]`` and return the flat states at every time in ``ts``: (len(ts), n).

    With ``record``, every accepted step is appended to it as a ``StepRecord``; with
    ``record_states`` False the records keep no tensors (no start state, no replay state).
    A terminal event in ``config.events`` ends the solve early: only the outputs up to it
    are returned.
    ``stats.status`` receives the ``Status``; with ``config.throw`` False a failure returns
    the outputs reached and NaN for the others instead of raising. Per-sample mode takes
    each sample's own output times as a (batch, outputs) float64 tensor ``ts``.
    """
    stats.status = None
    outputs: list[torch.Tensor] = []
    try:
        ys = _integrate(term, y0, ts, config, stats, record, outputs, record_states)
    except (MaxStepsError, StepSizeUnderflowError, NonFiniteError) as error:
        if config.throw or stats.status is not None:  # per sample: raised to throw
            raise
        stats.status = torch.tensor(int(code_of(error)), device=y0.device)
        ys = torch.cat(outputs)
        missing = ys.new_full((len(ts) - ys.shape[0], *ys.shape[1:]), torch.nan)
        return torch.cat([ys, missing])
    finally:
        term.release_buffers()
    if stats.status is None:  # one problem, or the compiled whole solve (it throws)
        shape = term.spec.shapes[0][:1] if config.per_sample else ()
        stats.status = success(shape, y0)
    return ys


def _integrate(
    term: ODETerm,
    y0: torch.Tensor,
    ts: list[float],
    config: LoopConfig,
    stats: SolveStats,
    record: list[StepRecord] | None,
    outputs: list[torch.Tensor],
    record_states: bool = True,
) -> torch.Tensor:
    """``integrate``; the host loop appends its outputs to ``outputs`` as it goes."""
    # one shared span, raising, no step records (Checkpointed() recomputes the steps it
    # records; the whole solve as one graph keeps none) and a step to take: else each step
    # is compiled (with one output time, the per-sample loop fills the samples' counts)
    whole = config.throw and not isinstance(ts, torch.Tensor) and record is None and len(ts) > 1
    if config.execution.compile == "solve" and whole:
        func = getattr(term, "func", None)
        if _whole_solve.unsupported(config, term.spec, func) is None:  # else: each step compiled
            try:
                return _whole_solve.integrate_whole(term, y0, ts, config, stats, config.whole_plans)
            except _whole_solve.WholeSolveUnavailable as error:
                warnings.warn(str(error), stacklevel=4)
    if config.per_sample or config.device_loop:
        from ._per_sample import integrate_per_sample

        return integrate_per_sample(term, y0, ts, config, stats)
    outputs.append(y0[None])
    if len(ts) == 1:
        return y0[None]
    solver, controller, callbacks = config.solver, config.controller, config.callbacks
    if config.progress is not None:  # (the meter reports through the callback hooks)
        callbacks = config.progress.hooks(callbacks, ts[0], ts[-1])
    sign = 1.0 if ts[-1] > ts[0] else -1.0
    landing_points = landings(ts, config.step_t, config.jump_t)
    span = solve_span(ts[0], ts[-1])  # the scale of the smallest step (``step_floor``)
    t, y = ts[0], y0
    start_jump = t in config.jump_t  # f jumps at t0: the solve starts from f just past it
    attempt = compiled(_attempt, type(solver)) if config.compile_step else None
    # recording a graph from a y0 that records none, the steps from y0 run eagerly: the
    # compiled step then sees one requires_grad (what f's parameters give the later states)
    # and compiles once, not once for y0 and again for the rest
    eager_from_y0 = torch.is_grad_enabled() and not y0.requires_grad
    if attempt is not None and isinstance(controller, PIController) and not start_jump:
        f0, proposal, control = controller.init_compiled(term, solver, ts, y, config.norm)
        state = solver.init(term, t, y, f0)
    else:
        f0 = term(t, y, sign) if start_jump else term(t, y) if controller.needs_f0 else None
        state = solver.init(term, t, y, f0)
        proposal, control = controller.init(term, solver, ts, y, f0, config.norm)
    next_out, n_out, landing = 1, len(ts), 0
    last_y1 = None
    rejected_t1 = None  # the end of the step just rejected from t
    after_jump = start_jump
    events = config.events
    if events is not None:
        events.start(t, y)
    while next_out < n_out:
        if stats.n_steps >= config.max_steps:
            counts = f"{stats.n_accepted} accepted, {stats.n_rejected} rejected steps"
            hint = solver.failure_hint()
            raise max_steps_error(config.max_steps, t, ts[-1], counts, hint=hint)
        land_t, land_is_jump = landing_points[landing]
        # a proposal within round-off short of a landing point lands on it: a step from
        # there to the landing could not change t
        landed = sign * (proposal - land_t) >= 0 or indistinct(proposal, land_t)
        t1 = land_t if landed else proposal
        if stuck(t, t1, span, rejected_t1 is not None, landed) or not math.isfinite(t1):
            floor = step_floor(t, span)
            raise_stalled(t, t1 - t, y, floor, last_y1, hint=solver.failure_hint())
        if t1 == rejected_t1:
            # the rejected step again (its size held at min_step, or at a landing point):
            # steps are deterministic, so it would fail again until max_steps
            raise_repeated(t, t1, solver.failure_hint())
        at_jump = landed and land_is_jump
        if callbacks is not None:
            callbacks.step(t, y, t1 - t)
        perturbed = config.perturb or at_jump
        if attempt is None or perturbed or not solver.compiles(term) or (eager_from_y0 and y is y0):
            step = solver.step(term, t, t1, y, state, perturbed)
            ratio = None
        else:
            times = _time_pair(t, t1, y.device)
            given = solver.compiled_state(term, t, t1, state)
            step, ratio_tensor = term.call_uncounted(
                attempt, solver, controller, control, term, times, y, given
            )
            term.nfe += solver.compiled_evaluations(term, step, state)
            step.t0, step.t1 = t, t1  # the loop's floats, for dense output and events
            ratio = None if ratio_tensor is None else ratio_tensor.item()
        last_y1 = step.y1
        stats.n_steps += 1
        accepted, proposal, control = controller.adapt(
            t, t1, y, step.y1, step.error, control, ratio
        )
        rejected_t1 = None if accepted else t1
        if not accepted:
            state = solver.reject(step, state)
            stats.n_rejected += 1
            if callbacks is not None:
                callbacks.reject(t, y, t1 - t)
            continue
        stats.n_accepted += 1
        if callbacks is not None:
            callbacks.accept(t, y, t1 - t)
        if config.save is not None:
            config.save.add(solver, term, step)
        hit = None if events is None else events.check_step(solver, term, step)
        stop = hit is not None and events.event.terminal
        t_stop = hit.t if stop else t1
        end = next_out
        while end < n_out and sign * (ts[end] - t_stop) <= 0:
            end += 1
        if record is not None:
            indices = list(range(next_out, end))
            thetas = [1.0 if ts[i] == t1 else (ts[i] - t) / (t1 - t) for i in indices]
            if record_states:
                replay = solver.replay_state(step, after_jump)
                record.append(StepRecord(t, t1, y, perturbed, after_jump, indices, thetas, replay))
            else:
                record.append(StepRecord(t, t1, None, perturbed, after_jump, indices, thetas))
        if end > next_out:
            exact = ts[end - 1] == t1
            inner = ts[next_out : end - 1] if exact else ts[next_out:end]
            if inner:
                thetas = (torch.tensor(inner, dtype=torch.float64) - t) / (t1 - t)
                outputs.append(solver.interpolate(term, step, thetas))
            if exact:
                outputs.append(step.y1[None])
            next_out = end
        if stop:
            break
        state = solver.accept(term, step, perturbed)
        if at_jump and landing < len(landing_points) - 1:  # (not past the span's end)
            state = solver.init(term, t1, step.y1, term(t1, step.y1, sign))
        after_jump = at_jump
        if landed:
            landing += 1
        t, y = t1, step.y1
    return torch.cat(outputs)


def _attempt(
    solver: Solver,
    controller: StepSizeController,
    control: Any,
    term: ODETerm,
    times: torch.Tensor,
    y0: torch.Tensor,
    state: Any,
) -> tuple[Any, torch.Tensor | None]:
    """A step (not perturbed) from ``times[0]`` to ``times[1]`` (float64) and its scaled
    error ratio (0-dim; ``None`` without an error estimate): the unit that ``compile_step``
    runs as one graph, f, the stage combinations and the error norm fused, with one
    read-back of the ratio per step."""
    t0, t1 = times.unbind()
    step = solver.step(term, t0, t1, y0, state, False)
    if step.error is None or not isinstance(controller, PIController):
        return step, None
    with torch.no_grad():
        return step, controller.error_ratio(y0, step.y1, step.error, control)


def _time_pair(t0: float, t1: float, device: torch.device) -> torch.Tensor:
    """(t0, t1) as a float64 tensor, the compiled step's times: tensors, because
    torch.compile specialises Python-float inputs (recompiling) or, when f depends on t,
    mishandles them. On CPU through NumPy (1 us instead of 4 for ``torch.tensor``)."""
    if device.type == "cpu":
        return torch.from_numpy(np.array((t0, t1)))
    return torch.tensor((t0, t1), dtype=torch.float64, device=device)
