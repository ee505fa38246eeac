"""Radau IIA with two stages: order 3, L-stable, stiffly accurate."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

RADAU_IIA3_TABLEAU = ImplicitTableau(
    name="radauIIA3",
    c=(1 / 3, 1.0),
    a=((5 / 12, -1 / 12), (3 / 4, 1 / 4)),
    b=(3 / 4, 1 / 4),
    order=3,
)


class RadauIIA3(ImplicitRK):
    """Two-stage Radau IIA collocation method, fixed step."""

    tableau = RADAU_IIA3_TABLEAU
