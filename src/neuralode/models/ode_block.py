"""ODEBlock: a layer that integrates its input through learned dynamics."""

from __future__ import annotations

import torch
from torch import nn

from .._solution import SolveStats
from .._solve import solve
from ..adjoint import Backsolve, Checkpointed, Direct, GradientStrategy
from ..controllers import FixedGrid, PIController
from ..solvers import METHODS

_GRADIENTS = {"direct": Direct, "adjoint": Backsolve, "checkpointed": Checkpointed}


class ODEBlock(nn.Module):
    """Maps x to y(t1) where dy/dt = dynamics(t, y), y(t0) = x.

    ``method`` is a method name of ``neuralode.METHODS``; adaptive methods use ``rtol``/``atol``,
    fixed-step ones ``step_size`` (default: a single step from t0 to t1).
    ``gradient`` is ``"direct"`` (backpropagation), ``"adjoint"`` (O(1) memory) or
    ``"checkpointed"``, or a ``GradientStrategy``. ``nfe_forward`` / ``nfe_backward`` report
    the work of the last forward and backward pass; ``forward(x, ts)`` returns the whole
    trajectory at ``ts`` instead of the final state.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        t0: float = 0.0,
        t1: float = 1.0,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        step_size: float | None = None,
        gradient: str | GradientStrategy = "adjoint",
    ):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
        if isinstance(gradient, str) and gradient not in _GRADIENTS:
            raise ValueError(f"gradient must be one of {sorted(_GRADIENTS)}, got {gradient!r}")
        self.dynamics = dynamics
        self.t0, self.t1 = float(t0), float(t1)
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.step_size = step_size
        self.gradient = gradient
        self.last_stats = SolveStats()

    def _strategy(self) -> GradientStrategy:
        if isinstance(self.gradient, str):
            return _GRADIENTS[self.gradient]()
        return self.gradient

    def forward(self, x: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        times = ts if ts is not None else torch.tensor([self.t0, self.t1], device=x.device)
        solver = METHODS[self.method]()
        if solver.adaptive:
            controller = PIController(self.rtol, self.atol)
        else:
            controller = FixedGrid(step_size=self.step_size)
        sol = solve(
            self.dynamics,
            x,
            times.to(x.dtype),
            solver=solver,
            controller=controller,
            gradient=self._strategy(),
        )
        self.last_stats = sol.stats
        return sol.ys if ts is not None else sol.ys[-1]

    @property
    def nfe_forward(self) -> int:
        return self.last_stats.nfe

    @property
    def nfe_backward(self) -> int:
        return self.last_stats.nfe_backward
