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
        """Start a solve: where the first step should end, and the controller's state.

        Arguments:
            term: the vector field being solved.
            solver: the solver taking the steps (its ``adaptive`` and ``error_order``).
            ts: the output times as Python floats; ``ts[0]`` is the initial time.
            y0: the initial state.
            f0: ``term(ts[0], y0)`` when the controller sets ``needs_f0``, else ``None``.
            norm: the norm measuring a step's scaled error.

        Returns:
            ``(t1, state)``: the proposed end time of the first step and the state to pass to
                ``adapt``.
        """

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
        """Judge the step ``t0 -> t1`` and propose where the next step ends.

        Arguments:
            t0: the start time of the step.
            t1: the end time of the step.
            y0: the state at ``t0``.
            y1: the proposed state at ``t1``.
            error: the solver's error estimate of ``y1`` (``None`` for solvers without one).
            state: the controller's state from ``init`` or the last ``adapt``.
            ratio: the step's scaled error when the loop computed it already
                (``compile_step``); ``None`` to compute it here.

        Returns:
            ``(accepted, t_next, state)``: whether the step is accepted, the proposed end of
                the next step (which starts at ``t1`` if accepted, else at ``t0``) and the new
                state.
        """
