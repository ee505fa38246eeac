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
