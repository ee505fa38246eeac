"""Kværnø's ESDIRK 5(4) (Kværnø 2004, BIT 44: 489-502; diffrax's ``Kvaerno5``): an explicit
first stage and six implicit stages with one diagonal gamma = 0.26; order 5 with an embedded
order-4 solution (the sixth stage) for error control. L-stable and stiffly accurate.

The coefficients are diffrax's, as printed in Kværnø's paper. The third stage lies at
``c = 1.230`` steps: f is evaluated past a step's end, so the method refuses ``jump_t`` and
``perturb``."""

from .implicit_rk import ImplicitRK
from .tableau import DenseOutput, ImplicitTableau

_G = 0.26  # gamma, the diagonal
_A21 = _G
_A31, _A32 = 0.13, 0.84033320996790809
_A41, _A42, _A43 = 0.22371961478320505, 0.47675532319799699, -0.06470895363112615
_A51, _A52, _A53, _A54 = (
    0.16648564323248321,
    0.10450018841591720,
    0.03631482272098715,
    -0.13090704451073998,
)
_A61, _A62, _A63, _A64, _A65 = (
    0.13855640231268224,
    0.0,
    -0.04245337201752043,
    0.02446657898003141,
    0.61943039072480676,
)
_A71, _A72, _A73, _A74, _A75, _A76 = (
    0.13659751177640291,
    0.0,
    -0.05496908796538376,
    -0.04118626728321046,
    0.62993304899016403,
    0.06962479448202728,
)

# A continuous extension of order 4, y(t0 + theta h) = y0 + h sum_i B_i(theta) k_i with
# B_i of degree 5 (row i: the coefficients of theta^1 .. theta^5). Kvaerno's paper gives
# none; these solve the order conditions up to order 4 for B(theta) (stage order 2 leaves 5
# independent ones), B(1) = b and B'(1) = the last stage (f(t1, y1): the derivative is
# continuous across steps), and cancel the O(h lambda) term of y' = lambda y as h lambda ->
# -inf (B_1 = sum_{i,j >= 2} B_i (Ai^-1)_ij a_j1, Ai the implicit block), so that stiff
# components stay bounded: |R_theta(z)| <= 1 for real z <= 0. The 3 parameters left
# minimise the order-5 error terms' squared integral over theta (each over its tree's
# symmetry) plus 1e-5 times that of R_theta(-inf), which falls from 1 at theta = 0 to at
# most 0.28 in size from theta = 0.1 on (0 at theta = 1). sum_i |B_i(theta)| <= 1.19, so
# the weights do not amplify round-off. tests/test_tableaux.py checks each property.
_DENSE = (
    (0.9926547907526607, -2.2063167034505193, 2.2062933205083173, -1.0812681347935977,
     0.225234238759569),
    (0.0, 0.0, 0.0, 0.0, 0.0),
    (-0.04692990793347593, -0.015209917499371062, 1.3903966471037996, -2.8222893498025687,
     1.4390634401662052),
    (-0.24617705000118179, -5.166993422761662, 18.45657086922474, -20.63338460657596,
     7.548797942830826),
    (0.03938158931532955, 3.9768708567313933, -6.759755320594064, 4.581036958683487,
     -1.2076010351459712),
    (0.6225199893995085, -13.2905294888037, 46.88143697903658, -56.0332414768499,
     21.889438791699583),
    (-0.36144941153283183, 16.702178675783866, -62.17494249527907, 75.98914660933792,
     -29.894933378309897),
)  # fmt: skip

KVAERNO5_TABLEAU = ImplicitTableau(
    name="kvaerno5",
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=(
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        (_A21, _G, 0.0, 0.0, 0.0, 0.0, 0.0),
        (_A31, _A32, _G, 0.0, 0.0, 0.0, 0.0),
        (_A41, _A42, _A43, _G, 0.0, 0.0, 0.0),
        (_A51, _A52, _A53, _A54, _G, 0.0, 0.0),
        (_A61, _A62, _A63, _A64, _A65, _G, 0.0),
        (_A71, _A72, _A73, _A74, _A75, _A76, _G),
    ),
    b=(_A71, _A72, _A73, _A74, _A75, _A76, _G),
    order=5,
    # the solution minus the sixth stage, itself a solution of order 4
    b_error=(_A71 - _A61, _A72 - _A62, _A73 - _A63, _A74 - _A64, _A75 - _A65, _A76 - _G, _G),
    error_order=4,
    dense=DenseOutput(coefficients=_DENSE, order=4),
)


class Kvaerno5(ImplicitRK):
    """ESDIRK 5(4) with step-size control, for stiff problems at tight tolerances.

    Per attempted step: one evaluation of f at (t0, y0) and six per Newton iteration; a
    Jacobian where ``radau`` takes one (kept across steps while Newton converges fast).
    Dense output is a continuous extension of order 4 over the stages (no extra
    evaluation), bounded on stiff components. Newton takes at most ``max_iters`` = 10
    iterations under error control (a failure shrinks the step), 30 on fixed steps.

    The third stage is at t0 + 1.230 h, past the step's end (as in diffrax): f must be
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

    tableau = KVAERNO5_TABLEAU
    adaptive_max_iters = 10
