"""Exceptions raised by the solvers; each message names the problem and the offending value."""


class SolverError(RuntimeError):
    """A solve could not be completed."""


class MaxStepsError(SolverError):
    """The solver took more steps than ``max_steps`` allows."""


class StepSizeUnderflowError(SolverError):
    """The step size became too small to make progress in time."""


class NonFiniteError(SolverError):
    """NaN or infinity appeared in the state."""
