"""Backpropagation through the solver's operations."""

from __future__ import annotations

import torch

from .._loop import integrate
from .base import GradientStrategy, Problem


class Direct(GradientStrategy):
    """Differentiate the discrete solve by backpropagation: exact gradients of what was
    computed with respect to y0 and the parameters, memory growing with the number of steps.
    Supports double backward. With respect to the output times the gradients are the exact
    flow's, as for every strategy (dL/dt_i = dL/dy_i . f(t_i, y_i)), not the discrete
    map's. Forward mode (``torch.autograd.forward_ad`` dual tensors, ``torch.func.jvp``,
    ``jacfwd``) passes through it, as through other torch operations (implicit Runge-Kutta
    methods excepted: they refuse it)."""

    supports_forward_mode = True

    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` on autograd's graph of every operation.

        Arguments:
            problem: the validated problem.

        Returns:
            The flat outputs, (len(ts), n), differentiable by ordinary backpropagation.
        """
        return integrate(problem.term, problem.y0, problem.times, problem.config, problem.stats)
