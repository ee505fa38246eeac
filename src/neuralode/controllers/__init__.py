"""Step-size controllers: fixed grids and the adaptive PI controller."""

from .base import StepSizeController
from .fixed import FixedGrid
from .initial_step import select_initial_step
from .pi import PIController

__all__ = ["FixedGrid", "PIController", "StepSizeController", "select_initial_step"]
