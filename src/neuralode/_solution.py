"""What a solve returns: the states at the requested times and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SolveStats:
    """Work done by a solve. ``nfe`` counts evaluations of f in the forward pass;
    ``nfe_backward`` those of the backward pass (adjoint strategies), filled in by backward."""

    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int = 0
    n_steps_backward: int = 0
    #: per-sample mode only: each sample's evaluations of f, steps, accepted and rejected
    #: steps, as (batch,) tensors. The totals above are then sums over the samples, except
    #: ``nfe``, which counts batched calls of f (what the solve cost).
    sample_nfe: torch.Tensor | None = None
    sample_steps: torch.Tensor | None = None
    sample_accepted: torch.Tensor | None = None
    sample_rejected: torch.Tensor | None = None
    #: per-sample mode only: sample rows f was evaluated on, summed over its calls (batch x
    #: ``nfe`` unless ``skip_finished`` left finished samples out)
    rows_evaluated: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Solution:
    """``ys`` has the structure of ``y0`` with a leading dimension over ``ts`` (over the
    times before a terminal event, which ``ts`` then lists)."""

    ts: torch.Tensor
    ys: Any
    stats: SolveStats = field(default_factory=SolveStats)
    #: with a terminal event: its time (0-dim) and the state there, both differentiable.
    #: Per-sample events: (batch,) times and (batch, ...) states, NaN for samples without one
    event_t: torch.Tensor | None = None
    event_y: Any = None
    #: with an event: the times of every located crossing, in order (per-sample events:
    #: (batch, most events), NaN-padded)
    event_ts: torch.Tensor | None = None
    #: per-sample terminal events: (batch,) bool, which samples had their event
    event_mask: torch.Tensor | None = None
