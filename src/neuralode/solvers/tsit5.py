"""Tsitouras 5(4) (2011) with its own fourth-order continuous extension."""

from numpy.polynomial import polynomial as P

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau, DenseOutput

_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
    0.0,
)
# The paper's b - b_hat, with the corrected sign of the last entry (OrdinaryDiffEq.jl #1654).
_B_ERROR = (
    0.00178001105222577714,
    0.0008164344596567469,
    -0.007880878010261995,
    0.1447110071732629,
    -0.5823571654525552,
    0.45808210592918697,
    -1 / 66,
)


def _dense_coefficients() -> tuple[tuple[float, ...], ...]:
    """Tsitouras' interpolation polynomials b_i(theta), expanded into powers theta^1..4."""
    t = (0.0, 1.0)  # the polynomial "theta"

    def poly(scale, *roots_or_quadratics):
        out = (scale,)
        for factor in roots_or_quadratics:
            out = P.polymul(out, factor)
        return out

    t2 = P.polymul(t, t)
    basis = [
        poly(
            -1.0530884977290216,
            t,
            (-1.3299890189751412, 1.0),
            (0.7139816917074209, -1.4364028541716351, 1.0),
        ),
        poly(0.1017, t2, (1.2949852507374631, -2.1966568338249754, 1.0)),
        poly(2.490627285651252793, t2, (1.57803468208092486, -2.38535645472061657, 1.0)),
        poly(-16.54810288924490272, t2, (-1.21712927295533244, 1.0), (-0.61620406037800089, 1.0)),
        poly(47.37952196281928122, t2, (-1.203071208372362603, 1.0), (-0.658047292653547382, 1.0)),
        poly(-34.87065786149660974, t2, (-1.2, 1.0), (-2 / 3, 1.0)),
        poly(2.5, t2, (-1.0, 1.0), (-0.6, 1.0)),
    ]
    rows = []
    for coeffs in basis:
        padded = list(coeffs) + [0.0] * (5 - len(coeffs))
        rows.append(tuple(float(x) for x in padded[1:5]))  # b_i(0) = 0: no constant term
    return tuple(rows)


TSIT5_TABLEAU = ButcherTableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.02826905039406838,
        ),
        _B[:6],
    ),
    b=_B,
    order=5,
    b_error=_B_ERROR,
    error_order=4,
    dense=DenseOutput(coefficients=_dense_coefficients(), order=4),
)


class Tsit5(ExplicitRK):
    """Tsitouras 5(4): FSAL, 6 evaluations per step, often cheaper than dopri5."""

    tableau = TSIT5_TABLEAU
