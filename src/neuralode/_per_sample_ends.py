"""The ends of the per-sample loop: at its start each row's tolerances and error norm and its
first step (an adaptive step size from ``initial_step``, or a fixed grid's checked step
count); at its end the statistics."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._errors import f0_not_finite
from ._host import across, plain, wrapped
from ._norms import RowMixedNorm, row_rms, tolerance_tensor
from ._status import Status, samples_failed
from ._tree import TreeSpec, flat_to_rows, row_widths
from ._validate_times import too_many_fixed_steps
from .controllers.fixed import FixedGrid
from .controllers.initial_step import initial_step
from .controllers.pi import PIController


def row_control(solver: Any, ctrl: Any, spec: TreeSpec, y: torch.Tensor) -> tuple:
    """``(exponent, rtol, atol, norm)`` for the rows ``y`` (batch, r): the error exponent
    and the tolerances as tensors (``None`` on a fixed grid, which measures no error), and
    each row's error norm: its RMS, or a nested state's as alone (the max of the RMS of its
    part of each tensor)."""
    norm = row_rms if spec.is_leaf else RowMixedNorm(row_widths(spec))
    if isinstance(ctrl, FixedGrid):  # no error measured: every attempt is accepted
        return None, None, None, norm
    rtol = tolerance_tensor(_as_rows(ctrl.rtol, spec, y), y)
    atol = tolerance_tensor(_as_rows(ctrl.atol, spec, y), y)
    return 1.0 / (solver.error_order + 1), rtol, atol, norm


def first_steps(
    ctrl: PIController,
    f: Any,
    t: torch.Tensor,
    y: torch.Tensor,
    f0: torch.Tensor,
    sign: float,
    span: torch.Tensor,
    measures: tuple,
    status: torch.Tensor,
    throw: bool,
) -> tuple:
    """Each sample's first adaptive step (``initial_step``: Hairer, Norsett & Wanner II.4,
    or ``first_step``), clipped to ``[min_step, max_step]``: ``(proposal, memory, active,
    status, evaluations)``, the first step's end, the controller's initial memory, the
    samples that start (not those whose f0 is not finite: their status says so, or with
    ``throw`` the solve raises) and the evaluations of f it took (0 or 1 per sample)."""
    batch = t.shape[0]
    f64 = dict(dtype=torch.float64, device=t.device)
    active = torch.ones(batch, dtype=torch.bool, device=t.device)
    evaluations = 0
    if ctrl.first_step is None:
        exponent, rtol, atol, norm = measures
        size, d1 = initial_step(f, t, y, f0, sign, exponent, rtol, atol, norm, span)
        evaluations = 1
        bad = ~torch.isfinite(d1)
        if bool(across(bad.any(), torch.any)):  # (of every problem under torch.func.vmap)
            status = torch.where(bad, int(Status.NON_FINITE), status)  # they never start
            if throw:
                i = int(plain(bad).reshape(-1, batch).any(0).nonzero()[0])
                error = f0_not_finite(f" for sample {i}", end=".")
                raise error if wrapped(status) else samples_failed(status, error)
            active = ~bad
    else:
        size = torch.full((batch,), ctrl.first_step, **f64)
    size = torch.clamp(size, min=ctrl.min_step, max=ctrl.max_step)
    memory = ctrl.initial_memory(torch.ones(batch, **f64))
    return t + sign * size, memory, active, status, evaluations


def record_counts(
    stats: Any,
    per_sample: bool,
    status: torch.Tensor,
    n_steps: torch.Tensor,
    n_accepted: torch.Tensor,
    nfe: torch.Tensor,
    rows_evaluated: int,
) -> None:
    """Each sample's status and counts (batch,) into ``stats``, per sample only with
    ``per_sample`` (else the batch of one's status as a 0-dim one), and their sums into its
    totals (summed over the problems under ``torch.func.vmap`` too)."""
    stats.status = status if per_sample else status[0]
    n_rejected = n_steps - n_accepted
    stats.n_steps += int(across(n_steps.sum(), torch.sum))
    stats.n_accepted += int(across(n_accepted.sum(), torch.sum))
    stats.n_rejected += int(across(n_rejected.sum(), torch.sum))
    if per_sample:
        stats.sample_nfe = nfe
        stats.rows_evaluated = rows_evaluated
        stats.sample_steps = n_steps
        stats.sample_accepted = n_accepted
        stats.sample_rejected = n_rejected


def check_row_fixed_steps(ctrl: FixedGrid, grid: torch.Tensor, config: Any) -> None:
    """Raise ``MaxStepsError`` before the first step when a sample's uniform grid has more
    steps than ``max_steps`` (as the host loop does for one problem); with ``throw=False``
    the loop stops such samples with their status."""
    if ctrl.step_size is None or not config.throw:
        return
    n = grid[2]
    worst = int(n.argmax())
    if float(n[worst]) > config.max_steps:  # (inf: an event search, bounded by max_steps)
        if not math.isfinite(float(n[worst])):
            return
        t0, step, n_steps, t_end = grid[:, worst].tolist()
        size = f" of {abs(step):.6g}"
        raise too_many_fixed_steps(f"sample {worst}'s", t0, t_end, n_steps, config.max_steps, size)


def _as_rows(tol: Any, spec: Any, rows: torch.Tensor) -> Any:
    """A per-element tolerance laid out as the flat state, as the rows (batch, r) of a
    nested state (each sample's part of every tensor side by side); others as they are."""
    if spec.is_leaf or not isinstance(tol, torch.Tensor) or tol.numel() != rows.numel():
        return tol
    return flat_to_rows(spec, tol.reshape(-1))
