"""Heun's third-order method."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

HEUN3_TABLEAU = ButcherTableau(
    name="heun3",
    c=(0.0, 1 / 3, 2 / 3),
    a=((), (1 / 3,), (0.0, 2 / 3)),
    b=(1 / 4, 0.0, 3 / 4),
    order=3,
)


class Heun3(ExplicitRK):
    """Heun's third-order method, fixed step."""

    tableau = HEUN3_TABLEAU
