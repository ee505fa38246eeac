"""Automatic choice of the first step (Hairer, Norsett & Wanner, Solving ODEs I, II.4)."""

from __future__ import annotations

import math

import torch

from .._errors import NonFiniteError
from .._norms import Norm, norm_value, rms_norm
from .._term import ODETerm


@torch.no_grad()
def select_initial_step(
    term: ODETerm,
    t0: float,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    error_exponent: float,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Norm,
) -> float:
    """A first step size from the local scale of y0, f0 and one more evaluation (Hairer's).

    Arguments:
        term: the vector field on the flat state.
        t0: the initial time.
        y0: the flat initial state.
        f0: f(t0, y0).
        direction: +1 or -1, the direction of integration.
        error_exponent: 1 / (q + 1) for an error estimate of order q.
        rtol: the relative tolerance, a number or a tensor broadcasting against ``y0``.
        atol: the absolute tolerance, a number or a tensor.
        norm: the error norm.

    Returns:
        The step size (positive).
    """
    if isinstance(rtol, torch.Tensor) and isinstance(atol, torch.Tensor):
        scale = torch.addcmul(atol, y0.abs(), rtol)  # one op, no Python-number operands
    else:
        scale = atol + rtol * y0.abs()
    if norm is rms_norm:  # both norms by one reduction and one transfer to the host
        both = torch.linalg.vector_norm(torch.stack((y0, f0)) / scale, dim=1)
        d0, d1 = (x / math.sqrt(y0.numel()) for x in both.tolist())
    else:
        d0, d1 = float(norm(y0 / scale)), float(norm(f0 / scale))
    check_f0_norm(d1, t0)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    y1 = torch.add(y0, f0, alpha=direction * h0)
    f1 = term(t0 + direction * h0, y1)
    d2 = norm_value((f1 - f0) / scale, norm) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = max(1e-6, h0 * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** error_exponent
    return min(100 * h0, h1)


def check_f0_norm(d1: float, t0: float) -> None:
    """The scaled norm of f(t0, y0) must be finite."""
    if not math.isfinite(d1):
        raise NonFiniteError(f"f(t0, y0) contains NaN or inf at t0={t0:.6g}")


def first_evaluations(
    term: ODETerm,
    t0: torch.Tensor,
    y0: torch.Tensor,
    direction: float,
    error_exponent: float,
    rtol: torch.Tensor,
    atol: torch.Tensor,
    norm: Norm,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(t0, y0) and ``select_initial_step``'s rule as tensor code without host reads, for
    one compiled graph (``compile_step``): returns f0 and the float64 pair (first step size,
    norm of the scaled f0). ``t0`` is a 0-dim float64 tensor."""
    f0 = term.at(term.time(t0), y0)
    with torch.no_grad():
        scale = torch.addcmul(atol, y0.abs(), rtol)
        d0 = norm(y0 / scale).double()
        d1 = norm(f0 / scale).double()
        h0 = probe_step(d0, d1)
        y1 = y0 + (direction * h0).to(y0.dtype) * f0
        f1 = term.at(term.time(t0 + direction * h0), y1)
        d2 = norm((f1 - f0) / scale).double() / h0
        return f0, torch.stack([first_step(h0, d1, d2, error_exponent), d1])


def probe_step(d0: torch.Tensor, d1: torch.Tensor) -> torch.Tensor:
    """The rule's probe step h0 from the scaled norms of y0 and f0, as tensor code (one
    problem or one per sample; no host reads)."""
    return torch.where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / d1)


def first_step(
    h0: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor, error_exponent: float
) -> torch.Tensor:
    """The rule's first step size from the probe step, the scaled norm of f0 and the
    estimate of the second derivative, as tensor code (see ``probe_step``)."""
    tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    h1 = torch.where(
        tiny, (h0 * 1e-3).clamp(min=1e-6), (0.01 / torch.maximum(d1, d2)) ** error_exponent
    )
    return torch.minimum(100 * h0, h1)
