"""Kennedy & Carpenter's ARK3(2)4L[2]SA additive Runge-Kutta method (2003, Appl. Numer. Math. 44:
139-181; diffrax's ``KenCarp3``): order 3 with an embedded order-2 solution, 4 stages; an
explicit tableau for the non-stiff part of f and an L-stable, stiffly accurate ESDIRK tableau
(diagonal gamma = 1767732205903 / 4055673282236) for its stiff linear part."""

from .imex_rk import IMEXRK
from .tableau import AdditiveTableau, ButcherTableau, ImplicitTableau

_G = 1767732205903 / 4055673282236
_B = (
    1471266399579 / 7840856788654,
    -4482444167858 / 7529755066697,
    11266239266428 / 11593286722821,
    _G,
)
_B_EMBEDDED = (
    2756255671327 / 12835298489170,
    -10771552573575 / 22201958757719,
    9247589265047 / 10645013368117,
    2193209047091 / 5459859503100,
)
_C = (0.0, 2 * _G, 3 / 5, 1.0)
_B_ERROR = tuple(x - y for x, y in zip(_B, _B_EMBEDDED))

KENCARP3_TABLEAU = AdditiveTableau(
    explicit=ButcherTableau(
        name="kencarp3",
        c=_C,
        a=(
            (),
            (2 * _G,),
            (5535828885825 / 10492691773637, 788022342437 / 10882634858940),
            (
                6485989280629 / 16251701735622,
                -4246266847089 / 9704473918619,
                10755448449292 / 10357097424841,
            ),
        ),
        b=_B,
        order=3,
        b_error=_B_ERROR,
        error_order=2,
    ),
    implicit=ImplicitTableau(
        name="kencarp3",
        c=_C,
        a=(
            (0.0, 0.0, 0.0, 0.0),
            (_G, _G, 0.0, 0.0),
            (2746238789719 / 10658868560708, -640167445237 / 6845629431997, _G, 0.0),
            (
                1471266399579 / 7840856788654,
                -4482444167858 / 7529755066697,
                11266239266428 / 11593286722821,
                _G,
            ),
        ),
        b=_B,
        order=3,
        b_error=_B_ERROR,
        error_order=2,
    ),
)


class KenCarp3(IMEXRK):
    """IMEX ARK3(2)4L[2]SA, order 3(2) with 4 stages, for f = L y + N(t, y) with a stiff
    linear L (a PDE's diffusion) and a non-stiff N: 3 exact solves with (I - h gamma L)
    and 4 evaluations of f per step, no Newton iteration. Dense output is cubic Hermite.

    Arguments:
        linear: the stiff linear part L (``model.linear_part()`` of a ``neuralode.pde``
            model), as for [`IMEXRK`][neuralode.solvers.IMEXRK]; ``None``: L = 0, the
            explicit tableau alone.

    Raises:
        ValueError: as [`IMEXRK`][neuralode.solvers.IMEXRK].
    """

    tableaux = KENCARP3_TABLEAU
