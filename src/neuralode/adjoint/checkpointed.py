"""Checkpointed gradients: store the state at step boundaries, recompute each step backwards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._loop import StepRecord, integrate
from ._recompute import accumulate, step_vjp
from .base import GradientStrategy, Problem, first_order
from .params import keep_params, resolve_params


class Checkpointed(GradientStrategy):
    """Exactly the gradient of the discrete forward solve (as ``Direct``), with memory
    O(steps x state) instead of O(steps x activations of f).

    The forward pass runs without a graph and keeps only each accepted step's start state.
    The backward pass walks the steps in reverse, recomputing one step at a time with
    autograd. One-step methods only. First-order: its gradients carry no graph (a backward
    pass with ``create_graph=True`` warns); ``Direct`` gives higher derivatives.

    Per sample (``per_sample=True``, and ``device_loop=True``) every step attempt of the
    batch and every evaluation of f outside one is a checkpoint
    (``torch.utils.checkpoint``): the graph keeps their inputs (the rows' times, states and
    f0) instead of f's activations, and the backward pass computes each again; the stages
    of the steps that write outputs are kept too. It runs the eager step attempts: not with
    ``compile``, ``cuda_graph`` or ``skip_finished``.

    Arguments:
        params: the tensors to differentiate with respect to; defaults to ``func.parameters()``
            when ``func`` is an ``nn.Module``. The solver's own (``Solver.parameters()``: a
            hypersolver's correction) are differentiated too.
    """

    def __init__(self, params: Sequence[torch.Tensor] | None = None):
        self.params = keep_params(params)

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
        config = problem.config
        if config.execution.device:  # the device loop's attempts as checkpoints
            config = replace(config, checkpoint_attempts=True)
            return integrate(problem.term, problem.y0, problem.times, config, problem.stats)
        if problem.config.solver.multistep:
            raise ValueError(
                f"Checkpointed gradients need a one-step method; {problem.config.solver.name} "
                "is a multistep method. Use Direct() or Backsolve()."
            )
        params = resolve_params(problem.func, self.params)
        own = problem.config.solver.parameters()
        if own:  # the solver's own tensors (a hypersolver's correction), each once
            params = resolve_params(problem.func, (*params, *own))
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
            dense = None
            if inner:
                thetas = torch.tensor([th for _, th in inner], dtype=torch.float64)
                dense = (thetas, grad_ys[[i for i, _ in inner]])
            vjp = step_vjp(
                solver, term, rec.t0, rec.t1, rec.y0, rec.perturb, adjoint, params,
                after_jump=rec.after_jump, replay=rec.replay, grad_carried=carried_grad,
                inner=dense,
            )  # fmt: skip
            adjoint, carried_grad = vjp.grad_y0, vjp.grad_carried
            param_grads = accumulate(param_grads, vjp.grad_params)
        adjoint = adjoint + grad_ys[0]
        problem.stats.nfe_backward += term.nfe - nfe_before
        problem.stats.n_steps_backward += len(ctx.records)
        return (None, adjoint, *param_grads)
