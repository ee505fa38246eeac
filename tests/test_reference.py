"""Every adaptive method on the DETEST set, against exact solutions or SciPy's DOP853 at 1e-13,
forward in time and back again.

Tolerance: the controller keeps each step's local error below ``atol + rtol |y|``; the global
error is the sum of the propagated local errors. For these non-stiff problems over a few
hundred steps that sum stays within a few tens of tolerance units (dopri5 at rtol=1e-8 is
within 6 on all of them); 1000 units (1e-5 relative at rtol=1e-8) leaves room for other
methods and their dense output while still failing a controller that does not control.
Pairs with a known optimistic estimate get ``conftest.accuracy_factor`` times more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ADAPTIVE_METHODS, accuracy_factor, adaptive_tolerances, make_solver
from problems import DETEST, ReferenceProblem

import neuralode as no
from neuralode.solvers import ImplicitRK

ALLOWED_TOLERANCE_UNITS = 1000.0
N_OUTPUTS = 5


def _scaled_error(ys: torch.Tensor, reference: torch.Tensor, rtol: float, atol: float) -> float:
    """Largest error in units of the tolerance at the solution's scale."""
    scale = atol + rtol * float(reference.abs().max())
    return float((ys - reference).abs().max()) / scale


@pytest.mark.parametrize("problem", DETEST, ids=[p.name for p in DETEST])
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_forward_against_reference(name: str, problem: ReferenceProblem) -> None:
    solver = make_solver(name)
    rtol, atol = adaptive_tolerances(solver)
    times = np.linspace(problem.t0, problem.t1, N_OUTPUTS)
    sol = no.solve(
        problem.f,
        problem.y0_tensor(),
        torch.from_numpy(times),
        solver=solver,
        controller=no.PIController(rtol=rtol, atol=atol),
    )
    reference = problem.solution(times[1:])
    assert torch.equal(sol.ys[0], problem.y0_tensor())
    error = _scaled_error(sol.ys[1:], reference, rtol, atol)
    allowed = ALLOWED_TOLERANCE_UNITS * accuracy_factor(name)
    assert error <= allowed, f"{name} on {problem.name}: {error:.3g} tolerances"


def _solve_backward(name: str, problem: ReferenceProblem) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve from the reference state at t1 back to t0; return (ts, ys) and check the shape."""
    solver = make_solver(name)
    rtol, atol = adaptive_tolerances(solver)
    times = np.linspace(problem.t1, problem.t0, N_OUTPUTS)
    start = problem.solution(times[:1])[0]
    ts = torch.from_numpy(times)
    sol = no.solve(
        problem.f, start, ts, solver=solver, controller=no.PIController(rtol=rtol, atol=atol)
    )
    assert sol.ys.shape == (N_OUTPUTS, len(problem.y0))
    return ts, sol.ys


BACKWARD = [p for p in DETEST if p.backward != "none"]
# Implicit methods solve backward through the same Newton iteration and controller on every
# problem (at several times the cost of an explicit method's solve): the default run takes
# each backward on the orbit (mirrored and recovering y0), the other problems run with
# -m slow.
IMPLICIT_BACKWARD_DEFAULT = ("D1",)


def _backward_cases() -> list:
    cases = []
    for name in ADAPTIVE_METHODS:
        implicit = isinstance(make_solver(name), ImplicitRK)
        for problem in BACKWARD:
            slow = implicit and problem.name not in IMPLICIT_BACKWARD_DEFAULT
            marks = [pytest.mark.slow] if slow else []
            cases.append(pytest.param(name, problem, id=f"{name}-{problem.name}", marks=marks))
    return cases


@pytest.mark.parametrize(("name", "problem"), _backward_cases())
def test_backward(name: str, problem: ReferenceProblem) -> None:
    """From the reference state at t1 back to t0.

    Integrating backward is integrating g(s, y) = -f(t1 - s, y) forward in s = t1 - t: the
    controller takes the mirrored steps, up to rounding. Rounding can move the steps of a
    high-order pair whose estimate is near rounding level, so the final states agree to a
    tolerance unit and the outputs inside steps to the interpolant's accuracy. Where the
    backward flow is well conditioned the solve also recovers the reference states and y0
    (``ReferenceProblem.backward``)."""
    rtol, atol = adaptive_tolerances(make_solver(name))
    allowed = ALLOWED_TOLERANCE_UNITS * accuracy_factor(name)
    ts, ys = _solve_backward(name, problem)

    def mirrored(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -problem.f(problem.t1 - s, y)

    sol = no.solve(
        mirrored,
        ys[0],
        problem.t1 - ts,
        solver=make_solver(name),
        controller=no.PIController(rtol=rtol, atol=atol),
    )
    error = _scaled_error(ys[-1], sol.ys[-1], rtol, atol)
    assert error <= 1, f"{name} on {problem.name}: mirrored differs by {error:.3g} tolerances"
    error = _scaled_error(ys, sol.ys, rtol, atol)
    assert error <= allowed, f"{name} on {problem.name}: mirrored differs by {error:.3g} tolerances"

    if problem.backward == "recover":
        inner = problem.solution(ts[1:-1].numpy()[::-1].copy()).flip(0)
        expected = torch.cat([inner, problem.y0_tensor()[None]])
        error = _scaled_error(ys[1:], expected, rtol, atol)
        assert error <= allowed, f"{name} on {problem.name}: {error:.3g} tolerances"
