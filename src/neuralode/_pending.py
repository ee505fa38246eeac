"""The device loop's pending steps: termination checks, output writing and event location.

Steps attempted between two termination checks of the device loop (``_per_sample``) wait
here (``_Reached``) for their outputs and events; a check reads the progress of every
sample in one host sync (``_read_progress``), writes the outputs the waiting steps crossed
(``_write_outputs``) and locates their event crossings (``_locate_events``), each batched
over the samples; a stalled sample or used-up ``max_steps`` raises the engine's errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ._host import across, plain, wrapped
from .solvers.explicit_rk import ExplicitRK

_EPS = 2.0**-52


class _Progress(NamedTuple):
    """What a termination check reads back from the device, in one host sync."""

    n_still: int  # samples still running
    left: float  # steps of its current size the slowest of them needs to its end
    lo: int  # the outputs ts[lo:hi] the pending steps reached (``_output_range``)
    hi: int
    rounds: int  # the most event crossings of one sample in the pending steps
    stalled: bool  # a running sample can no longer advance (``_stalled``)


def _read_progress(
    still: torch.Tensor,
    t: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    sign: float,
    ends: torch.Tensor | None,
    next_out: torch.Tensor,
    hits: torch.Tensor | None,
) -> _Progress:
    """A termination check, with one host sync (``_Progress``); ``left`` is 0 when no
    sample runs, ``hits`` the pending steps' crossings, (steps, batch)."""
    # each a reduction over every problem under torch.func.vmap (``_host``)
    size = (proposal - t).abs()
    left = across(torch.where(still & (size > 0), (t_stop - t).abs() / size, 0.0).max(), torch.amax)
    stalled = across(_stalled(still, t, proposal, t_stop, sign).any(), torch.any)
    n_still = across(still.sum(), torch.sum)
    values = [n_still.to(left.dtype), left.clamp(max=1e6), stalled.to(left.dtype)]
    if hits is not None:
        values.append(across(hits.sum(0).max(), torch.amax).to(left.dtype))
    if ends is not None:
        lo, hi = _output_range(ends, next_out)
        values += [across(lo, torch.amin).to(left.dtype), across(hi, torch.amax).to(left.dtype)]
    n_still, left, stalled, *rest = torch.stack(values).tolist()
    rounds = int(rest.pop(0)) if hits is not None else 0
    lo, hi = (int(rest[0]), int(rest[1])) if rest else (0, 0)
    left = left if left == left else 1.0  # NaN size: check next step
    return _Progress(int(n_still), left, lo, hi, rounds, bool(stalled))


def _stalled(
    still: torch.Tensor, t: torch.Tensor, proposal: torch.Tensor, t_stop: torch.Tensor, sign: float
) -> torch.Tensor:
    """The running samples whose next step underflows (too small to change t) or is not
    finite, (batch,)."""
    land = torch.minimum(proposal, t_stop) if sign > 0 else torch.maximum(proposal, t_stop)
    tiny = (land - t).abs() <= 4 * _EPS * torch.maximum(t.abs(), land.abs())
    return still & (tiny | ~torch.isfinite(land))


def _locate_events(
    events: Any,
    pending: list[_Reached],
    hits: torch.Tensor,
    rounds: int,
    solver: ExplicitRK,
    needs_f1: bool,
    f: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Locate the event crossings of the pending steps (``hits``, (steps, batch)) on their
    dense output, each sample's in order: round r locates every sample's r-th crossing, in
    one batch. A terminal event (one round: its sample stopped there) ends its sample's step
    at the event. Returns the last round's samples, event times and states, and each
    sample's evaluations of f (the batch's ``f(t, y)``) for the dense output's extra
    stages."""
    batch = hits.shape[1]
    count = hits.long().cumsum(0)
    samples = torch.arange(batch, device=hits.device)
    names = ("t", "h", "y", "t1", "y1", "g_lo", "g_hi") + (("f1",) if needs_f1 else ())
    stacked = {name: _stack([getattr(r, name) for r in pending]) for name in names}
    k_all = _stack([r.k_all for r in pending])  # (steps, stages, batch, n)
    extra = torch.zeros(batch, dtype=torch.long, device=hits.device)
    for r in range(rounds):
        at = hits & (count == r + 1)  # (steps, batch): the step of each r-th crossing
        found = at.any(0)
        step = at.to(torch.uint8).argmax(0)
        row = {name: value[step, samples] for name, value in stacked.items()}
        if _extra_stages(solver):
            ks, new = _dense_stages(solver, f, pending, step, samples, found)
            extra = extra + new
        else:
            ks = k_all[step, :, samples].transpose(0, 1)
        f1 = row.get("f1")

        def dense(offset, y0=row["y"], y1=row["y1"], h=row["h"], ks=ks, f1=f1):
            return _interpolate(solver, y0, y1, h, ks, f1, offset)

        t_event, y_event = events.locate(
            found, row["t"], row["h"], row["t1"], row["y1"], dense, row["g_lo"], row["g_hi"]
        )
        if events.event.terminal:
            for record, mask in zip(pending, at, strict=True):
                record.end_at(mask, t_event, y_event)
    return found, t_event, y_event, extra


def _extra_stages(solver: ExplicitRK) -> int:
    """Evaluations of f the dense output adds to a step besides f(t1, y1)."""
    return solver.dense_extra_stages


def _dense_stages(
    solver: ExplicitRK,
    f: Any,
    pending: list[_Reached],
    step: torch.Tensor,
    sample: torch.Tensor,
    wanted: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """All the dense output's stages, (S, m, n), of pending step ``step[i]`` for sample
    ``sample[i]`` (where ``wanted``, else anything), and each sample's new evaluations of f.

    A step's extra stages are evaluated once, on the whole batch (f's rows are the samples),
    when a sample first interpolates in it; each sample is counted the evaluations it would
    make alone, once per step it interpolates in."""
    co = solver._coefficients(pending[0].y)
    wanted = torch.ones_like(step, dtype=torch.bool) if wanted is None else wanted
    # one read: which steps to evaluate (a boolean index would read once more per step)
    # (of every problem under torch.func.vmap)
    steps = sorted(set(plain(torch.where(wanted, step, -1)).reshape(-1).tolist()) - {-1})
    batch = pending[0].h.shape[0]
    new = torch.zeros(batch, dtype=torch.long, device=step.device)
    for j in steps:
        r = pending[j]
        if r.dense is None:
            r.dense = solver.dense_stages(
                r.y,
                r.h.to(r.y.real.dtype)[:, None],
                r.k_all.unbind(0),
                lambda r=r: r.f1,
                lambda c, y, r=r: f(r.t + c * r.h, y),
            )
            r.dense_counted = torch.zeros_like(r.accept)
        hits = (wanted & (step == j)).long()
        mine = torch.zeros(batch, dtype=torch.long, device=step.device)
        mine = mine.index_put((sample,), hits, accumulate=True) > 0
        new = new + _extra_stages(solver) * (mine & ~r.dense_counted)
        r.dense_counted = r.dense_counted | mine
    if not steps:  # nothing wanted: any values of the right shape
        return pending[0].k_all.new_zeros(
            co.dense.shape[0], len(sample), pending[0].y.shape[1]
        ), new
    index = torch.tensor(steps, device=step.device)
    position = torch.searchsorted(index, step).clamp(max=len(steps) - 1)
    stacked = torch.stack([pending[j].dense for j in steps])  # (u, S, batch, n)
    return stacked[position, :, sample].transpose(0, 1), new


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


def _write_outputs(
    solver: ExplicitRK,
    pending: list[_Reached],
    ends: torch.Tensor,
    outputs: torch.Tensor,
    next_out: torch.Tensor,
    ts: torch.Tensor,
    lo: int,
    hi: int,
    needs_f1: bool,
    f: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Interpolate the outputs ``ts[lo:hi]`` (never the last, the final state) each sample's
    pending steps reached, each in the step that reached it first, all in one batch (one
    host sync: which outputs of which samples); return the new outputs and ``next_out``,
    which samples' outputs used each step, (steps, batch), and each sample's evaluations of f
    for the dense output's extra stages. ``needs_f1``: the dense output uses f(t1, y1)."""
    hi = min(hi, outputs.shape[0] - 1)
    n_steps, batch = ends.shape
    # rejected steps reach nothing (0): the running maximum is sorted along the steps
    reached = ends.cummax(0).values.T.contiguous()  # (batch, steps)
    js = torch.arange(lo, hi, device=ends.device)
    keep = None
    if not wrapped(reached):
        first = torch.searchsorted(reached, js.expand(batch, -1).contiguous(), right=True)
    else:  # (the same count; vmap's searchsorted would copy the outputs' times per problem)
        first = (reached[:, None, :] <= js[:, None]).sum(2)
    write = (first < n_steps) & (js >= next_out[:, None])  # (batch, outputs)
    if wrapped(write):  # under torch.func transforms no shape may depend on values:
        # every (sample, output) pair, the unwritten ones masked (``_host``)
        sample = torch.arange(batch, device=ends.device).repeat_interleave(hi - lo)
        column = torch.arange(hi - lo, device=ends.device).repeat(batch)
        keep = write[sample, column]
    else:
        sample, column = write.nonzero(as_tuple=True)
    step, out = first[sample, column], column + lo
    if keep is not None:
        step = step.clamp(max=n_steps - 1)  # an unwritten pair's: any step

    def pick(name: str) -> torch.Tensor:  # the values of each written output's step
        return _stack([getattr(r, name) for r in pending])[step, sample]

    t, t_reach = pick("t"), pick("t_reach")
    extra = torch.zeros(batch, dtype=torch.long, device=ends.device)
    if _extra_stages(solver):
        k_all, extra = _dense_stages(solver, f, pending, step, sample, keep)
    else:
        k_all = _stack([r.k_all for r in pending])[step, :, sample].transpose(0, 1)
    f1 = pick("f1") if needs_f1 else None
    t_out = ts[out] if ts.ndim == 1 else ts[sample, out]
    value = _interpolate(solver, pick("y"), pick("y1"), pick("h"), k_all, f1, t_out - t)
    value = torch.where((t_out == t_reach)[:, None], pick("y_reach"), value)
    written = torch.ones_like(step, dtype=torch.long) if keep is None else keep.long()
    if keep is not None:
        value = torch.where(keep[:, None], value, outputs[out, sample])
    outputs = outputs.index_put((out, sample), value)
    used = torch.zeros(n_steps, batch, dtype=torch.long, device=ends.device)
    used = used.index_put((step, sample), written, accumulate=True) > 0
    return outputs, torch.maximum(next_out, ends.max(0).values), used, extra


def _interpolate(
    solver: ExplicitRK,
    y0: torch.Tensor,
    y1: torch.Tensor,
    h: torch.Tensor,
    stacked: torch.Tensor,
    f1: torch.Tensor | None,
    offset: torch.Tensor,
) -> torch.Tensor:
    """y at t0 + offset for each sample (offset = output time - the sample's t0), on the
    solver's dense output (``ExplicitRK.dense``; an SDE method's: linear)."""
    theta = offset / torch.where(h == 0, 1.0, h)  # (batch,) float64
    return solver.dense(y0, y1, h.to(y0.real.dtype)[:, None], stacked, f1, theta)


def _raise_stalled(*args: Any) -> None:
    """The compiled whole solve's failure (it always throws): ``_status.sample_failures``."""
    from ._status import sample_failures

    sample_failures(*args)
