"""Orders of convergence of every method in ``METHODS``: empirically on fixed grids, and
algebraically from the tableau where there is one.

The global error at the end of the span is measured for step counts growing by sqrt(2)
(``conftest.asymptotic_errors``; one-step methods on a fraction of the span with as many
times fewer steps, ``sweeps``) and the order is the least-squares log-log slope.

On y' = A y one Runge-Kutta step is the polynomial R(hA), so the error is
sum_k (R_k - 1/k!) (hA)^k. Its first term sets the observed order, unless its coefficient is
small: DOP853's z^9 coefficient is 0.1% of 1/9! and Tsit5's z^6 one 3% of 1/6!, so in every
range float64 can measure their errors decay faster than their order. The linear test
therefore pins the declared order from below and takes the upper bound from the first
coefficient off by more than 10% (``conftest.effective_linear_order``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    effective_linear_order,
    loglog_slope,
    make_solver,
    stability_coefficients,
)
from problems import D1, E1, LINEAR, ReferenceProblem
from sweeps import asymptotic_errors_on_fraction, sweep_fraction

import neuralode as no
from neuralode._term import ODETerm
from neuralode._tree import tree_spec

TABLEAU_METHODS = [name for name in ALL_METHODS if hasattr(make_solver(name), "tableau")]


def _fixed_step_error(name: str, problem: ReferenceProblem, t1: float, n: int) -> float:
    ts = torch.tensor([problem.t0, t1], dtype=torch.float64)
    controller = no.FixedGrid(step_size=(t1 - problem.t0) / n)
    sol = no.solve(
        problem.f, problem.y0_tensor(), ts, solver=make_solver(name), controller=controller
    )
    assert sol.stats.n_steps == n
    return float((sol.ys[-1] - problem.solution(np.array([t1]))[0]).abs().max())


def _measured_order(name: str, problem: ReferenceProblem, t1: float) -> tuple[float, list]:
    solver = make_solver(name)
    k = sweep_fraction(solver.order, solver.multistep)
    t1 = problem.t0 + (t1 - problem.t0) / k
    counts, errors = asymptotic_errors_on_fraction(
        lambda n: _fixed_step_error(name, problem, t1, n), k
    )
    return loglog_slope([1 / n for n in counts], errors), errors


@pytest.mark.parametrize("name", ALL_METHODS)
def test_order_on_linear_system(name: str) -> None:
    """y' = A y with a rotating, non-normal A against the matrix exponential."""
    solver = make_solver(name)
    slope, errors = _measured_order(name, LINEAR, 1.0)
    low, high = solver.order - 0.3, effective_linear_order(solver) + 0.3
    assert low <= slope <= high, f"{name}: order {solver.order}, measured {slope:.2f}: {errors}"


@pytest.mark.parametrize("problem", [D1, E1], ids=["kepler", "bessel"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_order_on_nonlinear_problems(name: str, problem: ReferenceProblem) -> None:
    """A nonlinear orbit and a non-autonomous equation exercise the order conditions that a
    linear problem cannot see (a violated one drops the order by at least one). High-order
    methods with small leading error terms converge faster than their order in any range
    float64 can measure, or approach it slowly from below (DOP853 on the Bessel equation:
    7.5 to 7.9 depending on the span, at errors down to 1e-11), so this asserts the order
    less half a unit."""
    t1 = {"D1": 1.0, "E1": 3.0}[problem.name]
    order = make_solver(name).order
    slope, errors = _measured_order(name, problem, t1)
    assert slope >= order - 0.5, f"{name}: order {order}, measured {slope:.2f}: {errors}"


@pytest.mark.parametrize("name", TABLEAU_METHODS)
def test_stability_polynomial_matches_the_exponential(name: str) -> None:
    """R(z) = 1 + sum_k (b^T A^(k-1) 1) z^k agrees with exp(z) through z^order, and the
    embedded weights through z^error_order: the declared orders, exactly, on linear problems."""
    solver = make_solver(name)
    tableau = solver.tableau
    coefficients = stability_coefficients(tableau.b, tableau)
    assert coefficients[: solver.order] == pytest.approx([1.0] * solver.order, abs=1e-12)
    if tableau.b_error is not None:
        embedded = [b - e for b, e in zip(tableau.b, tableau.b_error)]
        q = solver.error_order
        assert stability_coefficients(embedded, tableau)[:q] == pytest.approx([1.0] * q, abs=1e-12)


@pytest.mark.parametrize("problem", [LINEAR, D1], ids=["linear", "kepler"])
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_embedded_error_estimate_order(name: str, problem: ReferenceProblem) -> None:
    """The local error estimate of one step from y0 scales like dt ** (error_order + 1): on
    the linear problem to within 0.3, on the orbit (where a high-order pair is not yet
    asymptotic at measurable sizes) at least that less half a unit."""
    solver = make_solver(name)
    y0 = problem.y0_tensor()
    spec, _ = tree_spec(y0)
    term = ODETerm(problem.f, spec, y0)
    sizes, norms = [], []
    for k in range(24):
        dt = 0.5 * 2 ** (-k / 2)
        state = solver.init(term, problem.t0, y0, None)
        step = solver.step(term, problem.t0, problem.t0 + dt, y0, state, False)
        norm = float(torch.linalg.vector_norm(step.error))
        if norm < 1e-13:  # rounding in the estimate is ~1e-16 * dt * |f|
            break
        if norm < 1e-5:
            sizes.append(dt)
            norms.append(norm)
    assert len(sizes) >= 4, f"{name}: too few step sizes with a measurable estimate: {norms}"
    expected = solver.error_order + 1
    slope = loglog_slope(sizes[-5:], norms[-5:])
    if problem is LINEAR:
        assert abs(slope - expected) <= 0.3, f"{name}: expected {expected}, measured {slope:.2f}"
    else:
        assert slope >= expected - 0.5, f"{name}: expected {expected}, measured {slope:.2f}"
