"""The dense solution (``dense=True``: ``Solution.evaluate``/``derivative``) and ``SaveAt``."""

from __future__ import annotations

import math

import pytest
import torch
from problems import C1, E1, ReferenceProblem

import neuralode as no

# method -> order of its continuous extension (docs/guide.md's table)
DENSE_ORDER = {
    "dopri5": 4,
    "tsit5": 4,
    "dopri8": 7,
    "bosh3": 3,
    "fehlberg2": 3,
    "rk4": 3,
    "implicit_adams": 3,
    "radauIIA5": 3,
    "trbdf2": 3,
}


def _controller(name: str, step_size: float | None = None) -> no.StepSizeController:
    if step_size is not None or not no.METHODS[name]().adaptive:
        return no.FixedGrid(step_size=step_size or 0.05)
    return no.PIController(rtol=1e-8, atol=1e-10)


def _solve(
    name: str, problem: ReferenceProblem, ts: torch.Tensor, step_size: float | None = None, **kw
) -> no.Solution:
    controller = _controller(name, step_size)
    return no.solve(problem.f, problem.y0_tensor(), ts, solver=name, controller=controller, **kw)


def _grid(problem: ReferenceProblem, n: int, backward: bool = False) -> torch.Tensor:
    ts = torch.linspace(problem.t0, problem.t1, n, dtype=torch.float64)
    return ts.flip(0) if backward else ts


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("name", list(DENSE_ORDER))
def test_evaluate_equals_the_solve_at_its_outputs(name: str, backward: bool) -> None:
    ts = _grid(E1, 17, backward)
    sol = _solve(name, E1, ts, dense=True)
    torch.testing.assert_close(sol.evaluate(ts), sol.ys, rtol=1e-12, atol=1e-12)
    assert torch.equal(sol.evaluate(ts[-1]), sol.ys[-1])  # the end: the last step's state
    inside = ts[0] + (ts[-1] - ts[0]) * torch.rand(5, 3, dtype=torch.float64)
    assert sol.evaluate(inside).shape == (5, 3, 2)
    assert sol.derivative(inside).shape == (5, 3, 2)


@pytest.mark.parametrize("name", list(DENSE_ORDER))
def test_derivative_is_the_time_derivative_of_evaluate(name: str) -> None:
    """Central differences of evaluate inside the steps equal derivative (the same formula,
    differentiated in theta)."""
    sol = _solve(name, E1, _grid(E1, 2), step_size=0.1, dense=True)
    steps = sol.interpolation
    t0, h = steps.t0[:, 0], steps.h[:, 0]
    t = t0 + h * torch.tensor([0.23, 0.5, 0.81], dtype=torch.float64)[:, None]
    after, before = t + 1e-4 * h, t - 1e-4 * h
    difference = (sol.evaluate(after) - sol.evaluate(before)) / (after - before)[..., None]
    torch.testing.assert_close(sol.derivative(t), difference, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(DENSE_ORDER))
def test_interpolant_and_derivative_converge_at_the_interpolants_order(name: str) -> None:
    """Halving fixed steps divides the error between steps by 2^min(q+1, p) (q: the
    interpolant's order, p: the method's) and the residual |derivative - f(t, evaluate)| by
    2^min(q, p) (the steps' local errors, O(h^(p+1)), bend the interpolant by O(h^p))."""
    grid = torch.linspace(C1.t0, C1.t1, 997, dtype=torch.float64)[1:-1]
    errors, residuals = [], []
    for step_size in (0.2, 0.1):
        sol = _solve(name, C1, _grid(C1, 2), step_size=step_size, dense=True)
        values = sol.evaluate(grid)
        errors.append(float((values - C1.solution(grid.numpy())).abs().max()))
        slopes = torch.func.vmap(C1.f)(grid, values)
        residuals.append(float((sol.derivative(grid) - slopes).abs().max()))
    q, p = DENSE_ORDER[name], no.METHODS[name]().order
    assert math.log2(errors[0] / errors[1]) > min(q + 1, p) - 0.6, errors
    assert math.log2(residuals[0] / residuals[1]) > min(q, p) - 0.6, residuals


@pytest.mark.parametrize("rtol", [1e-8, 1e-12])
@pytest.mark.parametrize("problem", [E1, C1], ids=lambda p: p.name)
def test_dopri8_error_between_steps_within_10x_its_error_at_the_steps(
    problem: ReferenceProblem, rtol: float
) -> None:
    controller = no.PIController(rtol=rtol, atol=rtol * 1e-2)
    y0, span = problem.y0_tensor(), _grid(problem, 2)
    at = no.solve(problem.f, y0, span, solver="dopri8", controller=controller,
                  saveat=no.SaveAt(steps=True, dense=True))  # fmt: skip
    # the floor: rounding in evaluating the degree-7 polynomial (18 stages) of values ~1
    error_at = max(float((at.ys - problem.solution(at.ts.numpy())).abs().max()), 1e-14)
    grid = _grid(problem, 1001)
    error_between = float((at.evaluate(grid) - problem.solution(grid.numpy())).abs().max())
    assert error_between <= 10 * error_at, (error_between, error_at)


def _rows(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Nonlinear, each row its own stiffness (its scale): samples take different steps."""
    t = t.reshape(-1, 1) if y.ndim == 2 else t
    return -y * (1 + 0.5 * torch.sin(t)) * y.abs().mean(-1, keepdim=True) + 0.1 * torch.cos(t)


@pytest.mark.parametrize("name", ["dopri5", "tsit5", "dopri8", "bosh3", "adaptive_heun"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_per_sample_evaluate_equals_each_sample_solved_alone(name: str, grad: bool) -> None:
    y0 = torch.tensor([[0.3, -0.2], [2.0, 1.0], [6.0, -4.0]], dtype=torch.float64)
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    controller = no.PIController(rtol=1e-5, atol=1e-7)
    times = torch.rand(3, 50, dtype=torch.float64) * 2.0
    with torch.set_grad_enabled(grad):
        batch = no.solve(_rows, y0, ts, solver=name, controller=controller, per_sample=True,
                         dense=True)  # fmt: skip
        assert len(set(batch.stats.sample_accepted.tolist())) > 1  # different steps
        values, slopes = batch.evaluate(times), batch.derivative(times)
        assert values.shape == (3, 50, 2)
        for i in range(3):
            alone = no.solve(_rows, y0[i], ts, solver=name, controller=controller, dense=True)
            torch.testing.assert_close(values[i], alone.evaluate(times[i]), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(
                slopes[i], alone.derivative(times[i]), rtol=1e-11, atol=1e-11
            )
        one = batch.evaluate(times[:, 7])  # one time per sample: (batch,)
        torch.testing.assert_close(one, values[:, 7], rtol=1e-12, atol=1e-12)


def test_per_sample_evaluate_gradient_equals_each_sample_alone() -> None:
    y0 = torch.tensor([[0.3, -0.2], [2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    times = torch.tensor([[0.5, 1.7], [0.1, 1.2]], dtype=torch.float64)
    sol = no.solve(_rows, y0, ts, per_sample=True, dense=True)
    (grad,) = torch.autograd.grad(sol.evaluate(times).square().sum(), y0)
    for i in range(2):
        y0_i = y0.detach()[i].requires_grad_()
        alone = no.solve(_rows, y0_i, ts, dense=True)
        assert alone.stats.n_accepted == int(sol.stats.sample_accepted[i])
        (grad_i,) = torch.autograd.grad(alone.evaluate(times[i]).square().sum(), y0_i)
        torch.testing.assert_close(grad[i], grad_i, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", ["dopri5", "dopri8", "rk4", "radauIIA5"])
def test_gradcheck_evaluate_and_derivative_wrt_y0_and_a_parameter(name: str) -> None:
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    times = torch.tensor([0.13, 0.5, 0.77, 1.0], dtype=torch.float64)

    def run(y0: torch.Tensor, rate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -rate * y * y.abs() + torch.sin(t)

        sol = no.solve(f, y0, ts, solver=name, controller=no.FixedGrid(step_size=0.2),
                       dense=True)  # fmt: skip
        return sol.evaluate(times), sol.derivative(times)

    y0 = torch.tensor([0.7, -1.1], dtype=torch.float64, requires_grad=True)
    rate = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (y0, rate))


@pytest.mark.parametrize("name", ["dopri5", "dopri8", "rk4", "radauIIA5"])
def test_evaluate_is_differentiable_with_respect_to_t(name: str) -> None:
    """gradcheck of evaluate in the query times (its gradient: derivative), also with y0's
    gradient in one pass and per sample; derivative of such a t and a second derivative
    in t are refused."""
    y0 = torch.tensor([0.7, -1.1], dtype=torch.float64, requires_grad=True)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -0.8 * y * y.abs() + torch.sin(t)[..., None] if t.ndim else -0.8 * y * y.abs()

    ts, grid = torch.tensor([0.0, 1.0], dtype=torch.float64), no.FixedGrid(step_size=0.2)
    sol = no.solve(f, y0.detach(), ts, solver=name, controller=grid, dense=True)
    times = torch.tensor([[0.13, 0.5], [0.77, 0.95]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sol.evaluate(t), (times,))
    with pytest.raises(ValueError, match="not differentiable with respect to t"):
        sol.derivative(times)
    with pytest.raises(RuntimeError, match="differentiable once with respect to t"):
        torch.autograd.grad(sol.evaluate(times).sum(), times, create_graph=True)
    sol = no.solve(f, y0, ts, solver=name, controller=grid, dense=True)
    loss = sol.evaluate(times).square().sum()
    grad_t, grad_y0 = torch.autograd.grad(loss, [times, y0], retain_graph=True)
    slope, states = sol.derivative(times.detach()), sol.evaluate(times.detach())
    torch.testing.assert_close(grad_t, (2 * states * slope).sum(-1), rtol=1e-14, atol=1e-14)
    (alone,) = torch.autograd.grad(states.square().sum(), y0)
    torch.testing.assert_close(grad_y0, alone, rtol=1e-14, atol=1e-14)
    if name == "radauIIA5":  # (per sample: the explicit methods)
        return
    rows = y0.detach().expand(3, 2).clone()
    sample = no.solve(f, rows, ts, solver=name, controller=grid, dense=True, per_sample=True)
    each = torch.tensor([0.3, 0.6, 0.9], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: sample.evaluate(t), (each,))


def test_nested_state_evaluate_returns_the_structure() -> None:
    def f(t: torch.Tensor, y: dict) -> dict:
        return {"x": y["v"], "v": -y["x"]}

    y0 = {"x": torch.ones(2, dtype=torch.float64), "v": torch.zeros(2, dtype=torch.float64)}
    sol = no.solve(f, y0, torch.tensor([0.0, 3.0], dtype=torch.float64), dense=True)
    t = torch.tensor([[0.5, 1.0, 2.5]], dtype=torch.float64)
    out, slope = sol.evaluate(t), sol.derivative(t)
    assert set(out) == {"x", "v"} and out["x"].shape == (1, 3, 2)
    torch.testing.assert_close(out["x"], torch.cos(t)[..., None].expand(1, 3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(slope["x"], out["v"], atol=1e-5, rtol=0)


def test_saveat_steps_t1_and_fn() -> None:
    ts = _grid(E1, 9)
    y0 = E1.y0_tensor()
    full = no.solve(E1.f, y0, ts)
    steps = no.solve(E1.f, y0, ts, saveat=no.SaveAt(steps=True))
    assert steps.ts.shape == (full.stats.n_accepted + 1,)
    assert steps.ts[0] == ts[0] and steps.ts[-1] == ts[-1] and bool((steps.ts.diff() > 0).all())
    assert torch.equal(steps.ys[-1], full.ys[-1])
    torch.testing.assert_close(steps.ys, E1.solution(steps.ts.numpy()), atol=1e-4, rtol=0)
    end = no.solve(E1.f, y0, ts, saveat=no.SaveAt(t1=True))
    assert torch.equal(end.ts, ts[-1:]) and torch.equal(end.ys, full.ys[-1:])
    energy = no.solve(E1.f, y0, ts, saveat=no.SaveAt(fn=lambda t, y: (t * y).sum()))
    torch.testing.assert_close(energy.ys, (ts[:, None] * full.ys).sum(1), rtol=1e-14, atol=0)
    both = no.solve(E1.f, y0, ts, saveat=no.SaveAt(t1=True, dense=True, fn=lambda t, y: y[0]))
    assert both.ys.shape == (1,) and both.evaluate(ts).shape == (9, 2)


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_per_sample_saveat_steps_equals_each_sample_alone(grad: bool) -> None:
    """Per sample, every sample's own steps (NaN after its last), as solving it alone;
    with per-sample spans too, and differentiable."""
    y0 = torch.tensor([[0.3, -0.2], [2.0, 1.0], [6.0, -4.0]], dtype=torch.float64)
    controller = no.PIController(rtol=1e-5, atol=1e-7)
    shared = torch.tensor([0.0, 2.0], dtype=torch.float64)
    spans = torch.tensor([[0.0, 2.0], [0.5, 1.0], [1.0, 3.0]], dtype=torch.float64)
    for ts in (shared, spans):
        start = y0.clone().requires_grad_(grad)
        sol = no.solve(_rows, start, ts, controller=controller, per_sample=True,
                       saveat=no.SaveAt(steps=True))  # fmt: skip
        counts = sol.stats.sample_accepted
        assert len(set(counts.tolist())) > 1  # different numbers of steps
        assert sol.ts.shape == (3, int(counts.max()) + 1)
        assert sol.ys.shape == (int(counts.max()) + 1, 3, 2)
        for i in range(3):
            row = ts[i] if ts.ndim == 2 else ts
            alone = no.solve(_rows, y0[i], row, controller=controller,
                             saveat=no.SaveAt(steps=True))  # fmt: skip
            n = int(counts[i]) + 1
            torch.testing.assert_close(sol.ts[i, :n], alone.ts, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(sol.ys[:n, i], alone.ys, rtol=1e-10, atol=1e-10)
            assert bool(sol.ts[i, n:].isnan().all()) and bool(sol.ys[n:, i].isnan().all())
        if grad:  # the last saved state of sample 0 is differentiable in its start
            (g,) = torch.autograd.grad(sol.ys[int(counts[0]), 0].sum(), start)
            assert bool(g[0].abs().sum() > 0) and bool((g[1:] == 0).all())


def test_saveat_fn_differentiable_and_nested() -> None:
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sol = no.solve(lambda t, y: -y, y0, ts, saveat=no.SaveAt(fn=lambda t, y: {"s": y.sum()}))
    assert sol.ys["s"].shape == (3,)
    (grad,) = torch.autograd.grad(sol.ys["s"][-1], y0)
    torch.testing.assert_close(grad, torch.full((2,), math.exp(-1.0), dtype=torch.float64))


def test_device_loop_keeps_the_same_dense_solution() -> None:
    ts, times = _grid(E1, 5), _grid(E1, 33)
    host = _solve("tsit5", E1, ts, dense=True)
    device = _solve("tsit5", E1, ts, dense=True, device_loop=True)
    assert device.stats.n_accepted == host.stats.n_accepted
    torch.testing.assert_close(device.evaluate(times), host.evaluate(times), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        device.derivative(times), host.derivative(times), rtol=1e-9, atol=1e-9
    )


@pytest.mark.parametrize("compile", ["step", True])
@pytest.mark.usefixtures("aot_eager")  # (which steps are kept, not inductor's kernels)
def test_compiled_solves_keep_the_same_dense_solution(compile) -> None:
    """compile="step" keeps the steps; compile=True (the whole solve one graph, which keeps
    none) compiles each step instead."""
    ts = _grid(E1, 5)
    eager = _solve("dopri5", E1, ts, dense=True)
    with torch.no_grad():
        stepped = _solve("dopri5", E1, ts, dense=True, compile=compile)
    times = _grid(E1, 33)
    torch.testing.assert_close(
        stepped.evaluate(times), eager.evaluate(times), rtol=1e-12, atol=1e-12
    )


def test_bad_input() -> None:
    y0 = torch.tensor([1.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y

    sol = no.solve(f, y0, ts, dense=True)
    with pytest.raises(ValueError, match="outside the solution's span from 0.0 to 1.0"):
        sol.evaluate(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="solve with dense=True"):
        no.solve(f, y0, ts).evaluate(0.5)
    with pytest.raises(ValueError, match="choose one"):
        no.SaveAt(t1=True, steps=True)
    with pytest.raises(TypeError, match="callable"):
        no.SaveAt(fn=3)
    with pytest.raises(TypeError, match="saveat must be a no.SaveAt"):
        no.solve(f, y0, ts, saveat="dense")
    with pytest.raises(TypeError, match="dense must be True or False"):
        no.solve(f, y0, ts, dense="yes")
    with pytest.raises(ValueError, match=r"needs gradient=Direct\(\)"):
        no.solve(f, y0, ts, dense=True, gradient=no.Backsolve())
    with pytest.raises(ValueError, match="does not support events"):
        no.solve(f, y0, ts, dense=True, event=no.Event(lambda t, y: y - 0.5))
    # t1 and fn with an event: refused rather than ignored (ys would be the states at ts)
    for saveat, fix in ((no.SaveAt(t1=True), "event_y"), (no.SaveAt(fn=torch.sin), "apply fn")):
        with pytest.raises(ValueError, match=f"does not support events.*{fix}"):
            no.solve(f, y0, ts, saveat=saveat, event=no.Event(lambda t, y: y[0] - 0.5))
        with pytest.raises(ValueError, match="does not support events"):
            no.solve(f, y0[None], ts, saveat=saveat, per_sample=True,
                     event=no.Event(lambda t, y: y[:, 0] - 0.5))  # fmt: skip
    with pytest.raises(ValueError, match="needs a span"):
        no.solve(f, y0, ts[:1], dense=True)
    with pytest.raises(ValueError, match="dense is not supported under torch.func.vmap"):
        torch.func.vmap(lambda y: no.solve(f, y, ts, dense=True).ys)(torch.ones(2, 1))
    batch = torch.ones(3, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="skip_finished"):
        no.solve(f, batch, ts, per_sample="skip_finished", dense=True)
    per_sample = no.solve(f, batch, ts, per_sample=True, dense=True)
    with pytest.raises(ValueError, match=r"t of shape \(3,\) or \(3, n\)"):
        per_sample.evaluate(torch.tensor([0.5, 0.6]))
    with pytest.raises(ValueError, match=r"sample 1"):
        per_sample.evaluate(torch.tensor([0.5, -0.1, 0.2]))


def test_saved_steps_carry_the_derivatives_with_respect_to_the_times():
    """SaveAt(steps=True): the last saved state is y(ts[-1]) and carries d/dts[-1] (and the
    first, through y0, d/dts[0]), as the outputs at ts do: y' = -y from 1."""
    grads = []
    for saveat in (None, no.SaveAt(steps=True)):
        ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64, requires_grad=True)
        sol = no.solve(lambda t, y: -y, torch.ones(2, dtype=torch.float64), ts, saveat=saveat)
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), ts)[0])
    expected = torch.tensor([2 * math.exp(-1), 0.0, -2 * math.exp(-1)], dtype=torch.float64)
    for grad in grads:
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-8)


def test_complex_or_bool_times_are_refused() -> None:
    """A complex t's imaginary part would be dropped and a bool t read as 0 and 1: both are
    refused, by evaluate and derivative, naming the dtype."""
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    sol = no.solve(lambda t, y: -y, torch.ones(1, dtype=torch.float64), ts, dense=True)
    for t in (torch.tensor([0.5 + 0.25j]), 0.5 + 0.25j, torch.tensor([True])):
        with pytest.raises(TypeError, match="Solution.evaluate needs real times, got a torch"):
            sol.evaluate(t)
        with pytest.raises(TypeError, match="Solution.derivative needs real times"):
            sol.derivative(t)
    expected = torch.tensor([math.exp(-0.5)], dtype=torch.float64)
    torch.testing.assert_close(sol.evaluate(0.5), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_sample", [False, True])
def test_16_bit_states_evaluate_in_their_dtype(dtype: torch.dtype, per_sample: bool) -> None:
    """A float16/bfloat16 state (guide S2) has a dense solution too: evaluate and derivative
    return its dtype, within its resolution of exp(-t), and differentiate to y0."""
    y0 = torch.ones(3, 2, dtype=dtype, requires_grad=True)
    sol = no.solve(
        lambda t, y: -y,
        y0,
        torch.tensor([0.0, 1.0]),
        controller=no.PIController(rtol=1e-2, atol=1e-3),
        dense=True,
        per_sample=per_sample,
    )
    t = torch.full((3,), 0.5) if per_sample else torch.tensor([0.25, 0.5, 1.0])
    value, slope = sol.evaluate(t), sol.derivative(t)
    assert value.dtype == slope.dtype == dtype
    expected = torch.exp(-t).reshape(*t.shape, *[1] * (value.ndim - t.ndim)).expand(value.shape)
    tol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(value.float(), expected, rtol=tol, atol=tol)
    torch.testing.assert_close(slope.float(), -expected, rtol=tol, atol=tol)
    value.float().sum().backward()
    assert y0.grad is not None and y0.grad.dtype == dtype
