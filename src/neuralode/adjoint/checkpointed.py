"""Checkpointed gradients: store the state at step boundaries, recompute each step backwards."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._loop import StepRecord, integrate
from .base import GradientStrategy, Problem, first_order
from .params import resolve_params


class Checkpointed(GradientStrategy):
    """Exactly the gradient of the discrete forward solve (as ``Direct``), with memory
    O(steps x state) instead of O(steps x activations of f).

    The forward pass runs without a graph and keeps only each accepted step's start state.
    The backward pass walks the steps in reverse, recomputing one step at a time with
    autograd. One-step methods only. First-order: its gradients carry no graph (a backward
    pass with ``create_graph=True`` warns); ``Direct`` gives higher derivatives.

    Arguments:
        params: the tensors to differentiate with respect to; defaults to ``func.parameters()``
            when ``func`` is an ``nn.Module``.
    """

    def __init__(self, params: Sequence[torch.Tensor] | None = None):
        self.params = params

    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` keeping each step's start; the backward pass recomputes the steps.

        Arguments:
            problem: the validated problem.

        Returns:
            The flat outputs, (len(ts), n), differentiable with respect to ``y0`` and
                ``params``.

        Raises:
            ValueError: the solver is a multistep method.
        """
        if problem.config.solver.multistep:
            raise ValueError(
                f"Checkpointed gradients need a one-step method; {problem.config.solver.name} "
                "is a multistep method. Use Direct() or Backsolve()."
            )
        params = resolve_params(problem.func, self.params)
        return _CheckpointedSolve.apply(problem, problem.y0, *params)


class _CheckpointedSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, problem: Problem, y0: torch.Tensor, *params: torch.Tensor):
        records: list[StepRecord] = []
        ys = integrate(problem.term, y0, problem.times, problem.config, problem.stats, records)
        ctx.problem = problem
        ctx.records = records
        ctx.params = params
        return ys

    @staticmethod
    @first_order("Checkpointed")
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor):
        problem: Problem = ctx.problem
        params: tuple[torch.Tensor, ...] = ctx.params
        solver, term = problem.config.solver, problem.term
        nfe_before = term.nfe
        adjoint = torch.zeros_like(grad_ys[0])
        param_grads = [torch.zeros_like(p) for p in params]
        # the gradient with respect to what the later step read of this one (``carried``)
        carried_grad: torch.Tensor | None = None
        for rec in reversed(ctx.records):
            if rec.outputs and rec.thetas[-1] == 1.0:
                adjoint = adjoint + grad_ys[rec.outputs[-1]]
            inner = [(i, th) for i, th in zip(rec.outputs, rec.thetas) if th != 1.0]
            with torch.enable_grad():
                y0 = rec.y0.detach().requires_grad_(True)
                sign = 1.0 if rec.t1 > rec.t0 else -1.0
                f0 = term(rec.t0, y0, sign) if rec.after_jump else None
                # the solver's own start state, as the loop made it (after a jump: from f0)
                state = solver.init(term, rec.t0, y0, f0) if rec.replay is None else rec.replay
                state, carried_in = solver.read_carried(state)
                step = solver.step(term, rec.t0, rec.t1, y0, state, rec.perturb)
                outputs, grads = [step.y1], [adjoint]
                if carried_grad is not None:
                    outputs.append(solver.carried(step))
                    grads.append(carried_grad)
                if inner:
                    thetas = torch.tensor([th for _, th in inner], dtype=torch.float64)
                    outputs.append(solver.interpolate(term, step, thetas))
                    grads.append(grad_ys[[i for i, _ in inner]])
                inputs = (y0, *params) if carried_in is None else (y0, *params, carried_in)
                vjps = torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
            adjoint = vjps[0]
            carried_grad = None
            if carried_in is not None:
                *vjps, carried_grad = vjps
                carried_grad = (
                    torch.zeros_like(carried_in) if carried_grad is None else carried_grad
                )
            for k, g in enumerate(vjps[1:]):
                if g is not None:
                    param_grads[k] = param_grads[k] + g
        adjoint = adjoint + grad_ys[0]
        problem.stats.nfe_backward += term.nfe - nfe_before
        problem.stats.n_steps_backward += len(ctx.records)
        return (None, adjoint, *param_grads)
