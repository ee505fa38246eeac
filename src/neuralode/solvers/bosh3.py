"""Bogacki-Shampine 3(2) with its natural cubic Hermite dense output (SciPy's RK23)."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau, DenseOutput

_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_B_HAT = (7 / 24, 1 / 4, 1 / 3, 1 / 8)

BOSH3_TABLEAU = ButcherTableau(
    name="bosh3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _B[:3]),
    b=_B,
    order=3,
    b_error=tuple(x - y for x, y in zip(_B, _B_HAT)),
    error_order=2,
    dense=DenseOutput(
        coefficients=(
            (1.0, -4 / 3, 5 / 9),
            (0.0, 1.0, -2 / 3),
            (0.0, 4 / 3, -8 / 9),
            (0.0, -1.0, 1.0),
        ),
        order=3,
    ),
)


class Bosh3(ExplicitRK):
    """Bogacki-Shampine 3(2), FSAL, 3 evaluations per step."""

    tableau = BOSH3_TABLEAU
