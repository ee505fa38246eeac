"""Gauss-Legendre with three stages: order 6, A-stable, symplectic."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_S15 = math.sqrt(15)

GL6_TABLEAU = ImplicitTableau(
    name="gl6",
    c=(1 / 2 - _S15 / 10, 1 / 2, 1 / 2 + _S15 / 10),
    a=(
        (5 / 36, 2 / 9 - _S15 / 15, 5 / 36 - _S15 / 30),
        (5 / 36 + _S15 / 24, 2 / 9, 5 / 36 - _S15 / 24),
        (5 / 36 + _S15 / 30, 2 / 9 + _S15 / 15, 5 / 36),
    ),
    b=(5 / 18, 4 / 9, 5 / 18),
    order=6,
)


class GL6(ImplicitRK):
    """Three-stage Gauss-Legendre collocation method, fixed step."""

    tableau = GL6_TABLEAU
