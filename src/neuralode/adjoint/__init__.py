"""Gradient strategies: direct backpropagation, the continuous adjoint, checkpointing,
reversible steps."""

from .backsolve import Backsolve
from .base import GradientStrategy, Problem
from .checkpointed import Checkpointed
from .direct import Direct
from .reversible import Reversible

# The strategies by the names the models and the command line use.
GRADIENTS: dict[str, type[GradientStrategy]] = {
    "direct": Direct,
    "adjoint": Backsolve,
    "checkpointed": Checkpointed,
    "reversible": Reversible,
}

__all__ = [
    "GRADIENTS",
    "Backsolve",
    "Checkpointed",
    "Direct",
    "GradientStrategy",
    "Problem",
    "Reversible",
]
