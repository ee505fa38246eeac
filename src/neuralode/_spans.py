"""Per-sample time spans: ``ts`` of shape (batch, n), every sample its own t0, t1 and output
times (``solve(..., per_sample=True)``).

The per-sample loop already gives every sample its own time and end (``t``, ``t_stop``);
with spans it starts each at its row's first time, ends it at its row's last and writes
each sample's outputs at its own row (``_pending._ends``, ``_pending_dense._write_outputs``),
so every sample takes the steps it would take alone. ``Backsolve`` differentiates the outputs
with the adjoint on per-sample clocks (``_per_sample_events.backsolve_on_clocks``): sample
i's time is piecewise linear in a common time s whose knots are the mean output times.
"""

from __future__ import annotations

import torch

from .adjoint.base import GradientStrategy, Problem
from .adjoint.checkpointed import Checkpointed
from .adjoint.direct import Direct


def sample_times(ts: torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """Check per-sample output times (batch, n); return them as float64 on ``device``.

    Raises:
        ValueError: the shape does not match the batch, a time is not finite, a row is not
            strictly monotonic, or the rows run in different directions.
        TypeError: the times are not floating point.
    """
    if not ts.is_floating_point():
        raise TypeError(f"t must be a floating point tensor, got dtype {ts.dtype}")
    if ts.device != device:
        raise ValueError(f"t is on {ts.device} but y0 is on {device}; put both on one device")
    if ts.shape[0] != batch or ts.shape[1] == 0:
        raise ValueError(
            f"per-sample output times must have shape (batch, n) = ({batch}, n) with n >= 1 "
            f"(one row per sample of y0), got shape {tuple(ts.shape)}"
        )
    times = ts.detach().to(torch.float64)
    if not bool(torch.isfinite(times).all()):
        i = int((~torch.isfinite(times)).any(1).nonzero()[0])
        raise ValueError(
            f"t[{i}] (sample {i}'s output times) contains NaN or inf: {times[i].tolist()}; "
            "per-sample spans need finite times (with an event, give each sample a finite "
            "end beyond it)"
        )
    if ts.shape[1] > 1:
        diffs = times.diff(dim=1)
        sign = 1.0 if float(diffs[0, 0]) > 0 else -1.0
        bad = (sign * diffs <= 0).any(1)
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            j = int((sign * diffs[i] <= 0).nonzero()[0])
            if bool((diffs[i] * diffs[0, 0] < 0).all()):
                raise ValueError(
                    f"sample {i}'s times run in the other direction than sample 0's "
                    f"(t[{i}]={times[i].tolist()}): per-sample spans must all run forwards "
                    "or all backwards in time; solve the two directions separately"
                )
            raise ValueError(
                f"each row of t must be strictly increasing or strictly decreasing; sample "
                f"{i}: t[{i}, {j}]={times[i, j].item()!r}, t[{i}, {j + 1}]="
                f"{times[i, j + 1].item()!r}"
            )
    return times


def loop_times(ts: list[float] | torch.Tensor, batch: int, device: torch.device):
    """The per-sample loop's output times: (outputs,) shared or (batch, outputs) per sample
    (as indexed by ``_pending._ends`` and ``_pending_dense._write_outputs``), the same times
    times the direction of integration, the direction, and each sample's start and end,
    (batch,) (its end: the last output time, or the time of its terminal event once
    located)."""
    if isinstance(ts, torch.Tensor):  # rows in one direction (``sample_times``)
        times = ts
        sign = 1.0 if ts.shape[1] < 2 or float(ts[0, -1] - ts[0, 0]) > 0 else -1.0
    else:
        times = torch.tensor(ts, dtype=torch.float64, device=device)
        sign = 1.0 if ts[-1] > ts[0] else -1.0
    # separate tensors: aliased inputs would make the compiled step compile a second time
    start, end = (times[..., i].expand(batch).clone() for i in (0, -1))
    return times, sign * times, sign, start, end


def run_spans(gradient: GradientStrategy, problem: Problem) -> torch.Tensor:
    """The flat outputs (n, batch x d) of a per-sample problem with per-sample times
    (``problem.times``, float64 (batch, n)), differentiable by ``gradient`` (the gradients
    with respect to the times come from ``_dispatch.run_with_time_gradients``)."""
    from ._loop import integrate
    from ._per_sample_events import backsolve_on_clocks

    if isinstance(gradient, (Direct, Checkpointed)):  # (per sample: one recorded solve)
        return gradient.run(problem)
    with torch.no_grad():
        values = integrate(problem.term, problem.y0, problem.times, problem.config, problem.stats)
    return backsolve_on_clocks(gradient, problem, problem.times.T, values)
