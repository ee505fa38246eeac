"""Statistics: evaluations counted exactly, steps add up, and the evaluation cost of each
Runge-Kutta method follows from its tableau."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    RecordingField,
    adaptive_tolerances,
    fixed_step,
    make_solver,
)
from problems import D1, E2

import neuralode as no
from neuralode.solvers import ButcherTableau, ExplicitRK

TS = torch.tensor([0.0, 1.0, 2.5, 4.0], dtype=torch.float64)


# The first 1.5 of TS: every adaptive method that rejects steps over all of TS rejects
# some here too (the evaluations of rejected steps are counted as well).
NFE_TS = TS * 0.375


def _controllers(name: str):
    yield "fixed", no.FixedGrid(step_size=fixed_step(name, 0.1))
    if make_solver(name).adaptive:
        rtol, atol = adaptive_tolerances(make_solver(name))
        yield "adaptive", no.PIController(rtol=rtol, atol=atol)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_nfe_is_the_number_of_calls(name: str, backward: bool) -> None:
    ts = NFE_TS.flip(0) if backward else NFE_TS
    for _, controller in _controllers(name):
        for times in (ts, torch.linspace(float(ts[0]), float(ts[-1]), 50, dtype=torch.float64)):
            f = RecordingField(D1.f)
            sol = no.solve(
                f, D1.y0_tensor(), times, solver=make_solver(name), controller=controller
            )
            assert sol.stats.nfe == f.count > 0
            assert sol.stats.n_steps == sol.stats.n_accepted + sol.stats.n_rejected
            assert sol.stats.nfe_backward == 0 and sol.stats.n_steps_backward == 0


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_rejections_are_counted(name: str) -> None:
    """A first step far too large (the whole span) is rejected; the step counts still add
    up."""
    rtol, atol = adaptive_tolerances(make_solver(name))
    controller = no.PIController(rtol=rtol, atol=atol, first_step=1.0)
    ts = TS[:2]
    sol = no.solve(E2.f, E2.y0_tensor(), ts, solver=make_solver(name), controller=controller)
    assert sol.stats.n_rejected >= 1
    assert sol.stats.n_steps == sol.stats.n_accepted + sol.stats.n_rejected


def test_fixed_rk4_uses_four_evaluations_per_step() -> None:
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = no.solve(
        E2.f, E2.y0_tensor(), ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.01)
    )
    assert (sol.stats.n_steps, sol.stats.nfe) == (100, 400)


def test_default_fixed_grid_steps_between_output_times() -> None:
    ts = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    sol = no.solve(E2.f, E2.y0_tensor(), ts, solver=no.Euler())
    assert (sol.stats.n_steps, sol.stats.nfe) == (10, 10)


def _tableau_methods(adaptive: bool | None = None) -> list:
    """Methods driven by a Butcher tableau (optionally only adaptive or fixed ones)."""
    params = []
    for name in ALL_METHODS:
        solver = make_solver(name)
        if not isinstance(solver, ExplicitRK):
            continue
        if adaptive is not None and solver.adaptive != adaptive:
            continue
        params.append(name)
    return params


@pytest.mark.parametrize("name", _tableau_methods())
def test_fixed_step_rk_evaluations(name: str) -> None:
    """On a fixed grid (no f0 needed by the controller, no dense output): s evaluations per
    step, or s - 1 after the first for a FSAL tableau."""
    solver = make_solver(name)
    stages, n = solver.tableau.stages, 40
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    controller = no.FixedGrid(step_size=2.0 / n)
    sol = no.solve(E2.f, E2.y0_tensor(), ts, solver=solver, controller=controller)
    expected = 1 + (stages - 1) * n if solver.tableau.fsal else stages * n
    assert (sol.stats.n_steps, sol.stats.nfe) == (n, expected)


@pytest.mark.parametrize("first_step", [None, 0.5], ids=["auto-first-step", "given-first-step"])
@pytest.mark.parametrize("name", _tableau_methods(adaptive=True))
def test_adaptive_rk_evaluations(name: str, first_step: float | None) -> None:
    """Adaptive: f(t0, y0) for the controller, one more evaluation to choose the first step
    (unless given), then s - 1 per attempted step; a non-FSAL tableau needs f(t1, y1) once
    per accepted step after the first (not again after a rejection)."""
    solver = make_solver(name)
    rtol, atol = adaptive_tolerances(solver)
    controller = no.PIController(rtol=rtol, atol=atol, first_step=first_step)
    ts = TS[[0, -1]]  # no outputs inside steps: dense output may add evaluations
    sol = no.solve(E2.f, E2.y0_tensor(), ts, solver=solver, controller=controller)
    stats = sol.stats
    assert stats.n_rejected > 0, "the test needs rejections to tell the formulas apart"
    start = 1 if first_step is not None else 2
    per_step = (solver.tableau.stages - 1) * stats.n_steps
    reload = 0 if solver.tableau.fsal else stats.n_accepted - 1
    assert stats.nfe == start + per_step + reload


def test_dopri5_evaluation_formula() -> None:
    """Dopri5 is FSAL with 7 stages: 2 + 6 per attempted (accepted or rejected) step."""
    controller = no.PIController(rtol=1e-8, atol=1e-10)
    sol = no.solve(E2.f, E2.y0_tensor(), TS, solver=no.Dopri5(), controller=controller)
    assert sol.stats.n_rejected > 0  # rejected steps cost 6 too; dense output costs nothing
    assert sol.stats.nfe == 2 + 6 * sol.stats.n_steps


class _HeunEuler(ExplicitRK):
    """Heun's method with Euler as the embedded estimate: the smallest non-FSAL pair."""

    tableau = ButcherTableau(
        name="heun_euler",
        c=(0.0, 1.0),
        a=((), (1.0,)),
        b=(0.5, 0.5),
        order=2,
        b_error=(-0.5, 0.5),
        error_order=1,
    )


def test_non_fsal_retry_reuses_the_first_stage() -> None:
    """A retried step starts from the same (t0, y0): f there need not be evaluated again."""
    f = RecordingField(E2.f)
    controller = no.PIController(rtol=1e-4, atol=1e-6, first_step=0.5)
    sol = no.solve(f, E2.y0_tensor(), TS, solver=_HeunEuler(), controller=controller)
    assert sol.stats.n_rejected > 0
    points = [(float(t), tuple(y.tolist())) for t, y in f.calls]
    starts = [p for p in points if points.count(p) > 1]
    assert not starts, f"f evaluated repeatedly at the same (t, y): {starts[:3]}"
