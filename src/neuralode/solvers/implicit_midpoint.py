"""The implicit midpoint rule: Gauss-Legendre with one stage; order 2, A-stable, symplectic."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

IMPLICIT_MIDPOINT_TABLEAU = ImplicitTableau(
    name="implicit_midpoint", c=(0.5,), a=((0.5,),), b=(1.0,), order=2
)


class ImplicitMidpoint(ImplicitRK):
    """y1 = y0 + h f(t0 + h/2, (y0 + y1) / 2), fixed step."""

    tableau = IMPLICIT_MIDPOINT_TABLEAU
