"""The classical fourth-order Runge-Kutta method in its 3/8-rule form (torchdiffeq's rk4)."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

RK4_TABLEAU = ButcherTableau(
    name="rk4",
    c=(0.0, 1 / 3, 2 / 3, 1.0),
    a=((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
    b=(1 / 8, 3 / 8, 3 / 8, 1 / 8),
    order=4,
)


class RK4(ExplicitRK):
    """Kutta's 3/8 rule, order 4, fixed step."""

    tableau = RK4_TABLEAU
