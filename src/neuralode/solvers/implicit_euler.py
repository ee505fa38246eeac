"""Backward (implicit) Euler: Radau IIA with one stage; order 1, L-stable."""

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

IMPLICIT_EULER_TABLEAU = ImplicitTableau(
    name="implicit_euler", c=(1.0,), a=((1.0,),), b=(1.0,), order=1
)


class ImplicitEuler(ImplicitRK):
    """y1 = y0 + h f(t1, y1), fixed step."""

    tableau = IMPLICIT_EULER_TABLEAU
