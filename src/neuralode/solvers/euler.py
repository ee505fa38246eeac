"""Forward Euler: the ResNet of numerical methods."""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau

EULER_TABLEAU = ButcherTableau(name="euler", c=(0.0,), a=((),), b=(1.0,), order=1)


class Euler(ExplicitRK):
    """Forward Euler, order 1, fixed step."""

    tableau = EULER_TABLEAU
