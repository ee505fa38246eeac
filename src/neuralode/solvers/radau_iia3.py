"""Radau IIA with two stages: order 3, L-stable, stiffly accurate."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

RADAU_IIA3_TABLEAU = ImplicitTableau(
    name="radauIIA3",
    c=(1 / 3, 1.0),
    a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)),
    b=(3 / 4, 1 / 4),
    order=3,
)


class RadauIIA3(ImplicitRK):
    """Two-stage Radau IIA collocation method, fixed step.

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

    tableau = RADAU_IIA3_TABLEAU
