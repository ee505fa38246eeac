"""The continuous adjoint method ("backsolve"): O(1) memory in the number of steps."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._autograd import grad
from .._callbacks import Callbacks
from .._errors import MaxStepsError, NonFiniteError, StepSizeUnderflowError
from .._execution import Execution, check_compiled_step
from .._loop import LoopConfig, integrate
from .._norms import Norm, Seminorm, mixed_norm, seminorm
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec
from ..controllers.base import StepSizeController
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..solvers.base import Solver
from .base import GradientStrategy, Problem
from .params import resolve_params


class Backsolve(GradientStrategy):
    """Gradients by solving the adjoint system backwards in time (Chen et al. 2018).

    The backward pass integrates ``[y, a, g]`` with ``dy/dt = f``, ``da/dt = -a df/dy`` and
    ``dg/dt = -a df/dtheta`` from each output time to the previous one, adding each output's
    incoming gradient to ``a`` and restarting ``y`` from the stored forward output. Memory
    does not grow with the number of steps. Gradients with respect to the output times are
    ``dL/dt_i = grad_i . f(t_i, y_i)`` and ``dL/dt_0 = -a(t_0) . f(t_0, y_0)``.

    Arguments:
        params: the tensors to differentiate with respect to; defaults to ``func.parameters()``
            for an ``nn.Module``.
        rtol: the backward solves' relative tolerance (default: the forward solve's).
        atol: the backward solves' absolute tolerance (default: the forward solve's).
        solver: the backward solves' method (default: the forward one).
        controller: the backward solves' controller (default: the forward one).
        seminorm: leave the parameter-gradient channels out of the error norm (Kidger et al.
            2021), which usually saves backward steps at no cost in gradient accuracy.
        max_steps: the most steps of each backward solve (default: the forward solve's).
        callbacks: receive ``on_step``/``on_accept``/``on_reject`` of the backward solves.
        compile_step: run each step of the backward solves as one torch.compile graph, the
            adjoint's vector-Jacobian products by ``torch.func.vjp``. It needs an explicit
            Runge-Kutta method, ``func`` an ``nn.Module`` whose parameters include every one of
            ``params``, and an f that does not call autograd itself. After a forward solve
            with ``compile=True`` the backward solves run as one compiled graph each where
            they can (``func`` such a module; an adaptive explicit Runge-Kutta method and a
            ``PIController``), without asking.
        step_t: times the backward solves' steps land on (default: the forward solve's).
        jump_t: discontinuities of f for the backward solves (default: the forward solve's).
        perturb: perturbed evaluations at the backward steps' ends (default: the forward
            solve's).
        norm: a callable on the flat backward state ``[y, a, g]`` that replaces the default
            error norm of the backward solves (and ``seminorm``).

    Raises:
        TypeError: ``norm`` is not callable.
        ValueError: ``step_t`` or ``jump_t`` are not finite 1-D times.
    """

    handles_time_gradients = True

    def __init__(
        self,
        params: Sequence[torch.Tensor] | None = None,
        *,
        rtol: float | None = None,
        atol: float | None = None,
        solver: Solver | None = None,
        controller: StepSizeController | None = None,
        seminorm: bool = True,
        max_steps: int | None = None,
        callbacks: Any = None,
        compile_step: bool = False,
        step_t: Sequence[float] | torch.Tensor | None = None,
        jump_t: Sequence[float] | torch.Tensor | None = None,
        perturb: bool | None = None,
        norm: Norm | None = None,
    ):
        if norm is not None and not callable(norm):
            raise TypeError(f"norm must be callable, got {type(norm).__name__}")
        from .._validate import check_grid_times  # the core's conversion (import cycle)

        self.step_t = None if step_t is None else check_grid_times("step_t", step_t)
        self.jump_t = None if jump_t is None else check_grid_times("jump_t", jump_t)
        self.perturb = perturb
        self.norm = norm
        self.params = params
        self.compile_step = compile_step
        self.rtol = rtol
        self.atol = atol
        self.solver = solver
        self.controller = controller
        self.seminorm = seminorm
        self.max_steps = max_steps
        self.callbacks = callbacks

    def run(self, problem: Problem) -> torch.Tensor:
        params = resolve_params(problem.func, self.params)
        if self.compile_step:
            self._check_compilable(problem, params)
        return _BacksolveSolve.apply(self, problem, problem.y0, problem.ts, *params)

    def _check_compilable(self, problem: Problem, params: tuple[torch.Tensor, ...]) -> None:
        """Raise a clear error for what ``compile_step`` cannot compile backwards."""
        if _parameter_names(problem.func, params) is None:
            raise ValueError(
                "Backsolve(compile_step=True) needs func to be an nn.Module whose parameters "
                "include every one of params (torch.func substitutes them by name)"
            )
        check_compiled_step(
            self.solver or problem.config.solver,
            self.backward_controller(problem.config.controller),
            "Backsolve(compile_step=True)'s backward solve",
        )

    def backward_controller(self, forward: StepSizeController) -> StepSizeController:
        """The controller of the backward solves: given, or derived from the forward one."""
        if self.controller is not None:
            return self.controller
        if isinstance(forward, PIController):
            controller = copy.copy(forward)
            controller.first_step = None
            if self.rtol is not None:
                controller.rtol = self.rtol
            if self.atol is not None:
                controller.atol = self.atol
            return controller
        return forward

    def backward_norm(self, numels: Sequence[int], forward_norm: Norm | None = None) -> Norm:
        """The error norm of the backward state [y, a, g] (``numels`` of each part).

        When the forward solve measured only the leading part of its state (a ``Seminorm``,
        e.g. ``ODEBlock``'s regulariser channels left out), the same part of ``y`` and ``a``
        is measured backwards.
        """
        if self.norm is not None:
            return self.norm
        if not isinstance(forward_norm, Seminorm) or forward_norm.size >= numels[0]:
            return seminorm(numels, 2) if self.seminorm else mixed_norm(numels)
        n, size = numels[0], forward_norm.size
        parts = (size, size) if self.seminorm else (size, size, *numels[2:])
        inner = mixed_norm(parts)
        if self.seminorm:
            return lambda x: inner(torch.cat([x[:size], x[n : n + size]]))
        return lambda x: inner(torch.cat([x[:size], x[n : n + size], x[2 * n :]]))


class _AdjointDynamics:
    """f of the augmented state [y, a, g_1, ..., g_P] (flat), by vector-Jacobian products.

    Eagerly by ``_autograd.grad`` (``torch.autograd.grad`` without its growth of ~0.1 KB a
    call); inside a compiled step (``Backsolve(compile_step=
    True)``) by ``torch.func.vjp`` over ``functional_call``, which torch.compile can trace
    (it cannot trace ``autograd.grad``). That needs ``func`` to be an ``nn.Module`` whose
    parameters include every one of ``params`` (``param_names``; otherwise ``None``)."""

    def __init__(self, problem: Problem, params: tuple[torch.Tensor, ...]):
        self.func = problem.func
        self.spec = problem.spec
        self.params = params
        self.n = problem.y0.numel()
        self.param_names = _parameter_names(problem.func, params)

    def __call__(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        n = self.n
        y, a = state[:n], state[n : 2 * n]
        if self.param_names is not None and torch.compiler.is_compiling():
            fy, vjps = self._functional_vjp(t, y, a)
        else:
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                fy = self.spec.flatten(self.func(t, self.spec.unflatten(y)), "func's output")
                if fy.requires_grad:
                    vjps = grad([fy], (y, *self.params), [-a], retain_graph=False)
                else:  # f depends on neither y nor the parameters (e.g. dy/dt = g(t))
                    vjps = (None,) * (1 + len(self.params))
        pieces = [fy.detach(), _or_zeros(vjps[0], y)]
        pieces.extend(
            _or_zeros(g, p).reshape(-1).to(state.dtype) for g, p in zip(vjps[1:], self.params)
        )
        return torch.cat(pieces)

    def _functional_vjp(
        self, t: torch.Tensor, y: torch.Tensor, a: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """f(t, y) and its vector-Jacobian products with -a for y and the parameters."""
        names, spec = self.param_names, self.spec

        def field(y: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
            substituted = dict(zip(names, params))
            out = torch.func.functional_call(self.func, substituted, (t, spec.unflatten(y)))
            return spec.flatten(out, "func's output")

        fy, pullback = torch.func.vjp(field, y, *self.params)
        return fy, pullback(-a)


def _parameter_names(func: Any, params: tuple[torch.Tensor, ...]) -> tuple[str, ...] | None:
    """The names of ``params`` among ``func``'s parameters, or ``None`` if ``func`` is not a
    module or one of them is not its parameter."""
    if not isinstance(func, torch.nn.Module):
        return None
    by_id = {id(p): name for name, p in func.named_parameters()}
    names = tuple(by_id.get(id(p)) for p in params)
    return None if None in names else names


def _or_zeros(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Real inner product <u, v> as PyTorch's gradient convention needs it."""
    return (u.conj() * v).real.sum() if u.is_complex() else (u * v).sum()


class _BacksolveSolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        strategy: Backsolve,
        problem: Problem,
        y0: torch.Tensor,
        ts: torch.Tensor,
        *params: torch.Tensor,
    ):
        ys = integrate(problem.term, y0, problem.times, problem.config, problem.stats)
        ctx.strategy = strategy
        ctx.problem = problem
        ctx.params = params
        ctx.save_for_backward(ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor):
        (ys,) = ctx.saved_tensors
        want_t = ctx.needs_input_grad[3]
        adjoint, grad_ts, grad_params = adjoint_backward(
            ctx.strategy, ctx.problem, ctx.params, ys, grad_ys, want_t
        )
        return (None, None, adjoint, grad_ts, *grad_params)


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
    forward = problem.config
    # segments with their own fields (per-sample events' knots) run eagerly; after a forward
    # solve compiled whole (compile=True), the backward solves are too where torch.func can
    # trace the vector-Jacobian products (func a module owning the parameters), else eager
    compiled = strategy.compile_step and segment_field is None
    whole = (
        forward.execution.compile == "solve"
        and dynamics.param_names is not None
        and segment_field is None
    )
    config = LoopConfig(
        solver=strategy.solver or forward.solver,
        controller=strategy.backward_controller(forward.controller),
        norm=strategy.backward_norm(numels, forward.norm),
        max_steps=strategy.max_steps or forward.max_steps,
        step_t=forward.step_t if strategy.step_t is None else strategy.step_t,
        jump_t=forward.jump_t if strategy.jump_t is None else strategy.jump_t,
        perturb=forward.perturb if strategy.perturb is None else bool(strategy.perturb),
        callbacks=None if strategy.callbacks is None else Callbacks(strategy.callbacks, state_spec),
        execution=Execution(compile="solve" if whole else "step" if compiled else None),
    )
    if whole:
        from .._whole_solve import unsupported  # (import cycle)

        if unsupported(config, state_spec) is not None:  # e.g. a backward solver of its own
            config = replace(config, execution=Execution(compile="step" if compiled else None))
    f_term = problem.term
    f_nfe_before = f_term.nfe
    time_grads = torch.zeros(len(times), dtype=torch.float64, device=ys.device)
    adjoint = grad_ys[-1]
    param_grads = ys.new_zeros(sum(numels[2:]))
    stats = problem.stats
    for i in range(len(times) - 1, 0, -1):
        if want_t:
            time_grads[i] = _dot(grad_ys[i], f_term(times[i], ys[i]))
        if segment_field is not None:
            dynamics.func = segment_field(i - 1)
        state = torch.cat([ys[i], adjoint, param_grads])
        segment = [times[i], times[i - 1]]
        segment_stats = SolveStats()
        try:
            state = integrate(
                aug_term, state, segment, _segment_config(config, segment), segment_stats
            )
        except NonFiniteError as error:
            raise NonFiniteError(
                f"the adjoint's backward solve from t={segment[0]:.6g} to t={segment[1]:.6g} "
                f"failed (the forward solve was finite): {error}. The backward state is [y, "
                "adjoint, parameter gradients]: f, or its vector-Jacobian product, is "
                "non-finite along the backward solve, or the adjoint system blows up"
            ) from error
        except (MaxStepsError, StepSizeUnderflowError) as error:
            raise type(error)(
                f"the adjoint's backward solve from t={segment[0]:.6g} to "
                f"t={segment[1]:.6g} failed: {error} Backsolve re-integrates the state "
                "backwards in time, which is exponentially unstable for stiff (strongly "
                "damped) dynamics; for those use Checkpointed (exact gradients, memory "
                "O(steps x state)) or Direct."
            ) from error
        state = state[-1]
        stats.n_steps_backward += segment_stats.n_steps
        adjoint = state[n : 2 * n] + grad_ys[i - 1]
        param_grads = state[2 * n :]
    if want_t:
        # y(t0) = y0 whatever t0 is: the gradient arriving at output 0 does not count.
        time_grads[0] = -_dot(adjoint - grad_ys[0], f_term(times[0], ys[0]))
    stats.nfe_backward += aug_term.nfe + f_term.nfe - f_nfe_before
    out_params = []
    offset = 0
    for p in params:
        g = param_grads[offset : offset + p.numel()].view(p.shape)
        out_params.append((g.real if not p.is_complex() else g).to(p.dtype))
        offset += p.numel()
    grad_ts = time_grads.to(problem.ts.dtype) if want_t else None
    return adjoint, grad_ts, out_params


def _segment_config(config: LoopConfig, segment: list[float]) -> LoopConfig:
    """A user-given step grid is cut to the segment between two output times."""
    controller = config.controller
    if isinstance(controller, FixedGrid) and controller.grid is not None:
        return replace(config, controller=controller.restricted(segment[0], segment[1]))
    return config
