"""Gradient strategies: direct backpropagation, the continuous adjoint, checkpointing."""

from .backsolve import Backsolve
from .base import GradientStrategy, Problem
from .checkpointed import Checkpointed
from .direct import Direct

__all__ = ["Backsolve", "Checkpointed", "Direct", "GradientStrategy", "Problem"]
