"""Empirical orders on a fraction of a span: the step-count sweep of
``conftest.asymptotic_errors`` at the same step sizes for a fraction of the cost.

Sweeping span / k with at most 256 / k steps takes the same step sizes as the whole span's
sweep; in the asymptotic regime the global error, C t h^p, and the round-off floor,
``ROUNDOFF_PER_STEP * n``, are both k times smaller, so the counts / k that the sweep fits
correspond to the counts it fits on the whole span (the local error of an interpolant is
not smaller, which only makes it dominate sooner where it sets the order).
"""

from __future__ import annotations

from collections.abc import Callable

from conftest import STEP_COUNTS, asymptotic_errors


def sweep_fraction(order: int, multistep: bool = False) -> int:
    """The k for a measured order: 8 to order 4; an order-5 error reaches round-off within a
    few steps of an eighth, so 4; higher orders stop after a few steps of the whole span
    anyway (1). A multistep method's starting steps (of a higher order than its own) would
    reach round-off on a short span: 1."""
    if multistep or order > 5:
        return 1
    return 8 if order <= 4 else 4


def asymptotic_errors_on_fraction(
    error_with_steps: Callable[[int], float], k: int
) -> tuple[list[int], list[float]]:
    """``asymptotic_errors`` of ``error_with_steps`` (the error on span / k with n steps),
    at most ``256 / k`` steps."""
    return asymptotic_errors(error_with_steps, most_steps=STEP_COUNTS[-1] // k)
