"""What a solver's step is: an attempted step on the host (``Step``), and what the device
loop keeps and evaluates around a solver's attempts on the rows (``RowFacts``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch


@dataclass
class Step:
    """One attempted step from ``t0`` to ``t1``.

    Attributes:
        t0: the step's start time.
        t1: the step's end time.
        y0: the state at ``t0`` (flat).
        y1: the proposed state at ``t1``.
        error: the embedded error estimate, or ``None`` for methods without one.
        stages: what dense output needs (the stage derivatives).
        f1: f(t1, y1) when known (FSAL or computed for dense output).
        extra: method-specific data.
        end_perturb: how evaluations at ``t1`` are perturbed.
    """

    t0: float
    t1: float
    y0: torch.Tensor
    y1: torch.Tensor
    error: torch.Tensor | None
    stages: list[torch.Tensor]
    f1: torch.Tensor | None = None  # f(t1, y1) when known (FSAL or computed for dense output)
    extra: dict[str, Any] = field(default_factory=dict)
    end_perturb: float = 0.0  # how evaluations at t1 are perturbed (see ODETerm.__call__)

    @property
    def dt(self) -> float:
        """The signed step size ``t1 - t0``."""
        return self.t1 - self.t0


class RowFacts(NamedTuple):
    """What the device loop (``_per_sample``) keeps and evaluates around a solver's step
    attempts (``Solver.row_facts``).

    Attributes:
        stages: the stages kept per attempt, stacked (stages, batch, n), for the outputs.
        fsal: the last stage is f(t1, y1), the next attempt's f0.
        needs_f0: each attempt starts from f(t0, y0) (evaluated after accepted steps).
        needs_f1: the interpolant between a step's ends needs f(t1, y1).
        brownian: an SDE method's rows: each attempt takes the Brownian motion over it
            (``noise_rows``, drawn before the attempt) and evaluates the SDE's functions
            ``evaluations_per_attempt()`` times (measured on the first attempt).
    """

    stages: int
    fsal: bool
    needs_f0: bool
    needs_f1: bool
    brownian: bool = False
