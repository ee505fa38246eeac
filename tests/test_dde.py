"""Delay differential equations (``neuralode.dde.solve_dde``) against exact solutions:
piecewise polynomials by the method of steps, exponential solutions of linear DDEs,
convergence orders with and without the discontinuity tracking, gradients."""

from __future__ import annotations

import bisect
import math
from typing import Any

import numpy as np
import pytest
import torch
from numpy.polynomial import Polynomial
from test_progress import Recorder

import neuralode as no
from neuralode import MaxStepsError
from neuralode.dde import _solve_dde, solve_dde

F64 = torch.float64


def piecewise_exact(
    coefficients: list[float], taus: list[float], phi: float, y0: float, t1: float
) -> tuple[list[float], list[Polynomial]]:
    """The exact solution of y' = sum_j c_j y(t - tau_j), y = phi (constant) before 0,
    y(0) = y0, on [0, t1]: a polynomial between consecutive points of B = {sums of delays}
    (B is closed under +tau_j, so each y(t - tau_j) is one polynomial there)."""
    points = {0.0}
    frontier = {0.0}
    while frontier:
        frontier = {round(p + tau, 12) for p in frontier for tau in taus if p + tau < t1}
        points |= frontier
    breaks = sorted(points) + [t1]
    pieces: list[Polynomial] = []

    def value_poly(s_start: float, shift: float) -> Polynomial:
        """y(t - shift) as a polynomial in t, for t - shift in the piece holding s_start."""
        if s_start < 0:
            return Polynomial([phi])
        i = max(k for k in range(len(pieces)) if breaks[k] <= s_start + 1e-12)
        return pieces[i](Polynomial([-shift, 1.0]))

    start = y0
    for a, b in zip(breaks[:-1], breaks[1:]):
        rhs = sum(
            (c * value_poly(a - tau, tau) for c, tau in zip(coefficients, taus)),
            Polynomial([0.0]),
        )
        antiderivative = rhs.integ()
        piece = antiderivative - antiderivative(a) + start
        pieces.append(piece)
        start = piece(b)
    return breaks, pieces


def evaluate_exact(breaks: list[float], pieces: list[Polynomial], t: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(breaks, t, side="right") - 1, 0, len(pieces) - 1)
    return np.array([pieces[i](x) for i, x in zip(index, t)])


def test_constant_history_is_the_piecewise_polynomial() -> None:
    # y' = -y(t - 1), y = 1 for t <= 0: 1 - t, then + (t - 1)^2 / 2, then - (t - 2)^3 / 6, ...
    ts = torch.linspace(0, 5, 21, dtype=F64)
    sol = solve_dde(
        lambda t, y, d: -d[0],
        torch.ones(1, dtype=F64),
        ts,
        1.0,
        controller=no.PIController(rtol=1e-10, atol=1e-12),
        dense=True,
    )
    t = ts.numpy()
    exact = 1 + sum(
        (-1) ** k * np.clip(t - k + 1, 0, None) ** k / math.factorial(k) for k in (1, 2, 3, 4, 5)
    )
    assert np.abs(sol.ys[:, 0].numpy() - exact).max() < 1e-9
    breaks, pieces = piecewise_exact([-1.0], [1.0], 1.0, 1.0, 5.0)
    assert np.abs(evaluate_exact(breaks, pieces, t) - exact).max() < 1e-12  # (the helper)
    inside = torch.linspace(0, 5, 301, dtype=F64)
    exact_inside = evaluate_exact(breaks, pieces, inside.numpy())
    assert np.abs(sol.evaluate(inside)[:, 0].numpy() - exact_inside).max() < 1e-9
    slope = np.array([pieces[min(int(x), 4)].deriv()(x) for x in inside.numpy()])
    assert np.abs(sol.derivative(inside)[:, 0].numpy() - slope).max() < 1e-7


def test_rk4_on_a_polynomial_solution_counts_its_steps() -> None:
    # on [0, 4] y' = -y(t - 1) is a cubic at most, which rk4 (Simpson's rule here) integrates
    # exactly; 4 intervals of 4 steps, each interval the work of one solve over [0, 1]
    sol = solve_dde(
        lambda t, y, d: -d[0],
        torch.ones(1, dtype=F64),
        torch.linspace(0, 4, 9, dtype=F64),
        1.0,
        solver=no.RK4(),
        controller=no.FixedGrid(step_size=0.25),
    )
    breaks, pieces = piecewise_exact([-1.0], [1.0], 1.0, 1.0, 4.0)
    exact = evaluate_exact(breaks, pieces, np.linspace(0, 4, 9))
    assert np.abs(sol.ys[:, 0].numpy() - exact).max() < 1e-14
    one = no.solve(
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 0.5, 1.0], dtype=F64),
        solver=no.RK4(),
        controller=no.FixedGrid(step_size=0.25),
        dense=True,
    )
    assert (sol.stats.n_steps, sol.stats.nfe) == (16, 4 * one.stats.nfe)


def test_float32_intervals_take_the_steps_of_their_grid_and_no_sliver() -> None:
    """Interval ends rounded to float32 (0.1, 0.2, ... as float32) are no extra steps: steps
    of 0.05 over [0, 5] are 100, as in float64, and the results agree to float32."""
    runs = {}
    for dtype in (torch.float32, F64):
        runs[dtype] = solve_dde(
            lambda t, y, d: -d[0],
            torch.ones(1, dtype=dtype),
            torch.linspace(0, 5, 11, dtype=dtype),
            0.1,
            solver="rk4",
            controller=no.FixedGrid(step_size=0.05),
        )
        assert runs[dtype].stats.n_steps == 100
    difference = runs[torch.float32].ys.double() - runs[F64].ys
    assert float(difference.abs().max()) < 1e-6


def exponential_rate(a: float, b: float, tau: float) -> float:
    """The real root lam of lam = a + b exp(-lam tau) (Newton from lam = a + b)."""
    lam = a + b
    for _ in range(50):
        lam -= (lam - a - b * math.exp(-lam * tau)) / (1 + b * tau * math.exp(-lam * tau))
    return lam


def test_exponential_solution_and_rk4_order_4() -> None:
    # y' = a y(t) + b y(t - tau) with history exp(lam t): y = exp(lam t) for all t
    a, b, tau = -1.0, 0.5, 0.75
    lam = exponential_rate(a, b, tau)
    assert abs(lam - a - b * math.exp(-lam * tau)) < 1e-14
    ts = torch.linspace(0, 3, 7, dtype=F64)
    exact = torch.exp(lam * ts)[:, None]

    def run(**options):
        return solve_dde(
            lambda t, y, d: a * y + b * d[0],
            lambda t: torch.exp(lam * t).reshape(1),
            ts,
            tau,
            **options,
        ).ys

    adaptive = run(controller=no.PIController(rtol=1e-10, atol=1e-12))
    assert (adaptive - exact).abs().max() < 1e-9
    errors = [
        float((run(solver=no.RK4(), controller=no.FixedGrid(step_size=h)) - exact).abs().max())
        for h in (0.25, 0.125, 0.0625)
    ]
    orders = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(3.8 < p < 4.3 for p in orders), (errors, orders)


TWO = dict(coefficients=[-1.0, 0.5], taus=[1.0, 1.3], phi=1.0, y0=0.0, t1=6.0)


def two_delay_errors(steps: tuple[float, ...], solver: Any = None) -> list[float]:
    """rk4 (or ``solver``) on a FixedGrid against the exact piecewise polynomial of y' = -y(t - 1) +
    0.5 y(t - 1.3), y = 1 before 0 and y(0) = 0 (a jump), on [0, 6] (pieces of degree up
    to 6: rk4 is not exact): the largest error at ts."""
    breaks, pieces = piecewise_exact(**TWO)
    ts = torch.linspace(0, 6, 25, dtype=F64)
    exact = evaluate_exact(breaks, pieces, ts.numpy())
    errors = []
    for h in steps:
        sol = solve_dde(
            lambda t, y, d: -d[0] + 0.5 * d[1],
            torch.ones(1, dtype=F64),
            ts,
            [1.0, 1.3],
            y0=torch.zeros(1, dtype=F64),
            solver=no.RK4() if solver is None else solver,
            controller=no.FixedGrid(step_size=h),
        )
        errors.append(float(np.abs(sol.ys[:, 0].numpy() - exact).max()))
    return errors


def test_two_delays_with_a_jump_keep_rk4s_order() -> None:
    errors = two_delay_errors((1 / 8, 1 / 16, 1 / 32))
    orders = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(p > 3.7 for p in orders), (errors, orders)


def test_the_adams_methods_restart_their_history_at_the_kinks() -> None:
    # (carried across the points where y'' jumps, the history mixed both sides: errors of
    # 6.4e-7 and 9.7e-8 at h = 1/32 and 1/64, order 2.7)
    errors = two_delay_errors((1 / 32, 1 / 64), no.ExplicitAdams())
    assert errors[1] < 5e-9 and math.log2(errors[0] / errors[1]) > 3.5, errors


@pytest.mark.parametrize("method", ["kvaerno4", "kvaerno5"])
def test_methods_whose_stages_pass_the_steps_end_are_refused(method: str) -> None:
    with pytest.raises(ValueError, match="its stages pass the step's end"):
        solve_dde(
            lambda t, y, d: -d[0], torch.ones(1), torch.tensor([0.0, 2.0]), 1.0, solver=method
        )


def test_more_intervals_than_max_steps_are_refused_before_any_step() -> None:
    # (1e-9 on [0, 2]: 2e9 interval ends were listed first, filling the memory)
    with pytest.raises(no.MaxStepsError, match="2,000,000,000 intervals"):
        solve_dde(
            lambda t, y, d: -d[0], torch.ones(1), torch.tensor([0.0, 2.0]), 1e-9, max_steps=100
        )


def test_without_discontinuity_tracking_rk4_drops_to_order_2(monkeypatch) -> None:
    # the same solve without the points t0 + sum n_j tau_j: steps straddle 2.3, 2.6, 3.3,
    # ... where y'' jumps
    monkeypatch.setattr(_solve_dde, "_discontinuities", lambda *args: [])
    errors = two_delay_errors((1 / 8, 1 / 16, 1 / 32))
    orders = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(1.5 < p < 2.5 for p in orders), (errors, orders)


def test_discontinuity_points_are_the_sums_of_delays() -> None:
    points = _solve_dde._discontinuities(0.0, 4.0, [1.0, 1.3], 5, 1e-14)
    expected = sorted(
        (round(m + 1.3 * n, 12), m + n)
        for m in range(5)
        for n in range(5)
        if 0 < m + n <= 5 and m + 1.3 * n < 4.0
    )
    assert [g for _, g in points] == [g for _, g in expected]
    assert np.allclose([t for t, _ in points], [t for t, _ in expected], atol=1e-13)
    ends = _solve_dde._interval_ends(0.0, 4.0, [1.0, 1.3], [0.0, 4.0], 1e-14, [2.3])
    assert ends == [0.0, 1.0, 1.3, 2.0, 2.3, 3.0, 4.0]


@pytest.mark.parametrize("jump", [False, True])
@pytest.mark.parametrize("big_t", [1.3, 2.0])
def test_delay_gradient_is_exact(jump: bool, big_t: float) -> None:
    # y' = -y(t - tau), y = 1 before 0, tau = 0.8. y(0) = 1:
    #   [tau, 2 tau]: y = 1 - t + (t - tau)^2 / 2, dy/dtau = -(t - tau)
    #   [2 tau, 3 tau]: y = ... - (t - 2 tau)^3 / 6, dy/dtau = -(t - tau) + (t - 2 tau)^2
    # y(0) = 0 (the jump moves with tau, and with it the kink of y' at tau):
    #   [tau, 2 tau]: y = -tau + (t - tau)^2 / 2, dy/dtau = -1 - (t - tau)
    #   [2 tau, 3 tau]: y = -tau + tau^2 / 2 + tau (t - 2 tau) - (t - 2 tau)^3 / 6,
    #   dy/dtau = -1 + t - 3 tau + (t - 2 tau)^2
    tau = torch.tensor(0.8, dtype=F64, requires_grad=True)
    sol = solve_dde(
        lambda t, y, d: -d[0],
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, big_t], dtype=F64),
        tau,
        y0=torch.zeros(1, dtype=F64) if jump else None,
        controller=no.PIController(rtol=1e-10, atol=1e-12),
    )
    (grad,) = torch.autograd.grad(sol.ys[-1, 0], tau)
    t, u = big_t, 0.8
    late = max(t - 2 * u, 0.0)
    if jump:
        value = -u + (t - u) ** 2 / 2 if t <= 2 * u else -u + u**2 / 2 + u * late - late**3 / 6
        expected = -1 - (t - u) if t <= 2 * u else -1 + t - 3 * u + late**2
    else:
        value = 1 - t + (t - u) ** 2 / 2 - late**3 / 6
        expected = -(t - u) + late**2
    assert abs(float(sol.ys[-1, 0].detach()) - value) < 1e-10
    assert abs(float(grad) - expected) < 1e-9


@pytest.mark.parametrize("gradient", ["direct", "checkpointed"])
def test_gradcheck_y0_field_history_and_delays(gradient: str) -> None:
    # a nonlinear field with a parameter, a history with a parameter, two delays (one a
    # tensor), a jump at t0 (its discontinuities at 0.6, 0.9, 1.2 inside the span); rk4 on
    # a fine fixed grid: the discrete map's grid moves with the delay, by the method's
    # error only
    ts = torch.tensor([0.0, 0.7, 1.4], dtype=F64)

    def outputs(y0, weight, level, tau):
        return solve_dde(
            lambda t, y, d: torch.tanh(weight * d[0]) - 0.3 * d[1] * y,
            lambda t: level * torch.stack([torch.cos(t), 1 + t]),
            ts,
            [tau, 0.9],
            y0=y0,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=1 / 16),
            gradient=gradient,
        ).ys

    inputs = (
        torch.tensor([0.3, -0.2], dtype=F64, requires_grad=True),
        torch.tensor(1.4, dtype=F64, requires_grad=True),
        torch.tensor(0.8, dtype=F64, requires_grad=True),
        torch.tensor(0.6, dtype=F64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(outputs, inputs, atol=1e-5, rtol=1e-4, fast_mode=True)


def test_history_parameters_and_y0_from_history_get_gradients() -> None:
    # y' = -y(t - 1), y = c for t <= 0 (y0 = c too): y(T) = c (1 - T) on [0, 1]
    c = torch.tensor(2.0, dtype=F64, requires_grad=True)
    sol = solve_dde(
        lambda t, y, d: -d[0],
        lambda t: c * torch.ones(1, dtype=F64),
        torch.tensor([0.0, 0.6], dtype=F64),
        1.0,
    )
    (grad,) = torch.autograd.grad(sol.ys[-1, 0], c)
    assert abs(float(grad) - 0.4) < 1e-12


def test_a_batch_equals_each_sample_alone() -> None:
    torch.manual_seed(0)
    y0 = torch.randn(3, 2, dtype=F64)
    shift = torch.randn(3, 2, dtype=F64)
    matrix = torch.randn(2, 2, dtype=F64)
    ts = torch.linspace(0, 2.5, 6, dtype=F64)

    def run(y0, shift):
        return solve_dde(
            lambda t, y, d: torch.tanh(d[0] @ matrix) - 0.5 * d[1] + 0.1 * y,
            lambda t: shift * torch.sin(t),
            ts,
            (0.6, 1.1),
            y0=y0,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=0.05),
        ).ys

    batch = run(y0, shift)
    alone = torch.stack([run(y0[i], shift[i]) for i in range(3)], 1)
    assert batch.shape == (6, 3, 2)
    assert (batch - alone).abs().max() < 1e-13


def test_dense_solution_over_the_whole_span() -> None:
    sol = solve_dde(
        lambda t, y, d: -d[0],
        torch.ones(2, dtype=F64),
        torch.tensor([0.0, 2.5], dtype=F64),
        1.0,
        dense=True,
    )
    t = torch.tensor([[0.0, 1.0], [2.5, 1.7]], dtype=F64)
    assert sol.evaluate(t).shape == (2, 2, 2)
    assert torch.equal(sol.evaluate(torch.tensor(2.5, dtype=F64)), sol.ys[-1])
    with pytest.raises(ValueError, match="outside the solution's span"):
        sol.evaluate(torch.tensor([-0.1], dtype=F64))
    plain = solve_dde(lambda t, y, d: -d[0], torch.ones(2), torch.tensor([0.0, 2.5]), 1.0)
    with pytest.raises(ValueError, match="dense=True"):
        plain.evaluate(torch.tensor(1.0))


def f_delayed(t, y, d):
    return -d[0]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(delays=0.0), ValueError, "positive and finite"),
        (dict(delays=[1.0, -0.5]), ValueError, "delay 1 = -0.5"),
        (dict(delays=float("nan")), ValueError, "positive and finite"),
        (dict(delays=[]), ValueError, "at least one delay"),
        (dict(delays="1"), TypeError, "must be a number"),
        (dict(ts=torch.tensor([0.0, 2.0, 1.0])), ValueError, "strictly increasing"),
        (dict(ts=torch.tensor([2.0, 0.0])), ValueError, "forward in time"),
        (dict(history=torch.ones(3)), ValueError, "history gives states of shape"),
        (dict(history=lambda t: torch.ones(1, 2)), ValueError, "history gives states"),
        (dict(history=lambda t: 1.0), TypeError, "must return a tensor"),
        (dict(history=[1.0, 2.0]), TypeError, "callable history"),
        (dict(gradient=no.Backsolve()), ValueError, "advanced terms.*save memory, Checkpoint"),
        (dict(gradient=no.Checkpointed(params=())), ValueError, "takes no params"),
        (dict(controller=no.FixedGrid(grid=torch.linspace(0, 2, 5))), ValueError, "grid"),
        (dict(max_steps=0), ValueError, "max_steps"),
        (dict(func=lambda t, y: -y), TypeError, r"called as func\(t, y, y_delayed\).*\(t, y\)"),
        (dict(func=None), TypeError, "func must be callable as func"),
        (dict(func=lambda t, y, d: torch.ones(3)), ValueError, r"returned shape \(3,\); .*\(2,\)"),
    ],
)
def test_bad_input_is_refused(kwargs: dict, error: type, match: str) -> None:
    arguments = dict(
        func=f_delayed,
        history=torch.ones(2),
        ts=torch.tensor([0.0, 2.0]),
        delays=1.0,
        y0=torch.zeros(2),
    )
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        solve_dde(**arguments)


def test_max_steps_counts_every_interval() -> None:
    with pytest.raises(no.MaxStepsError, match=r"max_steps=10 steps before t1=4, the last of"):
        solve_dde(
            f_delayed,
            torch.ones(1),
            torch.tensor([0.0, 4.0]),
            1.0,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=0.25),
            max_steps=10,
        )
    # the budget running out inside an interval of an adaptive solve: the user's max_steps
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    with pytest.raises(no.MaxStepsError, match=r"max_steps=12 steps before t1=10, .* in \["):
        solve_dde(f_delayed, torch.ones(1, dtype=F64), ts, 1.0, max_steps=12,
                  controller=no.PIController(rtol=1e-10, atol=1e-10))  # fmt: skip


def test_float32_interval_ends_are_the_solves_times() -> None:
    # 0.6 k is not a float32 number: the look-ups stay inside the float32 intervals' spans
    ts = torch.linspace(0, 5, 21)
    single = solve_dde(f_delayed, torch.ones(1), ts, 0.6, solver=no.RK4(),
                       controller=no.FixedGrid(step_size=0.1)).ys  # fmt: skip
    double = solve_dde(f_delayed, torch.ones(1, dtype=F64), ts.double(), 0.6, solver=no.RK4(),
                       controller=no.FixedGrid(step_size=0.1)).ys  # fmt: skip
    assert single.dtype == torch.float32
    assert (single.double() - double).abs().max() < 1e-5


@pytest.mark.parametrize(
    "solver", [no.Dopri5(), no.RK4(), no.solvers.RadauIIA3()], ids=["own", "hermite", "colloc"]
)
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_one_time_look_up_equals_evaluate(solver, dtype) -> None:
    # DenseSolution.at (one float time, the DDE's look-ups) against the batched evaluate /
    # derivative at random times, every step end and the span's ends
    torch.manual_seed(1)
    matrix = torch.randn(3, 3, dtype=dtype)
    sol = no.solve(
        lambda t, y: torch.tanh(y @ matrix) * torch.cos(t),
        torch.randn(2, 3, dtype=dtype),
        torch.tensor([0.2, 1.7], dtype=dtype),
        solver=solver,
        controller=no.PIController(rtol=1e-4, atol=1e-6)
        if solver.adaptive
        else no.FixedGrid(step_size=0.13),
        dense=True,
    )
    dense = sol.interpolation
    steps = dense.t0[:, 0].tolist() + [float(dense.t_end[0])]
    times = torch.rand(40, dtype=F64).mul(1.5).add(0.2).tolist() + steps
    tol = 4 * torch.finfo(dtype).eps
    for t in times:
        for derivative in (False, True):
            fast = dense.at(t, derivative)
            batched = dense(torch.tensor(t, dtype=F64), derivative)
            assert fast.shape == (2, 3)
            scale = 1 + batched.abs().max()
            assert (fast - batched).abs().max() <= tol * scale, (t, derivative)
    end = float(dense.t_end[0])
    assert torch.equal(dense.at(end), sol.ys[-1])
    with pytest.raises(ValueError, match="outside the solution's span"):
        dense.at(1.75)


@pytest.mark.parametrize("jump", [False, True])
def test_fast_look_up_equals_the_batched_evaluate_with_the_delay_gradient(
    monkeypatch, jump: bool
) -> None:
    # the whole DDE (values, the delay's and the field's gradients) with the look-ups by
    # DenseSolution.at and by the batched evaluate/derivative: equal to round-off; the
    # output times fall on interval ends (t0 + k tau with tau = 0.75)
    weight = torch.tensor([[0.7, -0.4], [0.3, 0.9]], dtype=F64, requires_grad=True)
    tau = torch.tensor(0.75, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.75, 1.5, 2.0, 3.0], dtype=F64)

    def run():
        sol = solve_dde(
            lambda t, y, d: torch.tanh(d[0] @ weight) - 0.2 * y * d[1],
            torch.tensor([1.0, -0.5], dtype=F64),
            ts,
            [tau, 1.1],
            y0=torch.tensor([0.4, 0.1], dtype=F64) if jump else None,
            controller=no.PIController(rtol=1e-7, atol=1e-9),
            dense=True,
        )
        grads = torch.autograd.grad(sol.ys.square().sum(), (weight, tau))
        return sol, grads

    fast, fast_grads = run()

    def batched_at(self, s, toward, derivative=False):
        calls.append(s)
        i = min(max(bisect.bisect_left(self.ends, s - self.tol), 0), len(self.ends) - 1)
        if i < len(self.ends) - 1 and s >= self.ends[i] - self.tol and toward > s:
            i += 1
        s = min(max(s, self.ends[i - 1] if i else self.t0), self.ends[i])
        return self.parts[i](torch.tensor(s, dtype=F64), derivative)

    calls: list[float] = []
    monkeypatch.setattr(_solve_dde._Piecewise, "at", batched_at)
    slow, slow_grads = run()
    assert len(calls) > 100
    assert (fast.ys - slow.ys).abs().max() < 1e-14
    for a, b in zip(fast_grads, slow_grads):
        assert (a - b).abs().max() < 1e-13 * (1 + b.abs().max())
    # the DDE's own dense solution at and between interval ends: the piece on the side of
    # ``toward`` (y' may jump at an end), by the batched evaluate of that piece
    past = fast.interpolation
    for s in [0.75, 1.5, 1.2, 2.999, 3.0]:
        for toward in (s - 0.5, s + 0.5):
            k = past.ends.index(s) + (toward > s) if s in past.ends else None
            k = min(bisect.bisect_left(past.ends, s) if k is None else k, len(past.ends) - 1)
            for derivative in (False, True):
                got = past.at(s, toward, derivative)
                expect = past.parts[k](torch.tensor(s, dtype=F64), derivative)
                assert (got - expect).abs().max() < 1e-14, (s, toward, derivative)


@pytest.mark.parametrize(
    "taus, coefficients, t1",
    [((1.0,), (-1.0,), 3.0), ((1.0, 0.6), (-1.0, 0.5), 2.4)],
    ids=["one-delay", "two-delays"],
)
@pytest.mark.filterwarnings("ignore:b_err_list is only zeros")  # (torchdde's rk4)
def test_agrees_with_torchdde(taus, coefficients, t1) -> None:
    # y' = sum_j c_j y(t - tau_j) + 0.1 y, y = 1 before 0, against torchdde 0.1.3's rk4 on
    # a step of 0.05 in float64 (its dopri5 runs in float32 only; every delay a multiple of
    # the step, so its steps land on the kinks it does not track): ours at rtol 1e-10
    torchdde = pytest.importorskip("torchdde")
    ts = torch.linspace(0, t1, 7, dtype=F64)

    def f(y, delayed):
        return sum(c * d for c, d in zip(coefficients, delayed)) + 0.1 * y

    ours = solve_dde(
        lambda t, y, d: f(y, d),
        torch.ones(1, 1, dtype=F64),
        ts,
        list(taus),
        controller=no.PIController(rtol=1e-10, atol=1e-12),
    ).ys[:, 0, 0]
    theirs = torchdde.integrate(
        lambda t, y, args, history: f(y, history),
        torchdde.RK4(),
        ts[0],
        ts[-1],
        ts,
        lambda t: torch.ones(1, 1, dtype=F64),
        None,
        dt0=torch.tensor(0.05, dtype=F64),
        delays=torch.tensor(taus, dtype=F64),
    )[0, :, 0]
    assert (ours - theirs).abs().max() < 2e-7  # (measured 4e-8: torchdde's rk4 error)


def test_one_progress_meter_over_all_intervals():
    """solve_dde opens one meter on [t0, t1]: every step attempt of every interval reports
    the fraction of the whole span and the steps summed over the intervals, then one close
    (also when the solve raises)."""

    meter = Recorder()
    ts = torch.tensor([0.0, 3.5], dtype=torch.float64)
    control = no.PIController(rtol=1e-8, atol=1e-10)
    sol = solve_dde(lambda t, y, d: -d[0], torch.ones(1, dtype=torch.float64), ts, 1.0,
                    controller=control, progress_meter=meter)  # fmt: skip
    plain = solve_dde(lambda t, y, d: -d[0], torch.ones(1, dtype=torch.float64), ts, 1.0,
                      controller=control)  # fmt: skip
    assert torch.equal(sol.ys, plain.ys)  # the meter changes nothing
    assert meter.calls[0] == ("start", 0.0, 3.5) and meter.calls[-1] == ("close", None)
    updates = meter.updates
    assert len(updates) == sol.stats.n_steps  # every attempt of the 4 intervals
    assert [u.n_accepted + u.n_rejected for u in updates] == list(range(1, len(updates) + 1))
    for u in updates:
        assert u.fraction == pytest.approx(u.t / 3.5, abs=1e-12)
    assert [u.t for u in updates] == sorted(u.t for u in updates)
    assert (updates[-1].fraction, updates[-1].n_accepted) == (1.0, sol.stats.n_accepted)
    meter = Recorder()
    with pytest.raises(MaxStepsError):
        solve_dde(lambda t, y, d: -d[0], torch.ones(1, dtype=torch.float64), ts, 1.0,
                  controller=control, max_steps=5, progress_meter=meter)  # fmt: skip
    assert meter.calls[-1][0] == "close" and isinstance(meter.calls[-1][1], MaxStepsError)
    assert [call[0] for call in meter.calls].count("close") == 1
    with pytest.raises(TypeError, match="progress_meter must be a neuralode.ProgressMeter"):
        solve_dde(lambda t, y, d: -d[0], torch.ones(1), torch.tensor([0.0, 1.0]), 1.0,
                  progress_meter=object())  # fmt: skip


def _mlp_dde(width: int, gradient, solver, controller, *, d: int = 2, jump: bool = True):
    """An MLP field of y(t) and two delays (tau learnable), a history with a parameter, a
    jump at t0; returns (the solution, its ys.square().sum() + ys.sin().sum() loss, the
    tensors to differentiate)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(3 * d, width), torch.nn.Tanh(), torch.nn.Linear(width, d)
    ).to(F64)
    level = torch.tensor(0.8, dtype=F64, requires_grad=True)
    tau = torch.tensor(0.6, dtype=F64, requires_grad=True)
    y0 = torch.randn(3, d, dtype=F64, requires_grad=True)
    sol = solve_dde(
        lambda t, y, delayed: net(torch.cat([y, *delayed], -1)),
        lambda t: level * torch.cos(t + torch.arange(d, dtype=F64)).expand(3, d),
        torch.tensor([0.0, 0.7, 1.6, 2.9], dtype=F64),
        [tau, 0.9],
        y0=y0 if jump else None,
        solver=solver,
        controller=controller,
        gradient=gradient,
        dense=True,
    )
    loss = sol.ys.square().sum() + sol.ys.sin().sum()
    return sol, loss, [y0, level, tau, *net.parameters()]


@pytest.mark.parametrize(
    ("solver", "controller"),
    [
        (no.RK4(), no.FixedGrid(step_size=0.1)),
        (no.Dopri5(), no.PIController(rtol=1e-8, atol=1e-10)),
    ],
    ids=["rk4-fixed", "dopri5-adaptive"],
)
def test_checkpointed_gradients_equal_direct(solver, controller) -> None:
    # every interval recomputed in the backward pass: the same steps, so the same ys and
    # stats, and the gradients with respect to y0, func's parameters, the history's
    # parameter and a tensor delay (read by the intervals, not passed to them) to round-off
    direct, loss, inputs = _mlp_dde(16, no.Direct(), solver, controller)
    expected = torch.autograd.grad(loss, inputs)
    sol, loss, inputs = _mlp_dde(16, no.Checkpointed(), solver, controller)
    # the cached per-step views of the look-ups rebuilt in another autograd mode before
    # the backward pass recomputes the intervals: the same values are saved
    for part in sol.interpolation.parts:
        with torch.no_grad():
            part.at(float(part.t_start[0]) + 0.01)
    got = torch.autograd.grad(loss, inputs, create_graph=True)
    assert torch.equal(sol.ys, direct.ys)
    for name in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        assert getattr(sol.stats, name) == getattr(direct.stats, name), name
    assert direct.stats.n_steps > 15
    assert direct.stats.nfe_backward == 0
    # the recomputation counted once per backward pass, in the backward fields
    assert (sol.stats.nfe_backward, sol.stats.n_steps_backward) == (
        direct.stats.nfe,
        direct.stats.n_steps,
    )
    for g, e in zip(got, expected):
        assert g.shape == e.shape and e.abs().max() > 1e-3
        assert (g - e).abs().max() <= 1e-12 * (1 + e.abs().max())
    # a second derivative (the graph of the recomputed intervals): Direct's; with respect
    # to the delay (first order only) it raises
    level = inputs[1]
    (second,) = torch.autograd.grad(got[1], level, retain_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives with respect to a tensor delay"):
        torch.autograd.grad(got[2], inputs[2])
    _, loss, inputs = _mlp_dde(16, no.Direct(), solver, controller)
    (first,) = torch.autograd.grad(loss, inputs[1], create_graph=True)
    (expected_second,) = torch.autograd.grad(first, inputs[1])
    assert abs(float(second - expected_second)) <= 1e-10 * (1 + abs(float(expected_second)))
    assert abs(float(expected_second)) > 1e-3


def _kept_bytes(gradient, width: int, step: float) -> tuple[int, int]:
    """(bytes of the tensors autograd saves during the forward pass, those plus the
    intervals' dense rows), each storage once: what the forward keeps for the backward.
    An MLP field (2d -> width -> d, d = 4, batch 16), rk4 on a fixed step over [0, 2],
    tau = 1 learnable."""
    torch.manual_seed(0)
    d = 4
    net = torch.nn.Sequential(
        torch.nn.Linear(2 * d, width), torch.nn.Tanh(), torch.nn.Linear(width, d)
    )
    tau = torch.tensor(1.0, requires_grad=True)
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        storage = x.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        sol = solve_dde(
            lambda t, y, delayed: net(torch.cat([y, delayed[0]], -1)),
            torch.randn(16, d),
            torch.linspace(0, 2, 5),
            tau,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=step),
            gradient=gradient,
            dense=True,
        )
    kept = dict(saved)
    for part in sol.interpolation.parts:
        storage = part.rows.untyped_storage()
        kept[storage.data_ptr()] = storage.nbytes()
    grads = torch.autograd.grad(sol.ys.square().mean(), [tau, *net.parameters()])
    assert all(torch.isfinite(g).all() for g in grads)
    return sum(saved.values()), sum(kept.values())


def test_checkpointed_memory_grows_with_steps_times_state_not_width() -> None:
    direct = {w: _kept_bytes(no.Direct(), w, 0.1)[1] for w in (64, 128)}
    checkpointed = {
        (w, h): _kept_bytes(no.Checkpointed(), w, h) for w, h in [(64, 0.1), (128, 0.1), (64, 0.05)]
    }
    saved, kept = checkpointed[64, 0.1]
    assert saved == 0  # f's activations dropped: only the intervals' outputs are kept
    # 20 steps of 4 rows (y0, y1, f0, f1: rk4's Hermite dense output) of a 16 x 4 state
    assert kept == 20 * 4 * 16 * 4 * 4
    assert kept < 0.05 * direct[64]
    assert direct[128] > 1.7 * direct[64]  # Direct keeps f's activations: x width
    assert checkpointed[128, 0.1] == (0, kept)  # Checkpointed does not
    assert checkpointed[64, 0.05] == (0, 2 * kept)  # it grows as steps x state


def test_checkpointed_recomputation_reports_no_progress() -> None:
    class Recorder(no.ProgressMeter):
        def __init__(self):
            self.calls = 0

        def update(self, progress):
            self.calls += 1

    meter = Recorder()
    tau = torch.tensor(1.0, dtype=F64, requires_grad=True)
    ones, ts = torch.ones(1, dtype=F64), torch.tensor([0.0, 3.5], dtype=F64)
    sol = solve_dde(f_delayed, ones, ts, tau, gradient="checkpointed", progress_meter=meter)
    calls = meter.calls
    assert calls == sol.stats.n_steps > 0
    sol.ys[-1].sum().backward()
    assert meter.calls == calls
    # recomputed: the intervals whose graph saved tensors, all but the first (which reads
    # only the constant history: nothing there requires grad)
    assert 0 < sol.stats.n_steps_backward < sol.stats.n_steps
    with torch.no_grad():  # no graph: the intervals run once, nothing to recompute
        plain = solve_dde(f_delayed, ones, ts, tau, gradient=no.Checkpointed())
    assert torch.equal(plain.ys, sol.ys.detach())


def test_a_history_of_the_wrong_shape_past_t0_a_nested_state_and_dense_at_one_time() -> None:
    one = torch.ones(1, dtype=F64)

    def drifting(t: torch.Tensor) -> torch.Tensor:  # right at t0 only
        return one if float(t) == 0 else torch.ones(2, dtype=F64)

    span = torch.tensor([0.0, 2.0], dtype=F64)
    with pytest.raises(ValueError, match=r"history\(t\) returned \(2,\) at t=-1; .* \(1,\)"):
        solve_dde(lambda t, y, d: -d[0], drifting, span, 1.0)
    with pytest.raises(TypeError, match="nested states are not supported"):
        solve_dde(lambda t, y, d: d[0], (one, one), span, 1.0)
    with pytest.raises(ValueError, match="dense=True needs a span"):
        solve_dde(lambda t, y, d: -d[0], one, span[:1], 1.0, dense=True)
