"""One step recomputed with autograd and its vector-Jacobian product: the unit of the
backward passes of ``Checkpointed`` and ``Reversible``, which walk the steps in reverse."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._term import ODETerm
from ..solvers.base import Solver


@dataclass
class StepVJP:
    """A recomputed step's end and the gradients of what it was given.

    Attributes:
        y1: the step's end, detached.
        grad_y0: the gradient with respect to the step's start.
        grad_params: the gradients with respect to the parameters (``None`` where unused).
        grad_carried: the gradient with respect to what the step read of the previous one
            (``Solver.read_carried``), ``None`` when it read nothing.
    """

    y1: torch.Tensor
    grad_y0: torch.Tensor
    grad_params: tuple[torch.Tensor | None, ...]
    grad_carried: torch.Tensor | None


def step_vjp(
    solver: Solver,
    term: ODETerm,
    t0: float,
    t1: float,
    y0: torch.Tensor,
    perturb: bool,
    grad_y1: torch.Tensor,
    params: tuple[torch.Tensor, ...],
    *,
    after_jump: bool = False,
    replay: Any = None,
    grad_carried: torch.Tensor | None = None,
    inner: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> StepVJP:
    """Recompute the step of ``solver`` from ``(t0, y0)`` to ``t1`` with autograd and pull
    the gradients of its outputs back to its start and the parameters.

    The step starts from the solver's own start state, as the loop made it: ``replay`` when
    given (``Solver.replay_state``), else ``solver.init`` (after a jump from f evaluated just
    past it).

    Arguments:
        solver: the method.
        term: the vector field.
        t0: the step's start time.
        t1: the step's end time.
        y0: the step's start state (detached here).
        perturb: the evaluations at the step's ends were perturbed.
        grad_y1: the gradient with respect to the step's end.
        params: the tensors to differentiate with respect to.
        after_jump: f(t0, y0) is evaluated just past a jump.
        replay: the solver's state to repeat the step exactly, or ``None``.
        grad_carried: the gradient with respect to what the next step read of this one
            (``Solver.carried``), or ``None``.
        inner: ``(thetas, grads)``: positions of outputs inside the step (dense output) and
            the gradients with respect to them, or ``None``.

    Returns:
        The [`StepVJP`][neuralode.adjoint._recompute.StepVJP].
    """
    with torch.enable_grad():
        y0 = y0.detach().requires_grad_(True)
        sign = 1.0 if t1 > t0 else -1.0
        f0 = term(t0, y0, sign) if after_jump else None
        state = solver.init(term, t0, y0, f0) if replay is None else replay
        state, carried_in = solver.read_carried(state)
        step = solver.step(term, t0, t1, y0, state, perturb)
        outputs, grads = [step.y1], [grad_y1]
        if grad_carried is not None:
            outputs.append(solver.carried(step))
            grads.append(grad_carried)
        if inner is not None:
            outputs.append(solver.interpolate(term, step, inner[0]))
            grads.append(inner[1])
        inputs = (y0, *params) if carried_in is None else (y0, *params, carried_in)
        vjps = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    carried = None
    if carried_in is not None:
        *vjps, carried = vjps
        carried = torch.zeros_like(carried_in) if carried is None else carried
    grad_y0 = torch.zeros_like(y0) if vjps[0] is None else vjps[0]
    return StepVJP(step.y1.detach(), grad_y0, tuple(vjps[1:]), carried)


def accumulate(
    totals: list[torch.Tensor], grads: tuple[torch.Tensor | None, ...]
) -> list[torch.Tensor]:
    """``totals`` plus ``grads`` element by element (``None``: a parameter the step did not
    use)."""
    return [t if g is None else t + g for t, g in zip(totals, grads)]
