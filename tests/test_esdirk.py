"""The adaptive ESDIRK methods (Kværnø's 3(2), 4(3) and 5(4)) and the fixed-step SDIRK
methods: the embedded error estimate, the Hermite dense output's start derivative (the
previous step's last stage) and its derivative through checkpointed recomputation,
Robertson's problem against SciPy's Radau, and the steps against diffrax's Kvaerno3/4/5.

Orders, L-stability and the embedded orders are tested in test_tableaux; convergence,
states, statistics and jumps with every method of the central list."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from problems import ROBERTSON, VDP_STIFF

import neuralode as no
from neuralode._term import ODETerm
from neuralode._tree import tree_spec
from neuralode.solvers import (
    SDIRK2,
    TRBDF2,
    ImplicitRK,
    ImplicitTableau,
    Kvaerno3,
    Kvaerno4,
    Kvaerno5,
)

KVAERNO = [Kvaerno3, Kvaerno4, Kvaerno5]


def _units(ys: torch.Tensor, ref: np.ndarray, rtol: float, atol: float) -> np.ndarray:
    """The largest error of each component, in tolerance units."""
    ys = ys.numpy()
    return (np.abs(ys - ref) / (atol + rtol * np.abs(ref))).max(0)


@functools.cache
def _robertson_on(ts: tuple[float, ...]) -> np.ndarray:
    """SciPy's Radau with the analytic Jacobian at rtol 1e-10, atol 1e-14 (within 3e-7
    tolerance units of rtol 1e-12 at the tolerances compared against), computed once."""
    problem = dataclasses.replace(ROBERTSON, ts=ts, ys=None)
    return problem.scipy_solution(rtol=1e-10, atol=1e-14).numpy()


@pytest.mark.parametrize("solver_class", [*KVAERNO, SDIRK2, TRBDF2])
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


@pytest.mark.parametrize(("solver_class", "bound"), [(Kvaerno3, 3), (Kvaerno4, 3), (Kvaerno5, 6)])
def test_dense_output_on_stiff_components_starts_from_the_previous_stage(
    solver_class, bound: float
) -> None:
    """Robertson at 200 output times between the steps: within a few tolerance units on
    every component. Hermite's start derivative is the previous step's last stage (its
    derivative as the stage equation gives it); f(t0, y0) there would multiply the Newton
    iteration's remaining error by h |J| (500 units on y2 for Kvaerno3). kvaerno5's
    continuous extension over its stages stays bounded on the stiff components (2.9 units
    on its 32 steps, against 0.3-1.0 for kvaerno3/4 on 134 and 82)."""
    ts = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-5, 5, 200)])
    rtol, atol = 1e-4, 1e-8
    controller = no.PIController(rtol=rtol, atol=atol)
    solver = solver_class()
    sol = no.solve(ROBERTSON.f, ROBERTSON.y0_tensor(), ts, solver=solver, controller=controller)
    assert sol.stats.n_accepted < 150  # (interpolated: far fewer steps than outputs)
    units = _units(sol.ys, _robertson_on(tuple(ts.tolist())), rtol, atol)
    assert units.max() < bound, f"tolerance units per component: {units}"


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
        lambda: (Kvaerno4(), no.PIController(rtol=1e-5, atol=1e-8)),
        lambda: (Kvaerno5(), no.PIController(rtol=1e-5, atol=1e-8)),
        lambda: (TRBDF2(), no.FixedGrid(step_size=0.1)),
    ],
    ids=["kvaerno3", "kvaerno4", "kvaerno5", "trbdf2"],
)
def test_checkpointed_gradients_carry_the_start_derivative(setup) -> None:
    """Interpolated outputs read the previous step's last stage: Checkpointed's
    recomputation carries its derivative back to that step, and its gradient equals
    Direct's (without the carry, the steps' parameter gradients differ by about 1e-3)."""
    ts = torch.linspace(0, 0.4, 10, dtype=torch.float64)  # mostly between the steps

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


@pytest.mark.parametrize("solver_class", KVAERNO)
@pytest.mark.parametrize("strategy", ["direct", "checkpointed"])
def test_gradcheck_through_interpolated_outputs(strategy: str, solver_class) -> None:
    """Kvaerno3/4/5's gradient through interpolated outputs against finite differences, on
    fixed steps (finite differences of an adaptive solve also see its step sizes move)."""
    ts = torch.tensor([0.0, 0.13, 0.35, 0.4], dtype=torch.float64)

    def run(y0: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return no.solve(
            _decay(params),
            y0,
            ts,
            solver=solver_class(),
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


@pytest.mark.parametrize("solver_class", [Kvaerno4, Kvaerno5])
def test_robertson_within_tolerance_of_scipy_radau(solver_class) -> None:
    """Robertson's problem to t = 1e5 at rtol 1e-6, atol 1e-10, the steps landing on the
    output times (``step_t``): within a few tolerance units of SciPy's Radau at rtol 1e-13
    (the stored reference), in fewer steps than kvaerno3's 584. Interpolated instead,
    kvaerno5's outputs are up to 11 units off (its continuous extension is of order 4, on
    long order-5 steps), kvaerno4's 1.1."""
    rtol, atol = 1e-6, 1e-10
    controller = no.PIController(rtol=rtol, atol=atol)
    ts = ROBERTSON.ts_tensor()
    sol = no.solve(ROBERTSON.f, ROBERTSON.y0_tensor(), ts, solver=solver_class(),
                   controller=controller, step_t=ts[1:-1])  # fmt: skip
    units = _units(sol.ys, ROBERTSON.reference().numpy(), rtol, atol)
    assert units.max() < 5, f"tolerance units per component: {units}"
    assert sol.stats.n_accepted < 300


# diffrax 0.7.2's (accepted, rejected) steps with Kvaerno3/4/5, float64, PIDController(rtol,
# atol) and dt0=None, printed by `benchmarks/kvaerno_diffrax_counts.py` (run there with
# jax and diffrax): "default" its root finder as it is (VeryChord, kappa 1e-2, 10
# iterations), "loose" with kappa 1e6 and 100 iterations (a stage converged once an
# iteration contracts).
DIFFRAX_LINEAR = {
    ("kvaerno3", 1e-4): (123, 8),
    ("kvaerno4", 1e-4): (72, 6),
    ("kvaerno5", 1e-4): (26, 4),
    ("kvaerno3", 1e-6): (565, 10),
    ("kvaerno4", 1e-6): (236, 8),
    ("kvaerno5", 1e-6): (59, 5),
}
DIFFRAX_ROBERTSON = {  # rtol 1e-6, atol 1e-10: default, loose
    "kvaerno3": ((584, 8), (583, 7)),
    "kvaerno4": ((293, 67), (242, 7)),
    "kvaerno5": ((343, 351), (73, 8)),
}
DIFFRAX_VDP = {  # mu 1000, rtol 1e-6, atol 1e-8: default, loose
    "kvaerno3": ((4732, 570), (4536, 441)),
    "kvaerno4": ((3203, 1801), (1793, 401)),
    "kvaerno5": ((3156, 3020), (561, 310)),
}
_LINEAR = torch.tensor(
    [[-1.0, 0.5, 0.0], [20.0, -100.0, 1.0], [0.0, 300.0, -1000.0]], dtype=torch.float64
)


def _as_diffrax(
    name: str, rtol: float, atol: float, **options
) -> tuple[ImplicitRK, no.PIController]:
    """The method with diffrax's step-size rules: a first step of 0.01 (diffrax 0.7's with
    dt0=None), no shrinking after an accepted step, and growth after a rejection (no
    ``hold_after_reject``)."""
    solver = no.solvers.METHODS[name](**options)
    solver.hold_after_reject = False
    controller = no.PIController(rtol=rtol, atol=atol, first_step=0.01, shrink_after_accept=False)
    return solver, controller


def _counts(field, y0, ts, solver, controller) -> tuple[int, int]:
    sol = no.solve(field, torch.tensor(y0, dtype=torch.float64),
                   torch.tensor(ts, dtype=torch.float64), solver=solver, controller=controller,
                   max_steps=100_000)  # fmt: skip
    return sol.stats.n_accepted, sol.stats.n_rejected


@pytest.mark.parametrize(("name", "rtol"), list(DIFFRAX_LINEAR), ids=str)
def test_steps_are_diffraxs_where_newton_is_exact(name: str, rtol: float) -> None:
    """On a linear stiff problem (one Newton update solves the stages exactly, in both
    libraries) with diffrax's step-size rules, every accepted and rejected step is
    diffrax's: the tableau, the error estimate and the controller are the same."""
    solver, controller = _as_diffrax(name, rtol, rtol / 100)
    counts = _counts(lambda t, y: _LINEAR @ y, (1.0, 0.5, -0.3), (0.0, 10.0), solver, controller)
    assert counts == DIFFRAX_LINEAR[name, rtol]


@pytest.mark.parametrize("name", ["kvaerno3", "kvaerno4"])
def test_robertson_steps_are_diffraxs_with_its_newton_loosened(name: str) -> None:
    """Robertson at rtol 1e-6 with diffrax's step-size rules: kvaerno3's and kvaerno4's
    steps are diffrax's once its root finder accepts a contracting iteration (kappa 1e6).
    Its default test (kappa 1e-2 on the stages' derivatives, in the max norm, relative to
    atol + rtol |f|) fails many more iterations, each a rejected step shrunk by 0.2:
    Kvaerno4 293 + 67, Kvaerno5 343 + 351."""
    solver, controller = _as_diffrax(name, 1e-6, 1e-10)
    counts = _counts(ROBERTSON.f, ROBERTSON.y0, ROBERTSON.ts, solver, controller)
    assert counts == DIFFRAX_ROBERTSON[name][1]


def test_kvaerno5_robertson_steps_do_not_depend_on_the_newton_tolerance() -> None:
    """kvaerno5 on Robertson with diffrax's step-size rules takes 61 + 3 steps whether Newton
    converges to newton_tol 1e-2 or 1e-5: diffrax's 73 + 8 (loosened root finder, which
    stops after two chord iterations with the Jacobian at the second stage's predictor) and
    343 + 351 (default) differ from them through its stage solutions, not the method."""
    for newton_tol in (1e-2, 1e-5):
        solver, controller = _as_diffrax("kvaerno5", 1e-6, 1e-10, newton_tol=newton_tol)
        counts = _counts(ROBERTSON.f, ROBERTSON.y0, ROBERTSON.ts, solver, controller)
        assert counts == (61, 3)
    assert counts[0] < DIFFRAX_ROBERTSON["kvaerno5"][1][0] < DIFFRAX_ROBERTSON["kvaerno5"][0][0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["kvaerno3", "kvaerno4", "kvaerno5"])
def test_van_der_pol_steps_against_diffrax(name: str) -> None:
    """Van der Pol (mu 1000) at rtol 1e-6 with diffrax's step-size rules: kvaerno3's steps
    are diffrax's with its root finder loosened (4536 + 441); kvaerno4's and kvaerno5's within
    3% of them (1798 + 408 against 1793 + 401; 576 + 308 against 561 + 310: Newton's stage
    solutions differ, as on Robertson)."""
    solver, controller = _as_diffrax(name, 1e-6, 1e-8)
    field = VDP_STIFF.f
    counts = _counts(field, VDP_STIFF.y0, (0.0, 400.0, 1000.0, 3000.0), solver, controller)
    loose = DIFFRAX_VDP[name][1]
    if name == "kvaerno3":
        assert counts == loose
    else:
        assert all(abs(ours - theirs) <= 0.03 * theirs for ours, theirs in zip(counts, loose))
    assert counts[1] < DIFFRAX_VDP[name][0][1]
