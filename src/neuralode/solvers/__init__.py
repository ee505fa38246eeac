"""Solvers: the generic explicit Runge-Kutta stepper and one small file per method."""

from .base import Solver, Step
from .dopri5 import Dopri5
from .euler import Euler
from .explicit_rk import ExplicitRK
from .rk4 import RK4
from .tableau import ButcherTableau, DenseOutput

# The central list of methods, by their torchdiffeq names. Tests iterate over it, so a new
# method is tested by adding it here.
METHODS: dict[str, type[Solver]] = {
    "euler": Euler,
    "rk4": RK4,
    "dopri5": Dopri5,
}

__all__ = [
    "METHODS",
    "RK4",
    "ButcherTableau",
    "DenseOutput",
    "Dopri5",
    "Euler",
    "ExplicitRK",
    "Solver",
    "Step",
]
