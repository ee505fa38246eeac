"""Backpropagation through the solver's operations."""

from __future__ import annotations

import torch

from .._loop import integrate
from .base import GradientStrategy, Problem


class Direct(GradientStrategy):
    """Differentiate the discrete solve by backpropagation: exact gradients of what was
    computed, memory growing with the number of steps. Supports double backward."""

    def run(self, problem: Problem) -> torch.Tensor:
        return integrate(problem.term, problem.y0, problem.times, problem.config, problem.stats)
