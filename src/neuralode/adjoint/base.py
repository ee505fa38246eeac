"""How gradients flow through a solve: the strategy interface and the problem it receives."""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._loop import LoopConfig
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec


@dataclass
class Problem:
    """A validated initial value problem, ready for the loop."""

    func: Callable[[torch.Tensor, Any], Any]
    term: ODETerm
    spec: TreeSpec
    y0: torch.Tensor  # flat
    ts: torch.Tensor  # the user's tensor of output times
    times: list[float]
    config: LoopConfig
    stats: SolveStats


class GradientStrategy(abc.ABC):
    """Computes the flat outputs (len(ts), n) of a problem, differentiably in its own way."""

    #: whether the strategy computes gradients with respect to ``ts`` itself
    handles_time_gradients: bool = False

    @abc.abstractmethod
    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` and return its outputs."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def time_derivative_inputs(problem: Problem) -> bool:
    """Whether gradients with respect to the output times are wanted."""
    return torch.is_grad_enabled() and problem.ts.requires_grad
