"""Solvers: the generic explicit Runge-Kutta stepper and one small file per method."""

from ._step import Step
from .adams import ExplicitAdams, ImplicitAdams
from .adaptive_heun import AdaptiveHeun
from .base import Solver
from .bosh3 import Bosh3
from .dopri5 import Dopri5
from .dopri8 import Dopri8
from .euler import Euler
from .explicit_rk import ExplicitRK
from .fehlberg2 import Fehlberg2
from .gl4 import GL4
from .gl6 import GL6
from .heun2 import Heun2
from .heun3 import Heun3
from .hyper import HyperEuler, HyperHeun, HyperMidpoint, HyperSolver
from .imex_rk import IMEXRK, LinearPart
from .implicit_euler import ImplicitEuler
from .implicit_midpoint import ImplicitMidpoint
from .implicit_rk import ImplicitRK, NewtonError
from .kencarp3 import KenCarp3
from .kencarp4 import KenCarp4
from .kencarp5 import KenCarp5
from .kvaerno3 import Kvaerno3
from .kvaerno4 import Kvaerno4
from .kvaerno5 import Kvaerno5
from .leapfrog import Leapfrog
from .midpoint import Midpoint
from .partitioned import PartitionedSolver, Splitting
from .radau import Radau
from .radau_iia3 import RadauIIA3
from .radau_iia5 import RadauIIA5
from .rk4 import RK4
from .sdirk2 import SDIRK2
from .semi_implicit_euler import SemiImplicitEuler
from .tableau import AdditiveTableau, ButcherTableau, DenseOutput, ImplicitTableau
from .trapezoid import Trapezoid
from .trbdf2 import TRBDF2
from .tsit5 import Tsit5
from .yoshida4 import Yoshida4

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
    "implicit_euler": ImplicitEuler,
    "implicit_midpoint": ImplicitMidpoint,
    "trapezoid": Trapezoid,
    "radauIIA3": RadauIIA3,
    "gl4": GL4,
    "radauIIA5": RadauIIA5,
    "gl6": GL6,
    "sdirk2": SDIRK2,
    "trbdf2": TRBDF2,
    "radau": Radau,
    "kvaerno3": Kvaerno3,
    "kvaerno4": Kvaerno4,
    "kvaerno5": Kvaerno5,
    "kencarp3": KenCarp3,
    "kencarp4": KenCarp4,
    "kencarp5": KenCarp5,
}

# The central list of the partitioned (symplectic) methods, whose state is a pair (q, p) with
# a separable f: they cannot run METHODS' tests on general states, so their tests iterate over
# this list. Method names resolve in both lists (``method_class``).
PARTITIONED_METHODS: dict[str, type[PartitionedSolver]] = {
    "semi_implicit_euler": SemiImplicitEuler,
    "leapfrog": Leapfrog,
    "yoshida4": Yoshida4,
}


def method_class(name: str) -> type[Solver] | None:
    """The solver class of a method name, from ``METHODS`` or ``PARTITIONED_METHODS``.

    Arguments:
        name: a method name, such as ``"dopri5"`` or ``"leapfrog"``.

    Returns:
        The class, or ``None`` for an unknown name.
    """
    return METHODS.get(name) or PARTITIONED_METHODS.get(name)


def method_names() -> list[str]:
    """Every method name ``method_class`` resolves, ``METHODS``' first.

    Returns:
        The names, in the lists' order.
    """
    return [*METHODS, *PARTITIONED_METHODS]


__all__ = [
    "METHODS",
    "PARTITIONED_METHODS",
    "RK4",
    "AdaptiveHeun",
    "AdditiveTableau",
    "Bosh3",
    "ButcherTableau",
    "DenseOutput",
    "Dopri5",
    "Dopri8",
    "Euler",
    "ExplicitAdams",
    "ImplicitAdams",
    "ExplicitRK",
    "GL4",
    "GL6",
    "ImplicitEuler",
    "ImplicitMidpoint",
    "IMEXRK",
    "ImplicitRK",
    "ImplicitTableau",
    "KenCarp3",
    "KenCarp4",
    "KenCarp5",
    "Kvaerno3",
    "Kvaerno4",
    "Kvaerno5",
    "Leapfrog",
    "LinearPart",
    "NewtonError",
    "Radau",
    "RadauIIA3",
    "RadauIIA5",
    "SDIRK2",
    "TRBDF2",
    "Trapezoid",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "HyperEuler",
    "HyperHeun",
    "HyperMidpoint",
    "HyperSolver",
    "Midpoint",
    "PartitionedSolver",
    "SemiImplicitEuler",
    "Splitting",
    "Solver",
    "Step",
    "Tsit5",
    "Yoshida4",
]
