"""Heun's method with an embedded Euler error estimate, 2(1)."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

ADAPTIVE_HEUN_TABLEAU = ButcherTableau(
    name="adaptive_heun",
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(1 / 2, 1 / 2),
    order=2,
    b_error=(1 / 2, -1 / 2),  # b_hat = (0, 1): the first-order solution y0 + dt f(t1, y0 + dt f0)
    error_order=1,
)


class AdaptiveHeun(ExplicitRK):
    """Adaptive Heun 2(1); dense output by cubic Hermite."""

    tableau = ADAPTIVE_HEUN_TABLEAU
