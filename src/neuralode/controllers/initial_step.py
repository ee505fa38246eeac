"""Automatic choice of the first step (Hairer, Norsett & Wanner, Solving ODEs I, II.4)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._errors import f0_not_finite
from .._norms import Norm, norm_value, rms_norm
from .._term import ODETerm
from ._ops import clip, maximum, minimum, power, step_floor, where


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
    span: float = 0.0,
) -> float:
    """``initial_step``'s rule on the host's loop, with Python floats (cheaper there than
    tensor arithmetic): a first step size (positive) from the local scale of y0, f0 and
    one more evaluation of f (Hairer's).

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
        span: the length of the solve's time span (0 for an event search to infinity): the
            step is at least twice the smallest step the solve resolves at ``t0`` (4 ulps
            of the larger of ``|t0|`` and ``2^-52 span``), where the rule's step would not
            move t.

    Returns:
        The step size (positive).
    """
    if torch.is_grad_enabled():  # (entering no_grad costs ~1.5 us: not when it is off)
        with torch.no_grad():
            return select_initial_step(
                term, t0, y0, f0, direction, error_exponent, rtol, atol, norm, span
            )
    scale = _scale(y0, rtol, atol)
    if norm is rms_norm:  # both norms by one reduction and one transfer to the host
        both = torch.linalg.vector_norm(torch.stack((y0, f0)) / scale, dim=1)
        d0, d1 = (x / math.sqrt(y0.numel()) for x in both.tolist())
    else:
        d0, d1 = float(norm(y0 / scale)), float(norm(f0 / scale))
    check_f0_norm(d1, t0)
    h0 = probe_step(d0, d1)
    f1 = term(t0 + direction * h0, torch.add(y0, f0, alpha=direction * h0))
    d2 = norm_value((f1 - f0) / scale, norm) / h0
    return first_step(h0, d1, d2, error_exponent, step_floor(t0, span))


def check_f0_norm(d1: float, t0: float) -> None:
    """The scaled norm of f(t0, y0) must be finite."""
    if not math.isfinite(d1):
        raise f0_not_finite(f" at t0={t0:.6g}")


def first_evaluations(
    term: ODETerm,
    t0: torch.Tensor,
    y0: torch.Tensor,
    direction: float,
    error_exponent: float,
    rtol: torch.Tensor,
    atol: torch.Tensor,
    norm: Norm,
    span: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """f(t0, y0) and ``initial_step`` in one compiled graph (``compile_step``): returns f0
    and the float64 pair (first step size, norm of the scaled f0). ``t0`` and ``span`` are
    0-dim float64 tensors."""
    f0 = term.at(term.time(t0), y0)
    h, d1 = initial_step(
        lambda t1, y1: term.at(term.time(t1), y1), t0, y0, f0, direction, error_exponent,
        rtol, atol, norm, span,
    )  # fmt: skip
    return f0, torch.stack([h, d1])


@torch.no_grad()
def initial_step(
    evaluate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    t0: torch.Tensor,
    y0: torch.Tensor,
    f0: torch.Tensor,
    direction: float,
    error_exponent: float,
    rtol: float | torch.Tensor,
    atol: float | torch.Tensor,
    norm: Norm,
    span: torch.Tensor | float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule of Hairer, Norsett & Wanner (II.4) for the first step size, once for every
    mode, as tensor code without host reads: from the scaled norms of y0 and f0 a probe step
    h0, one more evaluation ``evaluate(t0 + direction * h0, y0 + direction * h0 * f0)``, and
    from the estimate of the second derivative the step ``min(100 h0, (0.01 / max(d1,
    d2)) ** error_exponent)``, at least twice the smallest step the solve resolves at t0
    (``step_floor(t0, span)``, ``span`` the length of the solve's span: a y0 of round-off
    size but not 0 makes the rule's step shorter than that). ``norm`` is one norm over the
    state (``t0`` 0-dim) or one per sample (a (batch,) result; ``t0`` and ``span``
    (batch,)). Returns the step size (float64) and the scaled norm of f0 (non-finite: f0
    is)."""
    y0, f0 = y0.detach(), f0.detach()  # forward-mode AD (torch.func.jvp) ignores no_grad
    scale = _scale(y0, rtol, atol)
    d0 = norm(y0 / scale).to(torch.float64)
    d1 = norm(f0 / scale).to(torch.float64)
    h0 = probe_step(d0, d1)
    step = (direction * h0).to(y0.real.dtype)
    step = step.reshape(step.shape + (1,) * (y0.ndim - step.ndim))
    f_probe = evaluate(t0 + direction * h0, y0 + step * f0)
    d2 = norm((f_probe - f0) / scale).to(torch.float64) / h0
    return first_step(h0, d1, d2, error_exponent, step_floor(t0, span)), d1


def _scale(y0: torch.Tensor, rtol: Any, atol: Any) -> torch.Tensor:
    if isinstance(rtol, torch.Tensor) and isinstance(atol, torch.Tensor):
        return torch.addcmul(atol, y0.abs(), rtol)  # one op, no Python-number operands
    return atol + rtol * y0.abs()


def probe_step(d0: Any, d1: Any) -> Any:
    """The rule's probe step h0 from the scaled norms of y0 and f0 (floats, or tensors:
    one problem or one per sample)."""
    # (d1 below 1e-5 takes 1e-6; clipped, a float 0 would divide by zero)
    return where((d0 < 1e-5) | (d1 < 1e-5), 1e-6, 0.01 * d0 / maximum(d1, 1e-5))


def first_step(h0: Any, d1: Any, d2: Any, error_exponent: float, floor: Any = 0.0) -> Any:
    """The rule's first step size from the probe step, the scaled norm of f0 and the
    estimate of the second derivative (floats or tensors, as ``probe_step``), at least
    twice ``floor``, the smallest step the solve resolves at t0 (a step of the floor itself
    ends within round-off of t0, where the loop could not tell the two times apart)."""
    tiny = (d1 <= 1e-15) & (d2 <= 1e-15)
    largest = maximum(maximum(d1, d2), 1e-300)  # (a float 0 would divide by zero)
    h1 = where(tiny, clip(h0 * 1e-3, 1e-6, math.inf), power(0.01 / largest, error_exponent))
    return maximum(minimum(100 * h0, h1), 2 * floor)
