"""Step-size controllers: fixed grids and the adaptive PI controller."""

from .base import StepSizeController
from .fixed import FixedGrid
from .initial_step import select_initial_step
from .pi import PIController, PIDController

__all__ = [
    "FixedGrid",
    "PIController",
    "PIDController",
    "StepSizeController",
    "select_initial_step",
]
