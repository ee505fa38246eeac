"""Per-sample integration: a batch of independent problems, each with its own steps.

Dimension 0 of the state is the batch. Every sample has its own time, step size,
accept/reject decision, controller memory and statistics, all held as tensors of shape
(batch,) and merged with masks (``torch.where``), so each sample takes exactly the steps it
would take alone: one stiff sample no longer shrinks the steps of the others. The controller
is a ``PIController`` (adaptive steps) or a ``FixedGrid``, whose memory is each sample's
grid (``FixedGrid.rows_grid``): every attempt is accepted and the next ends on the sample's
next grid point (``FixedGrid.rows_after``), as the host loop's grid for the sample alone.
All samples are evaluated in one batched call of f per stage; a sample that has reached the
end keeps its state and takes steps of size zero (its results and statistics no longer
change). With ``skip_finished`` f sees only the rows of the samples still running (gathered,
and scattered back), so finished samples stop costing evaluations of f; the bookkeeping
stays batched. Every sample's steps land on the landing points (``step_t``, ``jump_t``)
inside its span (``_landing``); a sample's step from a jump starts from f just past it,
evaluated in the steps where a sample landed on one (one read per step says whether any
did).

Host synchronisation: the loop reads nothing from the device between termination checks;
each check is scheduled a quarter of the way to the end of the slowest running sample at
its current step size (at most 64 steps on; 16 with a terminal event, since every sample
may stop early and the batch's steps until the next check are wasted), so a solve of N
steps makes a few times log(N) checks and rarely steps past the last sample's end; the
checks also ask whether a sample has stalled (its step underflows) or run out of steps
(``_status.sample_failures``: raise, or with ``throw=False`` stop it with its status).
Recording an autograd graph, every attempt and every evaluation of f outside one is read
once more, for non-finite rows to keep out of the graph (``_finite_graph``).
Until the next check the steps attempted wait in a list (``_Reached``; at most
``_PENDING_BYTES`` of them); the check writes the output times they crossed, each sample's
from the step that reached it, all in one batch (``_write_outputs``). With events, a sample
whose accepted step crosses its event waits too (frozen at the step's end if the event is
terminal: it stops running); the check locates all the crossings in one batch per round
(``_locate_events``; round r: each sample's r-th crossing), with the syncs of the location
(``_crossing.refine``: one every two evaluations), and a terminal event then ends its
sample's step and the solve of that sample there. With ``skip_finished`` every step is a
check, so that f sees exactly the samples still running: it is meant for an f that costs
far more than a read (with scheduled checks f saw 8-16 % more rows in the benchmark's
table (d)). Everything else (step sizes, decisions, interpolation weights) stays on the
device.

A step attempt of the whole batch (stages, error, decisions) is one function, ``_attempt.attempt``,
run (``_attempt.Attempts``) eagerly or, with ``compile_step``, as one torch.compile graph (f
included); with ``cuda_graph`` it is captured once as a CUDA graph and replayed
(``_cuda_graph``). An SDE method's Brownian motion is drawn before each attempt. The solver
supplies its per-row maths (``for_rows``, ``row_facts``, ``propose_rows``, ``dense``): an
explicit Runge-Kutta method's stages and dense output, a hypersolver's base step and
correction (``solvers.hyper.HyperRows``), a symplectic method's kicks and drifts on each row's
(q, p) (``solvers.partitioned.PartitionedRows``), both with cubic Hermite outputs, or an SDE
method's step-doubled steps on each row's own Brownian interval with linear outputs
(``sde._rows.SDERows``). A nested state (a pair (q, p), a tuple or dict of tensors) runs
as rows, each sample's part of every tensor side by side (``_tree.flat_to_rows``), its error
norm the max of the RMS of each part (as the sample alone); f sees it in its structure.
"""

from __future__ import annotations

from typing import Any

import torch

from ._attempt import Attempts, Constants, retried_unchanged
from ._batch_term import BatchTerm
from ._checkpoint_rows import Recomputed
from ._finite_graph import FiniteGraph
from ._host import across
from ._landing import landing_times, next_landing, past_jump, start_times
from ._pending import _ends, _Reached, _read_progress, _stack
from ._pending_dense import _locate_events, _write_outputs
from ._per_sample_ends import check_row_fixed_steps, first_steps, record_counts, row_control
from ._progress import device_values
from ._solution import SolveStats
from ._spans import loop_times
from ._status import sample_failures
from ._term import ODETerm
from ._tree import flat_to_rows, rows_to_flat
from .controllers._ops import solve_span
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK

_MAX_UNCHECKED = 64  # most steps between two termination checks
# with a terminal event, samples may all stop early, and the steps after the last stop and
# before the next check are wasted on the whole batch
_MAX_UNCHECKED_TERMINAL = 16
_PENDING_BYTES = 2**27  # most memory the steps waiting for their outputs may hold


def integrate_per_sample(
    term: ODETerm,
    y0_flat: torch.Tensor,
    ts: list[float] | torch.Tensor,
    config: Any,
    stats: SolveStats,
) -> torch.Tensor:
    """Solve every sample of the batch as its own problem; return (outputs, n) flat states.
    ``ts``: the output times shared by every sample, or each sample's own, a float64 tensor
    (batch, outputs) with rows in one direction. Without ``config.per_sample``
    (``device_loop``), the whole state is one problem. ``stats.status`` receives each
    sample's ``Status`` (a 0-dim one for ``device_loop``)."""
    solver: ExplicitRK = config.solver.for_rows(term, y0_flat)
    ctrl: PIController | FixedGrid = config.controller
    if config.per_sample:
        batch = int(term.spec.shapes[0][0])
        f = BatchTerm(term, batch)
    else:
        batch, f = 1, BatchTerm(term, 1, one_problem=True)
    # a nested state as rows: each sample's part of every tensor side by side
    nested = not term.spec.is_leaf
    y = flat_to_rows(term.spec, y0_flat) if nested else y0_flat.reshape(batch, -1)
    device = y.device
    ts_tensor, ts_signed, sign, t, t_stop = loop_times(ts, batch, device)
    meter = config.progress  # a progress meter: reported at the checks
    t_start = None if meter is None else t.clone()
    span = solve_span(t, t_stop)  # the scale of the smallest step (``step_floor``)
    n_out = ts_tensor.shape[-1]
    status = torch.zeros(batch, dtype=torch.long, device=device)
    stats.status = status if config.per_sample else status[0]
    if n_out == 1:  # nothing to integrate: every per-sample count is 0
        zeros = torch.zeros(batch, dtype=torch.long, device=device)
        record_counts(stats, config.per_sample, status, zeros, zeros.clone(), zeros.clone(), 0)
        return y0_flat[None]
    facts = solver.row_facts(y0_flat)
    fixed = isinstance(ctrl, FixedGrid)
    exponent, rtol, atol, norm = row_control(solver, ctrl, term.spec, y)

    # statistics and status per sample
    # separate tensors: aliased inputs would make the compiled step compile a second time
    n_steps, n_accepted, nfe = (
        torch.zeros(batch, dtype=torch.long, device=device) for _ in range(3)
    )
    active = torch.ones(batch, dtype=torch.bool, device=device)

    # f outside the attempts; recording a graph, without non-finite rows in it
    evaluate = FiniteGraph(f) if torch.is_grad_enabled() else f
    if config.checkpoint_attempts:  # ``Checkpointed()``: kept as checkpoints
        evaluate = Recomputed(evaluate, f, stats, attempts=False)
    points = landing_times(sign, config.step_t, config.jump_t, device)  # (None: none)
    # a sample starting on a jump evaluates f just past it
    t_first = start_times(points if config.jump_t else None, sign, t, term.time_dtype)
    f0 = evaluate(t_first, y)
    nfe = nfe + 1
    if fixed:  # each sample's grid (the controller's memory) and its first point
        eps = torch.finfo(term.time_dtype).eps
        previous_ratio = ctrl.rows_grid(t, t_stop, ts_tensor, sign, eps)
        proposal = ctrl.rows_after(previous_ratio, t, sign)
        check_row_fixed_steps(ctrl, previous_ratio, config)
    else:
        measures = (exponent, rtol, atol, norm)
        proposal, previous_ratio, active, status, extra = first_steps(
            ctrl, f, t, y, f0, sign, span, measures, status, config.throw
        )
        nfe = nfe + extra

    outputs = y.expand(n_out, *y.shape)  # (outputs, batch, n): written at the checks
    next_out = torch.ones(batch, dtype=torch.long, device=device)
    stages, fsal = facts.stages, facts.fsal
    constants = Constants(
        solver, ctrl, rtol, atol, sign, exponent, norm, time_dtype=term.time_dtype
    )
    events = config.events  # a SampleEvents, or None
    terminal = events is not None and events.event.terminal
    # read nothing from the device between scheduled termination checks; until then the
    # steps wait in ``pending`` for their outputs and events
    write_outputs = n_out > 2  # the last output is the final state
    keep_steps = write_outputs or events is not None
    if config.skip_finished:  # a check after every step: f sees exactly the running samples
        most_unchecked = 1
    elif terminal:  # samples may all stop early and waste the steps until the next check
        most_unchecked = _MAX_UNCHECKED_TERMINAL
    else:
        most_unchecked = _MAX_UNCHECKED
    most_pending = min(most_unchecked, _most_pending(stages, y)) if keep_steps else 1
    pending: list[_Reached] = []
    attempt = Attempts(term, f, constants, config, facts, y0_flat, keep_steps, most_pending, stats)
    if events is not None:
        events.start(t, y)
    needs_f1 = facts.needs_f1
    landing, on_jump = None, t_first != t
    iteration, next_check, n_still, stalled = 0, 1, -1, False  # known at the checks
    # a rejected step is retried unchanged only when its size is held at min_step: the
    # samples where that happened (it would fail again until max_steps) stop at the check
    repeats, repeated = not fixed and ctrl.min_step > 0, None
    while True:
        iteration += 1
        carried = (proposal, t_stop, active, previous_ratio, n_steps, n_accepted)
        if points is not None:
            landing = next_landing(points, sign, t, t_stop)
        step = attempt(t, y, f0, *carried, landing=landing)
        h, y1, accept = step.h, step.y1, step.accept
        proposal = step.proposal
        previous_ratio, n_steps, n_accepted = step.previous_ratio, step.n_steps, step.n_accepted
        f1 = step.k_last if fsal else None
        k_all = step.k_all.clone() if attempt.copy_stages else step.k_all
        reached = _Reached(t, h, y, step.t1, y1, k_all, f1, accept, step.still)
        if config.save is not None:  # dense output: every attempt, with its accept mask
            config.save.add_batch(t, step.t1, y, y1, step.k_all, accept, f1)
        t, y, still = step.t_next, step.y_accepted, step.still
        if repeats:
            again = retried_unchanged(step, sign, t_stop, landing)
            repeated = again if repeated is None else repeated | again
        if events is not None:
            reached.hit = events.check(step.t1, y1, accept)
            reached.g_lo, reached.g_hi = events.previous, events.after
            events.advance(accept)
            if terminal:  # a sample that crossed waits at its step's end for the check
                still = still & ~reached.hit
        if keep_steps:
            pending.append(reached)
        due = iteration >= next_check or len(pending) >= most_pending
        if due or iteration >= config.max_steps:
            # a check: locate the events and write the outputs the pending steps crossed
            with torch.no_grad():
                ends = _ends(pending, ts_signed, sign) if write_outputs else None
                hits = _stack([r.hit for r in pending]) if events is not None else None
                nan = None if events is None else events.nan_seen
                shown = None
                if meter is not None:
                    shown = device_values(t, t_start, t_stop, still, n_steps, n_accepted, sign)
                n_still, left, lo, hi, rounds, stalled, nan_seen, shown = _read_progress(
                    still, t, proposal, t_stop, span, ~accept, sign, ends, next_out, hits, nan,
                    repeated, shown,
                )  # fmt: skip
                if meter is not None:
                    meter.report(*shown)
                if nan_seen:
                    events.check_nan()
                # the next check after a quarter of the steps left at the current step
                # sizes, and no later than after as many attempts as the solve has made
                # (checks at 1, 2, 4, 8, ... attempts at first): steps that grow fast end the
                # solve far sooner than their size says, and the attempts after the end,
                # until the check, would call f for nothing
                next_check = iteration + max(1, min(most_unchecked, int(left) // 4, iteration))
            to_write = write_outputs and min(hi, n_out - 1) > lo  # the last one: the final y
            if (rounds or to_write) and needs_f1 and pending[-1].f1 is None:
                # for the interpolant; the next f0 below
                f1 = pending[-1].f1 = evaluate(step.t1_inner, y1)
            if rounds:
                found, t_event, y_event, extra = _locate_events(
                    events, pending, hits, rounds, solver, needs_f1, evaluate
                )
                nfe = nfe + extra
                events.check_nan()  # the location's own evaluations
                if terminal:  # found samples end at their event
                    t_stop = torch.where(found, t_event, t_stop)
                    t = torch.where(found, t_event, t)
                    y = torch.where(found[:, None], y_event, y)
                    if write_outputs:
                        ends = _ends(pending, ts_signed, sign)
            if to_write:
                outputs, next_out, used, extra = _write_outputs(
                    solver, pending, ends, outputs, next_out, ts_tensor, lo, hi, needs_f1, evaluate
                )
                nfe = nfe + extra
                if needs_f1 and not fsal:  # f(t1, y1) of samples' last steps, for outputs
                    nfe = nfe + (used & ~torch.stack([r.still for r in pending])).sum(0)
            pending = []
            if stalled or iteration >= config.max_steps:  # raises with config.throw
                codes = sample_failures(
                    iteration, still, t, proposal, t_stop, span, ~accept, sign, y, config,
                    repeated,
                )  # fmt: skip
                status = torch.maximum(status, codes)  # the failing samples stop here
                still = still & (codes == 0)
                n_still = int(across(still.sum(), torch.sum))
        active = still
        if not fsal and facts.needs_f0:  # f(t1, y1): the next f0, or an event's interpolant
            nfe = nfe + (accept & reached.still)
        if not n_still:
            break
        if config.skip_finished:  # checked after every step
            f.keep(still, n_still)
        if fsal:
            f0 = step.f0_accepted
        elif facts.needs_f0:  # f(t1, y1) starts the next step of the accepted samples
            at = t  # (a rejected sample on a jump: f just past it, its value unused)
            if config.jump_t:
                start = torch.where(on_jump, past_jump(sign, t, term.time_dtype), t)
                at = torch.where(accept, step.t1_inner, start)
            f_next = evaluate(at, y) if f1 is None else f1
            f0 = torch.where(accept[:, None], f_next, f0)
            if pending:  # the waiting step's f(t1, y1), where accepted
                pending[-1].f1 = f0
            if config.save is not None:
                config.save.set_f1(f0)
        if config.jump_t:  # a step from a jump starts from f just past it
            on_jump = torch.where(accept, step.jumped, on_jump)
            jumped = step.jumped & still
            if bool(across(jumped.any(), torch.any)):  # (one read per step, jump_t only)
                f_past = evaluate(past_jump(sign, t, term.time_dtype), y)
                f0, nfe = torch.where(jumped[:, None], f_past, f0), nfe + jumped
    if config.save is not None:  # f(t1, y1) and extra stages the dense output needs
        nfe = nfe + config.save.finish_batch(solver, evaluate, t)
    later = torch.arange(n_out, device=device)[:, None] >= next_out
    if events is not None and events.event.terminal:  # later outputs hold the event state
        later = later & (events.mask | (status > 0))
    later[-1] = True  # the final state
    # a failing sample's outputs after where it stopped are NaN
    fill = y if config.throw else torch.where((status > 0)[:, None], torch.nan, y)
    outputs = torch.where(later[..., None], fill, outputs)
    nfe = nfe + solver.evaluations_per_attempt() * n_steps
    record_counts(stats, config.per_sample, status, n_steps, n_accepted, nfe, f.rows_evaluated)
    if nested and config.per_sample:
        outputs = rows_to_flat(term.spec, outputs)
    return outputs.reshape(n_out, -1)


def _most_pending(stages: int, y: torch.Tensor) -> int:
    """How many steps may wait for their outputs: at most ``_PENDING_BYTES`` of them."""
    per_step = (stages + 4) * y.numel() * y.element_size()
    return max(1, min(_MAX_UNCHECKED, _PENDING_BYTES // per_step))
