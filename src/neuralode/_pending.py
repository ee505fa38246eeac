"""The device loop's pending steps and its termination checks.

Steps attempted between two termination checks of the device loop (``_per_sample``) wait
here (``_Reached``) for their outputs and events; a check reads the progress of every
sample in one host sync (``_read_progress``), and the outputs the waiting steps reached
(``_ends``, ``_output_range``) are then written and their event crossings located on their
dense output (``_pending_dense``); a stalled sample or used-up ``max_steps`` raises the
engine's errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ._host import across
from .controllers._ops import stuck


class _Progress(NamedTuple):
    """What a termination check reads back from the device, in one host sync."""

    n_still: int  # samples still running
    left: float  # steps of its current size the slowest of them needs to its end
    lo: int  # the outputs ts[lo:hi] the pending steps reached (``_output_range``)
    hi: int
    rounds: int  # the most event crossings of one sample in the pending steps
    stalled: bool  # a running sample can no longer advance (``_stalled``)
    nan: bool  # an event function returned NaN (``Events.watch_nan``)
    extra: list[float]  # the values given as ``extra``, read in the same sync


def _read_progress(
    still: torch.Tensor,
    t: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    span: torch.Tensor,
    rejected: torch.Tensor,
    sign: float,
    ends: torch.Tensor | None,
    next_out: torch.Tensor,
    hits: torch.Tensor | None,
    nan: torch.Tensor | None = None,
    repeated: torch.Tensor | None = None,
    extra: list[torch.Tensor] | None = None,
) -> _Progress:
    """A termination check, with one host sync (``_Progress``); ``left`` is 0 when no
    sample runs, ``hits`` the pending steps' crossings, (steps, batch), ``nan`` the samples
    whose event function returned NaN, (batch,), ``span`` the length of each sample's time
    span, ``rejected`` the samples whose last attempt was rejected and ``repeated`` those
    whose rejected step would be retried unchanged (``_stalled``); ``extra``: 0-dim tensors
    read in the same sync (a progress meter's, ``_progress.device_values``)."""
    # each a reduction over every problem under torch.func.vmap (``_host``)
    size = (proposal - t).abs()
    left = across(torch.where(still & (size > 0), (t_stop - t).abs() / size, 0.0).max(), torch.amax)
    stalled = _stalled(still, t, proposal, t_stop, span, rejected, sign, repeated)
    stalled = across(stalled.any(), torch.any)
    n_still = across(still.sum(), torch.sum)
    values = [n_still.to(left.dtype), left.clamp(max=1e6), stalled.to(left.dtype)]
    if hits is not None:
        values.append(across(hits.sum(0).max(), torch.amax).to(left.dtype))
    if nan is not None:
        values.append(across(nan.any(), torch.any).to(left.dtype))
    if ends is not None:
        lo, hi = _output_range(ends, next_out)
        values += [across(lo, torch.amin).to(left.dtype), across(hi, torch.amax).to(left.dtype)]
    if extra:
        values += [value.to(left.dtype) for value in extra]
    n_still, left, stalled, *rest = torch.stack(values).tolist()
    given = [rest.pop() for _ in range(len(extra or ()))][::-1]
    rounds = int(rest.pop(0)) if hits is not None else 0
    nan_seen = bool(rest.pop(0)) if nan is not None else False
    lo, hi = (int(rest[0]), int(rest[1])) if rest else (0, 0)
    left = left if left == left else 1.0  # NaN size: check next step
    return _Progress(int(n_still), left, lo, hi, rounds, bool(stalled), nan_seen, given)


def _stalled(
    still: torch.Tensor,
    t: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    span: torch.Tensor,
    rejected: torch.Tensor,
    sign: float,
    repeated: torch.Tensor | None = None,
) -> torch.Tensor:
    """The running samples whose next step underflows (``controllers._ops.stuck``, with
    ``span`` the length of each sample's time span and ``rejected`` the samples whose last
    attempt was rejected) or is not finite, or (``repeated``) is the rejected step again,
    (batch,)."""
    land = torch.minimum(proposal, t_stop) if sign > 0 else torch.maximum(proposal, t_stop)
    halted = stuck(t, land, span, rejected, land == t_stop) | ~torch.isfinite(land)
    return still & (halted if repeated is None else halted | repeated)


@dataclass
class _Reached:
    """A step attempt of every sample, kept until the outputs its accepted steps crossed are
    written: its start, stages and end, and where each sample's step stops, ``t_reach`` with
    ``y_reach`` (``t1`` and ``y1``, or the sample's terminal event)."""

    t: torch.Tensor
    h: torch.Tensor
    y: torch.Tensor
    t1: torch.Tensor
    y1: torch.Tensor
    k_all: torch.Tensor
    f1: torch.Tensor | None  # f(t1, y1) where accepted, once evaluated (or None)
    accept: torch.Tensor
    still: torch.Tensor  # the samples that step on (unless a crossing here stops them)
    # with events: which samples' accepted steps crossed, and the event values at the ends
    hit: torch.Tensor | None = None
    g_lo: torch.Tensor | None = None
    g_hi: torch.Tensor | None = None
    # with extra dense stages: all the dense output's stages, once evaluated, and the
    # samples counted for them
    dense: torch.Tensor | None = None
    dense_counted: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.t_reach, self.y_reach = self.t1, self.y1

    def end_at(self, hit: torch.Tensor, t_event: torch.Tensor, y_event: torch.Tensor) -> None:
        """The ``hit`` samples stop at their terminal event."""
        self.t_reach = torch.where(hit, t_event, self.t_reach)
        self.y_reach = torch.where(hit[:, None], y_event, self.y_reach)


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    return values[0][None] if len(values) == 1 else torch.stack(values)


def _ends(pending: list[_Reached], ts_signed: torch.Tensor, sign: float) -> torch.Tensor:
    """(steps, batch): each pending step of each sample reached the outputs ``ts[:end]``
    (0 where the step was rejected); ``ts_signed`` (outputs,) or per sample (batch, outputs)."""
    t_reach = sign * _stack([r.t_reach for r in pending])
    if ts_signed.ndim == 1:
        end = torch.searchsorted(ts_signed, t_reach, right=True)
    else:  # each sample's row
        end = torch.searchsorted(ts_signed, t_reach.T.contiguous(), right=True).T
    return torch.where(_stack([r.accept for r in pending]), end, 0)


def _output_range(ends: torch.Tensor, next_out: torch.Tensor) -> list[torch.Tensor]:
    """The outputs newly reached by any sample, ``ts[lo:hi]``, as two 0-dim tensors."""
    reached = ends.max(0).values
    crossing = reached > next_out
    n_out = torch.iinfo(torch.int32).max
    return [torch.where(crossing, next_out, n_out).min(), torch.where(crossing, reached, 0).max()]


def _raise_stalled(*args: Any) -> None:
    """The compiled whole solve's failure (it always throws): ``_status.sample_failures``."""
    from ._status import sample_failures

    sample_failures(*args)
