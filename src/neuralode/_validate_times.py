"""The checks of a solve's times: the output times, the landing points (``step_t``,
``jump_t``) and what the state's dtype, in which f receives t, can hold."""

from __future__ import annotations

import math
import numbers
import operator
import warnings
from typing import Any

import torch

from ._errors import MaxStepsError, user_stacklevel
from ._norms import LOW_PRECISION


def check_times(ts: Any, device: torch.device, open_end: bool = False) -> list[float]:
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"t must be a 1-D tensor of times, got {type(ts).__name__}")
    if ts.ndim != 1 or ts.numel() == 0:
        per_sample = " (per-sample times, (batch, n), need per_sample=True)" if ts.ndim == 2 else ""
        raise ValueError(
            f"t must be a non-empty 1-D tensor, got shape {tuple(ts.shape)}{per_sample}"
        )
    if not ts.is_floating_point():
        raise TypeError(f"t must be a floating point tensor, got dtype {ts.dtype}")
    if ts.device != device:
        raise ValueError(f"t is on {ts.device} but y0 is on {device}; put both on one device")
    return check_time_values(ts.tolist(), open_end)


def check_time_values(times: list[float], open_end: bool = False) -> list[float]:
    """``check_times``'s checks of the values (``ts.tolist()``: exact, every float dtype
    converts to Python floats without rounding): finite, strictly monotonic; ``times``."""
    finite = times[:-1] if open_end and len(times) > 1 else times  # (t0 is finite)
    if not all(map(math.isfinite, finite)) or times[-1] != times[-1]:
        raise ValueError(f"t contains NaN or inf: {times}")
    if len(times) > 1:
        later = times[1:]
        if not (all(map(operator.lt, times, later)) or all(map(operator.gt, times, later))):
            diffs = [b - a for a, b in zip(times, later)]
            i = next(i for i, d in enumerate(diffs) if d == 0 or (d > 0) != (diffs[0] > 0))
            raise ValueError(
                "t must be strictly increasing or strictly decreasing; "
                f"t[{i}]={times[i]!r}, t[{i + 1}]={times[i + 1]!r}"
            )
    return times


def check_grid_times(name: str, values: Any) -> tuple[float, ...]:
    """``step_t``/``jump_t`` as a tuple of floats: a sequence of real numbers, a tensor of
    any shape, or one number (a single landing point).

    Raises:
        TypeError: ``values`` holds something that is not a real number.
        ValueError: ``values`` contains NaN.
    """
    if isinstance(values, tuple) and not values:  # the default: none
        return ()
    if isinstance(values, torch.Tensor):
        if values.is_complex() or values.dtype == torch.bool:
            raise TypeError(f"{name} must hold real times, got a {values.dtype} tensor")
        values = values.detach().to(torch.float64).reshape(-1).tolist()
    elif isinstance(values, numbers.Real) and not isinstance(values, bool):
        values = (values,)
    elif not isinstance(values, str):
        try:
            values = list(values)
        except TypeError:  # (not iterable: refused below)
            pass
    if not isinstance(values, (list, tuple)) or not all(map(_real, values)):
        raise TypeError(
            f"{name} must be a sequence of times or a tensor, such as {name}=[0.5], got {values!r}"
        )
    out = tuple(float(v) for v in values)
    if any(v != v for v in out):
        raise ValueError(f"{name} contains NaN")
    return out


def check_time_resolution(times: list[float] | torch.Tensor, dtype: torch.dtype) -> None:
    """f receives t in the state's dtype: refuse times beyond that dtype's range (f would
    see t = inf), and warn where a 16-bit dtype resolves fewer than 64 times across the
    span (bfloat16 near t = 300 holds only 300 and 302: a time-dependent f sees t rounded
    to them). float64 states, and float32 states with per-sample times, are not checked.

    Arguments:
        times: the output times (floats; per sample a (batch, n) tensor).
        dtype: the state's dtype.

    Raises:
        ValueError: a time beyond the dtype's largest value.
    """
    real = dtype.to_real() if dtype.is_complex else dtype
    low = real in LOW_PRECISION
    if real == torch.float64 or (isinstance(times, torch.Tensor) and not low):
        return
    if isinstance(times, torch.Tensor):
        largest = float(times.detach().abs().max())
        span = float((times[:, -1] - times[:, 0]).abs().min())
    else:  # (monotonic: the extremes are the ends; only an event search's end is inf)
        end = times[-1] if math.isfinite(times[-1]) or len(times) == 1 else times[-2]
        largest, span = max(abs(times[0]), abs(end)), abs(end - times[0])
    info = torch.finfo(real)
    if largest > info.max:
        raise ValueError(
            f"the times reach |t| = {largest:.6g}, beyond the largest {real} value "
            f"{info.max:.6g}, and f receives t in the state's dtype ({real}): f would see "
            "t = inf. Shift the times (e.g. ts - ts[0]) or give y0 in a wider dtype"
        )
    if low and span > 0 and largest > 0:
        spacing = 2.0 ** math.floor(math.log2(largest)) * info.eps  # one ulp at |t| max
        if span / spacing < 64:
            warnings.warn(
                f"f receives t in the state's dtype {real}, which resolves times near "
                f"|t| = {largest:.6g} only to {spacing:.3g}: the span of {span:.3g} holds "
                f"{int(span / spacing) + 1} such times, so a time-dependent f sees t rounded "
                "to them. Shift the times to start near 0 (ts - ts[0]) or give y0 in float32",
                stacklevel=user_stacklevel(),
            )


def check_fixed_steps(
    controller: Any, times: list[float], max_steps: int, counted: bool, dtype: torch.dtype
) -> None:
    """Refuse a fixed-step solve that cannot run: a search towards t=inf without a step size,
    or (``counted``: no event, errors raised) a grid of more than ``max_steps`` steps."""
    if not math.isfinite(times[-1]):
        if controller.step_size is None:
            raise ValueError(
                "an event search towards t=inf on fixed steps needs a step_size "
                "(FixedGrid(step_size=...), options step_size): the steps cannot be the "
                "output times"
            )
    elif counted:
        n_steps = controller.n_steps(times, torch.finfo(dtype.to_real()).eps)
        if n_steps > max_steps:
            raise too_many_fixed_steps("the", times[0], times[-1], n_steps, max_steps)


def too_many_fixed_steps(
    whose: str, t0: float, t_end: float, n_steps: float, max_steps: int, step: str = ""
) -> MaxStepsError:
    """The error of a fixed grid with more steps than ``max_steps``, one problem's (``whose``
    "the") or a sample's ("sample i's", with its ``step`` size written out)."""
    return MaxStepsError(
        f"{whose} fixed grid from t={t0:.6g} to t={t_end:.6g} has {int(n_steps):,} steps"
        f"{step}, more than max_steps={max_steps:,}; use a larger step_size or raise "
        "max_steps (options max_num_steps)"
    )


def _real(value: Any) -> bool:
    """Whether ``value`` is a real number (a 0-dim real tensor too), not a bool."""
    if isinstance(value, torch.Tensor):
        return value.numel() == 1 and not (value.is_complex() or value.dtype == torch.bool)
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
