"""The PI controller's state during a solve, and a step's scaled error from it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .._norms import Norm, norm_value


@dataclass
class PIState:
    norm: Norm
    exponent: float
    previous_ratio: Any  # the memory: a float, or (last, the one before) with dcoeff
    rtol: torch.Tensor  # the tolerances as tensors like the state, made once per solve
    atol: torch.Tensor  # so that each step's scale is one addcmul
    # (y, |y|) at both ends of the last judged graph-free step: the next step starts from
    # one of them (y1 after an accept, y0 after a reject), so its |y0| is known
    last: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    # whether this solve has warned of a step accepted at min_step (once per solve)
    warned_min_step: bool = False
    # the solver's ``hold_after_reject`` and whether the last attempt was rejected
    hold: bool = False
    rejected: bool = False


def error_ratio(y0: torch.Tensor, y1: torch.Tensor, error: torch.Tensor, state: PIState) -> float:
    """The scaled error norm of a step (graph-free); |y0| is reused from the last call when
    the step starts where the last one started or ended."""
    last = state.last
    if last is not None and y0 is last[2]:
        y0_abs = last[3]
    elif last is not None and y0 is last[0]:
        y0_abs = last[1]
    else:
        y0_abs = y0.abs()
    y1_abs = y1.abs()
    # not kept with a graph: that would hold a rejected step's graph a step longer
    state.last = None if y1.requires_grad else (y0, y0_abs, y1, y1_abs)
    scaled = scaled_error(y0_abs, y1_abs, error, state.rtol, state.atol)
    return norm_value(scaled, state.norm)


def scaled_error(
    y0_abs: torch.Tensor,
    y1_abs: torch.Tensor,
    error: torch.Tensor,
    rtol: torch.Tensor,
    atol: torch.Tensor,
) -> torch.Tensor:
    """error / (atol + rtol * max(|y0|, |y1|)), from |y0| and |y1|."""
    return error / torch.addcmul(atol, torch.maximum(y0_abs, y1_abs), rtol)
