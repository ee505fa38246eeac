"""TR-BDF2 (Bank et al. 1985; Hosea & Shampine 1996) as an ESDIRK method: a trapezoidal
stage to t0 + gamma h, gamma = 2 - sqrt(2), then BDF2 to t1. Order 2, L-stable."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_GAMMA = 2 - math.sqrt(2)
_D = _GAMMA / 2  # the diagonal
_W = math.sqrt(2) / 4

TRBDF2_TABLEAU = ImplicitTableau(
    name="trbdf2",
    c=(0.0, _GAMMA, 1.0),
    a=((0.0, 0.0, 0.0), (_D, _D, 0.0), (_W, _W, _D)),
    b=(_W, _W, _D),
    order=2,
)


class TRBDF2(ImplicitRK):
    """Explicit first stage, two implicit stages with the same diagonal; fixed step.

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

    tableau = TRBDF2_TABLEAU
