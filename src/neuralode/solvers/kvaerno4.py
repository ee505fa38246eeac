"""Kværnø's ESDIRK 4(3) (Kværnø 2004, BIT 44: 489-502; diffrax's ``Kvaerno4``): an explicit
first stage and four implicit stages with one diagonal gamma; order 4 with an embedded
order-3 solution (the fourth stage) for error control. L-stable and stiffly accurate.

The coefficients are diffrax's, formulae in gamma as in Kværnø's paper (the "4/3" method,
advancing the final stage). The second stage lies at ``c = 2 gamma = 1.146`` steps: f is
evaluated past a step's end, so the method refuses ``jump_t`` and ``perturb``."""

import numpy as np

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_G = 0.5728160625  # gamma, the diagonal


def _poly(*coefficients: float) -> float:
    """The polynomial with these coefficients (highest power first) at gamma."""
    return float(np.polyval(coefficients, _G))


_A21 = _G
_A31 = _poly(144, -180, 81, -15, 1) * _G / _poly(12, -6, 1) ** 2
_A32 = _poly(-36, 39, -15, 2) * _G / _poly(12, -6, 1) ** 2
_A41 = _poly(-144, 396, -330, 117, -18, 1) / (12 * _G**2 * _poly(12, -9, 2))
_A42 = _poly(72, -126, 69, -15, 1) / (12 * _G**2 * _poly(3, -1))
_A43 = (_poly(-6, 6, -1) * _poly(12, -6, 1) ** 2) / (12 * _G**2 * _poly(12, -9, 2) * _poly(3, -1))
_A51 = _poly(288, -312, 120, -18, 1) / (48 * _G**2 * _poly(12, -9, 2))
_A52 = _poly(24, -12, 1) / (48 * _G**2 * _poly(3, -1))
_A53 = -(_poly(12, -6, 1) ** 3) / (48 * _G**2 * _poly(3, -1) * _poly(12, -9, 2) * _poly(6, -6, 1))
_A54 = _poly(-24, 36, -12, 1) / _poly(24, -24, 4)

KVAERNO4_TABLEAU = ImplicitTableau(
    name="kvaerno4",
    c=(0.0, _G + _A21, _G + _A31 + _A32, 1.0, 1.0),
    a=(
        (0.0, 0.0, 0.0, 0.0, 0.0),
        (_A21, _G, 0.0, 0.0, 0.0),
        (_A31, _A32, _G, 0.0, 0.0),
        (_A41, _A42, _A43, _G, 0.0),
        (_A51, _A52, _A53, _A54, _G),
    ),
    b=(_A51, _A52, _A53, _A54, _G),
    order=4,
    # the solution minus the fourth stage, itself a solution of order 3
    b_error=(_A51 - _A41, _A52 - _A42, _A53 - _A43, _A54 - _G, _G),
    error_order=3,
)


class Kvaerno4(ImplicitRK):
    """ESDIRK 4(3) with step-size control, for stiff problems at moderate tolerances.

    Per attempted step: one evaluation of f at (t0, y0) and four per Newton iteration; a
    Jacobian where ``radau`` takes one (kept across steps while Newton converges fast).
    Dense output is cubic Hermite from the step's ends, its start derivative the previous
    step's last stage (first same as last). Newton takes at most ``max_iters`` = 10
    iterations under error control (a failure shrinks the step), 30 on fixed steps.

    The second stage is at t0 + 1.146 h, past the step's end (as in diffrax): f must be
    defined, and smooth, a little beyond every step and beyond the end of the time span.
    ``jump_t`` and ``perturb=True`` (f discontinuous at a step's end) are refused: use
    ``kvaerno3`` or ``radau`` there, whose stages stay inside the step.

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

    tableau = KVAERNO4_TABLEAU
    adaptive_max_iters = 10
