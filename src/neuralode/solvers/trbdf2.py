"""TR-BDF2 (Bank et al. 1985; Hosea & Shampine 1996) as an ESDIRK method: a trapezoidal
stage to t0 + gamma h, gamma = 2 - sqrt(2), then BDF2 to t1. Order 2, L-stable."""

import math

from .implicit_rk import ImplicitRK
from .tableau import ImplicitTableau

_GAMMA = 2 - math.sqrt(2)
_D = _GAMMA / 2  # the diagonal
_W = math.sqrt(2) / 4

TRBDF2_TABLEAU = ImplicitTableau(
    name="trbdf2",
    c=(0.0, _GAMMA, 1.0),
    a=((0.0, 0.0, 0.0), (_D, _D, 0.0), (_W, _W, _D)),
    b=(_W, _W, _D),
    order=2,
)


class TRBDF2(ImplicitRK):
    """Explicit first stage, two implicit stages with the same diagonal; fixed step."""

    tableau = TRBDF2_TABLEAU
