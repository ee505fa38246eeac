"""Dense output: solutions at any requested times, inside steps, without shortening the steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    accuracy_factor,
    adaptive_tolerances,
    effective_linear_order,
    loglog_slope,
    make_solver,
)
from problems import D1, LINEAR
from sweeps import asymptotic_errors_on_fraction, sweep_fraction

import neuralode as no
from neuralode.solvers import Solver

DIRECTIONS = pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])


def interpolant_order(solver: Solver) -> int:
    """Order of the continuous extension: the tableau's own, else cubic Hermite (3)."""
    tableau = getattr(solver, "tableau", None)
    if tableau is not None and tableau.dense is not None:
        return tableau.dense.order
    return getattr(solver, "dense_order", 3)


def extra_evaluations_per_step(solver: Solver) -> int:
    """Evaluations dense output may add to a step: extra stages, or f(t1, y1) for Hermite."""
    tableau = getattr(solver, "tableau", None)
    if tableau is not None and tableau.dense is not None:
        return len(tableau.dense.extra_c)
    return 1


@DIRECTIONS
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_many_outputs_keep_the_steps(name: str, backward: bool) -> None:
    """200 output times over half the orbit: the same steps (and final state) as 2, nearly
    the same NFE, and the interpolated states as accurate as the steps themselves."""
    solver = make_solver(name)
    rtol, atol = adaptive_tolerances(solver)
    half = (D1.t0 + D1.t1) / 2
    t_start, t_end = (half, D1.t0) if backward else (D1.t0, half)
    y_start = torch.from_numpy(D1.exact(np.array([t_start])))[0]

    def run(n_outputs: int) -> no.Solution:
        ts = torch.linspace(t_start, t_end, n_outputs, dtype=torch.float64)
        controller = no.PIController(rtol=rtol, atol=atol)
        return no.solve(D1.f, y_start, ts, solver=make_solver(name), controller=controller)

    few, many = run(2), run(200)
    assert many.stats.n_accepted == few.stats.n_accepted
    assert many.stats.n_rejected == few.stats.n_rejected
    assert torch.equal(many.ys[-1], few.ys[-1])
    # (fewer is possible: Hermite's f(t1, y1) is reused by the next step, also after a retry)
    extra = many.stats.nfe - few.stats.nfe
    assert extra <= extra_evaluations_per_step(solver) * few.stats.n_accepted
    assert many.stats.nfe <= 1.5 * few.stats.nfe

    exact = torch.from_numpy(D1.exact(many.ts.numpy()))
    scale = atol + rtol * float(exact.abs().max())
    error = float((many.ys - exact).abs().max()) / scale
    assert error <= 1000 * accuracy_factor(name), (
        f"{name}: dense output error {error:.3g} tolerances"
    )


@DIRECTIONS
@pytest.mark.parametrize("name", ALL_METHODS)
def test_interpolant_order(name: str, backward: bool) -> None:
    """Fixed steps of size h with 101 outputs (mostly inside steps) on y' = A y: the largest
    error converges like h ** min(order, interpolant order + 1), the global error of the
    steps plus the local error of the interpolant. Where the steps' error dominates, the
    upper bound is the order observed on linear problems (see test_convergence). One-step
    methods sweep a fraction of [0, 1] (``sweeps``)."""
    solver = make_solver(name)
    expected = min(solver.order, interpolant_order(solver) + 1)
    high = expected if expected < solver.order else effective_linear_order(solver)
    k = sweep_fraction(expected, solver.multistep)
    times = np.linspace(1.0 / k, 0.0, 101) if backward else np.linspace(0.0, 1.0 / k, 101)
    exact = LINEAR.solution(times)
    ts = torch.from_numpy(times.copy())

    def error_with_steps(n: int) -> float:
        controller = no.FixedGrid(step_size=1.0 / (k * n))
        sol = no.solve(LINEAR.f, exact[0], ts, solver=make_solver(name), controller=controller)
        assert sol.stats.n_steps == n
        return float((sol.ys - exact).abs().max())

    counts, errors = asymptotic_errors_on_fraction(error_with_steps, k)
    slope = loglog_slope([1 / n for n in counts], errors)
    assert expected - 0.3 <= slope <= high + 0.3, f"{name}: expected {expected}, got {slope:.2f}"


@pytest.mark.parametrize("name", ALL_METHODS)
def test_fixed_step_outputs_do_not_add_steps(name: str) -> None:
    """With ``step_size``, outputs between grid points are interpolated, not stepped to."""
    y0 = LINEAR.y0_tensor()

    def run(n_outputs: int) -> no.Solution:
        ts = torch.linspace(0.0, 1.0, n_outputs, dtype=torch.float64)
        controller = no.FixedGrid(step_size=0.1)
        return no.solve(LINEAR.f, y0, ts, solver=make_solver(name), controller=controller)

    few, many = run(2), run(200)
    assert few.stats.n_steps == many.stats.n_steps == 10
    assert torch.equal(many.ys[-1], few.ys[-1])
    extra = many.stats.nfe - few.stats.nfe
    assert extra <= extra_evaluations_per_step(make_solver(name)) * 10


def test_rk4_hermite_reuses_the_end_derivative() -> None:
    """Cubic Hermite needs f(t1, y1), which is the next step's first stage: outputs inside
    every step cost at most the last step's f(t1, y1)."""
    y0 = LINEAR.y0_tensor()
    counts = []
    for n_outputs in (2, 200):
        ts = torch.linspace(0.0, 1.0, n_outputs, dtype=torch.float64)
        sol = no.solve(LINEAR.f, y0, ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.1))
        counts.append(sol.stats.nfe)
    assert counts[0] == 4 * 10
    assert counts[1] - counts[0] in (0, 1)


def test_output_at_a_step_end_is_the_step_state() -> None:
    """An output time on the grid returns the step's state itself, not an interpolation."""
    y0 = LINEAR.y0_tensor()
    on_grid = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with_inner = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    controller = no.FixedGrid(step_size=0.125)
    a = no.solve(LINEAR.f, y0, on_grid, solver=no.RK4(), controller=controller)
    b = no.solve(LINEAR.f, y0, with_inner, solver=no.RK4(), controller=controller)
    assert torch.equal(a.ys[1], b.ys[2])
    assert torch.equal(a.ys[2], b.ys[4])
