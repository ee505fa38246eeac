"""Adaptive Radau IIA of order 5 with the error estimate of RADAU5 (Hairer & Wanner, Solving
ODEs II, IV.8), as in SciPy's ``Radau``: L-stable, for stiff problems.

The embedded estimate err = (I - h gamma0 J)^-1 h gamma0 (f(t0, y0) + (e . Z) / h), with
gamma0 the real eigenvalue of A^-1 inverted, is filtered by the Newton matrix, so it stays
bounded on stiff components where a raw embedded difference would be of the size of the
stiffness. After a rejection the estimate is refined once with f(t0, y0 + err).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .._term import ODETerm
from .implicit_rk import ImplicitRK
from .radau_iia5 import RADAU_IIA5_TABLEAU

_S6 = math.sqrt(6)
_E = ((-13 - 7 * _S6) / 3, (-13 + 7 * _S6) / 3, -1 / 3)
_MU_REAL = 3 + 3 ** (2 / 3) - 3 ** (1 / 3)  # the real eigenvalue of A^-1


class Radau(ImplicitRK):
    """Radau IIA 5 with step-size control (error estimate of order 3).

    Per attempted step: one evaluation of f at (t0, y0), three per Newton iteration, and one
    more after a rejection; a Jacobian (one evaluation of f, n vector-Jacobian products) at
    the first step, after a step whose Newton iteration converged slowly (more than two
    iterations at a contraction rate above 1e-3), and where Newton fails with an earlier
    step's Jacobian (then the step is tried once more with the fresh one), as in SciPy's
    Radau; a rejected step's retry keeps its Jacobian.
    Newton takes at most ``max_iters`` = 6 iterations under error control (a failure
    shrinks the step), 30 on fixed steps. Use with ``PIController`` (``solve``'s default).

    Arguments:
        max_iters: Newton iterations per step (default 6 under error control, 30 on fixed steps).
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
    adaptive_max_iters = 6
    error_order = 3

    @property
    def name(self) -> str:
        """``"radau"``, the adaptive method's name (``radau_iia5`` is the fixed-step one)."""
        return "radau"

    def _error(
        self,
        term: ODETerm,
        t0: float,
        y0: torch.Tensor,
        h: float,
        z: torch.Tensor,
        lin: Any,
        solve: Any,
        state: Any,
        p0: float,
    ) -> torch.Tensor:
        gamma = 1 / _MU_REAL
        e = torch.tensor(_E, dtype=torch.float64).to(dtype=z.dtype, device=z.device)
        ze = (e @ z) / h
        # (I - h gamma J) is the Newton matrix of the real eigenvalue gamma of A
        error = (h * gamma) * solve.shifted(gamma, (lin.f0 + ze)[None])[0]
        if state is not None and state.get("retry"):
            refined = term(t0, y0 + error, p0) + ze
            error = (h * gamma) * solve.shifted(gamma, refined[None])[0]
        return error
