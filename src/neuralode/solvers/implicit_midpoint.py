"""The implicit midpoint rule: Gauss-Legendre with one stage; order 2, A-stable, symplectic."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

IMPLICIT_MIDPOINT_TABLEAU = ImplicitTableau(
    name="implicit_midpoint", c=(0.5,), a=((0.5,),), b=(1.0,), order=2
)


class ImplicitMidpoint(ImplicitRK):
    """y1 = y0 + h f(t0 + h/2, (y0 + y1) / 2), fixed step.

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

    tableau = IMPLICIT_MIDPOINT_TABLEAU
