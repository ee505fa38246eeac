"""Checks of numeric arguments of constructors (models, solvers): predicates, and checks
whose failure is a ``ValueError`` naming the argument, what it must be and what it got; and
of flags, whose failure is a ``TypeError``."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np

DEFAULT_MAX_STEPS = 100_000
# max_steps=None: a bound no solve reaches, kept an int so that every loop compares the same way
NO_STEP_LIMIT = 2**62


def is_int(value: Any) -> bool:
    """An integer argument's value: an integer (NumPy's too), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A real-number argument's value: a real number (NumPy's too), not a bool (NaN fails
    the range checks that follow)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def count(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` as an int, or a ``ValueError`` unless it is an integer (not a bool, not a
    float) of at least ``minimum``."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return number


def step_limit(max_steps: Any) -> int:
    """A solve's ``max_steps`` as an int (``None``: no limit), or a ``ValueError`` unless it is
    a positive integer (NumPy's too; not a bool or a float)."""
    if max_steps is None:
        return NO_STEP_LIMIT
    try:
        return count("max_steps", max_steps)
    except ValueError:
        message = f"max_steps must be a positive integer or None, got {max_steps!r}"
        raise ValueError(message) from None


def real(name: str, value: Any, rule: str, valid: Any) -> float:
    """``value`` as a float, or a ``ValueError`` ("{name} must be {rule}, got ...") unless it
    is a real number (not a string or a bool) for which ``valid(float)`` holds."""
    try:
        number = None if isinstance(value, (str, bool)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or math.isnan(number) or not valid(number):
        raise ValueError(f"{name} must be {rule}, got {value!r}")
    return number


def positive_finite(name: str, value: Any) -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` unless it is a positive,
    finite number."""
    return real(name, value, "positive and finite", lambda x: 0 < x < math.inf)


def probability(name: str, value: Any) -> float:
    """A dropout probability as a float, or a ``ValueError`` naming ``name`` unless it is a
    number in [0, 1)."""
    return real(name, value, "a dropout probability in [0, 1)", lambda x: 0 <= x < 1)


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool, or a ``TypeError`` naming ``name`` unless it is a bool (NumPy's
    too): a truthy string such as ``"no"`` would otherwise switch the option on."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def function(name: str, value: Any, what: str = "an nn.Module or a callable") -> Any:
    """``value`` itself, or a ``TypeError`` ("{name} must be {what}, got ...") unless it is
    callable (a module, a function): ``None`` or a tensor would otherwise fail only when the
    model is first called."""
    if not callable(value):
        got = repr(value) if value is None or isinstance(value, (str, numbers.Number)) else None
        raise TypeError(f"{name} must be {what}, got {got or 'a ' + type(value).__name__}")
    return value
