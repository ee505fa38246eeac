"""The core entry point: validate the problem, build the term, dispatch. No numerics here."""

from __future__ import annotations

import cmath
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from ._callbacks import Callbacks
from ._dense import Recorder, SaveAt, check_saveat, saved
from ._errors import MaxStepsError, NonFiniteError, StepSizeUnderflowError
from ._events import Event, EventGradient, OneProblemEvents
from ._execution import Execution
from ._host import across, plain, vmap_active
from ._loop import LoopConfig, integrate
from ._norms import LOW_PRECISION, Norm, l2_norm, max_norm, mixed_norm, rms_norm
from ._solution import Solution, SolveStats
from ._spans import run_spans, sample_times
from ._status import Status, mark_non_finite
from ._term import ODETerm
from ._tree import TreeSpec, tree_spec
from ._vmap import solve_vmapped, vmap_level
from ._vmap_inside import solve_inside_vmap
from .adjoint import GRADIENTS
from .adjoint.backsolve import Backsolve
from .adjoint.base import GradientStrategy, Problem, time_derivative_inputs
from .adjoint.direct import Direct
from .controllers.base import StepSizeController
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .sde._engine import SDETerm, check_sde_solve
from .solvers import METHODS
from .solvers.base import Solver
from .solvers.dopri5 import Dopri5

DEFAULT_MAX_STEPS = 100_000
# max_steps=None: a bound no solve reaches, kept an int so that every loop compares the same way
NO_STEP_LIMIT = 2**62


def solve(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    ts: torch.Tensor,
    *,
    solver: Solver | None = None,
    controller: StepSizeController | None = None,
    norm: Norm | None = None,
    max_steps: int | None = DEFAULT_MAX_STEPS,
    step_t: Sequence[float] | torch.Tensor = (),
    jump_t: Sequence[float] | torch.Tensor = (),
    perturb: bool = False,
    callbacks: Any = None,
    gradient: GradientStrategy | None = None,
    event: Event | None = None,
    per_sample: bool | str = False,
    compile: bool | str = False,
    throw: bool = True,
    saveat: SaveAt | None = None,
    dense: bool = False,
    **aliases: bool,
) -> Solution:
    """Solve dy/dt = func(t, y) from ``y0`` at ``ts[0]`` and return the states at all ``ts``.

    Arguments:
        func: the vector field, called as ``func(t, y)`` with ``y`` of the structure of ``y0``
            and returning dy/dt of the same structure.
        y0: the initial state: a tensor or a nested tuple/list/dict of tensors (one dtype, one
            device; real or complex floating point).
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
        step_t: times the steps must land on.
        jump_t: times where ``func`` is discontinuous: steps land there and ``func`` is
            re-evaluated on the far side.
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
            ``Solution.event_y`` are then differentiable (implicit-function gradient) and
            ``ys``/``ts`` hold only the outputs before it. With ``per_sample=True``,
            ``event.fn`` receives the per-sample times (batch,) and the batched state and
            returns (batch,) or (batch, k) values; each sample stops at its own terminal
            event, ``event_t`` is (batch,) (NaN for samples without an event), ``event_y`` the
            state of each sample there, ``event_mask`` says which samples had one, outputs at
            ``ts`` after a sample's event hold its event state, and ``event_ts`` is
            (batch, most events) with every located crossing, NaN-padded.
        per_sample: how the batch is solved: ``False`` (default) one problem; ``True``
            dimension 0 of ``y0`` (a tensor) as a batch of independent problems, each sample
            with its own time, step size and accept/reject decisions (error norm: RMS over the
            sample), taking the steps it would take alone; ``func`` then receives ``t`` as a
            (batch,) tensor and ``Solution.stats`` gains ``sample_nfe``, ``sample_steps``,
            ``sample_accepted`` and ``sample_rejected``. Needs an adaptive explicit
            Runge-Kutta solver and a ``PIController``; gradients by ``Direct()`` or
            ``Backsolve()``. ``"skip_finished"``: per sample, and ``func`` is called with only
            the samples still running (only for a ``func`` that treats rows independently).
        compile: ``False`` (default) eager; ``True`` runs the whole adaptive solve (first
            step, steps, decisions, outputs, per-sample statistics) as one
            ``torch.compile``'d ``while_loop`` graph without host synchronisation (adaptive
            explicit Runge-Kutta, ``PIController``, one tensor state, no autograd graph:
            under ``torch.no_grad()`` or ``Backsolve()``'s forward solve, no events,
            ``step_t``/``jump_t``/``perturb``/callbacks), elsewhere it compiles each step;
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
            structure.
        MaxStepsError: more than ``max_steps`` steps were needed.
        StepSizeUnderflowError: the step size became too small to make progress in time.
        NonFiniteError: NaN or infinity appeared in the state.
    """
    solver, controller, gradient, norm = _coerce(solver, controller, gradient, norm)
    solver = Dopri5() if solver is None else solver
    level = vmap_level(y0, ts)
    if level is not None:  # under torch.func.vmap: each problem its own steps
        options = dict(locals())
        for name in ("func", "y0", "ts", "level", "aliases"):
            options.pop(name)
        return solve_vmapped(solve, func, y0, ts, level, {**options, **aliases})
    if vmap_active():  # a transform inside vmap, or a vmap over func's captured tensors
        options = dict(locals())
        for name in ("func", "y0", "ts", "level", "aliases"):
            options.pop(name)
        return solve_inside_vmap(solve, func, y0, ts, {**options, **aliases})
    spec, y0_flat = _check_state(y0)
    execution = Execution.of(per_sample, compile, **aliases)
    if isinstance(ts, torch.Tensor) and ts.ndim == 2 and execution.per_sample:
        times = sample_times(ts, int(spec.shapes[0][0]), y0_flat.device)
    else:
        times = _check_times(ts, y0_flat.device, open_end=event is not None)
    if controller is None:
        controller = PIController() if solver.adaptive else FixedGrid()
    solver.set_tolerances(getattr(controller, "rtol", None), getattr(controller, "atol", None))
    _check_tolerances(controller, y0_flat)
    if max_steps is None:
        max_steps = NO_STEP_LIMIT
    if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0:
        raise ValueError(f"max_steps must be a positive integer or None, got {max_steps!r}")
    # (per-sample times run in the device loop, on a PIController)
    fixed = isinstance(controller, FixedGrid) and not isinstance(times, torch.Tensor)
    if fixed and not math.isfinite(times[-1]):
        if controller.step_size is None:
            raise ValueError(
                "an event search towards t=inf on fixed steps needs a step_size "
                "(FixedGrid(step_size=...), options step_size): the steps cannot be the "
                "output times"
            )
    elif fixed and event is None and throw:
        n_steps = controller.n_steps(times)
        if n_steps > max_steps:
            raise MaxStepsError(
                f"the fixed grid from t={times[0]:.6g} to t={times[-1]:.6g} has {n_steps:,} "
                f"steps, more than max_steps={max_steps:,}; use a larger step_size or raise "
                "max_steps (options max_num_steps)"
            )
    check_sde_solve(func, ts, solver, gradient, event, execution)
    saveat = check_saveat(saveat, dense, execution, solver, gradient, event, ts.shape[-1])
    options = {"norm": norm, "step_t": step_t, "jump_t": jump_t, "perturb": perturb}
    options.update(callbacks=callbacks, gradient=gradient)  # (cheaper than locals())
    execution.check(spec, solver, controller, options)
    if not throw and torch.is_grad_enabled() and not isinstance(gradient, (Direct, type(None))):
        raise ValueError(
            f"throw=False needs gradient=Direct() (or no autograd graph): a failed solve's NaN "
            f"outputs have no {type(gradient).__name__} gradient"
        )
    if execution.per_sample and not isinstance(func, SDETerm):
        func = _BatchTime(func, int(spec.shapes[0][0]))
    if norm is None:
        norm = rms_norm if spec.is_leaf else mixed_norm(spec.numels)
    config = LoopConfig(
        solver=solver,
        controller=controller,
        norm=norm,
        max_steps=max_steps,
        step_t=_check_grid_times("step_t", step_t),
        jump_t=_check_grid_times("jump_t", jump_t),
        perturb=bool(perturb),
        callbacks=None if callbacks is None else Callbacks(callbacks, spec),
        execution=execution,
        throw=bool(throw),
        save=Recorder() if saveat is not None and saveat.records else None,
    )
    term = func.bind(spec, y0_flat) if isinstance(func, SDETerm) else ODETerm(func, spec, y0_flat)
    stats = SolveStats()
    if y0_flat.numel() == 0:  # nothing to integrate
        ys = y0_flat.expand(ts.shape[-1], 0)
        shape = spec.shapes[0][:1] if execution.per_sample else ()
        stats.status = torch.zeros(shape, dtype=torch.long, device=ts.device)
        return Solution(ts=ts, ys=spec.unflatten(ys), stats=stats, status=stats.status)
    problem = Problem(func, term, spec, y0_flat, ts, times, config, stats)
    gradient = Direct() if gradient is None else gradient
    if event is None:
        ys = _run(gradient, problem)
        stats.nfe = term.nfe
        if throw:
            _check_finite(ys, times)
        else:
            batch = spec.shapes[0][0] if execution.per_sample else None
            stats.status = mark_non_finite(stats.status, ys, batch)
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
            solution = _solve_with_event(gradient, problem, OneProblemEvents(event, spec, term))
        solution.status = stats.status
        if not execution.per_sample and solution.event_t is not None and solution.succeeded:
            solution.status = torch.full_like(stats.status, int(Status.EVENT))
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


_GRADIENTS: dict[str, type[GradientStrategy]] = {**GRADIENTS, "backsolve": Backsolve}
_NORMS = {"rms": rms_norm, "max": max_norm, "l2": l2_norm}


def _coerce(solver: Any, controller: Any, gradient: Any, norm: Any) -> tuple[Any, ...]:
    """Accept the obvious other forms of the strategy arguments: a method name or a class
    for ``solver``, a class for ``controller`` and ``gradient``, a name for ``gradient``
    and ``norm``; anything else of a wrong type is a ``TypeError`` naming what is expected."""
    if isinstance(solver, str):
        if solver not in METHODS:
            raise ValueError(f"unknown solver {solver!r}; available: {', '.join(METHODS)}")
        solver = METHODS[solver]()
    solver = _instance("solver", solver, Solver, "a Solver such as no.Dopri5() or a name")
    controller = _instance(
        "controller", controller, StepSizeController, "a StepSizeController such as "
        "no.PIController(rtol, atol)"
    )  # fmt: skip
    if isinstance(gradient, str):
        if gradient.lower() not in _GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; available: {', '.join(_GRADIENTS)}")
        gradient = _GRADIENTS[gradient.lower()]()
    gradient = _instance(
        "gradient", gradient, GradientStrategy, "Direct(), Backsolve(), Checkpointed() or a name"
    )
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(
                f"unknown norm {norm!r}; available: {', '.join(_NORMS)} (the default is rms), "
                "or a callable taking the flat scaled error"
            )
        norm = _NORMS[norm]
    if norm is not None and not callable(norm):
        raise TypeError(
            f"norm must be a callable (flat tensor -> 0-dim tensor) or a name, got "
            f"{type(norm).__name__}"
        )
    return solver, controller, gradient, norm


def _instance(name: str, value: Any, base: type, expected: str) -> Any:
    """``value`` (None, an instance of ``base``, or a subclass of it to instantiate)."""
    if isinstance(value, type) and issubclass(value, base):
        return value()
    if value is not None and not isinstance(value, base):
        shown = value.__name__ if isinstance(value, type) else type(value).__name__
        raise TypeError(f"{name} must be {expected}, got {shown}")
    return value


class _BatchTime(torch.nn.Module):
    """``func`` called with one time per sample: a 0-dim ``t`` (from the adjoint's backward
    solve or the time-gradient terms, which run the batch as one system) is expanded."""

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

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        return self._func(t.expand(self.batch) if t.ndim == 0 else t, y)

    def parameters(self, recurse: bool = True):
        if hasattr(self, "module"):
            return self.module.parameters(recurse)
        raise ValueError(
            "func is not a torch.nn.Module, so its parameters cannot be found: pass them "
            "explicitly (params=... in the core API, adjoint_params=... in odeint_adjoint)"
        )


def _run(gradient: GradientStrategy, problem: Problem) -> torch.Tensor:
    spans = isinstance(problem.times, torch.Tensor)  # per-sample output times
    if time_derivative_inputs(problem) and (spans or not gradient.handles_time_gradients):
        return _run_with_time_gradients(gradient, problem)
    return run_spans(gradient, problem) if spans else gradient.run(problem)


def _solve_with_event(
    gradient: GradientStrategy, problem: Problem, tracker: OneProblemEvents
) -> Solution:
    """Direct: one solve, the event state is in the graph. Other strategies: locate the event
    in a graph-free solve, then solve up to it with the strategy."""
    config, stats, ts = problem.config, problem.stats, problem.ts
    sign = 1.0 if problem.times[-1] > problem.times[0] else -1.0
    if isinstance(gradient, Direct):
        problem.config = replace(config, events=tracker)
        ys = _run(gradient, problem)
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
            t_event = torch.full((1,), hit.t, dtype=ts.dtype, device=ts.device)
            problem.ts = torch.cat([ts[:before], t_event])
            problem.times = problem.times[:before] + [hit.t]
        ys = _run(gradient, problem)
        event_y = None
        if hit is not None:
            ys, event_y = (ys if at_output else ys[:-1]), ys[-1]
    stats.nfe = problem.term.nfe
    _check_finite(ys, problem.times)
    solution = Solution(ts=ts[: ys.shape[0]], ys=problem.spec.unflatten(ys), stats=stats)
    solution.event_ts = torch.tensor(tracker.times(), dtype=ts.dtype, device=ts.device)
    if hit is not None:
        t_event = torch.tensor(hit.t, dtype=torch.float64, device=ts.device)
        event_t, event_y = EventGradient.apply(tracker, problem.func, t_event[None], event_y[None])
        solution.event_t = event_t[0].to(ts.dtype)
        solution.event_y = problem.spec.unflatten(event_y[0])
    return solution


def _run_with_time_gradients(gradient: GradientStrategy, problem: Problem) -> torch.Tensor:
    """Make the outputs differentiable in ``ts`` by the exact flow's derivatives.

    dy(t_i)/dt_i = f(t_i, y_i) and dy(t_i)/dt_0 = -dy(t_i)/dy0 . f(t_0, y_0). Both enter as
    terms ``(t - t.detach()) * f`` that are zero in value but carry the derivative. With
    per-sample times (batch, n) each sample's times shift its own rows of the flat state.
    """
    term, times = problem.term, problem.times
    shift = (problem.ts - problem.ts.detach()).to(term.time_dtype)
    spans = isinstance(times, torch.Tensor)
    if spans:  # (n, batch x d): sample i's shift on its rows
        shift = shift.T.repeat_interleave(problem.y0.numel() // shift.shape[0], dim=1)
        times = times.T  # times[j]: every sample's j-th time, (batch,)
    else:
        shift = shift[:, None]
    f0 = term(times[0], problem.y0)
    problem.y0 = problem.y0 - shift[0] * f0
    ys = run_spans(gradient, problem) if spans else gradient.run(problem)
    fs = torch.stack([f0] + [term(t, y) for t, y in zip(times[1:], ys[1:])])
    return ys + shift * fs


def _check_state(y0: Any) -> tuple[TreeSpec, torch.Tensor]:
    spec, leaves = tree_spec(y0, "y0")
    if not leaves:
        raise ValueError("y0 contains no tensors")
    first = leaves[0]
    for i, leaf in enumerate(leaves):
        where = "y0" if spec.is_leaf else f"y0 (tensor {i})"
        if not (leaf.is_floating_point() or leaf.is_complex()):
            raise TypeError(
                f"{where} must be a floating point or complex tensor, got dtype {leaf.dtype}"
            )
        if leaf.dtype != first.dtype:
            raise TypeError(f"{where} has dtype {leaf.dtype}; tensor 0 has {first.dtype}")
        if leaf.device != first.device:
            raise ValueError(f"{where} is on {leaf.device}; tensor 0 is on {first.device}")
    # (a bare tensor matches the spec just made from it: no shape check to repeat)
    flat = first.reshape(-1) if spec.is_leaf else spec.flatten(y0, "y0")
    if not _all_finite(flat):
        raise NonFiniteError("y0 contains NaN or inf")
    return spec, flat


def _check_tolerances(controller: Any, y0: torch.Tensor) -> None:
    """Refuse tolerances below a tenth of a 16-bit state's resolution (eps), and warn about
    those below a hundredth of a wider one's: the error cannot be measured that finely, so
    the solve would stall or return values far less accurate than asked. An ``atol`` above
    that level at y0's scale (1 for a zero y0) makes the tolerance reachable."""
    rtol, atol = getattr(controller, "rtol", None), getattr(controller, "atol", None)
    if rtol is None or atol is None:
        return
    real = y0.real.dtype
    eps = torch.finfo(real).eps
    low_precision = real in LOW_PRECISION
    floor = eps / 10 if low_precision else eps / 100
    rtol_min = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    if rtol_min >= floor:
        return
    atol_min = float(atol.min()) if isinstance(atol, torch.Tensor) else float(atol)
    # the state's magnitude, 1 for a zero y0 (whose solution leaves zero at some scale)
    scale = (float(y0.detach().abs().max()) if y0.numel() else 0.0) or 1.0
    if atol_min >= floor * scale:
        return
    message = (
        f"rtol={rtol_min:g} (with atol={atol_min:g}) is below the resolution of y0's dtype "
        f"{real} (eps {eps:.3g}): the error cannot be controlled that finely. Use "
        f"rtol >= {floor:.2g}"
    )
    if low_precision:
        raise ValueError(message + " or a wider dtype (float32, float64) for the state")
    warnings.warn(message + " or float64 for the state", stacklevel=3)


def _check_times(ts: Any, device: torch.device, open_end: bool = False) -> list[float]:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of times, got {type(ts).__name__}")
    if ts.ndim != 1 or ts.numel() == 0:
        per_sample = " (per-sample times, (batch, n), need per_sample=True)" if ts.ndim == 2 else ""
        raise ValueError(
            f"t must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}{per_sample}"
        )
    if not ts.is_floating_point():
        raise TypeError(f"t must be a floating point tensor, got dtype {ts.dtype}")
    if ts.device != device:
        raise ValueError(f"t is on {ts.device} but y0 is on {device}; put both on one device")
    times = ts.tolist()  # exact: every float dtype converts to Python floats without rounding
    finite = times[:-1] if open_end else times
    if not all(x == x and abs(x) != float("inf") for x in finite) or times[-1] != times[-1]:
        raise ValueError(f"t contains NaN or inf: {times}")
    if len(times) > 1:
        diffs = [b - a for a, b in zip(times, times[1:])]
        if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
            i = next(i for i, d in enumerate(diffs) if d == 0 or (d > 0) != (diffs[0] > 0))
            raise ValueError(
                "t must be strictly increasing or strictly decreasing; "
                f"t[{i}]={times[i]!r}, t[{i + 1}]={times[i + 1]!r}"
            )
    return times


def _check_grid_times(name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, tuple) and not values:  # the default: none
        return ()
    if isinstance(values, torch.Tensor):
        values = values.detach().to(torch.float64).reshape(-1).tolist()
    out = tuple(float(v) for v in values)
    if any(v != v for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite, with one reduction in the common case: a NaN or inf
    entry makes the sum non-finite (a finite sum proves all entries finite; an overflowing
    sum of finite entries falls back to the exact elementwise test)."""
    if cmath.isfinite(across(x.sum(), torch.sum).item()):  # every vmapped problem's
        return True
    return bool(across(torch.isfinite(x).all(), torch.all))


def _check_finite(ys: torch.Tensor, times: list[float] | torch.Tensor) -> None:
    if _all_finite(ys):
        return
    ys = plain(ys)  # every vmapped problem's outputs, (*vmapped, len(ts), n)
    ys = ys.reshape(-1, *ys.shape[-2:]).transpose(0, 1)
    finite = torch.isfinite(ys).flatten(1).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        # per-sample times: the earliest of output i's
        t = float(times[:, i].min()) if isinstance(times, torch.Tensor) else times[i]
        if not bool(torch.isnan(ys[i]).any()):
            largest = torch.finfo(ys.real.dtype).max
            raise NonFiniteError(
                f"the solution overflows {ys.real.dtype} to inf by t={t:.6g} (output "
                f"{i}): its values exceed the largest {ys.real.dtype} value {largest:.3g}. The "
                "solution grows without bound, or the step size is too large for stability"
            )
        raise NonFiniteError(
            f"the solution contains NaN or inf at t={t:.6g} (output {i}); "
            "the step size may be too large for this problem, or f is non-finite there"
        )
