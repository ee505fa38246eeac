"""The checks of a step-size controller's settings, and of a state about to overflow."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .._errors import NonFiniteError


def check_settings(
    rtol: Any,
    atol: Any,
    first_step: float | None,
    safety: float,
    ifactor: float,
    dfactor: float,
    icoeff: float,
    pcoeff: float,
    dcoeff: float,
    min_step: float,
    max_step: float,
) -> None:
    """Refuse a ``PIController`` setting out of its range, naming it and its range.

    Arguments:
        rtol, atol, first_step, safety, ifactor, dfactor, icoeff, pcoeff, dcoeff, min_step,
            max_step: the settings, as ``PIController`` documents them.

    Raises:
        TypeError: a tolerance that is not a real number or a floating point tensor.
        ValueError: negative or NaN tolerances, both tolerances zero, or another setting out
            of its range.
    """
    check_tolerance("rtol", rtol)
    check_tolerance("atol", atol)
    if all_zero(rtol) and all_zero(atol):
        raise ValueError(
            "rtol=0 and atol=0 ask for an error of exactly zero, which no step can meet; "
            "give a positive rtol or atol (e.g. rtol=1e-6, atol=1e-9)"
        )
    if first_step is not None and not first_step > 0:
        raise ValueError(f"first_step must be positive, got {first_step!r}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], got {safety!r}")
    if not ifactor >= 1:
        raise ValueError(f"ifactor must be >= 1, got {ifactor!r}")
    if not 0 < dfactor <= 1:
        raise ValueError(f"dfactor must be in (0, 1], got {dfactor!r}")
    # icoeff > 0: the factor falls as the error ratio grows (icoeff <= 0 grows rejected
    # steps, or keeps their size, until the step size underflows); pcoeff >= 0 weighs in
    # the last accepted step's ratio
    if not (isinstance(icoeff, numbers.Real) and 0 < icoeff < math.inf):
        raise ValueError(f"icoeff must be a finite number > 0, got {icoeff!r}")
    if not (isinstance(pcoeff, numbers.Real) and 0 <= pcoeff < math.inf):
        raise ValueError(f"pcoeff must be a finite number >= 0, got {pcoeff!r}")
    if not (isinstance(dcoeff, numbers.Real) and 0 <= dcoeff < math.inf):
        raise ValueError(f"dcoeff must be a finite number >= 0, got {dcoeff!r}")
    if not 0 <= min_step <= max_step:
        raise ValueError(f"need 0 <= min_step <= max_step, got {min_step!r}, {max_step!r}")


def check_overflow(t0: float, y0: torch.Tensor) -> None:
    """Raise ``NonFiniteError`` when a step from ``y0`` failed with non-finite values while
    ``y0`` is within a factor 1024 of its dtype's largest value: the solution overflows, and
    shrinking the step would only creep towards the limit (one tiny step at a time).

    Arguments:
        t0: the time of ``y0``.
        y0: the state the failed step started from.

    Raises:
        NonFiniteError: ``y0`` is that close to overflowing.
    """
    largest = torch.finfo(y0.real.dtype).max
    size = float(y0.detach().abs().max()) if y0.numel() else 0.0
    if math.isfinite(size) and size > largest / 1024:
        wider = "use float64 for a wider range, " if largest < 1e300 else ""
        raise NonFiniteError(
            f"the solution overflows {y0.real.dtype}: |y| reached {size:.3g} at t={t0:.6g}, "
            f"near the largest {y0.real.dtype} value {largest:.3g}, and a step from there "
            "gives inf: the solution grows past the dtype's range, or a step's arithmetic "
            "on values this large does (its stages add up multiples of f); "
            f"{wider}rescale the state or take a shorter time span"
        )


def check_tolerance(name: str, value: Any) -> None:
    """Refuse a tolerance that is not a non-negative number or a tensor of them.

    Arguments:
        name: the argument's name, for the message (``rtol``, ``atol``).
        value: a real number or a real tensor (one tolerance per element).

    Raises:
        TypeError: ``value`` is neither a real number nor a real floating point tensor.
        ValueError: ``value`` is NaN or negative (or holds such an entry).
    """
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(
                f"{name} must be a number or a floating point tensor, got a {value.dtype} tensor"
            )
        if bool((value.isnan() | (value < 0)).any()):
            raise ValueError(f"{name} must be a non-negative number in every entry, got {value}")
        return
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(
            f"{name} must be a number or a tensor of per-element tolerances, got "
            f"{type(value).__name__} {value!r}"
        )
    if not value >= 0:  # (NaN too)
        raise ValueError(f"{name} must be a non-negative number, got {value!r}")


def all_zero(tol: float | torch.Tensor) -> bool:
    return bool((tol == 0).all()) if isinstance(tol, torch.Tensor) else tol == 0
