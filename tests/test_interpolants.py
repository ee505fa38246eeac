"""Faithful interpolants: each method's error between steps against its error at the steps.

A method's dense output is faithful when an output time inside a step is about as accurate
as the steps' own states. "Error at the steps": the largest error of the accepted steps'
states (each step's start state, given to ``on_accept``, is the previous step's end, and
the last end is the final output); "between": the largest error on 1,001 equally spaced
outputs of the same solve (outputs never change the steps: test_dense_output).
docs/guide.md tabulates each method's interpolant and these factors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import ALL_METHODS, adaptive_tolerances, make_solver
from problems import A1, C1, D1, E1, ReferenceProblem

import neuralode as no

# Where the interpolant's order is below the method's, its local error O(h^(p+1)) exceeds
# the steps' global error O(h^q) once the steps are small: the factor grows as the steps
# shrink. Collocation methods interpolate with their collocation polynomial of degree s (the
# stage order) while the steps reach order 2s (Gauss) or 2s - 1 (Radau IIA). Values: at the
# steps these tests take (fixed steps of 0.1, adaptive methods at adaptive_tolerances),
# the largest factor measured on E1 and C1 with a margin of about 2. The continuous
# extensions of order 4 on kvaerno5's and kencarp5's order-5 steps measure 1.04 / 1.4 and
# 4.0 / 3.3 (cubic Hermite there: 13 / 37 and 144 / 130).
FACTOR = {
    "gl4": 150.0,
    "gl6": 1.2e4,
    "radau": 200.0,
    "radauIIA5": 250.0,
}
DEFAULT_FACTOR = 10.0


class _StepStates:
    """``on_accept`` callback: the state at the start of every accepted step."""

    def __init__(self) -> None:
        self.ts: list[float] = []
        self.ys: list[torch.Tensor] = []

    def on_accept(self, t: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
        self.ts.append(float(t))
        self.ys.append(y.detach().clone())


def errors_at_and_between_steps(
    name: str, problem: ReferenceProblem, controller: no.StepSizeController
) -> tuple[float, float]:
    """(largest error at the steps' ends, largest error on 1,001 outputs) of one solve."""
    recorder = _StepStates()
    grid = torch.linspace(problem.t0, problem.t1, 1001, dtype=torch.float64)
    sol = no.solve(problem.f, problem.y0_tensor(), grid, solver=make_solver(name),
                   controller=controller, callbacks=recorder)  # fmt: skip
    assert len(recorder.ts) == sol.stats.n_accepted
    assert recorder.ts[0] == problem.t0
    # each step's end is the next step's start; the last one is the final output
    ends = np.array([*recorder.ts[1:], problem.t1])
    at_steps = torch.stack([*recorder.ys[1:], sol.ys[-1]])
    error_at = float((at_steps - problem.solution(ends)).abs().max())
    error_between = float((sol.ys - problem.solution(grid.numpy())).abs().max())
    return error_at, error_between


def _controller(name: str) -> no.StepSizeController:
    solver = make_solver(name)
    if not solver.adaptive:
        return no.FixedGrid(step_size=0.1)
    rtol, atol = adaptive_tolerances(solver)
    return no.PIController(rtol=rtol, atol=atol)


@pytest.mark.parametrize("problem", [E1, C1], ids=lambda p: p.name)
@pytest.mark.parametrize("name", ALL_METHODS)
def test_error_between_steps_is_within_a_factor_of_the_error_at_steps(
    name: str, problem: ReferenceProblem
) -> None:
    error_at, error_between = errors_at_and_between_steps(name, problem, _controller(name))
    factor = FACTOR.get(name, DEFAULT_FACTOR)
    assert error_between <= factor * error_at, (
        f"{name} on {problem.name}: {error_between:.2e} between steps, {error_at:.2e} at them"
    )


@pytest.mark.parametrize("rtol", [1e-8, 1e-12])
@pytest.mark.parametrize("problem", [D1, E1], ids=lambda p: p.name)
def test_dopri8_error_between_steps_within_10x_of_the_steps(
    problem: ReferenceProblem, rtol: float
) -> None:
    """dopri8's 7th-order continuous extension: with the quartic Hermite interpolant it had
    before, the error between steps was 400-280,000 times the error at the steps here."""
    controller = no.PIController(rtol=rtol, atol=rtol / 100)
    error_at, error_between = errors_at_and_between_steps("dopri8", problem, controller)
    assert error_between <= 10 * error_at, f"{error_between:.2e} vs {error_at:.2e}"


@pytest.mark.parametrize("rtol", [1e-8, 1e-12])
@pytest.mark.parametrize("problem", [A1, E1], ids=lambda p: p.name)
def test_dopri8_between_steps_is_as_accurate_as_scipy_dop853_dense_output(
    problem: ReferenceProblem, rtol: float
) -> None:
    """At the same tolerances, dopri8's outputs between steps are no less accurate than SciPy's
    DOP853 dense output (Hairer's 7th-order extension). On decaying solutions (A1, C1) both
    methods' steps end far more accurately than the tolerance while their interpolants stay
    near it, so there the factor between and at the steps exceeds 10 for both (ours 6-180,
    DOP853's 20-50)."""
    scipy_integrate = pytest.importorskip("scipy.integrate")

    def f(t: float, y: np.ndarray) -> np.ndarray:
        return problem.f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    reference = scipy_integrate.solve_ivp(
        f, (problem.t0, problem.t1), np.array(problem.y0), method="DOP853", rtol=rtol,
        atol=rtol / 100, dense_output=True,
    )  # fmt: skip
    grid = np.linspace(problem.t0, problem.t1, 1001)
    theirs = float(np.abs(reference.sol(grid).T - problem.solution(grid).numpy()).max())
    controller = no.PIController(rtol=rtol, atol=rtol / 100)
    _, ours = errors_at_and_between_steps("dopri8", problem, controller)
    assert ours <= theirs, f"dopri8 {ours:.2e}, DOP853 {theirs:.2e}"
