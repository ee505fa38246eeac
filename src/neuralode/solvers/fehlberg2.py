"""Fehlberg's RK1(2) pair, propagating the second-order solution (as torchdiffeq does)."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

FEHLBERG2_TABLEAU = ButcherTableau(
    name="fehlberg2",
    c=(0.0, 1 / 2, 1.0),
    a=((), (1 / 2,), (1 / 256, 255 / 256)),
    b=(1 / 512, 255 / 256, 1 / 512),
    order=2,
    b_error=(-1 / 512, 0.0, 1 / 512),  # b_hat = (1/256, 255/256, 0), first order
    error_order=1,
)


class Fehlberg2(ExplicitRK):
    """Fehlberg 2(1); dense output by cubic Hermite."""

    tableau = FEHLBERG2_TABLEAU
