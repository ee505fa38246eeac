"""Radau IIA with three stages: order 5, L-stable, stiffly accurate (the method of RADAU5)."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_S6 = math.sqrt(6)

RADAU_IIA5_TABLEAU = ImplicitTableau(
    name="radauIIA5",
    c=((4 - _S6) / 10, (4 + _S6) / 10, 1.0),
    a=(
        ((88 - 7 * _S6) / 360, (296 - 169 * _S6) / 1800, (-2 + 3 * _S6) / 225),
        ((296 + 169 * _S6) / 1800, (88 + 7 * _S6) / 360, (-2 - 3 * _S6) / 225),
        ((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    ),
    b=((16 - _S6) / 36, (16 + _S6) / 36, 1 / 9),
    order=5,
)


class RadauIIA5(ImplicitRK):
    """Three-stage Radau IIA collocation method, fixed step (``radau`` is the adaptive one).

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

    tableau = RADAU_IIA5_TABLEAU
