"""The SDE step loop: fixed steps on a precomputed grid, or adaptive steps by step doubling.

Outputs at times between steps are linear interpolations of the two neighbouring steps (as in
torchsde: steps run on from ``ts[0]`` in ``dt`` and do not stop at the output times; grid points
within round-off of an output time are moved onto it, so outputs on the grid are exact).
"""

from __future__ import annotations

import math
import warnings
from array import array

import torch

from .._norms import norm_value, rms_norm

# the step-doubling controller (torchsde's): integral gain on a rejected step, PI gains on an
# accepted one, factors clipped to [0.2, 1.4] and never shrinking after an accepted step
_SAFETY, _FAC_MIN, _FAC_MAX = 0.9, 0.2, 1.4
_I_REJECT, _I_ACCEPT, _P_ACCEPT = 1 / 1.5, 1 / 4.5, 0.13


def fixed_grid(ts: list[float], dt: float) -> array:
    """The step endpoints from ``ts[0]`` to ``ts[-1]`` in steps of ``dt`` (the last one shorter),
    with points within round-off of an output time moved onto it; an array of doubles (8 bytes
    a step, not a Python float each)."""
    t0, t_end = ts[0], ts[-1]
    n = max(1, math.ceil((t_end - t0) / dt - 1e-9))
    grid = array("d", (t0 + k * dt for k in range(n)))
    grid.append(t_end)
    j = 1
    scale = 1e-9 * max(1.0, abs(t_end), abs(t0))
    for k in range(1, n):
        while j < len(ts) - 1 and ts[j] < grid[k] - scale:
            j += 1
        if abs(grid[k] - ts[j]) <= scale:
            grid[k] = ts[j]
    return grid


def integrate_fixed(solver, y0: torch.Tensor, ts: list[float], grid, extra):
    """Steps along ``grid``, returning the states at ``ts`` stacked, and the final extra state."""
    ys = [y0]
    y = y0
    j = 1
    n_out = len(ts)
    step = solver.step
    for k in range(len(grid) - 1):
        t0, t1 = grid[k], grid[k + 1]
        y_prev = y
        y, extra = step(t0, t1, y, extra)
        while j < n_out and ts[j] <= t1:
            ys.append(y if ts[j] == t1 else _interp(t0, y_prev, t1, y, ts[j]))
            j += 1
    return torch.stack(ys), extra


def _interp(t0: float, y0: torch.Tensor, t1: float, y1: torch.Tensor, t: float) -> torch.Tensor:
    return torch.lerp(y0, y1, (t - t0) / (t1 - t0)) if t != t0 else y0


def integrate_adaptive(
    solver,
    y0: torch.Tensor,
    ts: list[float],
    dt: float,
    rtol: float,
    atol: float,
    dt_min: float,
    extra,
    record=None,
):
    """Adaptive steps by step doubling: one step of ``h`` against two of ``h / 2``; the error is
    the RMS of their difference over ``atol + rtol * max(|y_full|, |y_half|)``. ``record``, if
    given, receives the accepted step endpoints.

    Returns:
        ``(ys, extra)`` as ``integrate_fixed``.
    """
    ys = [y0]
    y, t = y0, ts[0]
    step = solver.step
    prev_ratio = None
    t_end = ts[-1]
    if record is not None:
        record.append(t)
    for out_t in ts[1:]:
        while t < out_t:
            t1 = min(t + dt, t_end)
            y_full, _ = step(t, t1, y, extra)
            t_mid = 0.5 * (t + t1)
            y_mid, extra_mid = step(t, t_mid, y, extra)
            y1, extra1 = step(t_mid, t1, y_mid, extra_mid)
            with torch.no_grad():
                scale = torch.maximum(y_full.abs(), y1.abs()).mul_(rtol).add_(atol).clamp_min_(1e-7)
                error = max(norm_value((y_full - y1) / scale, rms_norm), 1e-7)
            if not math.isfinite(error):
                raise RuntimeError(
                    "Found nans in the error estimate. Try increasing the tolerance or "
                    "regularizing the dynamics."
                )
            dt, prev_ratio = _next_step(error, dt, prev_ratio)
            if dt < dt_min:
                warnings.warn(
                    "Hitting minimum allowed step size in adaptive time-stepping.", stacklevel=3
                )
                dt, prev_ratio = dt_min, None
            if error <= 1 or dt <= dt_min:
                y_prev, t_prev = y, t
                t, y, extra = t1, y1, extra1
                if record is not None:
                    record.append(t)
        ys.append(_interp(t_prev, y_prev, t, y, out_t) if out_t != t else y)
    return torch.stack(ys), extra


def _next_step(error: float, dt: float, prev_ratio: float | None) -> tuple[float, float | None]:
    ratio = _SAFETY / error
    if prev_ratio is None:
        prev_ratio = ratio
    if error > 1:
        factor = max(_FAC_MIN, min(_FAC_MAX, ratio**_I_REJECT))
        return dt * factor, prev_ratio
    factor = ratio**_I_ACCEPT * (ratio / prev_ratio) ** _P_ACCEPT
    return dt * max(1.0, min(_FAC_MAX, factor)), ratio
