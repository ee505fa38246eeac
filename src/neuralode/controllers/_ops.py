"""Arithmetic on Python floats or tensors alike, so that a controller formula is written once
for the host loop (floats) and the device loop (one tensor element per sample).

Each function tests ``type(x) is not float`` before ``isinstance(x, torch.Tensor)``: the host
loop calls them with floats every step, and that test costs a third of the ``isinstance``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

_EPS = 2.0**-52


def indistinct(a: Any, b: Any) -> Any:
    """Whether the times ``a`` and ``b`` (floats, or tensors per sample) lie within 4 ulps
    of the larger: a step from one to the other cannot change t, so a loop treats them as
    one time (a stalled step, a landing point reached, a grid point passed). An infinite
    time (an event search's end) is distinct from every finite one."""
    if type(a) is not float and isinstance(a, torch.Tensor):
        gap = (b - a).abs()
        return (gap <= 4 * _EPS * torch.maximum(a.abs(), b.abs())) & gap.isfinite()
    gap = abs(b - a)
    return gap <= 4 * _EPS * max(abs(a), abs(b)) and gap != math.inf


def solve_span(t0: Any, t_end: Any) -> Any:
    """The length of a solve's time span, from ``t0`` to ``t_end`` (floats, or tensors per
    sample), the scale of ``step_floor``; 0 for an infinite end (an event search), whose
    floor is then that of t alone."""
    if type(t0) is not float and isinstance(t0, torch.Tensor):
        length = (t_end - t0).abs()
        return torch.where(length.isfinite(), length, 0.0)
    length = abs(t_end - t0)
    return length if length != math.inf else 0.0


def uniform_steps(span: Any, step: Any, scale: Any, eps: float = _EPS) -> Any:
    """How many steps of size ``step`` cover ``span`` (the last one shortened to land on its
    end), for a uniform grid (floats, or tensors per sample). A remainder within 4 ulps of
    the times' magnitude ``scale``, in a dtype of resolution ``eps`` (the times' dtype), is
    round-off of the ends, not a step: float32 times 0 and 0.3 cover 3 steps of 0.1 (0.3 in
    float32 is 0.30000001), not 3 and a sliver. A remainder above 1e-12 steps is a step."""
    if type(span) is not float and isinstance(span, torch.Tensor):
        slack = torch.clamp(4 * eps * scale / step, min=1e-12)
        return torch.ceil(span.abs() / step - slack)
    return math.ceil(abs(span) / step - max(1e-12, 4 * eps * scale / step))


def step_floor(t: Any, span: Any) -> Any:
    """The smallest step size a solve resolves at time ``t``: 4 ulps (of float64, the
    engine's times whatever the state's dtype) of the larger of ``|t|`` and ``2^-52 span``,
    ``span`` the length of the solve's time span (``solve_span``). Relative to t alone, as
    ``indistinct``, a step near t = 0 could shrink to the smallest subnormal, hundreds of
    failed attempts below any scale of the problem. The span's part lies 16 decades below
    the span: a stiff transient at the start of a long span (Robertson's kinetics to
    t = 1e13, whose first steps are 1e-6 long) needs steps far shorter than 4 ulps of the
    span, and a solve over a short span (say 1e-12 long) resolves steps as much shorter."""
    if type(t) is not float and isinstance(t, torch.Tensor):
        scale = torch.as_tensor(_EPS * span, dtype=t.dtype)
        return 4 * _EPS * torch.maximum(t.abs(), scale)
    return 4 * _EPS * max(abs(t), _EPS * span)


def stuck(t: Any, t1: Any, span: Any, rejected: Any, landing: Any = False) -> Any:
    """Whether the next step, from ``t`` to ``t1`` (floats, or tensors per sample), cannot
    make progress: ``t1`` is t to round-off (``indistinct``: the step cannot change t), or
    it retries a ``rejected`` step from t and is shorter than ``step_floor(t, span)``:
    failures shrank it below the smallest step the solve resolves. Accepted steps below the
    floor go on (a step cut short by a landing point just after t, and the steps that grow
    from it). A step onto a ``landing`` point (the end of the solve, a ``step_t`` or
    ``jump_t`` time) that changes t is taken however short (unless it retries a rejected
    one below the floor): times a few ulps apart (a span of 1 ulp at t = 1e8) are solved
    by that one step.
    The engine's one step-size underflow rule (host loop, per-sample loop, compiled whole
    solve); a non-finite ``t1`` is checked apart."""
    if type(t) is not float and isinstance(t, torch.Tensor):
        small = (t1 - t).abs() < step_floor(t, span)
        onto = landing & (t1 != t)
        return (indistinct(t, t1) & ~onto) | (small & rejected)
    onto = landing and t1 != t
    return (indistinct(t, t1) and not onto) or (rejected and abs(t1 - t) < step_floor(t, span))


def power(x: Any, p: float) -> Any:
    """``x ** p`` for a float (0 to a negative power: inf) or a tensor."""
    if type(x) is not float and isinstance(x, torch.Tensor):
        return x.pow(p)
    return math.inf if x == 0 and p < 0 else x**p


def clip(x: Any, lo: float, hi: float) -> Any:
    if type(x) is not float and isinstance(x, torch.Tensor):
        return torch.clamp(x, min=lo, max=hi)
    return min(max(x, lo), hi)


def nan_to(x: Any, value: float) -> Any:
    if type(x) is not float and isinstance(x, torch.Tensor):
        return x.nan_to_num(nan=value)
    return value if x != x else x


def where(condition: Any, a: Any, b: Any) -> Any:
    if type(condition) is not bool and isinstance(condition, torch.Tensor):
        return torch.where(condition, a, b)
    return a if condition else b


def minimum(a: Any, b: Any) -> Any:
    if (type(a) is not float or type(b) is not float) and (
        isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
    ):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return min(a, b)


def maximum(a: Any, b: Any) -> Any:
    if (type(a) is not float or type(b) is not float) and (
        isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor)
    ):
        return torch.maximum(torch.as_tensor(a), torch.as_tensor(b))
    return max(a, b)


def predicted(ratio: Any, size: Any, last: Any, last_size: Any, exponent: float) -> Any:
    """Gustafsson's predictive factor min(1, (h / h_last) (r_last / r)^exponent), h_last
    and r_last the last accepted step's size and ratio (1 before the first accepted step,
    ``last_size`` 0); on floats or per-sample tensors."""
    if isinstance(size, torch.Tensor):
        seen = last_size > 0
        trend = size / torch.where(seen, last_size, 1.0)
        trend = trend * (last / ratio.clamp(min=1e-10)).pow(exponent)
        return torch.where(seen, trend.clamp(max=1.0).nan_to_num(nan=1.0), 1.0)
    if not last_size > 0 or ratio != ratio:
        return 1.0
    return min(1.0, size / last_size * (last / max(ratio, 1e-10)) ** exponent)
