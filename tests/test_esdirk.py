"""The adaptive ESDIRK method (Kværnø's 3(2)) and the fixed-step SDIRK methods: the
embedded error estimate, the Hermite dense output's start derivative (the previous step's
last stage) and its derivative through checkpointed recomputation.

Orders, L-stability and the embedded orders are tested in test_tableaux; convergence,
states, statistics and jumps with every method of the central list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from problems import ROBERTSON
from scipy.integrate import solve_ivp

import neuralode as no
from neuralode._term import ODETerm
from neuralode._tree import tree_spec
from neuralode.solvers import SDIRK2, TRBDF2, ImplicitRK, ImplicitTableau, Kvaerno3


def _units(ys: torch.Tensor, ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """The largest error of each component, in tolerance units."""
    ys = ys.numpy()
    return (np.abs(ys - ref) / (atol + rtol * np.abs(ref))).max(0)


def _robertson_on(ts: torch.Tensor) -> np.ndarray:
    def field(t: float, y: np.ndarray) -> np.ndarray:
        return ROBERTSON.f(t, torch.from_numpy(y)).numpy()

    reference = solve_ivp(
        field, (0, float(ts[-1])), ROBERTSON.y0, "Radau", ts.numpy(), rtol=1e-12, atol=1e-16
    )
    return reference.y.T


@pytest.mark.parametrize("solver_class", [Kvaerno3, SDIRK2, TRBDF2])
def test_the_error_estimate_is_the_difference_of_the_two_solutions(solver_class) -> None:
    """On y' = lambda y a step multiplies y0 by R(z) = 1 + z b^T (I - z A)^-1 1, the embedded
    solution by R_hat(z) with b - b_error: the estimate is their difference (z = -30 and
    -0.3), and fixed-step methods have none."""
    tab = solver_class.tableau
    a, b = np.array(tab.a), np.array(tab.b)
    for lam in (-300.0, -3.0):
        y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
        term = ODETerm(lambda t, y, lam=lam: lam * y, tree_spec(y0)[0], y0)
        solver = solver_class()
        solver.set_tolerances(1e-6, 1e-9)  # error control: Newton to its tolerance
        step = solver.step(term, 0.0, 0.1, y0, solver.init(term, 0.0, y0, None), False)
        z = 0.1 * lam
        ones = np.ones(len(b))
        stages = np.linalg.solve(np.eye(len(b)) - z * a, ones)
        assert torch.allclose(step.y1, y0 * (1 + z * b @ stages), rtol=1e-7, atol=0)
        if tab.b_error is None:
            assert step.error is None
            continue
        difference = z * np.array(tab.b_error) @ stages
        assert torch.allclose(step.error, y0 * difference, rtol=1e-6, atol=1e-12)


def test_dense_output_on_stiff_components_starts_from_the_previous_stage() -> None:
    """Robertson at 200 output times between the steps: within a few tolerance units on
    every component. Hermite's start derivative is the previous step's last stage (its
    derivative as the stage equation gives it); f(t0, y0) there would multiply the Newton
    iteration's remaining error by h |J| (500 units on y2 for Kvaerno3)."""
    ts = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-5, 5, 200)])
    rtol, atol = 1e-4, 1e-8
    controller = no.PIController(rtol=rtol, atol=atol)
    sol = no.solve(ROBERTSON.f, ROBERTSON.y0_tensor(), ts, solver=Kvaerno3(), controller=controller)
    assert sol.stats.n_accepted < 150  # (interpolated: far fewer steps than outputs)
    units = _units(sol.ys, _robertson_on(ts), rtol, atol)
    assert units.max() < 3, f"tolerance units per component: {units}"


def _decay(params: torch.Tensor):
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        first = -params[0] * y[..., 0] + 0.5 * y[..., 1]
        second = -500 * params[1] * (y[..., 1] - torch.sin(t) * y[..., 0])
        return torch.stack([first, second], -1)

    return f


@pytest.mark.parametrize(
    "setup",
    [
        lambda: (Kvaerno3(), no.PIController(rtol=1e-5, atol=1e-8)),
        lambda: (TRBDF2(), no.FixedGrid(step_size=0.1)),
    ],
    ids=["kvaerno3", "trbdf2"],
)
def test_checkpointed_gradients_carry_the_start_derivative(setup) -> None:
    """Interpolated outputs read the previous step's last stage: Checkpointed's
    recomputation carries its derivative back to that step, and its gradient equals
    Direct's (without the carry, the steps' parameter gradients differ by about 1e-3)."""
    ts = torch.linspace(0, 1, 23, dtype=torch.float64)  # mostly between the steps

    def gradients(strategy) -> tuple[torch.Tensor, torch.Tensor]:
        y0 = torch.tensor([[1.0, 0.2], [0.5, -1.0]], dtype=torch.float64, requires_grad=True)
        params = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
        solver, controller = setup()
        gradient = no.Direct() if strategy == "direct" else no.Checkpointed(params=(params,))
        ys = no.solve(
            _decay(params), y0, ts, solver=solver, controller=controller, gradient=gradient
        ).ys
        weights = torch.linspace(-1, 1, ys.numel(), dtype=torch.float64).reshape(ys.shape)
        return torch.autograd.grad((ys * weights).sum(), (y0, params))

    direct, checkpointed = gradients("direct"), gradients("checkpointed")
    for d, c in zip(direct, checkpointed):
        torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("strategy", ["direct", "checkpointed"])
def test_gradcheck_through_interpolated_outputs(strategy: str) -> None:
    """Kvaerno3's gradient through interpolated outputs against finite differences, on
    fixed steps (finite differences of an adaptive solve also see its step sizes move)."""
    ts = torch.tensor([0.0, 0.13, 0.35, 1.0], dtype=torch.float64)

    def run(y0: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return no.solve(
            _decay(params),
            y0,
            ts,
            solver=Kvaerno3(),
            controller=no.FixedGrid(step_size=0.1),
            gradient=no.Direct() if strategy == "direct" else no.Checkpointed(params=(params,)),
        ).ys

    y0 = torch.tensor([1.0, 0.2], dtype=torch.float64, requires_grad=True)
    params = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (y0, params), eps=1e-6, atol=1e-6, rtol=1e-5)


_CROUZEIX_GAMMA = 0.5 + 3**0.5 / 6


class _Crouzeix(ImplicitRK):
    """Crouzeix's two-stage SDIRK of order 3: neither collocation nor stiffly accurate."""

    tableau = ImplicitTableau(
        name="crouzeix3",
        c=(_CROUZEIX_GAMMA, 1 - _CROUZEIX_GAMMA),
        a=((_CROUZEIX_GAMMA, 0.0), (1 - 2 * _CROUZEIX_GAMMA, _CROUZEIX_GAMMA)),
        b=(0.5, 0.5),
        order=3,
    )


def test_a_method_without_a_last_stage_derivative_carries_nothing() -> None:
    """A method that is not stiffly accurate has no last-stage derivative to carry: its
    Hermite output starts from f(t0, y0) whether or not the previous step interpolated
    (which evaluates f(t1, y1) there), and Checkpointed's gradient equals Direct's."""
    ts = torch.tensor([0.0, 0.05, 0.3, 0.33, 1.0], dtype=torch.float64)

    def gradient(strategy) -> torch.Tensor:
        y0 = torch.tensor([1.0, 0.2], dtype=torch.float64, requires_grad=True)
        params = torch.tensor([0.7, 1.3], dtype=torch.float64)
        ys = no.solve(
            _decay(params), y0, ts, solver=_Crouzeix(), controller=no.FixedGrid(step_size=0.1),
            gradient=strategy,
        ).ys  # fmt: skip
        return torch.autograd.grad(ys.sum(), y0)[0]

    torch.testing.assert_close(
        gradient(no.Checkpointed(params=())), gradient(no.Direct()), rtol=1e-12, atol=1e-12
    )
