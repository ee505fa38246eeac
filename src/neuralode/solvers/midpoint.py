"""The explicit midpoint method."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

MIDPOINT_TABLEAU = ButcherTableau(
    name="midpoint", c=(0.0, 1 / 2), a=((), (1 / 2,)), b=(0.0, 1.0), order=2
)


class Midpoint(ExplicitRK):
    """Explicit midpoint rule, order 2, fixed step."""

    tableau = MIDPOINT_TABLEAU
