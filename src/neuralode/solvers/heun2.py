"""Heun's second-order method (explicit trapezoid)."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

HEUN2_TABLEAU = ButcherTableau(
    name="heun2", c=(0.0, 1.0), a=((), (1.0,)), b=(1 / 2, 1 / 2), order=2
)


class Heun2(ExplicitRK):
    """Heun's method, order 2, fixed step."""

    tableau = HEUN2_TABLEAU
