"""Gauss-Legendre with two stages: order 4, A-stable, symplectic."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_S3 = math.sqrt(3)

GL4_TABLEAU = ImplicitTableau(
    name="gl4",
    c=(1 / 2 - _S3 / 6, 1 / 2 + _S3 / 6),
    a=((1 / 4, 1 / 4 - _S3 / 6), (1 / 4 + _S3 / 6, 1 / 4)),
    b=(1 / 2, 1 / 2),
    order=4,
)


class GL4(ImplicitRK):
    """Two-stage Gauss-Legendre collocation method, fixed step."""

    tableau = GL4_TABLEAU
