"""The device loop's pending steps (``_pending``) on their dense output: writing the outputs
they crossed (``_write_outputs``) and locating their event crossings (``_locate_events``),
each batched over the samples, with the dense output's extra stages evaluated once per step
(``_dense_stages``).
"""

from __future__ import annotations

from typing import Any

import torch

from ._host import plain, wrapped
from ._pending import _Reached, _stack
from .solvers.explicit_rk import ExplicitRK


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
                lambda c, y, r=r: f(r.t1 if c == 1 else r.t + c * r.h, y),
                y1=r.y1,
            )
            r.dense_counted = torch.zeros_like(r.accept)
        hits = (wanted & (step == j)).long()
        mine = torch.zeros(batch, dtype=torch.long, device=step.device)
        mine = mine.index_put((sample,), hits, accumulate=True) > 0
        new = new + _extra_stages(solver) * (mine & ~r.dense_counted)
        r.dense_counted = r.dense_counted | mine
    if not steps:  # nothing wanted: any values of the right shape
        width = solver.dense_width(pending[0].y)
        return pending[0].y.new_zeros(width, len(sample), pending[0].y.shape[1]), new
    index = torch.tensor(steps, device=step.device)
    position = torch.searchsorted(index, step).clamp(max=len(steps) - 1)
    stacked = torch.stack([pending[j].dense for j in steps])  # (u, S, batch, n)
    return stacked[position, :, sample].transpose(0, 1), new


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
    t_out = ts[out] if ts.ndim == 1 else ts[sample, out]
    extra = torch.zeros(batch, dtype=torch.long, device=ends.device)
    if _extra_stages(solver):
        # an output at the end its step reached is that state: no extra stages for it
        inner = t_out != t_reach
        wanted = inner if keep is None else keep & inner
        k_all, extra = _dense_stages(solver, f, pending, step, sample, wanted)
    else:
        k_all = _stack([r.k_all for r in pending])[step, :, sample].transpose(0, 1)
    f1 = pick("f1") if needs_f1 else None
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
