"""Alexander's two-stage SDIRK method: order 2, L-stable, stiffly accurate."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_GAMMA = (2 - math.sqrt(2)) / 2

SDIRK2_TABLEAU = ImplicitTableau(
    name="sdirk2",
    c=(_GAMMA, 1.0),
    a=((_GAMMA, 0.0), (1 - _GAMMA, _GAMMA)),
    b=(1 - _GAMMA, _GAMMA),
    order=2,
)


class SDIRK2(ImplicitRK):
    """Singly diagonally implicit, gamma = 1 - 1/sqrt(2), fixed step."""

    tableau = SDIRK2_TABLEAU
