"""Per-sample integration: a batch of independent problems, each with its own steps.

Dimension 0 of the state is the batch. Every sample has its own time, step size, accept/reject
decision, controller memory and statistics, all held as tensors of shape (batch,) and merged
with masks (``torch.where``), so each sample takes exactly the steps it would take alone: one
stiff sample no longer shrinks the steps of the others. All samples are evaluated in one
batched call of f per stage; a sample that has reached the end keeps its state and takes
steps of size zero (its results and statistics no longer change).

Host synchronisation: one per step attempt (a ``tolist`` of five scalars: how many samples
are still running, the range of output times crossed, and whether any sample failed or ran
out of steps). Everything else (step sizes, decisions, interpolation weights) stays on the
device.
"""

from __future__ import annotations

from typing import Any

import torch

from ._errors import MaxStepsError, NonFiniteError, StepSizeUnderflowError
from ._solution import SolveStats
from ._term import ODETerm
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK

_EPS = 2.0**-52


def check_per_sample(solver: Any, controller: Any, y0_shape: torch.Size) -> None:
    """Raise a clear error if the problem cannot be solved per sample."""
    if len(y0_shape) == 0 or y0_shape[0] == 0:
        raise ValueError(
            "per_sample=True needs y0 with a batch dimension first (shape (batch, ...)), "
            f"got shape {tuple(y0_shape)}"
        )
    if not isinstance(solver, ExplicitRK) or not solver.adaptive:
        raise ValueError(
            "per_sample=True supports the adaptive explicit Runge-Kutta methods (dopri5, "
            f"tsit5, bosh3, dopri8, ...), got {solver!r}"
        )
    dense = solver.tableau.dense
    if dense is not None and len(dense.extra_c) > 1:
        raise ValueError(f"per_sample=True does not support {solver!r}'s dense output")
    if not isinstance(controller, PIController):
        raise ValueError(f"per_sample=True needs a PIController, got {controller!r}")


class _BatchTerm:
    """Calls f with one time per sample, (batch,), on the (batch, d) state."""

    def __init__(self, term: ODETerm, batch: int):
        self.term = term
        self.batch = batch
        self.shape = tuple(int(n) for n in term.spec.shapes[0])

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term = self.term
        term.nfe += 1
        out = term.func(t.to(term.time_dtype), y.reshape(self.shape))
        if not term._checked:
            term._check(out)
        return out.reshape(self.batch, -1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    """RMS of each row, in float64."""
    return (torch.linalg.vector_norm(x, dim=1) / (x.shape[1] ** 0.5)).to(torch.float64)


def integrate_per_sample(
    term: ODETerm, y0_flat: torch.Tensor, ts: list[float], config: Any, stats: SolveStats
) -> torch.Tensor:
    """Solve every sample of the batch as its own problem; return (len(ts), n) flat states."""
    solver: ExplicitRK = config.solver
    ctrl: PIController = config.controller
    batch = int(term.spec.shapes[0][0])
    f = _BatchTerm(term, batch)
    y = y0_flat.reshape(batch, -1)
    n_out = len(ts)
    if n_out == 1:
        return y0_flat[None]
    device = y.device
    f64 = dict(dtype=torch.float64, device=device)
    sign = 1.0 if ts[-1] > ts[0] else -1.0
    t_end = ts[-1]
    ts_signed = torch.tensor([sign * x for x in ts], **f64)
    ts_tensor = torch.tensor(ts, **f64)
    tab = solver.tableau
    co = solver._coefficients(y0_flat)
    exponent = 1.0 / (solver.error_order + 1)
    rtol = torch.as_tensor(ctrl.rtol, dtype=y.real.dtype, device=device)
    atol = torch.as_tensor(ctrl.atol, dtype=y.real.dtype, device=device)

    # statistics and status per sample
    zeros = torch.zeros(batch, dtype=torch.long, device=device)
    n_steps, n_accepted, n_rejected, nfe = zeros, zeros, zeros, zeros
    active = torch.ones(batch, dtype=torch.bool, device=device)

    t = torch.full((batch,), ts[0], **f64)
    f0 = f(t, y)
    nfe = nfe + 1
    # initial step (Hairer, Norsett & Wanner II.4), per sample
    if ctrl.first_step is None:
        with torch.no_grad():
            scale = atol + rtol * y.abs()
            d0, d1 = _rms(y / scale), _rms(f0 / scale)
            bad = ~torch.isfinite(d1)
            if bool(bad.any()):
                i = int(bad.nonzero()[0])
                raise NonFiniteError(f"f(t0, y0) contains NaN or inf for sample {i}")
            h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)
            y_probe = y + (sign * h0).to(y.real.dtype)[:, None] * f0
            f_probe = f(t + sign * h0, y_probe)
            nfe = nfe + 1
            d2 = _rms((f_probe - f0) / scale) / h0
            h1 = torch.where(
                (d1 <= 1e-15) & (d2 <= 1e-15),
                torch.clamp(h0 * 1e-3, min=1e-6),
                (0.01 / torch.maximum(d1, d2)) ** exponent,
            )
            size = torch.minimum(100 * h0, h1)
    else:
        size = torch.full((batch,), ctrl.first_step, **f64)
    size = torch.clamp(size, min=ctrl.min_step, max=ctrl.max_step)
    proposal = t + sign * size
    previous_ratio = torch.ones(batch, **f64)

    outputs: list[torch.Tensor] = [y] + [y] * (n_out - 1)
    next_out = torch.ones(batch, dtype=torch.long, device=device)
    a_rows = co.a
    c = co.c
    fsal = co.fsal
    while True:
        # The step: land on t_end when the proposal reaches it; finished samples stand still.
        landed = sign * (proposal - t_end) >= 0
        t1 = torch.where(active, torch.where(landed, t_end, proposal), t)
        h = t1 - t
        h_y = h.to(y.real.dtype)[:, None]
        ks = [f0]
        y_stage = y
        for i in range(1, co.stages):
            comb = torch.tensordot(a_rows[i], torch.stack(ks), dims=1)
            y_stage = torch.addcmul(y, h_y, comb)
            t_stage = t1 if c[i] == 1 else t + c[i] * h
            ks.append(f(t_stage, y_stage))
        nfe = nfe + (co.stages - 1) * active
        stacked = torch.stack(ks)
        y1 = y_stage if fsal else torch.addcmul(y, h_y, torch.tensordot(co.b, stacked, dims=1))
        error = h_y * torch.tensordot(co.b_error, stacked, dims=1)

        # Accept/reject and the next proposal, per sample (PIController.adapt on tensors).
        with torch.no_grad():
            scale = torch.addcmul(atol, torch.maximum(y.abs(), y1.abs()), rtol)
            ratio = _rms(error / scale)
            finite = torch.isfinite(ratio)
            hsize = h.abs()
            accept = active & finite & ((ratio <= 1) | (hsize <= ctrl.min_step * (1 + 1e-12)))
            k = exponent
            safe_ratio = torch.where(finite & (ratio > 0), ratio, 1.0)
            factor = ctrl.safety * safe_ratio ** (-(ctrl.icoeff + ctrl.pcoeff) * k)
            if ctrl.pcoeff:
                factor = factor * previous_ratio ** (ctrl.pcoeff * k)
            lower = torch.where(ratio < 1, 1.0, ctrl.dfactor)
            factor = torch.minimum(torch.maximum(factor, lower), torch.tensor(ctrl.ifactor, **f64))
            factor = torch.where(ratio == 0, ctrl.ifactor, factor)
            new_size = torch.clamp(hsize * factor, min=ctrl.min_step, max=ctrl.max_step)
            new_dt = torch.copysign(new_size, h)
            rejected = active & ~accept
            new_proposal = torch.where(accept, t1 + new_dt, t + new_dt)
            new_proposal = torch.where(finite, new_proposal, t + h * ctrl.dfactor)
            proposal = torch.where(active, new_proposal, proposal)
            previous_ratio = torch.where(accept, torch.clamp(ratio, min=1e-10), previous_ratio)
            n_steps = n_steps + active
            n_accepted = n_accepted + accept
            n_rejected = n_rejected + rejected
            # outputs crossed by this step: ts[next_out : end] for accepted samples
            end = torch.searchsorted(ts_signed, sign * t1, right=True)
            crossing = accept & (end > next_out)
            lo = torch.where(crossing, next_out, n_out).min()
            hi = torch.where(crossing, end, 0).max()
            finished = accept & (t1 == t_end)
            still = active & ~finished
            # the next attempt must make progress (checked here to share the sync)
            t_next = torch.where(accept, t1, t)
            land_next = torch.where(sign * (proposal - t_end) >= 0, t_end, proposal)
            stuck = still & (
                (
                    (land_next - t_next).abs()
                    <= 4 * _EPS * torch.maximum(t_next.abs(), land_next.abs())
                )
                | ~torch.isfinite(land_next)
            )
            over = still & (n_steps >= config.max_steps)
            summary = torch.stack(
                [still.sum(), lo, hi, stuck.any().long(), over.any().long()]
            ).tolist()
        n_still, lo, hi, any_stuck, any_over = summary

        f1 = ks[-1] if fsal else None
        needs_f1 = tab.dense is None or len(tab.dense.extra_c) > 0
        if hi > lo:
            for j in range(lo, hi):
                mask = crossing & (next_out <= j) & (j < end)
                if j == n_out - 1:  # every sample lands exactly on the last time
                    value = y1
                else:
                    if needs_f1 and f1 is None:
                        # f(t1, y1) for the interpolant; reused below as the next f0
                        f1 = f(t1, y1)
                        nfe = nfe + (crossing & ~still)
                    value = _interpolate(solver, co, y, y1, h, stacked, f1, ts_tensor[j] - t)
                    value = torch.where((ts_tensor[j] == t1)[:, None], y1, value)
                outputs[j] = torch.where(mask[:, None], value, outputs[j])
            next_out = torch.where(crossing, end, next_out)
        if any_stuck or any_over:
            _raise_failure(any_over, over, stuck, t_next, land_next, y1, config, n_steps)
        # advance the accepted samples
        acc_col = accept[:, None]
        y = torch.where(acc_col, y1, y)
        t = torch.where(accept, t1, t)
        active = still
        if n_still == 0:
            break
        if fsal:
            f0 = torch.where(acc_col, ks[-1], f0)
        else:  # f(t1, y1) starts the next step of the accepted samples
            f_next = f(t, y) if f1 is None else f1
            nfe = nfe + (accept & still)
            f0 = torch.where(acc_col, f_next, f0)

    stats.n_steps += int(n_steps.sum())
    stats.n_accepted += int(n_accepted.sum())
    stats.n_rejected += int(n_rejected.sum())
    stats.sample_nfe = nfe
    stats.sample_steps = n_steps
    stats.sample_accepted = n_accepted
    stats.sample_rejected = n_rejected
    return torch.stack(outputs).reshape(n_out, -1)


def _interpolate(
    solver: ExplicitRK,
    co: Any,
    y0: torch.Tensor,
    y1: torch.Tensor,
    h: torch.Tensor,
    stacked: torch.Tensor,
    f1: torch.Tensor | None,
    offset: torch.Tensor,
) -> torch.Tensor:
    """y at t0 + offset for each sample (offset = output time - the sample's t0)."""
    safe_h = torch.where(h == 0, 1.0, h)
    theta = offset / safe_h  # (batch,) float64
    h_y = h.to(y0.real.dtype)[:, None]
    dense = solver.tableau.dense
    if dense is None:  # cubic Hermite through (y0, f0), (y1, f1)
        th = theta.to(y0.real.dtype)[:, None]
        k0 = stacked[0]
        if f1 is None:
            raise ValueError(f"{solver!r} needs f(t1, y1) for dense output in per-sample mode")
        h00 = (1 + 2 * th) * (1 - th) ** 2
        h10 = th * (1 - th) ** 2
        h01 = th**2 * (3 - 2 * th)
        h11 = th**2 * (th - 1)
        return h00 * y0 + h01 * y1 + (h10 * h_y) * k0 + (h11 * h_y) * f1
    n_powers = co.dense.shape[1]
    powers = torch.arange(1, n_powers + 1, dtype=torch.float64, device=theta.device)
    theta_powers = theta[None, :] ** powers[:, None]  # (P, batch)
    weights = (co.dense.to(torch.float64) @ theta_powers).to(co.dense.dtype)  # (S, batch)
    if len(dense.extra_c):
        stacked = torch.cat([stacked, f1[None]])
    comb = torch.einsum("sb,sbd->bd", weights, stacked)
    return torch.addcmul(y0, h_y, comb)


def _raise_failure(any_over, over, stuck, t, land, y1, config, n_steps) -> None:
    if any_over:
        i = int(over.nonzero()[0])
        raise MaxStepsError(
            f"sample {i} reached max_steps={config.max_steps} at t={float(t[i]):.6g} "
            "(per-sample mode counts each sample's steps). Raise max_steps, loosen the "
            "tolerances, or use an implicit method if the problem is stiff."
        )
    i = int(stuck.nonzero()[0])
    if not bool(torch.isfinite(y1[i]).all()):
        raise NonFiniteError(
            f"NaN or inf in sample {i} at t={float(t[i]):.6g}: f(t, y) is probably "
            "non-finite there or the solution blows up"
        )
    raise StepSizeUnderflowError(
        f"step size underflow in sample {i} at t={float(t[i]):.10g}: the next step "
        f"(dt={float(land[i] - t[i]):.3g}) is too small to change t. The solution may blow "
        "up, f may be non-finite or discontinuous there, or the problem may be stiff."
    )
