"""Dormand-Prince 5(4) with Shampine's 4th-order dense output.

The embedded 4th-order solution is Shampine's (as in torchdiffeq, torchode and MATLAB's ode45),
not Hairer's DOPRI5/SciPy RK45 one (5179/57600, ..., 1/40): both are 4th order and lie on the
same work-precision curve, and Shampine's makes the step sequence, NFE and results identical
to torchdiffeq's and torchode's at the same tolerances (same controller settings aside).
"""

from .explicit_rk import ExplicitRK
from .tableau import ButcherTableau, DenseOutput

_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_HAT = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)

DOPRI5_TABLEAU = ButcherTableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        _B[:6],
    ),
    b=_B,
    order=5,
    b_error=tuple(x - y for x, y in zip(_B, _B_HAT)),
    error_order=4,
    dense=DenseOutput(
        coefficients=(
            (1.0, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432),
            (0.0, 0.0, 0.0, 0.0),
            (
                0.0,
                131558114200 / 32700410799,
                -68118460800 / 10900136933,
                87487479700 / 32700410799,
            ),
            (0.0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072),
            (
                0.0,
                127303824393 / 49829197408,
                -318862633887 / 49829197408,
                701980252875 / 199316789632,
            ),
            (0.0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844),
            (0.0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423),
        ),
        order=4,
    ),
)


class Dopri5(ExplicitRK):
    """Dormand-Prince 5(4): the default adaptive method, FSAL, 6 evaluations per step."""

    tableau = DOPRI5_TABLEAU
