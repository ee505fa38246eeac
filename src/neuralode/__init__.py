"""neuralode: neural differential equations in PyTorch."""

from importlib import metadata as _metadata

from ._errors import MaxStepsError, NonFiniteError, SolverError, StepSizeUnderflowError
from ._events import Event
from ._execution import Execution
from ._norms import max_norm, mixed_norm, rms_norm, seminorm
from ._progress import Progress, ProgressMeter, TqdmProgressMeter
from ._saveat import SaveAt
from ._solution import Solution, SolveStats
from ._solve import solve
from ._status import Status
from .adjoint import Backsolve, Checkpointed, Direct, GradientStrategy, Reversible
from .compat import odeint, odeint_adjoint, odeint_dense, odeint_event
from .controllers import FixedGrid, PIController, PIDController
from .solvers import (
    METHODS,
    PARTITIONED_METHODS,
    RK4,
    AdaptiveHeun,
    Bosh3,
    Dopri5,
    Dopri8,
    Euler,
    ExplicitAdams,
    Fehlberg2,
    Heun2,
    Heun3,
    ImplicitAdams,
    Leapfrog,
    Midpoint,
    SemiImplicitEuler,
    Tsit5,
    Yoshida4,
)

try:
    __version__ = _metadata.version("neuralode")
except _metadata.PackageNotFoundError:  # run from a source tree that is not installed
    __version__ = "0+unknown"

__all__ = [
    "Event",
    "Execution",
    "ExplicitAdams",
    "ImplicitAdams",
    "Backsolve",
    "Checkpointed",
    "Direct",
    "Reversible",
    "GradientStrategy",
    "METHODS",
    "PARTITIONED_METHODS",
    "Leapfrog",
    "SemiImplicitEuler",
    "Yoshida4",
    "RK4",
    "SaveAt",
    "AdaptiveHeun",
    "Bosh3",
    "Dopri8",
    "Fehlberg2",
    "Heun2",
    "Heun3",
    "Midpoint",
    "Tsit5",
    "Dopri5",
    "Euler",
    "FixedGrid",
    "MaxStepsError",
    "NonFiniteError",
    "PIController",
    "PIDController",
    "Progress",
    "ProgressMeter",
    "Solution",
    "SolveStats",
    "SolverError",
    "Status",
    "StepSizeUnderflowError",
    "TqdmProgressMeter",
    "max_norm",
    "mixed_norm",
    "odeint",
    "odeint_adjoint",
    "odeint_dense",
    "odeint_event",
    "rms_norm",
    "seminorm",
    "solve",
]
