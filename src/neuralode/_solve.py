"""The core entry point: validate the problem, build the term, dispatch. No numerics here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._args import DEFAULT_MAX_STEPS, flag, step_limit
from ._autocast import AutocastField, autocast_active, full_precision
from ._callbacks import Callbacks
from ._dispatch import BatchTime
from ._events import Event
from ._execution import Execution
from ._graph_break import outside_dynamo
from ._host import dispatched, transform_active, vmap_active
from ._loop import LoopConfig
from ._norms import Norm, lay_out_tolerances, mixed_norm, rms_norm
from ._progress import ProgressMeter, tracker_of
from ._recorder import Recorder
from ._saveat import SaveAt, check_saveat
from ._solution import Solution, SolveStats
from ._solve_run import progress_run
from ._spans import sample_times
from ._term import ODETerm
from ._validate import (
    check_event,
    check_stage_reach,
    check_state,
    check_tolerances,
    coerce_strategies,
)
from ._validate_times import (
    check_fixed_steps,
    check_grid_times,
    check_time_resolution,
    check_times,
)
from ._vmap import solve_vmapped, vmap_level
from ._vmap_inside import refuse_under_transforms, solve_inside_vmap
from ._warm import defaults, solve_warm
from .adjoint.base import GradientStrategy, Problem, check_forward_mode
from .adjoint.direct import Direct
from .controllers.base import StepSizeController
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .sde._engine import SDESolver, SDETerm
from .sde._rows import check_sde_solve
from .solvers.base import Solver
from .solvers.dopri5 import Dopri5


def solve(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    ts: torch.Tensor,
    *,
    solver: Solver | None = None,
    controller: StepSizeController | None = None,
    norm: Norm | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    step_t: Sequence[float] | torch.Tensor | float = (),
    jump_t: Sequence[float] | torch.Tensor | float = (),
    perturb: bool = False,
    callbacks: Any = None,
    gradient: GradientStrategy | None = None,
    event: Event | None = None,
    per_sample: bool | str = False,
    compile: bool | str = False,
    throw: bool = True,
    saveat: SaveAt | None = None,
    dense: bool = False,
    progress_meter: ProgressMeter | None = None,
    **aliases: bool,
) -> Solution:
    """Solve dy/dt = func(t, y) from ``y0`` at ``ts[0]`` and return the states at all ``ts``.

    Arguments:
        func: the vector field, called as ``func(t, y)`` with ``y`` of the structure of ``y0``
            and returning dy/dt of the same structure. It must not modify ``y`` in place:
            ``y`` may be ``y0`` itself or a state the solver keeps.
        y0: the initial state: a tensor or a nested tuple/list/dict of tensors (one dtype, one
            device; float16, bfloat16, float32, float64, complex64 or complex128); f and the
            outputs see the same structure (namedtuples as themselves).
        ts: the output times, a 1-D strictly increasing or decreasing tensor; ``ts[0]`` is the
            initial time. With an ``event``, ``ts[-1]`` may be infinite (search until the event).
            With ``per_sample=True`` also (batch, n): each sample its own output times (row i:
            sample i's t0, ..., t1; finite, every row strictly increasing or every row
            strictly decreasing); ``ys`` is then (n, batch, ...) with ``ys[j, i]`` sample i at
            ``ts[i, j]``.
        solver: the method (a [`Solver`][neuralode.solvers.Solver]); defaults to ``Dopri5()``.
        controller: the step-size controller; defaults to ``PIController()`` for adaptive
            solvers and to steps between the output times (``FixedGrid()``) for fixed-step ones.
        norm: measures the scaled error of a step; defaults to the RMS norm (the max of
            per-tensor RMS norms for nested states).
        max_steps: the most steps the solve may take before raising ``MaxStepsError``;
            ``None`` for no limit. In per-sample mode each sample's own step attempts count.
        step_t: times the steps must land on (a sequence of numbers, a tensor, or one number).
        jump_t: times where ``func`` is discontinuous: steps land there and ``func`` is
            re-evaluated on the far side (as ``step_t``).
        perturb: evaluate ``func`` just after/before the step's end points (torchdiffeq's
            ``perturb``), for vector fields with discontinuities at step boundaries.
        callbacks: an object that may define ``on_step``, ``on_accept`` and ``on_reject``, each
            called as ``(t, y, dt)``.
        gradient: how gradients flow: ``Direct()`` (default: backpropagation through the
            solver), ``Backsolve()`` (continuous adjoint, O(1) memory) or ``Checkpointed()``
            (exact gradients of the discrete solve, memory O(steps x state)). Gradients with
            respect to ``y0``, the parameters of ``func`` and ``ts`` are available with each.
        event: an [`Event`][neuralode.Event] watching ``event.fn(t, y)``: a terminal event ends
            the solve where an element crosses zero; ``Solution.event_t`` and
            ``Solution.event_y`` are then differentiable (implicit-function gradient: with
            respect to ``y0``, the parameters of ``func`` and tensors ``event.fn`` uses) and
            ``ys``/``ts`` hold only the outputs before it. With ``per_sample=True``,
            ``event.fn`` receives the per-sample times (batch,) and the batched state and
            returns (batch,) or (batch, k) values; each sample stops at its own terminal
            event, ``event_t`` is (batch,) (NaN for samples without an event), ``event_y`` the
            state of each sample there, ``event_mask`` says which samples had one, outputs at
            ``ts`` after a sample's event hold its event state, and ``event_ts`` is
            (batch, most events) with every located crossing, NaN-padded.
        per_sample: how the batch is solved: ``False`` (default) one problem; ``True``
            dimension 0 of ``y0`` (of every tensor of a nested ``y0``) as a batch of
            independent problems, each sample
            with its own time, step size and accept/reject decisions (error norm: RMS over the
            sample), taking the steps it would take alone; ``func`` then receives ``t`` as a
            (batch,) tensor and ``Solution.stats`` gains ``sample_nfe``, ``sample_steps``,
            ``sample_accepted`` and ``sample_rejected``. Needs an explicit Runge-Kutta
            solver: adaptive with a ``PIController``, or on fixed steps with a
            ``FixedGrid`` (each sample on its own grid from its own t0, as alone; its
            ``step_size`` may be a (batch,) tensor); gradients by ``Direct()``,
            ``Backsolve()`` or ``Checkpointed()``. ``"skip_finished"``: per sample, and
            ``func`` is called with only the samples still running (only for a ``func`` that
            treats rows independently).
        compile: ``False`` (default) eager; ``True`` runs the whole adaptive solve (first
            step, steps, decisions, outputs, per-sample statistics) as one
            ``torch.compile``'d ``while_loop`` graph without host synchronisation (adaptive
            explicit Runge-Kutta, ``PIController``, one tensor state, no autograd graph:
            under ``torch.no_grad()`` or ``Backsolve()``'s forward solve, no events,
            ``perturb`` or callbacks; ``step_t``/``jump_t`` land inside the graph),
            elsewhere it compiles each step;
            ``"step"`` compiles each step attempt, ``func`` included; ``"cuda_graph"``
            (per-sample mode or the device loop, a CUDA state, no autograd graph) captures
            the step attempt as a CUDA graph and replays it. The first solve of each shape
            compiles (seconds to a minute); later solves of the same shapes reuse the graph.
            ``per_sample`` and ``compile`` are validated together (``Execution``): a
            combination no mode runs is refused with the reason.
        throw: ``True`` (default): a failure raises (in per-sample mode naming the failing
            samples); ``False``: it shows in ``Solution.status`` instead (one problem: 0-dim;
            per sample: (batch,), each sample stopping where it fails while the others go
            on), the outputs after the last one reached are NaN. Not with ``Backsolve()``
            while recording gradients, nor with ``compile=True``'s whole-solve graph (the
            steps are compiled instead).
        saveat: what to save (a [`SaveAt`][neuralode.SaveAt]): the states at ``ts``
            (default), at the end only, at every step, and/or the dense solution, optionally
            through a function of the state.
        dense: keep the dense solution (shorthand for ``saveat=SaveAt(dense=True)``):
            [`Solution.evaluate`][neuralode.Solution.evaluate] and
            [`Solution.derivative`][neuralode.Solution.derivative] then work anywhere in the
            span. Needs ``gradient=Direct()`` and no event.
        progress_meter: shows the solve's progress while it runs (a
            [`ProgressMeter`][neuralode.ProgressMeter], e.g.
            [`TqdmProgressMeter()`][neuralode.TqdmProgressMeter]): the fraction of the time
            span done, ``t`` and the accepted and rejected steps, updated after every step
            attempt (the host loop), at the scheduled checks (per-sample mode and the device
            loop: no extra host read) or once at the end (``compile=True``'s whole-solve
            graph); closed at the end, also when the solve raises. The forward solve only
            (not ``Backsolve()``'s backward solves); not under ``torch.func`` transforms.
        **aliases: the older flags, kept as aliases: ``skip_finished=True``,
            ``compile_step=True`` (``compile="step"``), ``cuda_graph=True`` and
            ``device_loop=True`` (one problem in the per-sample loop, a batch of one:
            decisions stay on the device between scheduled checks).

    Returns:
        A [`Solution`][neuralode.Solution]: ``ys`` (the states at ``ts``, stacked on a new
            dimension 0 of every tensor), ``ts``, the event results and ``stats`` (function
            evaluations and steps, forward and backward).

    Under ``torch.func.vmap`` over ``y0`` each vmapped problem takes its own steps (a
    per-sample solve of the batch, ``func`` called per problem by an inner ``vmap``) and
    equals solving it alone; ``torch.func.grad``, ``jacrev`` and ``jvp`` compose outside it,
    and with ``Direct()`` also inside it (``vmap(grad(loss))``, ``vmap(hessian(loss))``: each
    problem still its own steps); ``Backsolve()`` and ``Checkpointed()`` are refused there
    with the fix.

    Raises:
        ValueError: bad input (times not strictly monotonic, a state of mixed dtypes or
            devices, an option the chosen solver or mode does not support); the message names
            the problem and the fix.
        TypeError: ``func`` or an event function returns something of the wrong type or
            structure; ``perturb`` or ``throw`` is not a bool; ``progress_meter`` is not a
            ``ProgressMeter``.
        MaxStepsError: more than ``max_steps`` steps were needed.
        StepSizeUnderflowError: the step size became too small to make progress in time.
        NonFiniteError: NaN or infinity appeared in the state.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _SOLVE_OUTSIDE_DYNAMO(locals())
    key = None  # a warm call's key (``_warm``): its other arguments keep their defaults
    transforms = transform_active()
    if (
        not transforms
        and (compile is True or compile == "solve")
        and progress_meter is None
        and not autocast_active()  # (f under autocast: AutocastField, made per solve)
        and defaults(
            norm, gradient, event, saveat, callbacks, dense, perturb, throw, step_t, jump_t, aliases
        )
    ):
        key, solution = solve_warm(func, y0, ts, solver, controller, per_sample, max_steps)
        if solution is not None:
            return solution
    solver, controller, gradient, norm = coerce_strategies(solver, controller, gradient, norm)
    check_event(event)
    perturb, throw = flag("perturb", perturb), flag("throw", throw)
    solver = Dopri5() if solver is None else solver
    jumps = check_grid_times("jump_t", jump_t)
    check_stage_reach(solver, jumps, perturb)
    # under torch.func.vmap: each problem its own steps; inside vmap: a transform inside it,
    # or a vmap over func's captured tensors (one query when no transform runs)
    level = vmap_level(y0, ts) if transforms else None
    if transforms and progress_meter is not None:
        raise ValueError(
            "progress_meter is not supported under torch.func transforms (vmap, grad, jacrev, "
            "jvp): leave it out there, or show progress around the transformed function"
        )
    if transforms:
        refuse_under_transforms(
            dict(gradient=gradient, event=event, dense=dense, compile=compile, **aliases),
            level is not None or vmap_active() or bool(dispatched()),  # (under a vmap)
        )
    if level is not None or (transforms and vmap_active()):
        options = dict(locals())
        dropped = ("func", "y0", "ts", "level", "aliases", "key", "solution", "transforms", "jumps")
        for name in dropped:
            options.pop(name, None)
        if level is not None:
            return solve_vmapped(solve, func, y0, ts, level, {**options, **aliases})
        return solve_inside_vmap(solve, func, y0, ts, {**options, **aliases})
    spec, y0_flat = check_state(y0)
    execution = Execution.of(per_sample, compile, **aliases)
    if isinstance(ts, torch.Tensor) and ts.ndim == 2 and execution.per_sample:
        times = sample_times(ts, int(spec.shapes[0][0]), y0_flat.device)
    else:
        times = check_times(ts, y0_flat.device, open_end=event is not None)
    check_time_resolution(times, y0_flat.dtype)
    if controller is None:
        controller = PIController() if solver.adaptive else FixedGrid()
    controller = lay_out_tolerances(controller, spec)
    solver.set_tolerances(getattr(controller, "rtol", None), getattr(controller, "atol", None))
    cleared = check_tolerances(controller, y0_flat)
    max_steps = step_limit(max_steps)
    if isinstance(controller, FixedGrid) and not isinstance(times, torch.Tensor):
        check_fixed_steps(controller, times, max_steps, event is None and throw, y0_flat.dtype)
    sde = isinstance(func, SDETerm)
    if sde or isinstance(solver, SDESolver):
        check_sde_solve(func, ts, solver, gradient, event, execution)
    if saveat is not None or dense is not False:  # (else: the states at ts)
        saveat = check_saveat(saveat, dense, execution, solver, gradient, event, ts.shape[-1])
    if execution.compile or execution.device:  # (the eager host loop runs every option)
        options = {"norm": norm, "step_t": step_t, "jump_t": jump_t, "perturb": perturb}
        options.update(callbacks=callbacks, gradient=gradient, event=event)  # (not locals())
        execution.check(spec, solver, controller, options)
    if event is not None and gradient is not None and not gradient.supports_events:
        raise ValueError(
            f"gradient={gradient!r} does not support events: its solve is a different method "
            "from the one that locates the event, so the event time and state would not be "
            "its own. Use gradient=Checkpointed() (exact, memory O(steps x state)), Direct() "
            "or Backsolve() with an event, or solve up to a fixed end time"
        )
    if not throw and torch.is_grad_enabled() and not isinstance(gradient, (Direct, type(None))):
        raise ValueError(
            f"throw=False needs gradient=Direct() (or no autograd graph): a failed solve's NaN "
            f"outputs have no {type(gradient).__name__} gradient"
        )
    if execution.per_sample and not sde:
        func = BatchTime(func, int(spec.shapes[0][0]))
    if norm is None:
        norm = rms_norm if spec.is_leaf else mixed_norm(spec.numels)
    config = LoopConfig(
        solver=solver,
        controller=controller,
        norm=norm,
        max_steps=max_steps,
        step_t=check_grid_times("step_t", step_t),
        jump_t=jumps,
        perturb=perturb,
        callbacks=None if callbacks is None else Callbacks(callbacks, spec),
        execution=execution,
        throw=throw,
        save=Recorder() if saveat is not None and saveat.records else None,
        whole_plans=None if key is None else {},
        progress=tracker_of(progress_meter, times),
    )
    if sde:
        term = func.bind(spec, y0_flat, times, execution.per_sample)
    else:
        term = ODETerm(func, spec, y0_flat)
    stats = SolveStats()
    if y0_flat.numel() == 0:  # nothing to integrate
        ys = y0_flat.expand(ts.shape[-1], 0)
        shape = spec.shapes[0][:1] if execution.per_sample else ()
        stats.status = torch.zeros(shape, dtype=torch.long, device=ts.device)
        return Solution(ts=ts, ys=spec.unflatten(ys), stats=stats, status=stats.status)
    problem = Problem(func, term, spec, y0_flat, ts, times, config, stats)
    gradient = Direct() if gradient is None else gradient
    check_forward_mode(gradient, problem)  # (before any step, the event search's included)
    if isinstance(getattr(term, "func", None), AutocastField):
        # f computes under the autocast (AutocastField), the solver in the state's dtype
        with full_precision():
            return progress_run(problem, gradient, event, saveat, key, cleared)
    return progress_run(problem, gradient, event, saveat, key, cleared)


_SOLVE_OUTSIDE_DYNAMO = outside_dynamo(solve)
