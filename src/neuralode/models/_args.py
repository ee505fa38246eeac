"""Checks of the models' numeric arguments, each failure a ``ValueError`` naming the
argument, what it must be and what it got."""

from __future__ import annotations

import math
import operator
from typing import Any


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
