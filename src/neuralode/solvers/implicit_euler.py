"""Backward (implicit) Euler: Radau IIA with one stage; order 1, L-stable."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

IMPLICIT_EULER_TABLEAU = ImplicitTableau(
    name="implicit_euler", c=(1.0,), a=((1.0,),), b=(1.0,), order=1
)


class ImplicitEuler(ImplicitRK):
    """y1 = y0 + h f(t1, y1), fixed step.

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

    tableau = IMPLICIT_EULER_TABLEAU
