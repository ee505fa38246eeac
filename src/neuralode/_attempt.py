"""The one step attempt of the device loop and of the compiled whole solve.

Every row (a sample of a per-sample solve, or the one problem: a batch of one) has its own
time, step size and controller memory; an attempt proposes a step for every row (the
solver's ``propose_rows``: ``ExplicitRK``'s stages, or an SDE method's step-doubled step),
measures each row's error (RMS over the row) and lets the
controller decide (``PIController.decide`` on tensors), merging accepted and rejected
proposals with masks. No host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch._C._functorch import is_functorch_wrapped_tensor

from ._norms import row_rms
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK


@dataclass(frozen=True)
class Constants:
    """The solver, the controller and the solve's settings a step attempt needs."""

    solver: ExplicitRK
    controller: PIController
    rtol: torch.Tensor
    atol: torch.Tensor
    sign: float
    exponent: float  # of the error ratio: 1 / (error order + 1)
    norm: Any = row_rms  # the error norm of each row ((batch, n) -> (batch,) float64)
    # the solver's first-same-as-last property, read once (a tableau recomputes it)
    fsal: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsal", self.solver.row_fsal)


class Step(NamedTuple):
    """A step attempt of every sample (``attempt``): its end and stages, the decisions, the
    updated controller state and counts, and the state and f0 each sample moves on with if
    nothing (a terminal event) intervenes."""

    t1: torch.Tensor
    h: torch.Tensor
    y1: torch.Tensor
    k_all: torch.Tensor
    k_last: torch.Tensor
    accept: torch.Tensor
    t_next: torch.Tensor
    proposal: torch.Tensor
    previous_ratio: torch.Tensor
    n_steps: torch.Tensor
    n_accepted: torch.Tensor
    still: torch.Tensor
    y_accepted: torch.Tensor
    f0_accepted: torch.Tensor | None


def attempt(
    call: Any,
    k: Constants,
    buffer: tuple[torch.Tensor, Any, Any] | None,
    t: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    active: torch.Tensor,
    carried_ratio: torch.Tensor,
    n_steps: torch.Tensor,
    n_accepted: torch.Tensor,
) -> Step:
    """One step attempt of every sample: the solver's step (``propose_rows``), the
    error ratio of each sample, and the controller's decision and next proposal
    (``PIController.decide`` on tensors). Finished samples sit at their end, so their steps
    have size zero and change nothing. ``buffer``: graph-free eager mode (f writes the
    stages into one reused buffer). No host synchronisation."""
    # land on the sample's end when the proposal reaches it
    t1 = torch.minimum(proposal, t_stop) if k.sign > 0 else torch.maximum(proposal, t_stop)
    h = t1 - t
    y1, error, k_last, k_all = k.solver.propose_rows(call, t, t1, h, y, f0, buffer)
    with torch.no_grad():
        y_abs, y1_abs = _plain(y).abs(), _plain(y1).abs()
        scale = torch.addcmul(k.atol, torch.maximum(y_abs, y1_abs), k.rtol)
        ratio = k.norm(_plain(error) / scale)
        accept, new_size, previous_ratio = k.controller.decide(
            ratio, h.abs(), carried_ratio, k.exponent, active
        )
        t_next = torch.where(accept, t1, t)
        proposal = t_next + k.sign * new_size
    # outside no_grad: y and f0 carry the gradients of Direct()
    accept_col = accept[:, None]
    fsal = k.fsal
    return Step(
        t1=t1,
        h=h,
        y1=y1,
        k_all=k_all,
        k_last=k_last,
        accept=accept,
        t_next=t_next,
        proposal=proposal,
        previous_ratio=previous_ratio,
        n_steps=n_steps + active,
        n_accepted=n_accepted + accept,
        still=(t_next != t_stop) & active,
        y_accepted=torch.where(accept_col, y1, y),
        f0_accepted=torch.where(accept_col, k_last, f0) if fsal else None,
    )


def _plain(x: torch.Tensor) -> torch.Tensor:
    """``x`` without the tangents of a torch.func transform (forward-mode AD ignores
    ``no_grad``, and the step-size decisions must not be differentiated)."""
    if torch.compiler.is_compiling():  # (a graph break otherwise; no transform there)
        return x
    return x.detach() if is_functorch_wrapped_tensor(x) else x
