"""Alexander's two-stage SDIRK method: order 2, L-stable, stiffly accurate."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_GAMMA = (2 - math.sqrt(2)) / 2

SDIRK2_TABLEAU = ImplicitTableau(
    name="sdirk2",
    c=(_GAMMA, 1.0),
    a=((_GAMMA, 0.0), (1 - _GAMMA, _GAMMA)),
    b=(1 - _GAMMA, _GAMMA),
    order=2,
)


class SDIRK2(ImplicitRK):
    """Singly diagonally implicit, gamma = 1 - 1/sqrt(2), fixed step.

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

    tableau = SDIRK2_TABLEAU
