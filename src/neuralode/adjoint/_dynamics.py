"""The adjoint system's vector field: f of the augmented state [y, a, g] by vector-Jacobian
products, eagerly or traceable by torch.compile."""

from __future__ import annotations

from typing import Any

import torch

from .._autograd import grad
from .base import Problem


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
                    # (retain_graph: f may read a graph built once from the parameters, a
                    # CDE path's coefficients from data, which every evaluation traverses)
                    vjps = grad([fy], (y, *self.params), [-a], retain_graph=True)
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
