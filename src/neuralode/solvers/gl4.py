"""Gauss-Legendre with two stages: order 4, A-stable, symplectic."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_S3 = math.sqrt(3)

GL4_TABLEAU = ImplicitTableau(
    name="gl4",
    c=(1 / 2 - _S3 / 6, 1 / 2 + _S3 / 6),
    a=((1 / 4, 1 / 4 - _S3 / 6), (1 / 4 + _S3 / 6, 1 / 4)),
    b=(1 / 2, 1 / 2),
    order=4,
)


class GL4(ImplicitRK):
    """Two-stage Gauss-Legendre collocation method, fixed step.

    Arguments:
        max_iters: Newton iterations per step (default 30).
        newton_tol: the Newton convergence tolerance, as for
            [`ImplicitRK`][neuralode.solvers.ImplicitRK].
        batch_size: the first dimension of the state indexes that many independent samples
            (Newton matrices per sample).
        linear_solver: ``"direct"`` (LU), ``"krylov"`` (GMRES) or ``"auto"``.
        krylov_tol: GMRES's relative tolerance.
        krylov_dim: the most Krylov vectors GMRES builds.
        preconditioner: ``preconditioner(c, r)`` ≈ (I - c J)^-1 r for GMRES, as for
            [`ImplicitRK`][neuralode.solvers.ImplicitRK].

    Raises:
        ValueError: an option out of its range (the message names it).
    """

    tableau = GL4_TABLEAU
