"""Solvers: the generic explicit Runge-Kutta stepper and one small file per method."""

from .adams import ExplicitAdams, ImplicitAdams
from .adaptive_heun import AdaptiveHeun
from .base import Solver, Step
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .explicit_rk import ExplicitRK
from .fehlberg2 import Fehlberg2
from .heun2 import Heun2
from .heun3 import Heun3
from .midpoint import Midpoint
from .rk4 import RK4
from .tableau import ButcherTableau, DenseOutput
from .tsit5 import Tsit5

# The central list of methods, by their torchdiffeq names. Tests iterate over it, so a new
# method is tested by adding it here.
METHODS: dict[str, type[Solver]] = {
    "euler": Euler,
    "midpoint": Midpoint,
    "heun2": Heun2,
    "heun3": Heun3,
    "rk4": RK4,
    "adaptive_heun": AdaptiveHeun,
    "fehlberg2": Fehlberg2,
    "bosh3": Bosh3,
    "dopri5": Dopri5,
    "tsit5": Tsit5,
    "dopri8": Dopri8,
    "explicit_adams": ExplicitAdams,
    "implicit_adams": ImplicitAdams,
}

__all__ = [
    "METHODS",
    "RK4",
    "AdaptiveHeun",
    "Bosh3",
    "ButcherTableau",
    "DenseOutput",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitAdams",
    "ImplicitAdams",
    "ExplicitRK",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "Midpoint",
    "Solver",
    "Step",
    "Tsit5",
]
