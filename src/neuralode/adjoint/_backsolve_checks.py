"""What ``Backsolve``'s backward solves cannot run, refused before the forward solve (not in
the backward pass), with the reason and the fix."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .._execution_checks import check_compiled_step
from ..controllers.pi import PIController
from ._dynamics import _parameter_names
from .base import Problem
from .params import resolve_params

if TYPE_CHECKING:
    from .backsolve import Backsolve


def check_backward_solves(strategy: Backsolve, problem: Problem) -> tuple[torch.Tensor, ...]:
    """Refuse what ``strategy``'s backward solves of ``problem`` cannot run (see
    ``Backsolve.run``'s Raises); return the tensors it differentiates with respect to."""
    from .._validate import check_stage_reach  # (_validate imports this package)

    solver = problem.config.solver
    if any(p.requires_grad for p in solver.parameters()):
        raise ValueError(
            f"gradient=Backsolve() cannot differentiate {solver.name}: its steps use "
            "trainable tensors of their own (a hypersolver's correction), which the "
            "continuous adjoint of dy/dt = f(t, y) does not see, so they would get no "
            "gradient. Use gradient=Direct() or Checkpointed(), or freeze them "
            "(requires_grad_(False)) to differentiate the ODE's flow alone"
        )

    backward_solver = (strategy.solver or problem.config.solver).for_adjoint_system()
    forward = problem.config
    check_stage_reach(
        backward_solver,
        forward.jump_t if strategy.jump_t is None else strategy.jump_t,
        forward.perturb if strategy.perturb is None else bool(strategy.perturb),
        "Backsolve's backward solve: ",
    )
    params = resolve_params(problem.func, strategy.params)
    if strategy.compile_step:
        _check_compilable(strategy, problem, params)
    backward = strategy.backward_controller(problem.config.controller)
    if (strategy.rtol is not None or strategy.atol is not None) and not isinstance(
        backward, PIController
    ):
        raise ValueError(
            "Backsolve's rtol/atol set the tolerances of an adaptive backward solve, but "
            f"it takes the forward solve's {type(backward).__name__}: give "
            "Backsolve(controller=PIController(rtol=..., atol=...)) for adaptive backward "
            "steps, or leave rtol/atol out"
        )
    if not backward_solver.adaptive and isinstance(backward, PIController):
        raise ValueError(
            f"Backsolve's backward solver {backward_solver.name} takes fixed steps, but "
            "its controller is a PIController (without Backsolve(controller=...), the "
            "forward solve's): give Backsolve(controller=FixedGrid(step_size=...)), or an "
            "adaptive solver"
        )
    if backward is not problem.config.controller:  # (the forward ones are checked)
        from .._validate import check_tolerances  # (_validate imports this package)

        check_tolerances(backward, problem.y0, "Backsolve's backward ")
    return params


def _check_compilable(
    strategy: Backsolve, problem: Problem, params: tuple[torch.Tensor, ...]
) -> None:
    """Raise a clear error for what ``compile_step`` cannot compile backwards."""
    if _parameter_names(problem.func, params) is None:
        raise ValueError(
            "Backsolve(compile_step=True) needs func to be an nn.Module whose parameters "
            "include every one of params (torch.func substitutes them by name)"
        )
    check_compiled_step(
        strategy.solver or problem.config.solver,
        strategy.backward_controller(problem.config.controller),
        "Backsolve(compile_step=True)'s backward solve",
    )
