"""The implicit function theorem's derivative of an implicit Runge-Kutta step's stages.

The Newton iterations run without a graph. With gradients enabled, the converged stages are
re-attached: one more evaluation of the stages with a graph, and a backward hook that solves
with the transposed Newton matrix at the stages' own Jacobians (``transposed_solve``). The
gradient is that of the exact discrete step, whatever the number of iterations, and costs
no graph over the iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .._autograd import FirstDerivativeOnly
from .._errors import SolverError
from .._host import vmap_active
from .._term import ODETerm
from ._krylov_solve import restarted_preconditioned_gmres
from ._newton import (
    BatchLayout,
    block_jacobian,
    factor_dtype,
    from_blocks,
    newton_matrix,
    to_blocks,
)


class TransposedSolveError(SolverError):
    """The gradient's transposed GMRES solve did not reach ``krylov_tol``: the gradient
    would be wrong."""


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
        try:
            solved = solve_transposed(grad)
        except TransposedSolveError as error:
            raise TransposedSolveError(f"{name}: {error}") from None
        if torch.is_grad_enabled():  # create_graph=True (torch.func.grad, hessian)
            # first derivatives are exact; differentiating them again would treat the
            # solve's result as a constant: an error when (and only when) that happens
            return FirstDerivativeOnly.apply(solved, values, _second_derivatives_refused(name))
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
    precondition: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """u with (I - h (A kron J(Y)))^H u = grad, J at each stage: by GMRES on
    vector-Jacobian products with ``krylov`` (its tolerance and dimension), preconditioned
    on the right by ``precondition`` where given (v -> ≈ (I - h (A^T kron J^H))^-1 v on
    (m, N), see ``_krylov_solve.transposed_preconditioner``), else (and under vmap, whose
    batched residuals GMRES cannot read on the host) by factorising the block Jacobians.
    GMRES restarts every ``dim`` vectors from its iterate (``_newton.restarted_gmres``, at
    most 20 cycles), as no Newton iteration follows to absorb an inexact solve. A residual
    left above tol times |grad| is an error, but for one that stagnates below sqrt(eps)
    times |grad| (rounding's floor, e.g. in float32); a NaN one (a non-finite
    vector-Jacobian product) gives a NaN u, as the factorisation would.

    Raises:
        SingularMatrixError: GMRES stalls with ``precondition`` (a singular one).
        TransposedSolveError: GMRES stops above that residual.
    """
    m = len(stage_times)
    if krylov is not None and vmap_active():
        krylov = None  # GMRES reads its residuals on the host, which a vmapped gradient cannot
    pullbacks = None if krylov is None else _stage_pullbacks(term, stages, stage_times)
    if pullbacks is not None:

        def matvec(u: torch.Tensor) -> torch.Tensor:
            w = a.T.to(u.dtype) @ u
            return u - h * torch.stack([pull(wi) for pull, wi in zip(pullbacks, w)])

        tol, dim = krylov
        with torch.no_grad():
            result = restarted_preconditioned_gmres(matvec, grad, tol, dim, precondition)
        # a residual that stagnates below sqrt(eps) is rounding's (float32's floor)
        real = grad.real if grad.is_complex() else grad
        floor = torch.finfo(real.dtype).eps ** 0.5 if result.stagnated else 0.0
        if result.residual > max(tol, floor):  # (a NaN passes: a NaN u)
            raise _unconverged(h, tol, dim, result.residual, result.matvecs, precondition)
        return result.x
    with torch.no_grad():
        jacobians = torch.stack(
            [
                block_jacobian(term, t, stages[i], p, layout)[0]
                for i, (t, p) in enumerate(stage_times)
            ],
            1,
        )
        matrix = newton_matrix(h, a, jacobians.to(factor_dtype(jacobians.dtype)))
        blocks = to_blocks(grad, layout)[..., None].to(matrix.dtype)
        out = torch.linalg.solve(matrix.mH, blocks)[..., 0].to(grad.dtype)
        return from_blocks(out, layout, m)


def _unconverged(
    h: float,
    tol: float,
    dim: int,
    residual: float,
    matvecs: int,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None,
) -> TransposedSolveError:
    """The error of a transposed GMRES solve stopped at relative ``residual`` after
    ``matvecs`` products with the transposed Newton matrix, with its fixes."""
    if precondition is None:
        fix = (
            "precondition it with a preconditioner that has a transposed(c, r) method "
            "returning ≈ (I - c J)^-H r (as pde.DiffusionPreconditioner has), "
        )
    else:
        fix = "improve the preconditioner's transposed(c, r), "
    return TransposedSolveError(
        "the gradient's transposed GMRES solve (I - h (A kron J))^H u = g of a step of "
        f"h={h:.6g} did not converge: relative residual {residual:.3g} after {matvecs} "
        f"matrix-vector products (krylov_tol={tol:g}, restarted every krylov_dim={dim} "
        "vectors until it stagnated or ran out of restarts), so the gradient would be "
        f'wrong. Raise krylov_dim, loosen krylov_tol, {fix}or use linear_solver="direct"'
    )


def _stage_pullbacks(
    term: ODETerm, stages: torch.Tensor, stage_times: list[tuple[float, float]]
) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """w -> J(Y_i)^H w at each stage, by one evaluation of f per stage: by torch.func inside
    a transform (where requires_grad_ is refused), else by autograd; ``None`` where f's
    output does not depend on y through autograd (f detaches)."""
    if torch._C._functorch.maybe_current_level() is not None:
        vjps = [
            torch.func.vjp(lambda y, t=t, p=p: term(t, y, p), stages[i])[1]
            for i, (t, p) in enumerate(stage_times)
        ]
        return [lambda w, vjp=vjp: vjp(w)[0] for vjp in vjps]
    graphs = []
    with torch.enable_grad():
        for i, (t, p) in enumerate(stage_times):
            yi = stages[i].detach().requires_grad_(True)
            graphs.append((term(t, yi, p), yi))
    if not all(out.requires_grad for out, _ in graphs):
        return None

    def pullback(out: torch.Tensor, yi: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
        def pull(w: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                (g,) = torch.autograd.grad(out, yi, w, retain_graph=True, allow_unused=True)
            return torch.zeros_like(w) if g is None else g

        return pull

    return [pullback(out, yi) for out, yi in graphs]


def _second_derivatives_refused(name: str) -> str:
    """Why a second derivative through an implicit Runge-Kutta step raises."""
    return (
        f"{name}: second derivatives (reverse over reverse: a gradient of a gradient, "
        "torch.func.hessian, jacrev of grad) through an implicit Runge-Kutta method are "
        "not supported: its stages' derivative is the implicit function theorem's, "
        "solved without a graph. Use an explicit or multistep method for higher "
        "derivatives"
    )
