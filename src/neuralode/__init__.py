"""neuralode: neural differential equations in PyTorch."""

from ._errors import MaxStepsError, NonFiniteError, SolverError, StepSizeUnderflowError
from ._events import Event
from ._norms import max_norm, mixed_norm, rms_norm, seminorm
from ._solution import Solution, SolveStats
from ._solve import solve
from .adjoint import Backsolve, Checkpointed, Direct, GradientStrategy
from .controllers import FixedGrid, PIController
from .solvers import RK4, Dopri5, Euler

__all__ = [
    "Event",
    "Backsolve",
    "Checkpointed",
    "Direct",
    "GradientStrategy",
    "RK4",
    "Dopri5",
    "Euler",
    "FixedGrid",
    "MaxStepsError",
    "NonFiniteError",
    "PIController",
    "Solution",
    "SolveStats",
    "SolverError",
    "StepSizeUnderflowError",
    "max_norm",
    "mixed_norm",
    "rms_norm",
    "seminorm",
    "solve",
]
