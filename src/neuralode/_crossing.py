"""Locating where an event function crosses zero inside a step, for many rows at once.

Each row (a sample, or the one problem of the standard loop) has a bracket of step fractions
[lo, hi] whose event values g(lo), g(hi) (k elements) show a crossing. ``refine`` shrinks it
by the ITP method (Oliveira & Takahashi 2020: Interpolate, Truncate, Project): a regula falsi
point (the earliest of the crossing elements' secant roots), moved towards the midpoint by a
little and projected into a radius around it that shrinks like bisection's. For a smooth g it
converges superlinearly, and it never needs more than one evaluation more than bisection's
~52 to reach the float64 resolution of the time (or ``tol``), plus one to confirm an exact
zero. The crossing is the first time g reaches the other side or 0, also where g stays 0 on
an interval. Every ``_CHECK_EVERY`` steps one host sync asks whether any row is still short
of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

_MAX_STEPS = 200
_CHECK_EVERY = 2  # steps between two host syncs (is any row short of its tolerance?)
_SLACK = 1  # n0: steps ITP may take beyond bisection's
_KAPPA1, _KAPPA2 = 0.2, 2.0  # the truncation: kappa1 * width ** kappa2 (of a bracket [0, 1])


def crossed(before: torch.Tensor, after: torch.Tensor, direction: int) -> torch.Tensor:
    """Which elements crossed zero from ``before`` to ``after`` (rising: from negative to
    non-negative, falling: from positive to non-positive; ``direction`` 1, -1 or 0: both)."""
    rising = (before < 0) & (after >= 0)
    falling = (before > 0) & (after <= 0)
    if direction == 1:
        return rising
    if direction == -1:
        return falling
    return rising | falling


def refine(
    g_at: Callable[[torch.Tensor], torch.Tensor],
    g_lo: torch.Tensor,
    g_hi: torch.Tensor,
    t0: torch.Tensor,
    dt: torch.Tensor,
    todo: torch.Tensor,
    direction: int,
    tol: float | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Shrink each ``todo`` row's bracket [0, 1] of the step t0 + [0, 1] * dt around a crossing
    of its values (``g_lo`` at 0, ``g_hi`` at 1, (rows, k)) until it is within ``tol`` or at the
    float64 resolution of the time. ``g_at(theta)`` gives every row's values at the step
    fractions ``theta`` (rows,). Returns ``hi`` (the crossing is in (lo, hi], and at hi when the
    bracket can no longer shrink) and the values at ``lo`` and ``hi``."""
    lo, hi = torch.zeros_like(t0), torch.ones_like(t0)
    # epsilon: the resolution of the time (or tol), as a fraction of the step
    resolution = torch.maximum(t0.abs(), (t0 + dt).abs()) * 2.0**-52
    resolution = resolution.clamp(min=torch.finfo(torch.float64).tiny)
    if tol is not None:
        resolution = resolution.clamp(min=tol)
    epsilon = (resolution / dt.abs()).clamp(max=0.5)
    most = torch.ceil(torch.log2(0.5 / epsilon)) + _SLACK  # bisection's steps + n0
    # an exact zero at hi ends a row's search only once g just below hi (by epsilon) shows
    # no crossing yet (``settled``): g may be 0 on an interval, as relu(h) is once h < 0,
    # and the crossing is where that interval starts, which bisection finds (``plateau``)
    settled, plateau = torch.zeros_like(todo), torch.zeros_like(todo)
    for j in range(_MAX_STEPS):
        width = hi - lo
        mid = lo + 0.5 * width
        t_mid = t0 + mid * dt
        cross = crossed(g_lo, g_hi, direction)
        done = (t_mid == t0 + lo * dt) | (t_mid == t0 + hi * dt)
        done = done | settled | ~cross.any(1)
        if tol is not None:
            done = done | (width * dt.abs() <= tol)
        active = todo & ~done
        if j % _CHECK_EVERY == 0 and not bool(active.any()):  # one host sync
            break
        # interpolate: regula falsi on the crossing element that crosses first
        fraction = torch.where(cross, g_lo / (g_lo - g_hi), math.inf).amin(1)
        falsi = lo + fraction.nan_to_num(0.5).clamp(0, 1).to(lo.dtype) * width
        # truncate: towards the midpoint by kappa1 * width ** kappa2
        towards = torch.sign(mid - falsi)
        shift = _KAPPA1 * width**_KAPPA2
        truncated = torch.where(shift <= (mid - falsi).abs(), falsi + towards * shift, mid)
        # project: into the radius around the midpoint that keeps bisection's guarantee
        radius = (epsilon * torch.exp2(most - j) - 0.5 * width).clamp(min=0)
        near = (truncated - mid).abs() <= radius
        theta = torch.where(near, truncated, mid - towards * radius)
        # hi a root of every crossing element: is it the first? (a plateau: bisect)
        probe = ~(cross & (g_hi != 0)).any(1) & ~plateau
        theta = torch.where(probe, torch.maximum(lo, hi - epsilon), theta)
        theta = torch.where(plateau, mid, theta)
        g = g_at(theta)
        left = crossed(g_lo, g, direction).any(1)  # the crossing is in (lo, theta]
        settled = settled | (active & probe & ~left)
        plateau = plateau | (active & probe & left)
        move_hi, move_lo = active & left, active & ~left
        hi = torch.where(move_hi, theta, hi)
        g_hi = torch.where(move_hi[:, None], g, g_hi)
        lo = torch.where(move_lo, theta, lo)
        g_lo = torch.where(move_lo[:, None], g, g_lo)
    return hi, g_lo, g_hi
