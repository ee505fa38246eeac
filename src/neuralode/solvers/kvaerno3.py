"""Kværnø's ESDIRK 3(2) (Kværnø 2004, BIT 44: 489-502; diffrax's ``Kvaerno3``): an explicit
first stage and three implicit stages with one diagonal gamma; order 3 with an embedded
order-2 solution (the third stage) for error control. L-stable and stiffly accurate."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_G = 0.43586652150  # gamma, the diagonal
_A31 = (-4 * _G**2 + 6 * _G - 1) / (4 * _G)
_A32 = (-2 * _G + 1) / (4 * _G)
_A41 = (6 * _G - 1) / (12 * _G)
_A42 = -1 / ((24 * _G - 12) * _G)
_A43 = (-6 * _G**2 + 6 * _G - 1) / (6 * _G - 3)

KVAERNO3_TABLEAU = ImplicitTableau(
    name="kvaerno3",
    c=(0.0, 2 * _G, 1.0, 1.0),
    a=(
        (0.0, 0.0, 0.0, 0.0),
        (_G, _G, 0.0, 0.0),
        (_A31, _A32, _G, 0.0),
        (_A41, _A42, _A43, _G),
    ),
    b=(_A41, _A42, _A43, _G),
    order=3,
    # the solution minus the third stage, itself a solution of order 2
    b_error=(_A41 - _A31, _A42 - _A32, _A43 - _G, _G),
    error_order=2,
)


class Kvaerno3(ImplicitRK):
    """ESDIRK 3(2) with step-size control, for stiff problems at loose tolerances (from
    rtol 1e-3 on ``radau`` is faster).

    Per attempted step: one evaluation of f at (t0, y0) and three per Newton iteration; a
    Jacobian where ``radau`` takes one (kept across steps while Newton converges fast).
    Dense output is cubic Hermite from the step's ends, its start derivative the previous
    step's last stage (first same as last). Newton takes at most ``max_iters`` = 10
    iterations under error control (a failure shrinks the step), 30 on fixed steps.

    Arguments:
        max_iters: Newton iterations per step (default 10 under error control, 30 on fixed
            steps).
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

    tableau = KVAERNO3_TABLEAU
    adaptive_max_iters = 10
