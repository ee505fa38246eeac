"""Kennedy & Carpenter's ARK4(3)6L[2]SA additive Runge-Kutta method (2003, Appl. Numer. Math. 44:
139-181; diffrax's ``KenCarp4``): order 4 with an embedded order-3 solution, 6 stages; an
explicit tableau for the non-stiff part of f and an L-stable, stiffly accurate ESDIRK tableau
(diagonal gamma = 1/4) for its stiff linear part."""

from .imex_rk import IMEXRK
from .tableau import AdditiveTableau, ButcherTableau, ImplicitTableau

_G = 0.25
_B = (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211, _G)
_B_EMBEDDED = (
    4586570599 / 29645900160,
    0.0,
    178811875 / 945068544,
    814220225 / 1159782912,
    -3700637 / 11593932,
    61727 / 225920,
)
_C = (0.0, 0.5, 83 / 250, 31 / 50, 17 / 20, 1.0)
_B_ERROR = tuple(x - y for x, y in zip(_B, _B_EMBEDDED))

KENCARP4_TABLEAU = AdditiveTableau(
    explicit=ButcherTableau(
        name="kencarp4",
        c=_C,
        a=(
            (),
            (0.5,),
            (13861 / 62500, 6889 / 62500),
            (
                -116923316275 / 2393684061468,
                -2731218467317 / 15368042101831,
                9408046702089 / 11113171139209,
            ),
            (
                -451086348788 / 2902428689909,
                -2682348792572 / 7519795681897,
                12662868775082 / 11960479115383,
                3355817975965 / 11060851509271,
            ),
            (
                647845179188 / 3216320057751,
                73281519250 / 8382639484533,
                552539513391 / 3454668386233,
                3354512671639 / 8306763924573,
                4040 / 17871,
            ),
        ),
        b=_B,
        order=4,
        b_error=_B_ERROR,
        error_order=3,
    ),
    implicit=ImplicitTableau(
        name="kencarp4",
        c=_C,
        a=(
            (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
            (_G, _G, 0.0, 0.0, 0.0, 0.0),
            (8611 / 62500, -1743 / 31250, _G, 0.0, 0.0, 0.0),
            (5012029 / 34652500, -654441 / 2922500, 174375 / 388108, _G, 0.0, 0.0),
            (
                15267082809 / 155376265600,
                -71443401 / 120774400,
                730878875 / 902184768,
                2285395 / 8070912,
                _G,
                0.0,
            ),
            (82889 / 524892, 0.0, 15625 / 83664, 69875 / 102672, -2260 / 8211, _G),
        ),
        b=_B,
        order=4,
        b_error=_B_ERROR,
        error_order=3,
    ),
)


class KenCarp4(IMEXRK):
    """IMEX ARK4(3)6L[2]SA, order 4(3) with 6 stages, for f = L y + N(t, y) with a stiff
    linear L (a PDE's diffusion) and a non-stiff N: 5 exact solves with (I - h gamma L)
    and 6 evaluations of f per step, no Newton iteration. Dense output is cubic Hermite.

    Arguments:
        linear: the stiff linear part L (``model.linear_part()`` of a ``neuralode.pde``
            model), as for [`IMEXRK`][neuralode.solvers.IMEXRK]; ``None``: L = 0, the
            explicit tableau alone.

    Raises:
        ValueError: as [`IMEXRK`][neuralode.solvers.IMEXRK].
    """

    tableaux = KENCARP4_TABLEAU
