"""The implicit function theorem's derivative of an implicit Runge-Kutta step's stages.

The Newton iterations run without a graph. With gradients enabled, the converged stages are
re-attached: one more evaluation of the stages with a graph, and a backward hook that solves
with the transposed Newton matrix at the stages' own Jacobians (``transposed_solve``). The
gradient is that of the exact discrete step, whatever the number of iterations, and costs
no graph over the iterations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._host import vmap_active
from .._term import ODETerm
from ._newton import BatchLayout, block_jacobian, from_blocks, gmres, newton_matrix, to_blocks


def tie_adjoint(
    z: torch.Tensor,
    z_graph: torch.Tensor,
    values: torch.Tensor,
    solve_transposed: Callable[[torch.Tensor], torch.Tensor],
    name: str,
) -> torch.Tensor:
    """Z in value, with the derivative of ``z_graph`` = h (A kron I) F(y0 + Z) (the stage
    ``values`` F with a graph) passed through ``solve_transposed``: the implicit function
    theorem's (I - h (A kron J))^-H. ``name``: the method, for the error of a second
    derivative."""

    def adjoint_solve(grad: torch.Tensor | None) -> torch.Tensor | None:
        if grad is None:
            return None
        solved = solve_transposed(grad)
        if torch.is_grad_enabled():  # create_graph=True (torch.func.grad, hessian)
            # first derivatives are exact; differentiating them again would treat the
            # solve's result as a constant: an error when (and only when) that happens
            return _FirstDerivativeOnly.apply(solved, values, name)
        return solved

    z_graph.register_hook(adjoint_solve)
    return z + (z_graph - z_graph.detach())


def transposed_solve(
    term: ODETerm,
    h: float,
    a: torch.Tensor,
    stages: torch.Tensor,
    stage_times: list[tuple[float, float]],
    layout: BatchLayout,
    grad: torch.Tensor,
    krylov: tuple[float, int] | None,
) -> torch.Tensor:
    """u with (I - h (A kron J(Y)))^H u = grad, J at each stage: by GMRES on
    vector-Jacobian products with ``krylov`` (its tolerance and dimension), else (and under
    vmap, whose batched residuals GMRES cannot read on the host) by factorising the block
    Jacobians."""
    m = len(stage_times)
    if krylov is not None and vmap_active():
        krylov = None  # GMRES reads its residuals on the host, which a vmapped gradient cannot
    if krylov is not None and torch._C._functorch.maybe_current_level() is not None:
        # inside a torch.func transform (grad over solve), where requires_grad_ is refused:
        # the stages' vector-Jacobian products by torch.func
        pullbacks = [
            torch.func.vjp(lambda y, t=t, p=p: term(t, y, p), stages[i])[1]
            for i, (t, p) in enumerate(stage_times)
        ]

        def pulled(u: torch.Tensor) -> torch.Tensor:
            w = a.T.to(u.dtype) @ u
            return u - h * torch.stack([pull(wi)[0] for pull, wi in zip(pullbacks, w)])

        with torch.no_grad():
            return gmres(pulled, grad, *krylov)
    if krylov is not None:
        vjps = []
        with torch.enable_grad():
            for i, (t, p) in enumerate(stage_times):
                yi = stages[i].detach().requires_grad_(True)
                out = term(t, yi, p)
                vjps.append((out, yi))
        if all(out.requires_grad for out, _ in vjps):

            def matvec(u: torch.Tensor) -> torch.Tensor:
                w = a.T.to(u.dtype) @ u
                rows = []
                with torch.enable_grad():
                    for (out, yi), wi in zip(vjps, w):
                        (g,) = torch.autograd.grad(
                            out, yi, wi, retain_graph=True, allow_unused=True
                        )
                        rows.append(torch.zeros_like(wi) if g is None else g)
                return u - h * torch.stack(rows)

            with torch.no_grad():
                return gmres(matvec, grad, *krylov)
    with torch.no_grad():
        jacobians = torch.stack(
            [
                block_jacobian(term, t, stages[i], p, layout)[0]
                for i, (t, p) in enumerate(stage_times)
            ],
            1,
        )
        matrix = newton_matrix(h, a, jacobians)
        out = torch.linalg.solve(matrix.mH, to_blocks(grad, layout)[..., None])[..., 0]
        return from_blocks(out, layout, m)


class _FirstDerivativeOnly(torch.autograd.Function):
    """The implicit function theorem's stage adjoint as it is, tied to the stage values
    (``anchor``, which depend on y0 and the parameters), with a backward that refuses: a
    second derivative through an implicit Runge-Kutta step is not supported."""

    generate_vmap_rule = True  # (the forward is a copy)

    @staticmethod
    def forward(solved: torch.Tensor, anchor: torch.Tensor, name: str) -> torch.Tensor:
        return solved.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.name = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        raise RuntimeError(
            f"{ctx.name}: second derivatives (reverse over reverse: a gradient of a gradient, "
            "torch.func.hessian, jacrev of grad) through an implicit Runge-Kutta method are "
            "not supported: its stages' derivative is the implicit function theorem's, "
            "solved without a graph. Use an explicit or multistep method for higher "
            "derivatives"
        )
