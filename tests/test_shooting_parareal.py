"""Parareal (neuralode.shooting.parareal) against the sequential fine solve, the analytic
solution of linear systems, autograd of the plain solve, and its bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import neuralode as no
from neuralode.shooting import PararealBlock, Propagator, parareal

F64 = torch.float64
# a damped rotation plus a forcing in t, so that the segments' own times matter
A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)
Y0 = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=F64)
TS = torch.tensor([0.0, 0.37, 1.0, 2.5, 2.55, 3.9, 4.0], dtype=F64)  # inside and on boundaries
NEVER = dict(rtol=1e-30, atol=1e-30)  # no early stop: every iteration runs


def forced(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y @ A.T + 0.3 * torch.sin(t)[:, None]


def one_time(func, batch: int):
    """``func`` for the plain (one problem) solve: its time as one per row."""
    return lambda t, y: func(torch.as_tensor(t, dtype=F64).expand(batch), y)


def exact_linear(y0: torch.Tensor, ts: torch.Tensor, a: torch.Tensor = A) -> torch.Tensor:
    return torch.stack([y0 @ torch.linalg.matrix_exp(a * (t - ts[0])).T for t in ts])


@pytest.mark.parametrize("ts", [TS, TS.flip(0)], ids=["forwards", "backwards"])
def test_after_segments_iterations_equals_the_sequential_fine_solve(ts):
    segments, steps = 8, 5
    fine = Propagator("rk4", steps=steps)
    sol = parareal(forced, Y0, ts, segments=segments, fine=fine, **NEVER)
    grid = torch.linspace(float(ts[0]), float(ts[-1]), segments * steps + 1, dtype=F64)
    ref = no.solve(one_time(forced, 2), Y0, ts, solver=no.RK4(), controller=no.FixedGrid(grid=grid))
    assert sol.iterations == segments and sol.converged
    assert sol.ys.shape == (len(ts), 2, 2)
    assert torch.allclose(sol.ys, ref.ys, rtol=0, atol=1e-12)
    assert torch.allclose(sol.boundary_ys[-1], ref.ys[-1], rtol=0, atol=1e-12)
    assert torch.equal(sol.ys[0], Y0)


def test_adaptive_fine_after_segments_iterations_is_within_tolerance():
    fine = Propagator(controller=no.PIController(rtol=1e-9, atol=1e-12))
    sol = parareal(forced, Y0, TS, segments=8, fine=fine, **NEVER)
    ref = no.solve(one_time(forced, 2), Y0, TS, controller=no.PIController(rtol=1e-11, atol=1e-13))
    assert sol.iterations == 8
    assert torch.allclose(sol.ys, ref.ys, rtol=0, atol=2e-9)


def test_linear_system_converges_geometrically_and_far_before_segments():
    ts = torch.linspace(0.0, 10.0, 5, dtype=F64)
    sol = parareal(lambda t, y: y @ A.T, Y0, ts, segments=20, rtol=1e-10, atol=1e-12)
    # measured changes: 6.7e7, 3.3e3, 0.28 (units of atol + rtol |y|): factors 5e-5, 8e-5
    assert sol.converged and sol.iterations == 3
    factors = [b / a for a, b in zip(sol.changes, sol.changes[1:])]
    assert all(f < 1e-3 for f in factors), sol.changes
    assert torch.allclose(sol.ys, exact_linear(Y0, ts), rtol=0, atol=2e-10)
    # the critical path is shorter than a sequential solve of the whole interval (measured:
    # 940 evaluations against 1850; all of parareal's together 6850)
    sequential = no.solve(lambda t, y: y @ A.T, Y0, ts, controller=no.PIController(1e-10, 1e-12))
    assert sol.nfe_sequential < 0.6 * sequential.stats.nfe < sol.nfe


def test_error_of_boundary_states_falls_with_the_iterations():
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    exact = exact_linear(Y0, torch.linspace(0.0, 10.0, 11, dtype=F64))
    fine = Propagator(controller=no.PIController(1e-10, 1e-12))
    errors = []
    for k in range(1, 5):
        sol = parareal(lambda t, y: y @ A.T, Y0, ts, segments=10, fine=fine, iterations=k, **NEVER)
        errors.append(float((sol.boundary_ys - exact).abs().max()))
    # measured: 4.4e-6, 5.7e-9, 7.7e-11, 7.2e-11 (the fine solves' own error from then on)
    assert errors[1] < 2e-3 * errors[0] and errors[2] < 2e-2 * errors[1]
    assert errors[-1] < 1e-10


def test_nested_state_with_fixed_steps_and_its_refusal_with_adaptive_steps():
    def harmonic(t, state):
        x, v = state
        return v, -x

    state = (torch.ones(3, dtype=F64), torch.zeros(3, dtype=F64))
    sol = parareal(harmonic, state, TS, segments=4, fine=Propagator("rk4", steps=40))
    assert sol.converged and isinstance(sol.ys, tuple)
    assert torch.allclose(sol.ys[0], torch.cos(TS)[:, None].expand(-1, 3), atol=1e-7)
    assert torch.allclose(sol.ys[1], -torch.sin(TS)[:, None].expand(-1, 3), atol=1e-7)
    with pytest.raises(ValueError, match="one tensor"):
        parareal(harmonic, state, TS, segments=4)


def test_boundary_times_given_as_a_tensor():
    bounds = torch.tensor([0.0, 0.5, 2.0, 4.0], dtype=F64)
    fine = Propagator("rk4", steps=4)
    sol = parareal(forced, Y0, TS, segments=bounds, fine=fine, **NEVER)
    grid = torch.cat([torch.linspace(a, b, 5, dtype=F64)[:-1] for a, b in zip(bounds, bounds[1:])])
    grid = torch.cat([grid, bounds[-1:]])
    ref = no.solve(one_time(forced, 2), Y0, TS, solver=no.RK4(), controller=no.FixedGrid(grid=grid))
    assert sol.iterations == 3 and torch.equal(sol.boundary_ts, bounds)
    assert torch.allclose(sol.ys, ref.ys, rtol=0, atol=1e-12)


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(A.clone())

    def forward(self, t, y):
        return y @ self.a.T + 0.3 * torch.sin(t)[:, None]


def test_gradcheck_through_the_iterations():
    fine = Propagator("rk4", steps=3)

    def run(y0, a):
        def func(t, y):
            return y @ a.T + 0.3 * torch.sin(t)[:, None]

        return parareal(func, y0, TS[:4], segments=3, fine=fine, iterations=2, **NEVER).ys

    y0 = Y0.clone().requires_grad_()
    a = A.clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (y0, a))


@pytest.mark.parametrize("gradient", [no.Direct(), no.Backsolve()], ids=["direct", "backsolve"])
def test_converged_gradient_matches_the_plain_solve(gradient):
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    fine = Propagator(controller=no.PIController(1e-9, 1e-11), options=dict(gradient=gradient))
    sol = parareal(func, y0, TS, segments=5, fine=fine, rtol=1e-9, atol=1e-11)
    assert sol.converged and sol.iterations < 5
    grads = torch.autograd.grad(sol.ys.pow(2).sum(), [y0, func.a])
    y0_ref = Y0.clone().requires_grad_()
    ref = no.solve(one_time(func, 2), y0_ref, TS, controller=no.PIController(1e-11, 1e-13))
    expected = torch.autograd.grad(ref.ys.pow(2).sum(), [y0_ref, func.a])
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=0, atol=1e-6)


def test_fixed_step_gradient_equals_the_sequential_solve_after_segments_iterations():
    func = Linear()
    y0 = Y0.clone().requires_grad_()
    sol = parareal(func, y0, TS, segments=4, fine=Propagator("rk4", steps=5), **NEVER)
    grads = torch.autograd.grad(sol.ys.pow(2).sum(), [y0, func.a])
    y0_ref = Y0.clone().requires_grad_()
    grid = torch.linspace(0.0, 4.0, 21, dtype=F64)
    ref = no.solve(
        one_time(func, 2), y0_ref, TS, solver=no.RK4(), controller=no.FixedGrid(grid=grid)
    )
    expected = torch.autograd.grad(ref.ys.pow(2).sum(), [y0_ref, func.a])
    for g, e in zip(grads, expected):
        assert torch.allclose(g, e, rtol=0, atol=1e-11)


def test_warm_start_from_the_boundary_states_takes_one_iteration():
    ts = torch.linspace(0.0, 10.0, 5, dtype=F64)
    first = parareal(lambda t, y: y @ A.T, Y0, ts, segments=10, rtol=1e-8, atol=1e-10)
    assert first.iterations == 4  # measured: changes 3.9e6, 1.6e3, 8.3, 2.7e-3
    again = parareal(
        lambda t, y: y @ A.T, Y0, ts, segments=10, rtol=1e-8, atol=1e-10, initial=first
    )
    assert again.iterations == 1 and again.converged
    assert again.nfe_sequential < first.nfe_sequential / 3  # measured: 174 against 744
    assert torch.allclose(again.ys, exact_linear(Y0, ts), rtol=0, atol=1e-8)


class Field(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 2)).double()

    def forward(self, t, y):
        return self.net(y)


def test_block_warm_starts_on_the_same_batch_in_training_only():
    coarse = Propagator("euler", steps=1)
    block = PararealBlock(Field(), t1=2.0, segments=8, coarse=coarse, rtol=1e-6, atol=1e-6)
    x = torch.randn(5, 2, dtype=F64)
    with torch.no_grad():
        y = block(x)
        cold = block.last.iterations
        assert cold > 1
        assert torch.allclose(y, block(x), atol=1e-5)
        assert block.last.iterations == 1  # warm: the same batch, the same parameters
        block(torch.randn(5, 2, dtype=F64))
        assert block.last.iterations > 1  # another batch: a cold start
        block(x)
    block.eval()
    y_eval = block(x)
    assert block.last.iterations == cold  # eval: no warm start
    interval = torch.tensor([0.0, 2.0], dtype=F64)
    ref = no.solve(block.dynamics, x, interval, controller=no.PIController(1e-8, 1e-10))
    assert torch.allclose(y_eval, ref.ys[-1], atol=1e-5)
    assert block(x, torch.linspace(0, 2, 3, dtype=F64)).shape == (3, 5, 2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(segments=0), ValueError, "at least 1"),
        (dict(segments=2.5), TypeError, "number of segments"),
        (dict(segments=torch.tensor([0.0, 3.0, 2.0, 4.0], dtype=F64)), ValueError, "boundary"),
        (dict(segments=torch.tensor([0.0, 2.0, 5.0], dtype=F64)), ValueError, "end at ts"),
        (dict(segments=torch.tensor([0.0, 1.0], dtype=F64).reshape(1, 2)), ValueError, "1-D"),
        (dict(segments=4, iterations=0), ValueError, "iterations"),
        (dict(segments=4, fine="rk4"), ValueError, "steps="),
        (dict(segments=4, coarse=3), TypeError, "coarse must be"),
        (dict(segments=4, initial=torch.zeros(4, 2, 2, dtype=F64)), ValueError, "5 boundary"),
        (dict(segments=4, initial=torch.full((5, 2, 2), math.nan)), ValueError, "initial contains"),
    ],
)
def test_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        parareal(forced, Y0, TS, **kwargs)


def test_bad_input_of_the_state_times_and_propagator():
    with pytest.raises(ValueError, match=r"\(batch, \.\.\.\)"):
        parareal(forced, torch.tensor(1.0, dtype=F64), TS, segments=2)
    with pytest.raises(ValueError, match="batch dimension is empty"):
        parareal(forced, Y0[:0], TS, segments=2)
    with pytest.raises(ValueError, match="strictly"):
        parareal(forced, Y0, torch.tensor([0.0, 2.0, 1.0], dtype=F64), segments=2)
    counted = parareal(forced, Y0, TS, segments=np.int64(4), iterations=np.int64(4))
    assert torch.equal(counted.ys, parareal(forced, Y0, TS, segments=4).ys)
    with pytest.raises(ValueError, match="does not differentiate"):
        parareal(forced, Y0, TS.clone().requires_grad_(), segments=2)
    with pytest.raises(ValueError, match="positive integer"):
        Propagator("rk4", steps=0)
    with pytest.raises(ValueError, match="not both"):
        Propagator("dopri5", steps=2, controller=no.PIController())
    with pytest.raises(ValueError, match="parareal chooses"):
        Propagator(options=dict(per_sample=False))


def test_a_1d_y0_that_func_cannot_take_as_a_batch_of_scalars_gets_a_note():
    """A forgotten batch dimension: the 1-D y0 is a batch of scalars, f fails on it, and the
    error (f's own) carries a note with the fix."""
    f = nn.Linear(2, 2).double()
    with pytest.raises(RuntimeError) as caught:
        parareal(lambda t, y: f(y), torch.ones(2, dtype=F64), TS, segments=2)
    assert any("pass y0[None]" in note for note in caught.value.__notes__)
    with pytest.raises(RuntimeError) as caught:  # a batched y0: no such note
        parareal(lambda t, y: f(y[..., :1]), torch.ones(3, 2, dtype=F64), TS, segments=2)
    assert not getattr(caught.value, "__notes__", [])


def test_an_entry_that_stays_zero_with_atol_zero_does_not_stop_the_iterations():
    """With atol = 0 an entry that is 0 and unchanged has a scale of 0: its change counts as
    none (0 / 0 was NaN, which hid the boundary's other changes and stopped after one
    iteration, 1e-4 off); the solve iterates as without that entry."""
    a = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=torch.float64)

    def field(t, y):
        return torch.cat([y[:, :2] @ a.T, torch.zeros_like(y[:, 2:])], -1)

    ts = torch.linspace(0, 10, 5, dtype=torch.float64)
    runs = []
    for third in (0.0, 1.0):
        y0 = torch.tensor([[1.0, 0.0, third]], dtype=torch.float64)
        fine = Propagator("rk4", steps=20)
        runs.append(parareal(field, y0, ts, segments=20, fine=fine, rtol=1e-10, atol=0.0))
    assert runs[0].iterations == runs[1].iterations == 3
    assert runs[0].changes == runs[1].changes
    torch.testing.assert_close(runs[0].ys[..., :2], runs[1].ys[..., :2], rtol=0, atol=0)


def test_a_block_recording_gradients_starts_cold_and_its_gradients_are_the_plain_solves():
    """The kept boundary states are constants to autograd: a warm start's one iteration gave
    dL/dx = 0 and parameter gradients 60% off. A call recording a gradient starts cold, and
    its second call's gradients are the plain solve's."""
    block = PararealBlock(Field(), t1=2.0, segments=4, rtol=1e-9, atol=1e-9)
    x = torch.randn(3, 2, dtype=F64)

    def gradients(solve):
        start = x.clone().requires_grad_(True)
        block.zero_grad()
        solve(start).pow(2).sum().backward()
        return torch.cat([start.grad.flatten(), *(p.grad.flatten() for p in block.parameters())])

    interval = torch.tensor([0.0, 2.0], dtype=F64)
    controller = no.PIController(1e-11, 1e-13)
    plain = gradients(
        lambda y0: no.solve(block.dynamics, y0, interval, controller=controller).ys[-1]
    )
    for _ in range(2):
        torch.testing.assert_close(gradients(block), plain, rtol=1e-6, atol=1e-7)
        assert block.last.iterations > 1


def test_an_adjoint_on_a_function_names_the_users_function_not_a_wrapper() -> None:
    weight = torch.nn.Parameter(torch.eye(2))
    fine = Propagator("rk4", steps=20, options=dict(gradient=no.Backsolve()))
    with pytest.raises(ValueError, match="func is a function, not a torch.nn.Module"):
        parareal(
            lambda t, y: y @ weight.T,
            torch.ones(3, 2),
            torch.tensor([0.0, 2.0]),
            segments=4,
            fine=fine,
        )
