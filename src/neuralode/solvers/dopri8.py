"""Dormand-Prince 8(7) "RK8(7)13M" (Prince & Dormand 1981), the tableau torchdiffeq uses.

Dense output is a 7th-order continuous extension of degree 7 (as DOP853's, whose own
coefficients belong to DOP853's stages and do not apply to these): it costs f(t1, y1) and
four extra evaluations of f, once per step that has output times (or an event) inside it.
"""

from ._dopri8_dense import DENSE, EXTRA_A, EXTRA_C
from ._dopri8_tableau import B_HAT, A, B, C
from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau, DenseOutput

DOPRI8_TABLEAU = ButcherTableau(
    name="dopri8",
    c=C,
    a=A,
    b=B,
    order=8,
    b_error=tuple(x - y for x, y in zip(B, B_HAT)),
    error_order=7,
    dense=DenseOutput(coefficients=DENSE, order=7, extra_c=EXTRA_C, extra_a=EXTRA_A),
)


class Dopri8(ExplicitRK):
    """Dormand-Prince 8(7), 13 evaluations per step, for tight tolerances; a 7th-order
    continuous extension (4 more evaluations in a step with output times, and f(t1, y1),
    which the next step reuses)."""

    tableau = DOPRI8_TABLEAU
