"""The trapezoidal rule (Crank-Nicolson, Lobatto IIIA with two stages); order 2, A-stable."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

TRAPEZOID_TABLEAU = ImplicitTableau(
    name="trapezoid",
    c=(0.0, 1.0),
    a=((0.0, 0.0), (0.5, 0.5)),
    b=(0.5, 0.5),
    order=2,
)


class Trapezoid(ImplicitRK):
    """y1 = y0 + h/2 (f(t0, y0) + f(t1, y1)), fixed step; one implicit stage.

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

    tableau = TRAPEZOID_TABLEAU
