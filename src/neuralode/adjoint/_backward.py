"""The backward solves of ``Backsolve``: the adjoint system integrated from the last output
time back to the first, one segment between two output times at a time."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from .._callbacks import Callbacks
from .._errors import MaxStepsError, NonFiniteError, StepSizeUnderflowError
from .._execution import Execution
from .._host import transform_active
from .._loop import LoopConfig, integrate
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec
from ..controllers.fixed import FixedGrid
from ..solvers.implicit_rk import NewtonError
from ._dynamics import _AdjointDynamics
from .base import Problem

if TYPE_CHECKING:
    from .backsolve import Backsolve


def adjoint_backward(
    strategy: Backsolve,
    problem: Problem,
    params: tuple[torch.Tensor, ...],
    ys: torch.Tensor,
    grad_ys: torch.Tensor,
    want_t: bool,
    segment_field: Callable[[int], Callable] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
    """Integrate the adjoint system from the last output time back to the first.

    Returns the gradients with respect to ``y0``, ``ts`` (``None`` unless ``want_t``) and
    ``params``. ``segment_field(i)``, if given, is the vector field to use between
    ``times[i]`` and ``times[i + 1]`` (a reparametrised time, one per segment) instead of
    ``problem.func``.
    """
    times, n = problem.times, problem.y0.numel()
    numels = (n, n, *(p.numel() for p in params))
    state_spec = TreeSpec(None, (torch.Size([sum(numels)]),), (sum(numels),))
    dynamics = _AdjointDynamics(problem, params)
    aug_term = ODETerm(dynamics, state_spec, ys[0])
    config = _backward_config(strategy, problem, dynamics, numels, state_spec, segment_field)
    f_term = problem.term
    f_nfe_before = f_term.nfe
    time_grads = torch.zeros(len(times), dtype=torch.float64, device=ys.device)
    adjoint = grad_ys[-1]
    param_grads = ys.new_zeros(sum(numels[2:]))
    stats = problem.stats
    owner = params[0] if params else problem.func  # (whom the reconstruction warning names)
    watch = not _warned(owner) and not transform_active()
    misses: list[torch.Tensor] = []
    for i in range(len(times) - 1, 0, -1):
        if want_t:
            time_grads[i] = _dot(grad_ys[i], f_term(times[i], ys[i]))
        if segment_field is not None:
            dynamics.func = segment_field(i - 1)
        state = torch.cat([ys[i], adjoint, param_grads])
        state = _solve_segment(aug_term, state, [times[i], times[i - 1]], config, stats)
        if watch:
            misses.append(_miss(state[:n], ys[i - 1], ys[i]))
        adjoint = state[n : 2 * n] + grad_ys[i - 1]
        param_grads = state[2 * n :]
    if want_t:
        # y(t0) = y0 whatever t0 is: the gradient arriving at output 0 does not count.
        time_grads[0] = -_dot(adjoint - grad_ys[0], f_term(times[0], ys[0]))
    stats.nfe_backward += aug_term.nfe + f_term.nfe - f_nfe_before
    _check_reconstruction(owner, misses, times, problem.config)
    out_params = []
    offset = 0
    for p in params:
        g = param_grads[offset : offset + p.numel()].view(p.shape)
        out_params.append((g.real if not p.is_complex() else g).to(p.dtype))
        offset += p.numel()
    grad_ts = time_grads.to(problem.ts.dtype) if want_t else None
    return adjoint, grad_ts, out_params


def _backward_config(
    strategy: Backsolve,
    problem: Problem,
    dynamics: _AdjointDynamics,
    numels: tuple[int, ...],
    state_spec: TreeSpec,
    segment_field: Any,
) -> LoopConfig:
    """The loop configuration of the backward solves: the strategy's settings, else the
    forward solve's, and how they run.

    Segments with their own fields (per-sample events' knots) run eagerly; after a forward
    solve compiled whole (``compile=True``), the backward solves are too where torch.func can
    trace the vector-Jacobian products (``func`` a module owning the parameters) and the
    whole-solve graph takes the configuration, else each step is compiled
    (``compile_step``) or eager.
    """
    forward = problem.config
    compiled = strategy.compile_step and segment_field is None
    whole = (
        forward.execution.compile == "solve"
        and dynamics.param_names is not None
        and segment_field is None
    )
    config = LoopConfig(
        # (a given backward solver too: a preconditioner or linear part made for the forward
        # state does not apply to the adjoint system's)
        solver=(strategy.solver or forward.solver).for_adjoint_system(),
        controller=strategy.backward_controller(forward.controller, problem.spec, sum(numels[2:])),
        norm=strategy.backward_norm(numels, forward.norm),
        max_steps=strategy.max_steps or forward.max_steps,
        step_t=forward.step_t if strategy.step_t is None else strategy.step_t,
        jump_t=forward.jump_t if strategy.jump_t is None else strategy.jump_t,
        perturb=forward.perturb if strategy.perturb is None else bool(strategy.perturb),
        callbacks=None if strategy.callbacks is None else Callbacks(strategy.callbacks, state_spec),
        execution=Execution(compile="solve" if whole else "step" if compiled else None),
    )
    # an implicit method scales its Newton iteration by the backward solves' tolerances,
    # laid out for [y, a, g], not by the forward solve's (or none, for a solver of its own)
    config.solver.set_tolerances(
        getattr(config.controller, "rtol", None), getattr(config.controller, "atol", None)
    )
    if whole:
        from .._whole_solve import unsupported  # (import cycle)

        if unsupported(config, state_spec) is not None:  # e.g. a backward solver of its own
            config = replace(config, execution=Execution(compile="step" if compiled else None))
    return config


def _solve_segment(
    term: ODETerm, state: torch.Tensor, segment: list[float], config: LoopConfig, stats: Any
) -> torch.Tensor:
    """The backward state [y, a, g] at ``segment[1]`` from ``state`` at ``segment[0]``; a
    failure is explained in terms of the adjoint."""
    segment_stats = SolveStats()
    try:
        states = integrate(term, state, segment, _segment_config(config, segment), segment_stats)
    except NonFiniteError as error:
        raise NonFiniteError(
            f"the adjoint's backward solve from t={segment[0]:.6g} to t={segment[1]:.6g} "
            f"failed (the forward solve was finite): {_clause(error)}. The backward state is [y, "
            "adjoint, parameter gradients]: f, or its vector-Jacobian product, is "
            "non-finite along the backward solve, or the adjoint system blows up"
        ) from error
    except (MaxStepsError, StepSizeUnderflowError, NewtonError) as error:
        raise type(error)(
            f"the adjoint's backward solve from t={segment[0]:.6g} to "
            f"t={segment[1]:.6g} failed: {_clause(error)}. Backsolve re-integrates the state "
            "backwards in time, which is exponentially unstable for stiff (strongly "
            "damped) dynamics; for those use Checkpointed (exact gradients, memory "
            "O(steps x state)) or Direct."
        ) from error
    stats.n_steps_backward += segment_stats.n_steps
    return states[-1]


def _miss(reconstructed: torch.Tensor, forward: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The largest difference between the backward solve's state at an output time and the
    forward solve's there, and the forward states' size at the segment's two ends, over their
    finite entries (a sample failed under ``throw=False`` holds NaN)."""
    finite = torch.isfinite(forward) & torch.isfinite(start)
    difference = torch.where(finite, reconstructed - forward, 0).abs()
    size = torch.where(finite, torch.maximum(forward.abs(), start.abs()), 0)
    return (
        torch.stack([difference.max(), size.max()])
        if forward.numel()
        else forward.new_zeros(2).real
    )


# what the reconstruction warning was said for (a model's first parameter, else its field),
# once each, since a training loop's every step would repeat it; by id with a weak
# reference (a tensor's == is elementwise, so no WeakSet)
_WARNED: dict[int, weakref.ref] = {}


def _warned(owner: Any) -> bool:
    """Whether the reconstruction warning was said for ``owner``."""
    said = _WARNED.get(id(owner))
    return said is not None and said() is owner


def _check_reconstruction(
    owner: Any, misses: list[torch.Tensor], times: list, config: LoopConfig
) -> None:
    """Warn when a backward solve's state at the start of its segment missed the forward
    solve's by more than a tenth of the state's size at the segment's ends (plus ``atol``):
    the adjoint was then integrated along another trajectory, and the gradients are not the
    solve's. (Re-solving backwards in time is unstable where f damps fast: an explicit
    method's steps shrink until ``MaxStepsError``, an implicit one's need not, and its solve
    returns.) Said once per ``owner`` (the model's first parameter, else f)."""
    if not misses:  # (none gathered: said for owner already, or under torch.func)
        return
    atol = getattr(config.controller, "atol", 0.0)
    atol = float(atol.max()) if isinstance(atol, torch.Tensor) else float(atol or 0.0)
    difference, size = torch.stack(misses).to(torch.float64).cpu().unbind(1)
    worst = int(torch.argmax(difference / (0.1 * size + atol + 1e-300)))
    if bool(difference[worst] <= 0.1 * size[worst] + atol):  # (NaN: a miss)
        return
    end = len(times) - 1 - worst
    try:
        key = id(owner)
        _WARNED[key] = weakref.ref(owner, lambda _, key=key: _WARNED.pop(key, None))
    except TypeError:  # (not weakly referable: said every time)
        pass
    warnings.warn(
        f"Backsolve: the backward solve from t={times[end]:.6g} reached t={times[end - 1]:.6g} "
        f"{float(difference[worst]):.3g} away from the forward solve's state there (the "
        f"states' size: {float(size[worst]):.3g}), so the adjoint ran along another trajectory and "
        "the gradients are not to be trusted. Re-solving the state backwards in time is "
        "unstable where the dynamics decay fast (stiff or strongly damped f; an implicit "
        "method's backward solve then completes) or diverge (chaotic f over long spans): "
        "use gradient=Checkpointed() (exact, memory O(steps x state)) or Direct(), "
        "or add output times inside the span (each restarts the backward state). Said "
        "once per model",
        stacklevel=2,
    )


def _clause(error: Exception) -> str:
    """An error's message without its final period, to go on in a longer sentence."""
    return str(error).rstrip().rstrip(".")


def _segment_config(config: LoopConfig, segment: list[float]) -> LoopConfig:
    """A user-given step grid is cut to the segment between two output times."""
    controller = config.controller
    if isinstance(controller, FixedGrid) and controller.grid is not None:
        return replace(config, controller=controller.restricted(segment[0], segment[1]))
    return config


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Real inner product <u, v> as PyTorch's gradient convention needs it."""
    return (u.conj() * v).real.sum() if u.is_complex() else (u * v).sum()
