"""What a step-size controller provides to the integration loop."""

from __future__ import annotations

import abc
from typing import Any

import torch

from .._norms import Norm
from .._term import ODETerm
from ..solvers.base import Solver


class StepSizeController(abc.ABC):
    """Chooses where each step ends and whether an attempted step is accepted.

    Controllers propose the *time* a step should end at (not a step size), so fixed grids are
    hit exactly. The loop clips proposals to the end time and to ``step_t`` / ``jump_t``.
    """

    needs_f0: bool = False

    @abc.abstractmethod
    def init(
        self,
        term: ODETerm,
        solver: Solver,
        ts: list[float],
        y0: torch.Tensor,
        f0: torch.Tensor | None,
        norm: Norm,
    ) -> tuple[float, Any]:
        """Return the proposed end of the first step and the controller's state."""

    @abc.abstractmethod
    def adapt(
        self,
        t0: float,
        t1: float,
        y0: torch.Tensor,
        y1: torch.Tensor,
        error: Any,
        state: Any,
        ratio: float | None = None,
    ) -> tuple[bool, float, Any]:
        """Judge the step ``t0 -> t1``: (accepted, proposed end of the next step, new state).
        ``ratio``: the step's scaled error when the loop computed it already (``compile_step``)."""
