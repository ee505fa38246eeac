"""The whole adaptive solve as one compiled graph (``compile=True``).

The device loop's step attempt (``ExplicitRK.propose``, the per-row error ratio and
``PIController.decide``), the first step size (``initial_step``), the steps onto the
landing points (``step_t``, ``jump_t``: ``_landing``), the outputs at the
output times (``ExplicitRK.dense``) and the per-sample statistics run inside one
``torch._higher_order_ops.while_loop``, compiled with ``torch.compile(fullgraph=True)``
through ``whole_solve_backend`` (inductor with its C++ wrapper; on the CPU float32 tanh and
small matrix products fused into the loop's kernels, ``_whole_backend``):
no host synchronisation from the first evaluation of f to the end of the solve. One
problem is a batch of one (its error norm over the whole state); per-sample mode gives each
row its own time, step size and decisions, as the eager device loop does, and takes the
same steps. After the graph one read says whether every sample reached its end and
whether y0 and the outputs are finite; if not, the errors of the device loop and of the
checks of y0 and the outputs are raised (a stalled sample, a failing step held at the
controller's min_step, ``max_steps``, a non-finite y0, f0 or output).

A new y0, new output times or new parameters of f with the same shapes, dtypes and
structure reuse the graph (static shapes: one graph per shape). What the graph cannot run
(``unsupported``) falls back to the device loop with each step compiled.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._higher_order_ops import while_loop

from ._attempt import attempt, retried_unchanged
from ._autocast import AutocastField
from ._errors import Y0_NOT_FINITE, NonFiniteError, f0_not_finite
from ._landing import LandingTimes, landing_times, next_landing, past_jump, start_times
from ._norms import row_norm
from ._pending import _raise_stalled, _stalled
from ._solution import SolveStats
from ._term import ODETerm
from ._whole_plan import Plan, output_times, planned
from .controllers._ops import solve_span
from .controllers.initial_step import initial_step
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK

# why an SDE solve with compile=True compiles each step attempt (``docs/sde.md``)
SDE_WHOLE_SOLVE = (
    "an SDE method's Brownian motion is drawn eagerly before each step attempt (a "
    "BrownianInterval's tree of queried intervals lives in Python), so its steps are compiled "
    "one attempt at a time"
)


# a sample's running count when its rejected step would be attempted again unchanged
_REPEATED = 2


class WholeSolveUnavailable(RuntimeError):
    """torch.compile could not capture the whole solve (e.g. an operation of f that it
    cannot trace inside ``while_loop``): the caller compiles each step instead."""


def _reason(error: Exception) -> str:
    """torch's reason for refusing the graph, in a line: its message's first line, or, where
    that only announces the reason ("... Got graph break/error:"), the next one; with the fix
    for the refusal users meet most, views of one tensor that f reads."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return "(no message)"
    reason = lines[0]
    if reason.endswith(":") and len(lines) > 1:
        reason = f"{reason} {lines[1]}"
    if "aliasing" in str(error):
        reason += (
            " - f reads views of one tensor (such as W and W.T in y @ W.T, or slices of one "
            "buffer): write F.linear(y, W, b), or .clone() the slices"
        )
    return reason


def unsupported(config: Any, spec: Any, func: Any = None) -> str | None:
    """Why the whole solve of ``func`` (the term's f) cannot be one graph here (``None``: it
    can). The caller then compiles each step instead (``compile='step'``)."""
    solver, controller = config.solver, config.controller
    if not isinstance(solver, ExplicitRK) or not solver.adaptive:
        return "only the adaptive explicit Runge-Kutta methods run as one graph"
    dense = solver.tableau.dense
    if dense is not None and len(dense.extra_c) > 1:
        return f"{solver!r}'s dense output needs extra stages"
    if not isinstance(controller, PIController):
        return "only the PIController runs inside the graph"
    if not spec.is_leaf or row_norm(config.norm) is None:
        return "the graph measures errors on one tensor by RMS, a mixed norm or a seminorm"
    if config.perturb or config.callbacks is not None:
        return "perturb and callbacks act between steps on the host"
    if config.events is not None:
        return "events are located between steps on the host"
    if config.save is not None:
        return "dense=True and SaveAt(steps=True) keep the steps, which the graph does not"
    if isinstance(func, AutocastField):
        # (traced inside while_loop, f's bfloat16 products meet the float32 state: "expected
        # scalar type torch.bfloat16 but found torch.float32", torch 2.13)
        return "torch.autocast does not reach inside torch._higher_order_ops.while_loop"
    if torch.is_grad_enabled():
        return (
            "autograd through torch._higher_order_ops.while_loop is not supported (torch "
            f"{torch.__version__}); solve under torch.no_grad() or with gradient=Backsolve()"
        )
    return None


def integrate_whole(
    term: ODETerm,
    y0_flat: torch.Tensor,
    ts: list[float],
    config: Any,
    stats: SolveStats,
    plans: dict[float, Any] | None = None,
    shape: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Solve as one compiled graph from ``y0_flat`` (the flat state, or its (batch, n)
    rows); return (len(ts), n) flat states, or the states in ``shape`` (see the module).
    ``plans``: ``planned``'s (plan, coefficients, graph) by direction of time, for solves
    whose f, settings, shapes, dtype and device are those of the solve that filled it
    (``_warm``): looked up there first, and filled once the graph has run."""
    per_sample = config.per_sample
    batch = term.spec.shapes[0][0] if per_sample else 1
    y = y0_flat if y0_flat.dim() == 2 else y0_flat.reshape(batch, -1)
    sign = 1.0 if ts[-1] > ts[0] else -1.0
    entry = None if plans is None else plans.get(sign)
    planned_now = entry is None
    points = landing_times(sign, config.step_t, config.jump_t, y.device)
    if planned_now:
        entry = planned(_solve_graph, term, y, ts, config, sign, points)
    plan, co, run = entry
    # (the plan's controller: its settings are config.controller's, and no caller changes it)
    ctrl: PIController = plan.controller
    ts_tensor = output_times(ts, y.device)
    try:
        result = run(plan, y, ts_tensor, points)
    except torch._dynamo.exc.FailOnRecompileLimitHit as error:
        limit = torch._dynamo.config.recompile_limit
        raise WholeSolveUnavailable(
            f"torch.compile compiled the whole solve of {type(plan.solver).__name__} "
            f"{limit} times in this process (torch._dynamo.config.recompile_limit = {limit}, "
            "one graph per f, shape and setting); each step is compiled instead (raise the "
            "limit to keep more whole-solve graphs)"
        ) from error
    except torch._dynamo.exc.TorchDynamoException as error:
        raise WholeSolveUnavailable(
            f"torch.compile (torch {torch.__version__}) could not capture the whole solve as "
            f"one while_loop graph ({type(error).__name__}: {_reason(error)}); each step is "
            "compiled instead"
        ) from error
    if planned_now and plans is not None:  # (a plan whose graph runs)
        plans[sign] = entry
    outputs, t, proposal, runs, rejected, n_steps, n_accepted, nfe, d1, report = result
    # every count and check in one read: the solve's only host synchronisation
    bad_y0, bad_f0, running, iterations, steps, accepted, bad_outputs, past_jumps = report.tolist()
    if bad_y0:
        raise NonFiniteError(Y0_NOT_FINITE)
    if bad_f0:
        i = int((~torch.isfinite(d1)).nonzero()[0])
        where = f" for sample {i}" if per_sample else f" at t0={ts[0]:.6g}"
        raise f0_not_finite(where)
    if running:  # the device loop's errors
        t_stop = torch.full((batch,), ts[-1], dtype=torch.float64, device=y.device)
        span = torch.full_like(t_stop, solve_span(ts[0], ts[-1]))
        iteration = config.max_steps if iterations >= config.max_steps else 0
        still, repeated = runs != 0, runs == _REPEATED
        _raise_stalled(
            iteration, still, t, proposal, t_stop, span, rejected != 0, plan.sign, outputs[-1],
            config, repeated,
        )  # fmt: skip
    if bad_outputs:  # (raises, naming the first non-finite output)
        from ._validate import check_finite  # (import cycle)

        check_finite(outputs.reshape(len(ts), -1), ts)
    term.nfe += iterations * (co.stages - 1 + (not co.fsal)) + past_jumps + 1
    term.nfe += ctrl.first_step is None
    stats.n_steps += steps
    stats.n_accepted += accepted
    stats.n_rejected += steps - accepted
    if config.progress is not None:  # (the graph has no host step: its end only)
        config.progress.report(1.0, ts[-1], accepted, steps - accepted)
    if per_sample:
        stats.sample_nfe = nfe
        stats.rows_evaluated = term.nfe * batch
        stats.sample_steps = n_steps
        stats.sample_accepted = n_accepted
        stats.sample_rejected = n_steps - n_accepted
    if shape is None:
        return outputs.reshape(len(ts), -1)
    return outputs if outputs.shape == shape else outputs.reshape(shape)


def _solve_graph(
    plan: Plan, y0: torch.Tensor, ts: torch.Tensor, points: LandingTimes | None
) -> tuple[torch.Tensor, ...]:
    """The whole solve (traced by torch.compile into one graph; also correct eagerly).
    ``points``: the landing points (``step_t``, ``jump_t``), or ``None``."""
    solver, ctrl, sign = plan.solver, plan.controller, plan.sign
    batch = y0.shape[0]
    fsal = solver.tableau.fsal
    c = solver.tableau.c
    repeats = ctrl.min_step > 0
    t0 = ts[0].expand(batch).clone()
    t_end = ts[-1].clone()  # (views of one input would alias: while_loop refuses that)
    t_stop = t_end.expand(batch).clone()
    span = solve_span(t0, t_stop)  # the scale of the smallest step (``step_floor``)
    # (a sample starting on a jump evaluates f just past it)
    f0 = plan.call(start_times(points if plan.jumps else None, sign, t0, plan.time_dtype), y0)
    if ctrl.first_step is None:
        k = plan.constants
        size, d1 = initial_step(
            plan.call, t0, y0, f0, sign, k.exponent, k.rtol, k.atol, k.norm, span
        )
        nfe0 = 2
    else:
        size, d1 = torch.full_like(t0, ctrl.first_step), torch.zeros_like(t0)
        nfe0 = 1
    size = size.clamp(min=ctrl.min_step, max=ctrl.max_step)
    inner = ts[1:-1].clone()  # the outputs interpolated inside the steps that cross them
    n_inner = inner.shape[0]
    # the carried values packed by dtype (each carried tensor costs an allocation and a
    # copy per iteration): loop = [iterations, a running sample stalled, evaluations of f
    # past jumps (of the batch)]; times = [t, proposal, the controller's memory (one or two
    # rows)]; counts = [steps, accepted, evaluations of f, running, last attempt rejected]
    # per sample, running 0 (finished), 1 or ``_REPEATED`` (its rejected step would be
    # attempted again unchanged: with min_step > 0 only, it ends the loop as a stall)
    running = torch.isfinite(d1) & (t0 != t_end)
    memory = ctrl.initial_memory(torch.ones_like(t0))  # (the PI(D) memory: a row or two)
    memory_shape = memory.shape
    zeros = torch.zeros(batch, dtype=torch.long, device=y0.device)
    carry = (
        torch.zeros(3, dtype=torch.long, device=y0.device),
        torch.cat([torch.stack([t0, t0 + sign * size]), memory.reshape(-1, batch)]),
        y0,
        f0,
        torch.stack([zeros, zeros, zeros + nfe0, running.long(), zeros]),
        y0.expand(n_inner, *y0.shape).clone(),  # inner outputs
    )

    def cond(loop, times, y, f0, counts, outs):
        return (counts[3] != 0).any() & (loop[1] == 0) & (loop[0] < plan.max_steps)

    def body(loop, times, y, f0, counts, outs):
        t, still = times[0], counts[3] != 0
        prev = times[2:].reshape(memory_shape)
        landing = None if points is None else next_landing(points, sign, t, t_stop)
        step = attempt(
            plan.call, plan.constants, None, t, y, f0, times[1], t_stop, still, prev,
            counts[0], counts[1], None, landing,
        )  # fmt: skip
        t1, h, y1, accept, t_next = step.t1, step.h, step.y1, step.accept, step.t_next
        new_prev = step.previous_ratio if ctrl.memory_size else prev
        stacked, h_y = step.k_all, h.to(y.real.dtype)[:, None]
        f1 = step.k_last if fsal else plan.call(step.t1_inner, y1)
        f0_next = torch.where(accept[:, None], f1, f0)
        past_jumps = loop[2]
        if plan.jumps:  # a step from a jump starts from f just past it
            jumped = step.jumped & step.still
            past_jumps = past_jumps + jumped.any()
            y_next = step.y_accepted

            def past(f0_next, t_next, y_next, jumped):
                f_past = plan.call(past_jump(sign, t_next, plan.time_dtype), y_next)
                return torch.where(jumped[:, None], f_past, f0_next)

            def unchanged(f0_next, t_next, y_next, jumped):
                return f0_next.clone()

            f0_next = torch.cond(jumped.any(), past, unchanged, (f0_next, t_next, y_next, jumped))
        still_next = step.still
        wrote = torch.zeros_like(still)
        if not n_inner:
            outs = outs.clone()  # (an input returned as it is would alias: while_loop refuses)
        else:
            lo = sign * (inner[:, None] - t[None]) > 0
            crossed = accept[None] & lo & (sign * (inner[:, None] - t1[None]) <= 0)
            rows = n_inner * batch
            theta = ((inner[:, None] - t[None]) / torch.where(h == 0, 1.0, h)[None]).reshape(-1)
            value = solver.dense(
                y.expand(n_inner, *y.shape).reshape(rows, -1),
                y1.expand(n_inner, *y.shape).reshape(rows, -1),
                h_y.expand(n_inner, batch, 1).reshape(rows, 1),
                stacked.unsqueeze(1).expand(-1, n_inner, *y.shape).reshape(len(c), rows, -1),
                f1.expand(n_inner, *y.shape).reshape(rows, -1),
                theta,
            ).reshape(n_inner, *y.shape)
            value = torch.where((inner[:, None] == t1[None])[..., None], y1[None], value)
            outs = torch.where(crossed[..., None], value, outs)
            wrote = crossed.any(0)
        nfe = counts[2] + (len(c) - 1) * still
        if not fsal:  # f(t1, y1): the next f0, or the interpolant of the last step's outputs
            nfe = nfe + (accept & (still_next | wrote))
        if plan.jumps:
            nfe = nfe + jumped
        proposal = step.proposal
        runs, repeated = still_next.long(), None
        if repeats:  # (a rejected step's size can be held only at min_step > 0)
            repeated = retried_unchanged(step, sign, t_stop, landing)
            runs = runs + repeated
        rejected = still & ~accept
        stalled = _stalled(still_next, t_next, proposal, t_stop, span, rejected, sign, repeated)
        return (
            torch.stack([loop[0] + 1, stalled.any().long(), past_jumps]),
            torch.cat([torch.stack([t_next, proposal]), new_prev.reshape(-1, batch)]),
            step.y_accepted,
            f0_next,
            torch.stack([step.n_steps, step.n_accepted, nfe, runs, rejected.long()]),
            outs,
        )

    loop, times, y, _, counts, outs = while_loop(cond, body, carry)
    it, t, proposal, still = loop[0], times[0], times[1], counts[3] != 0
    steps, accepted, nfe = counts[0], counts[1], counts[2]
    outputs = torch.cat([y0[None], outs, y[None]])
    report = torch.stack(
        [
            (~torch.isfinite(y0)).any().long(), (~torch.isfinite(d1)).any().long(),
            still.any().long(), it, steps.sum(), accepted.sum(),
            (~torch.isfinite(outputs)).any().long(), loop[2],
        ]
    )  # fmt: skip
    return outputs, t, proposal, counts[3], counts[4], steps, accepted, nfe, d1, report
