"""Locating a zero crossing inside a step (``_crossing.refine``): the Illinois method against
known roots, with far fewer evaluations than bisection."""

from __future__ import annotations

import math

import torch

from neuralode._crossing import crossed, refine


def _locate(g, rows: int, direction: int = 0, tol: float | None = None, t0=None, dt=None):
    calls = []

    def g_at(theta):
        calls.append(1)
        return g(theta)

    t0 = torch.zeros(rows, dtype=torch.float64) if t0 is None else t0
    dt = torch.ones(rows, dtype=torch.float64) if dt is None else dt
    zeros, ones = torch.zeros(rows, dtype=torch.float64), torch.ones(rows, dtype=torch.float64)
    todo = torch.ones(rows, dtype=torch.bool)
    hi, g_lo, g_hi = refine(g_at, g(zeros), g(ones), t0, dt, todo, direction, tol)
    return hi, g_lo, g_hi, len(calls)


def test_smooth_roots_to_float64_resolution_in_few_evaluations():
    roots = torch.tensor([0.05, 0.3, 0.5, 0.77, 0.999], dtype=torch.float64)

    def g(theta):  # a cubic through each row's root, increasing
        x = theta - roots
        return (x + 2 * x**3 + math.e * x**2 * 0.1)[:, None]

    hi, g_lo, g_hi, calls = _locate(g, len(roots))
    assert torch.all((hi - roots).abs() <= 4 * 2.0**-52)
    assert bool(crossed(g_lo, g_hi, 0).all())
    assert calls <= 24  # bisection needs ~54


def test_the_earliest_crossing_element_and_the_direction():
    def g(theta):  # element 0 falls through 0 at 0.7, element 1 rises at 0.4
        return torch.stack([0.7 - theta, theta - 0.4], 1)

    hi, g_lo, g_hi, _ = _locate(g, 1)
    assert abs(float(hi) - 0.4) <= 2**-50
    assert crossed(g_lo, g_hi, 0).tolist() == [[False, True]]
    hi, g_lo, g_hi, _ = _locate(g, 1, direction=-1)  # only falling crossings count
    assert abs(float(hi) - 0.7) <= 2**-50
    assert crossed(g_lo, g_hi, -1).tolist() == [[True, False]]


def test_tolerance_crossing_at_the_end_and_rows_without_a_crossing():
    roots = torch.tensor([1.0, 0.25, 0.6], dtype=torch.float64)
    t0 = torch.tensor([10.0, 0.0, -3.0], dtype=torch.float64)
    dt = torch.tensor([2.0, 1.0, 4.0], dtype=torch.float64)

    def g(theta):
        return (theta - roots)[:, None]

    hi, *_ = _locate(g, 3, direction=1, tol=1e-6, t0=t0, dt=dt)
    assert float(hi[0]) == 1.0  # g(t1) = 0: a rising crossing exactly at the end
    assert abs(float(hi[1]) - 0.25) * 1.0 <= 1e-6 and float(hi[1]) >= 0.25
    assert abs(float(hi[2]) - 0.6) * 4.0 <= 1e-6 and float(hi[2]) >= 0.6


def test_a_kink_still_converges_by_the_bisection_fallback():
    root = 1 / 3

    def g(theta):  # flat far right of the root, steep left: regula falsi alone stalls
        x = theta - root
        return torch.where(x < 0, 1e6 * x, 1e-9 * x)[:, None]

    hi, *_, calls = _locate(g, 1)
    assert abs(float(hi) - root) <= 2**-51
    assert calls < 200


def test_an_interval_of_zeros_is_crossed_where_it_starts() -> None:
    """g = relu(root - theta) (falling) and floor-like steps reach 0 and stay there: the
    crossing is where the zeros start, not the first exact zero an evaluation meets (for
    relu: the step's end)."""
    roots = torch.tensor([0.3, 0.7, 1 / 3], dtype=torch.float64)

    def g(theta):
        relu = torch.relu(roots[:2] - theta[:2])
        steps = torch.floor(4 * (roots[2] - theta[2:]).clamp(min=-0.2)).clamp(min=0)
        return torch.cat([relu, steps + (theta[2:] < roots[2])])[:, None]

    hi, g_lo, g_hi, calls = _locate(g, 3, direction=-1)
    assert torch.all((hi - roots).abs() <= 4 * 2.0**-52), hi - roots
    assert bool(crossed(g_lo, g_hi, -1).all())
    assert calls <= 60


def test_an_exact_zero_costs_one_evaluation_more() -> None:
    """A simple root met exactly (at the step's end here) is confirmed by one evaluation
    just before it."""

    def g(theta):
        return (theta - 1.0)[:, None]

    hi, g_lo, g_hi, calls = _locate(g, 1, direction=1)
    assert float(hi) == 1.0 and calls <= 3
