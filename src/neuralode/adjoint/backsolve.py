"""The continuous adjoint method ("backsolve"): O(1) memory in the number of steps.

``Backsolve`` holds the backward solves' settings and runs the forward solve
(``_BacksolveSolve``); the backward solves are ``_backward.adjoint_backward``, on the
adjoint system's vector field ``_dynamics._AdjointDynamics``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._args import count, flag
from .._loop import integrate
from .._norms import Norm, Seminorm, flat_tolerance, mixed_norm, seminorm
from .._tree import TreeSpec
from ..controllers._checks import all_zero, check_tolerance
from ..controllers.base import StepSizeController
from ..controllers.pi import PIController
from ..solvers.base import Solver
from ._backsolve_checks import check_backward_solves
from ._backward import adjoint_backward
from .base import GradientStrategy, Problem, first_order
from .params import keep_params


class Backsolve(GradientStrategy):
    """Gradients by solving the adjoint system backwards in time (Chen et al. 2018).

    The backward pass integrates ``[y, a, g]`` with ``dy/dt = f``, ``da/dt = -a df/dy`` and
    ``dg/dt = -a df/dtheta`` from each output time to the previous one, adding each output's
    incoming gradient to ``a`` and restarting ``y`` from the stored forward output. Memory
    does not grow with the number of steps. Gradients with respect to the output times are
    ``dL/dt_i = grad_i . f(t_i, y_i)`` and ``dL/dt_0 = -a(t_0) . f(t_0, y_0)``. First-order:
    the gradients carry no graph (a backward pass with ``create_graph=True`` warns);
    ``Direct`` gives higher derivatives.

    Arguments:
        params: the tensors to differentiate with respect to; defaults to ``func.parameters()``
            for an ``nn.Module`` (for an ``nn.DataParallel`` replica, the parameter copies it
            holds).
        rtol: the backward solves' relative tolerance (default: the forward solve's), for
            an adaptive backward solve on the forward solve's ``PIController`` (with a
            ``controller``, give the tolerances to it).
        atol: the backward solves' absolute tolerance (default: the forward solve's), as
            ``rtol``.
        solver: the backward solves' method, as ``solve`` takes it (a ``Solver``, its class
            or a name from ``no.METHODS``; default: the forward one).
        controller: the backward solves' controller, or its class (default: the forward one).
        seminorm: leave the parameter-gradient channels out of the error norm (Kidger et al.
            2021), which usually saves backward steps at no cost in gradient accuracy.
        max_steps: the most steps of each backward solve, a positive integer (default: the
            forward solve's).
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
        TypeError: ``norm`` is not callable; ``rtol``/``atol`` are not numbers or tensors;
            ``solver`` or ``controller`` is of the wrong type; ``seminorm`` or
            ``compile_step`` is not a bool, or ``perturb`` neither a bool nor ``None``.
        ValueError: ``step_t`` or ``jump_t`` are not finite 1-D times; a negative or NaN
            ``rtol``/``atol``, or both 0; ``rtol``/``atol`` with a ``controller``;
            ``max_steps`` not a positive integer; an unknown solver name.
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
        from .._validate import coerce_strategies  # (an import cycle)
        from .._validate_times import check_grid_times

        for name, value in (("rtol", rtol), ("atol", atol)):
            if value is not None:
                check_tolerance(f"Backsolve {name}", value)
        if rtol is not None and atol is not None and all_zero(rtol) and all_zero(atol):
            raise ValueError(
                "Backsolve(rtol=0, atol=0) asks for an error of exactly zero, which no step "
                "can meet; give a positive rtol or atol (or leave them to the forward solve's)"
            )
        if controller is not None and (rtol is not None or atol is not None):
            raise ValueError(
                "Backsolve takes rtol/atol or a controller, not both: give the tolerances to "
                "the controller (Backsolve(controller=PIController(rtol=..., atol=...)))"
            )
        if max_steps is not None:
            try:  # a plain int, as solve's max_steps
                max_steps = count("max_steps", max_steps)
            except ValueError:
                raise ValueError(
                    f"Backsolve max_steps must be a positive integer or None (the forward "
                    f"solve's), got {max_steps!r}"
                ) from None
        # a method name or class, a controller class: as solve takes them
        solver, controller, _, _ = coerce_strategies(solver, controller, None, None)

        self.step_t = None if step_t is None else check_grid_times("step_t", step_t)
        self.jump_t = None if jump_t is None else check_grid_times("jump_t", jump_t)
        self.perturb = None if perturb is None else flag("perturb", perturb)
        self.norm = norm
        self.params = keep_params(params)
        self.compile_step = flag("compile_step", compile_step)
        self.rtol = rtol
        self.atol = atol
        self.solver = solver
        self.controller = controller
        self.seminorm = flag("seminorm", seminorm)
        self.max_steps = max_steps
        self.callbacks = callbacks

    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` forwards; its backward pass solves the adjoint system backwards.

        Arguments:
            problem: the validated problem.

        Returns:
            The flat outputs, (len(ts), n), differentiable with respect to ``y0``, ``ts``
                and ``params``.

        Raises:
            ValueError: ``rtol``/``atol`` where the backward solve takes the forward
                solve's ``FixedGrid``; a fixed-step backward solver on a ``PIController``;
                ``compile_step=True`` with a ``func`` that is not an ``nn.Module``
                holding every one of ``params``, a solver or controller the compiled
                backward step does not support, or a backward solver that cannot solve the
                adjoint system (``Solver.for_adjoint_system``), or one whose stages pass a
                step's end with the backward solves' ``jump_t`` or ``perturb``
                (``kvaerno4``, ``kvaerno5``): refused before the forward solve, not in the
                backward pass; a forward solver with tensors of its own that require grad
                (``Solver.parameters()``: a hypersolver's correction), which the continuous
                adjoint cannot differentiate.
        """
        params = check_backward_solves(self, problem)
        return _BacksolveSolve.apply(self, problem, problem.y0, problem.ts, *params)

    def backward_controller(
        self, forward: StepSizeController, spec: TreeSpec | None = None, gradient_numel: int = 0
    ) -> StepSizeController:
        """The controller of the backward solves: given, or derived from the forward one.

        With the forward state's ``spec`` (and the parameter gradients' size), per-element
        tolerances for y (``neuralode._norms.flat_tolerance``) apply to y and to the adjoint
        a in the backward state [y, a, g], and g takes their smallest.

        Arguments:
            forward: the forward solve's controller.
            spec: the structure of the forward state; ``None`` leaves the tolerances as
                they are.
            gradient_numel: the number of elements of the parameter gradients g.

        Returns:
            ``controller`` when given; else a copy of a forward ``PIController`` (its
                ``first_step`` reset, ``rtol``/``atol`` replaced when given); else ``forward``.
        """
        if self.controller is not None:
            controller = self.controller
        elif isinstance(forward, PIController):
            controller = copy.copy(forward)
            controller.first_step = None
            if self.rtol is not None:
                controller.rtol = self.rtol
            if self.atol is not None:
                controller.atol = self.atol
        else:
            return forward
        if spec is None:
            return controller
        backward_numel = 2 * spec.numel + gradient_numel
        for name in ("rtol", "atol"):
            tol = getattr(controller, name, None)
            if not isinstance(tol, torch.Tensor) or tol.numel() in (1, backward_numel):
                continue
            tol = flat_tolerance(name, tol, spec)
            if controller is self.controller or controller is forward:
                controller = copy.copy(controller)
            setattr(controller, name, torch.cat([tol, tol, tol.min().expand(gradient_numel)]))
        return controller

    def backward_norm(self, numels: Sequence[int], forward_norm: Norm | None = None) -> Norm:
        """The error norm of the backward state [y, a, g] (``numels`` of each part).

        When the forward solve measured only the leading part of its state (a ``Seminorm``,
        e.g. ``ODEBlock``'s regulariser channels left out), the same part of ``y`` and ``a``
        is measured backwards.

        Arguments:
            numels: the number of elements of each part of the backward state: y, a, then
                the parameter gradients.
            forward_norm: the forward solve's norm.

        Returns:
            ``norm`` when given; else a seminorm over y and a (``seminorm=True``) or the
                mixed norm over every part.
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
    @first_order("Backsolve")
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor):
        (ys,) = ctx.saved_tensors
        want_t = ctx.needs_input_grad[3]
        adjoint, grad_ts, grad_params = adjoint_backward(
            ctx.strategy, ctx.problem, ctx.params, ys, grad_ys, want_t
        )
        return (None, None, adjoint, grad_ts, *grad_params)
