"""The one engine: execution choices, torch.func.vmap over solve, the whole solve compiled."""

from __future__ import annotations

import math
import re
import shutil
import warnings

import pytest
import torch

import neuralode as no
from neuralode import odeint

TS = torch.linspace(0.0, 3.0, 5, dtype=torch.float64)
TOL = dict(rtol=1e-8, atol=1e-10)
STEP = dict(step_size=0.1)

needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Van der Pol, mu = 3, on one problem's state (2,)."""
    return torch.stack([y[1], 3.0 * (1 - y[0] ** 2) * y[1] - y[0]])


def starts(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def test_vmap_solves_each_problem_with_its_own_steps():
    """vmap over odeint equals solving each problem alone (its own steps: the same as a
    per-sample solve of the batch, bit for bit) for an adaptive and a fixed-step method."""
    y0s = starts()
    out = torch.func.vmap(lambda y: odeint(vdp, y, TS, **TOL))(y0s)
    alone = torch.stack([odeint(vdp, y, TS, **TOL) for y in y0s])
    assert out.shape == alone.shape == (5, 5, 2)
    torch.testing.assert_close(out, alone, rtol=1e-11, atol=1e-12)
    rows = no.solve(
        lambda t, y: torch.func.vmap(vdp)(t, y), y0s, TS,
        controller=no.PIController(**TOL), per_sample=True,
    )  # fmt: skip
    assert torch.equal(out, rows.ys.transpose(0, 1))
    rk4 = dict(method="rk4", options=dict(step_size=0.01))
    fixed = torch.func.vmap(lambda y: odeint(vdp, y, TS, **rk4))(y0s)
    for y, row in zip(y0s, fixed):
        torch.testing.assert_close(row, odeint(vdp, y, TS, **rk4), rtol=1e-13, atol=1e-14)


def test_vmap_composes_with_grad_jacrev_and_jvp():
    y0s = starts(3)

    def end(y: torch.Tensor) -> torch.Tensor:
        return odeint(vdp, y, TS[:3], **TOL)[-1]

    def batch_end(ys: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(end)(ys)

    grad = torch.func.grad(lambda ys: batch_end(ys).pow(2).sum())(y0s)
    grad_alone = torch.stack([torch.func.grad(lambda y: end(y).pow(2).sum())(y) for y in y0s])
    torch.testing.assert_close(grad, grad_alone, rtol=1e-9, atol=1e-10)
    jac = torch.func.jacrev(batch_end)(y0s)  # (3, 2, 3, 2): block diagonal
    for i, y in enumerate(y0s):
        torch.testing.assert_close(jac[i, :, i], torch.func.jacrev(end)(y), rtol=1e-9, atol=1e-10)
    off = jac.clone()
    for i in range(3):
        off[i, :, i] = 0
    assert torch.equal(off, torch.zeros_like(off))
    tangent = torch.ones_like(y0s)
    _, out = torch.func.jvp(batch_end, (y0s,), (tangent,))
    torch.testing.assert_close(out, torch.einsum("iajb,jb->ia", jac, tangent), rtol=1e-6, atol=1e-7)


def test_vmap_pairs_captured_per_problem_parameters_with_their_problem():
    """f may capture a tensor batched by the same vmap (a per-problem parameter): each
    problem sees its own value, in per-sample mode and as one fixed-step system, and
    gradients with respect to the parameters flow outside the vmap."""
    y0s = starts(3)
    mus = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def end(y: torch.Tensor, mu: torch.Tensor, **kw) -> torch.Tensor:
        return odeint(lambda t, z: -mu * z * torch.cos(t), y, TS, **kw)[-1]

    exact = y0s * torch.exp(-mus[:, None] * torch.sin(TS[-1]))
    torch.testing.assert_close(torch.func.vmap(end)(y0s, mus), exact, rtol=1e-7, atol=1e-9)
    rk4 = dict(method="rk4", options=dict(step_size=0.01))
    fixed = torch.func.vmap(lambda y, mu: end(y, mu, **rk4))(y0s, mus)
    torch.testing.assert_close(fixed, exact, rtol=1e-8, atol=1e-9)
    grad = torch.func.grad(lambda m: torch.func.vmap(end)(y0s, m).sum())(mus)
    alone = torch.stack(
        [torch.func.grad(lambda m, y=y: end(y, m).sum())(mu) for y, mu in zip(y0s, mus)]
    )
    torch.testing.assert_close(grad, alone, rtol=1e-10, atol=1e-12)
    exact_grad = (-torch.sin(TS[-1]) * exact).sum(1)
    torch.testing.assert_close(grad, exact_grad, rtol=1e-5, atol=1e-7)


def test_vmap_runs_every_method_each_problem_alone():
    """Methods per-sample mode cannot run (implicit, multistep) solve the vmapped problems
    one after the other, each equal to solving it alone; gradients compose outside."""
    y0s, ts = starts(2), TS[:3]
    for method, options in (("radau", {}), ("trbdf2", STEP), ("implicit_adams", STEP)):
        kw = dict(method=method, rtol=1e-6, atol=1e-8, options=options)
        out = torch.func.vmap(lambda y, kw=kw: odeint(vdp, y, ts, **kw))(y0s)
        assert torch.equal(out, torch.stack([odeint(vdp, y, ts, **kw) for y in y0s])), method
    sol = torch.func.vmap(lambda y: no.solve(vdp, y, ts, solver="radau").ys)(y0s)
    assert sol.shape == (2, 3, 2)

    def end(y: torch.Tensor) -> torch.Tensor:
        return odeint(vdp, y, ts, method="radau", rtol=1e-5, atol=1e-7)[-1].sum()

    grad = torch.func.grad(lambda ys: torch.func.vmap(end)(ys).sum())(y0s)
    for g, y in zip(grad, y0s):
        torch.testing.assert_close(g, torch.func.grad(end)(y), rtol=1e-9, atol=1e-10)


def test_vmap_over_the_times_gives_each_problem_its_own_span():
    """vmap over t (with or without y0): each problem is solved on its own times, as alone;
    adaptive explicit methods as per-sample spans, the others one by one."""
    y0s = starts(3)
    times = torch.stack([TS, 0.5 * TS, 1.0 - TS])  # forward, shorter, backward
    for kw in (TOL, dict(method="rk4", options=STEP), dict(method="radau", rtol=1e-6)):
        out = torch.func.vmap(lambda y, t, kw=kw: odeint(vdp, y, t, **kw))(y0s, times)
        alone = torch.stack([odeint(vdp, y, t, **kw) for y, t in zip(y0s, times)])
        torch.testing.assert_close(out, alone, rtol=1e-12, atol=1e-13)
    forward = torch.stack([TS, 0.5 * TS, TS + 1.0])  # one direction: per-sample spans
    out = torch.func.vmap(lambda y, t: odeint(vdp, y, t, **TOL))(y0s, forward)
    rows = no.solve(
        lambda t, y: torch.func.vmap(vdp)(t, y), y0s, forward,
        controller=no.PIController(**TOL), per_sample=True,
    )  # fmt: skip
    assert torch.equal(out, rows.ys.transpose(0, 1))
    shared_y0 = torch.func.vmap(
        lambda t: no.solve(vdp, y0s[0], t, **{"controller": no.PIController(**TOL)}).ys
    )(times)
    for row, t in zip(shared_y0, times):
        torch.testing.assert_close(row, odeint(vdp, y0s[0], t, **TOL), rtol=1e-12, atol=1e-13)


def test_vmap_refuses_what_it_cannot_batch():
    y0s = starts(3)
    mus = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    # a fixed-step implicit method evaluates f first inside its Jacobian's torch.func.vjp
    for kw in (dict(method="radau"), dict(method="trbdf2", options=STEP)):
        with pytest.raises(ValueError, match=r"solves the problems one after the other .* carry"):
            torch.func.vmap(lambda y, mu, kw=kw: odeint(lambda t, z: -mu * z, y, TS, **kw))(
                y0s, mus
            )


# -- transforms inside vmap: vmap(grad), vmap(jacrev), vmap(jvp), vmap(hessian) --------------

F64 = torch.float64
FIXED = dict(solver="rk4", controller=no.FixedGrid(step_size=0.1))


def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A nonlinear field whose problems need different steps (stiffer with larger y)."""
    return torch.stack([y[1], -(1 + y[0] ** 2) * y[0] - 0.5 * y[1]]) * torch.cos(t)


def solve_kw(method: str) -> dict:
    return FIXED if method == "rk4" else dict(solver=method)


def per_problem_grads(loss, y0s: torch.Tensor) -> torch.Tensor:
    """torch.autograd.grad of each problem solved alone (the host loop, no transform)."""
    out = []
    for y in y0s:
        y = y.clone().requires_grad_()
        out.append(torch.autograd.grad(loss(y), y)[0])
    return torch.stack(out)


@pytest.mark.parametrize(
    "method", ["dopri5", pytest.param("tsit5", marks=pytest.mark.slow), "rk4"]
)  # (tsit5: the adaptive explicit path of dopri5)
def test_grad_jacrev_and_jvp_inside_vmap_equal_each_problem_alone(method):
    """vmap(grad(loss)), vmap(jacrev) and vmap(jvp) of a solve from y0: each vmapped problem
    takes its own steps (the steps of the batch add up to those of the problems alone) and
    its derivatives equal torch.autograd's of the problem solved alone."""
    y0s = starts(4)
    steps: list[int] = []

    def loss(y: torch.Tensor) -> torch.Tensor:
        sol = no.solve(decay, y, TS, **solve_kw(method))
        steps.append(sol.stats.n_steps)
        return sol.ys[1:].pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(y0s)
    batch_steps = steps.pop()
    alone = per_problem_grads(loss, y0s)
    torch.testing.assert_close(grads, alone, rtol=1e-10, atol=1e-10)
    if method != "rk4":  # each problem its own steps (on fixed steps: one shared grid)
        assert batch_steps == sum(steps) and len(set(steps)) > 1

    def end(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS, **solve_kw(method)).ys[-1]

    jac = torch.func.vmap(torch.func.jacrev(end))(y0s)
    for j, y in zip(jac, y0s):
        expected = torch.autograd.functional.jacobian(end, y)
        torch.testing.assert_close(j, expected, rtol=1e-10, atol=1e-10)
    tangents = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    values, derivative = torch.func.vmap(lambda y, v: torch.func.jvp(loss, (y,), (v,)))(
        y0s, tangents
    )
    torch.testing.assert_close(values, torch.stack([loss(y) for y in y0s]), rtol=1e-12, atol=0)
    torch.testing.assert_close(derivative, (alone * tangents).sum(1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_hessian_inside_vmap_equals_each_problem_alone(method):
    y0s = starts(2)

    def loss(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS[:3], **solve_kw(method)).ys[-1].pow(2).sum()

    hessians = torch.func.vmap(torch.func.hessian(loss))(y0s)
    for h, y in zip(hessians, y0s):
        expected = torch.autograd.functional.hessian(loss, y)
        torch.testing.assert_close(h, expected, rtol=1e-9, atol=1e-10)


def test_grad_inside_vmap_of_the_extra_dense_stage_methods_equals_the_device_loop():
    """dopri8 interpolates with extra stages, evaluated once per step for every problem
    that needs them; each problem equals its solve alone in the device loop (the loop vmap
    runs: the host loop's dopri8 steps differ from it by ~1e-11)."""
    y0s = starts(3)

    def loss(y: torch.Tensor, **kw) -> torch.Tensor:
        return no.solve(decay, y, TS, solver="dopri8", **kw).ys[1:].pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(y0s)
    alone = per_problem_grads(lambda y: loss(y, device_loop=True), y0s)
    torch.testing.assert_close(grads, alone, rtol=1e-12, atol=1e-12)


def test_grad_inside_vmap_matches_finite_differences():
    """The gradient of each vmapped problem against central differences of its loss (at a
    tight tolerance, so that the discrete solve's gradient is the flow's to ~1e-7)."""
    y0s = starts(3)
    tight = dict(controller=no.PIController(rtol=1e-10, atol=1e-12))

    def loss(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS, **tight).ys[-1].pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(y0s)
    eps = 1e-5
    for g, y in zip(grads, y0s):
        for k in range(2):
            e = torch.zeros(2, dtype=F64)
            e[k] = eps
            difference = (loss(y + e) - loss(y - e)) / (2 * eps)
            torch.testing.assert_close(g[k], difference, rtol=1e-6, atol=1e-7)


def test_grad_inside_vmap_with_respect_to_captured_parameters():
    """vmap(grad) with respect to a network's parameters passed by functional_call: one
    parameter set per problem, with each problem's y0 or one shared y0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    net = net.double()
    base = {name: p.detach() for name, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(2)
    params = {
        name: p + 0.1 * torch.randn(3, *p.shape, dtype=F64, generator=gen)
        for name, p in base.items()
    }
    y0s = starts(3)

    def loss(p: dict, y: torch.Tensor) -> torch.Tensor:
        field = lambda t, z: torch.func.functional_call(net, p, (z,))  # noqa: E731
        return no.solve(field, y, TS).ys[-1].pow(2).sum()

    own = torch.func.vmap(torch.func.grad(loss))(params, y0s)
    shared = torch.func.vmap(torch.func.grad(loss), in_dims=(0, None))(params, y0s[0])
    for i in range(3):
        p = {name: value[i].clone().requires_grad_() for name, value in params.items()}
        for grads, y in ((own, y0s[i]), (shared, y0s[0])):
            expected = torch.autograd.grad(loss(p, y), list(p.values()))
            for name, e in zip(p, expected):
                torch.testing.assert_close(grads[name][i], e, rtol=1e-10, atol=1e-12)


def test_grad_inside_vmap_through_rejected_attempts_outside_fs_domain():
    """A first step of 1 overshoots below y = 0, where f = -k sqrt(y) sqrt(y) is NaN: the
    rejected attempts' rows are kept out of the graph under vmap(grad) too, and each
    problem's gradients are those of the standard loop solving it alone."""
    ts = torch.tensor([0.0, 4.0], dtype=F64)
    controller = no.PIController(rtol=1e-6, atol=1e-8, first_step=1.0)

    def loss(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        field = lambda t, z: -k * torch.sqrt(z) * torch.sqrt(z)  # noqa: E731
        return no.solve(field, y, ts, controller=controller).ys[-1].sum()

    y0s, k = torch.tensor([[1.0], [2.0], [0.5]], dtype=F64), torch.tensor(3.0, dtype=F64)
    got = torch.func.vmap(torch.func.grad(loss, argnums=(0, 1)), in_dims=(0, None))(y0s, k)
    for i in range(3):
        y, k_i = y0s[i].clone().requires_grad_(), k.clone().requires_grad_()
        expected = torch.autograd.grad(loss(y, k_i), (y, k_i))
        torch.testing.assert_close(got[0][i], expected[0], rtol=1e-9, atol=0)
        torch.testing.assert_close(got[1][i], expected[1], rtol=1e-9, atol=0)


def test_compile_under_vmap_warns_that_the_eager_loop_runs():
    """torch cannot batch a compiled solve: under vmap the problems run the eager per-sample
    loop, which the warning says, with the same results as without compile."""
    y0s = starts(3)
    eager = torch.func.vmap(lambda y: no.solve(decay, y, TS).ys)(y0s)
    for compile in (True, "step"):
        with pytest.warns(UserWarning, match="does not apply under torch.func.vmap"):
            out = torch.func.vmap(lambda y, c=compile: no.solve(decay, y, TS, compile=c).ys)(y0s)
        assert torch.equal(out, eager)


def test_grad_inside_vmap_over_odeint():
    """The torchdiffeq façade: vmap(grad) over odeint, adaptive and fixed-step."""
    y0s = starts(3)
    for kw in (TOL, dict(method="rk4", options=STEP)):

        def loss(y: torch.Tensor, kw=kw) -> torch.Tensor:
            return odeint(decay, y, TS, **kw)[-1].sum()

        grads = torch.func.vmap(torch.func.grad(loss))(y0s)
        torch.testing.assert_close(grads, per_problem_grads(loss, y0s), rtol=1e-10, atol=1e-12)


def test_nested_vmaps_solve_each_problem_alone():
    """vmap(vmap(solve)): the inner vmap's problems as rows, beneath the outer vmap."""
    y0s = starts(6).reshape(2, 3, 2)
    for kw in (dict(solver="dopri5"), FIXED):
        out = torch.func.vmap(torch.func.vmap(lambda y, kw=kw: no.solve(decay, y, TS, **kw).ys))(
            y0s
        )
        for i in range(2):
            for j in range(3):
                alone = no.solve(decay, y0s[i, j], TS, **kw).ys
                torch.testing.assert_close(out[i, j], alone, rtol=1e-12, atol=1e-13)


def test_vmap_of_a_nested_state_on_adaptive_steps_equals_each_problem_alone():
    """A nested state's error is the max of its tensors' RMS norms, not the RMS of the
    concatenated row: vmap (one nested per-sample solve) and vmap(grad) over a (position,
    velocity) tuple take each problem's own steps as alone and equal it; f is called once
    per attempt of the batch, not once per problem."""
    calls = []

    def counted(t: torch.Tensor, y: tuple) -> tuple:
        calls.append(1)
        return split(t, y)

    def split(t: torch.Tensor, y: tuple) -> tuple:
        return y[1], -(1 + y[0] ** 2) * y[0]

    y0s = starts(3)
    out = torch.func.vmap(lambda p, v: no.odeint(counted, (p, v), TS))(y0s[:, 0], y0s[:, 1])
    batched, calls[:] = len(calls), []
    for i, (p, v) in enumerate(y0s):
        for got, alone in zip(out, no.odeint(counted, (p, v), TS)):
            torch.testing.assert_close(got[i], alone, rtol=1e-14, atol=1e-14)
    assert batched < len(calls) / 2  # (one call per attempt of the batch)

    def end(p: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return no.odeint(split, (p, v), TS)[0][-1]

    grads = torch.func.vmap(torch.func.grad(end))(y0s[:, 0], y0s[:, 1])
    for i, (p, v) in enumerate(y0s):
        p = p.clone().requires_grad_()
        expected = torch.autograd.grad(end(p, v), p)[0]
        torch.testing.assert_close(grads[i], expected, rtol=1e-12, atol=1e-14)


def test_failures_inside_vmap_raise_or_give_each_problem_its_status():
    """A problem that fails under vmap(grad) raises the engine's error naming it; with
    throw=False each problem gets its own status, the others their values."""

    def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y**2

    y0s = torch.tensor([[0.1], [1.0]], dtype=F64)  # the second blows up at t = 1
    ts = torch.linspace(0.0, 2.0, 3, dtype=F64)

    def loss(y: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
        sol = no.solve(blowup, y, ts, **kw)
        return sol.ys[-1].sum().nan_to_num(), sol.status

    with pytest.raises(no.StepSizeUnderflowError, match="sample 1"):
        torch.func.vmap(torch.func.grad(loss, has_aux=True))(y0s)
    grads, status = torch.func.vmap(torch.func.grad(loss, has_aux=True))(y0s, throw=False)
    assert status.tolist() == [0, int(no.Status.STEP_SIZE_UNDERFLOW)]
    expected = 1 / (1 - 2 * 0.1) ** 2  # y(2) = y0 / (1 - 2 y0)
    torch.testing.assert_close(grads[0, 0], torch.tensor(expected, dtype=F64), rtol=1e-3, atol=0)


def test_fixed_steps_under_vmap_give_each_problem_its_status():
    """vmap with fixed explicit steps solves the batch as one system: with throw=False each
    problem still gets the status it gets alone (NON_FINITE only for the one that blows
    up), and max_steps, reached on the shared grid, stops every problem."""

    def blowup(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y**2

    y0s = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)  # the second blows up at t = 1
    ts = torch.linspace(0.0, 1.5, 4, dtype=F64)
    fixed = dict(solver=no.RK4(), controller=no.FixedGrid(step_size=0.01), throw=False)
    expected = {None: [0, int(no.Status.NON_FINITE), 0], 50: [int(no.Status.MAX_STEPS)] * 3}
    for max_steps, codes in expected.items():
        kw = dict(fixed, max_steps=max_steps)
        status = torch.func.vmap(lambda y, kw=kw: no.solve(blowup, y, ts, **kw).status)(y0s)
        assert status.tolist() == codes
        assert [int(no.solve(blowup, y, ts, **kw).status) for y in y0s] == codes


ONE_BY_ONE = {
    "radau": dict(solver="radau", controller=no.PIController(rtol=1e-5, atol=1e-7)),
    "trbdf2": dict(solver="trbdf2", controller=no.FixedGrid(step_size=0.1)),
    "implicit_adams": dict(solver="implicit_adams", controller=no.FixedGrid(step_size=0.1)),
    "explicit_adams": dict(solver="explicit_adams", controller=no.FixedGrid(step_size=0.05)),
    "dopri5 with norm": dict(solver="dopri5", norm="max"),
    "dopri5 with perturb": dict(solver="dopri5", perturb=True),
}


@pytest.mark.parametrize("name", list(ONE_BY_ONE))
def test_methods_the_device_loop_cannot_run_solve_each_problem_alone_inside_vmap(name):
    """Implicit and multistep methods (and options the device loop lacks) under vmap(grad)
    and vmap(jacrev) solve each problem alone, taken out of the vmap: its own steps (they
    add up to those of the problems alone), its derivatives those of the problem alone."""
    options = ONE_BY_ONE[name]
    y0s = starts(3)
    steps: list[int] = []

    def loss(y: torch.Tensor) -> torch.Tensor:
        sol = no.solve(decay, y, TS[:3], **options)
        steps.append(sol.stats.n_steps)
        return sol.ys[1:].pow(2).sum()

    grads = torch.func.vmap(torch.func.grad(loss))(y0s)
    batch_steps = steps.pop()
    torch.testing.assert_close(grads, per_problem_grads(loss, y0s), rtol=1e-10, atol=1e-10)
    assert batch_steps == sum(steps)

    def end(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS[:3], **options).ys[-1]

    jac = torch.func.vmap(torch.func.jacrev(end))(y0s)
    for j, y in zip(jac, y0s):
        expected = torch.autograd.functional.jacobian(end, y)
        torch.testing.assert_close(j, expected, rtol=1e-10, atol=1e-10)


def test_forward_mode_inside_vmap_with_a_multistep_method_and_refused_for_implicit_rk():
    """vmap(jvp) and vmap(hessian) of a multistep solve equal each problem's alone;
    implicit Runge-Kutta methods differentiate their stages in reverse mode only, so
    forward mode is refused (with or without vmap) instead of returning a wrong tangent."""
    y0s = starts(2)
    options = ONE_BY_ONE["implicit_adams"]

    def loss(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS[:3], **options).ys[-1].pow(2).sum()

    tangents = torch.ones_like(y0s)
    _, derivative = torch.func.vmap(lambda y, v: torch.func.jvp(loss, (y,), (v,)))(y0s, tangents)
    alone = per_problem_grads(loss, y0s)
    torch.testing.assert_close(derivative, alone.sum(1), rtol=1e-10, atol=1e-10)
    hessians = torch.func.vmap(torch.func.hessian(loss))(y0s)
    for h, y in zip(hessians, y0s):
        expected = torch.autograd.functional.hessian(loss, y)
        torch.testing.assert_close(h, expected, rtol=1e-9, atol=1e-10)

    def radau(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS, solver="radau").ys[-1].sum()

    with pytest.raises(ValueError, match="forward-mode differentiation .* is not supported"):
        torch.func.vmap(lambda y: torch.func.jvp(radau, (y,), (y,)))(y0s)
    with pytest.raises(ValueError, match="forward-mode differentiation"):
        torch.func.jvp(radau, (y0s[0],), (y0s[0],))


def test_forward_mode_inside_vmap_with_a_tangent_shared_by_every_problem():
    """vmap(jvp) whose tangent is not batched by the vmap (one direction for every problem)
    through a method solved one by one: each problem's tangent equals its jvp alone, and
    an implicit Runge-Kutta method gives its forward-mode refusal."""
    y0s = starts(2)
    options = ONE_BY_ONE["explicit_adams"]
    tangent = torch.tensor([0.3, -0.7], dtype=F64)

    def end(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS[:3], **options).ys[-1]

    _, derivative = torch.func.vmap(lambda y: torch.func.jvp(end, (y,), (tangent,)))(y0s)
    alone = torch.stack([torch.func.jvp(end, (y,), (tangent,))[1] for y in y0s])
    torch.testing.assert_close(derivative, alone, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(alone[0], alone[1])

    def radau(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS[:3], solver="radau").ys[-1]

    with pytest.raises(ValueError, match="forward-mode differentiation .* is not supported"):
        torch.func.vmap(lambda y: torch.func.jvp(radau, (y,), (tangent,)))(y0s)


def test_second_derivatives_through_implicit_rk_are_refused():
    """Reverse over reverse through an implicit Runge-Kutta step would differentiate the
    stage hook's result as a constant (a wrong Hessian): refused; the first derivative and
    a multistep method's second derivative (against finite differences) are unaffected."""
    y0 = starts(1)[0].clone().requires_grad_()

    def gradient(solver: str, y: torch.Tensor, create_graph: bool) -> torch.Tensor:
        end = no.solve(decay, y, TS[:3], solver=solver).ys[-1]
        return torch.autograd.grad(end.pow(2).sum(), y, create_graph=create_graph)[0]

    gradient("radau", y0, create_graph=False)  # first derivatives as before
    with pytest.raises(RuntimeError, match="second derivatives .* are not supported"):
        torch.autograd.grad(gradient("radau", y0, create_graph=True).sum(), y0)
    with pytest.raises(RuntimeError, match="second derivatives .* are not supported"):
        torch.func.jacrev(
            torch.func.grad(lambda y: no.solve(decay, y, TS[:3], solver="radau").ys[-1].sum())
        )(y0.detach())
    second = torch.autograd.grad(gradient("implicit_adams", y0, True).sum(), y0)[0]
    eps, y = 1e-6, y0.detach()
    bump = torch.eye(y.numel(), dtype=y.dtype).reshape(-1, *y.shape)
    expected = torch.stack(
        [
            (
                gradient("implicit_adams", (y + eps * e).requires_grad_(), False)
                - gradient("implicit_adams", (y - eps * e).requires_grad_(), False)
            ).sum()
            / (2 * eps)
            for e in bump
        ]
    ).reshape(y.shape)
    torch.testing.assert_close(second, expected, rtol=1e-5, atol=1e-7)


def test_grad_inside_vmap_over_the_times_gives_each_problem_its_own_span():
    """vmap over t with grad inside: each problem solved alone on its own times."""
    y0s = starts(3)
    times = torch.stack([TS, 0.5 * TS, 1.0 - TS])  # forward, shorter, backward
    for kw in (dict(solver="dopri5"), ONE_BY_ONE["radau"]):

        def loss(y: torch.Tensor, t: torch.Tensor, kw=kw) -> torch.Tensor:
            return no.solve(decay, y, t, **kw).ys[-1].sum()

        grads = torch.func.vmap(torch.func.grad(loss))(y0s, times)
        for g, y, t in zip(grads, y0s, times):
            y = y.clone().requires_grad_()
            expected = torch.autograd.grad(loss(y, t), y)[0]
            torch.testing.assert_close(g, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(gradient=no.Backsolve()), "gradient=Backsolve.*Use gradient=Direct"),
        (dict(gradient="checkpointed"), "gradient=Checkpointed.*Use gradient=Direct"),
        (dict(event=no.Event(lambda t, y: y[0] - 5.0)), "event is not supported"),
    ],
)
def test_what_cannot_run_beneath_vmap_is_refused_with_the_fix(options, message):
    class Field(torch.nn.Module):  # parameters for Backsolve and Checkpointed
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(2, 2, dtype=F64)

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.linear(y)

    field = Field()

    def loss(y: torch.Tensor) -> torch.Tensor:
        return no.solve(field, y, TS, **options).ys[-1].sum()

    with pytest.raises(ValueError, match=message) as error:
        torch.func.vmap(torch.func.grad(loss))(starts(2))
    if "event" in options:  # (the adjoint's Functions have no rule under any transform)
        assert "torch.func.jacrev(torch.func.vmap(f))" in str(error.value)


def test_skip_finished_beneath_vmap_is_refused_with_the_fix():
    """per_sample='skip_finished' beneath vmap (vmap(grad)) would call f on the running rows
    only, a dynamic shape vmap cannot batch: refused naming per_sample=True, which runs."""

    def rows(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -4.0 * y[:, 0]], 1)

    def loss(y: torch.Tensor, per_sample: bool | str) -> torch.Tensor:
        return no.solve(rows, y, TS, per_sample=per_sample).ys[-1].sum()

    y0s = torch.randn(3, 4, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="per_sample='skip_finished'.*per_sample=True runs"):
        torch.func.vmap(torch.func.grad(lambda y: loss(y, "skip_finished")))(y0s)
    torch.func.vmap(torch.func.grad(lambda y: loss(y, True)))(y0s)


@pytest.mark.parametrize(
    ("transform", "options", "message"),
    [
        ("vmap", dict(gradient=no.Backsolve(())), "gradient=Backsolve.*Use gradient=Direct"),
        ("grad", dict(gradient="checkpointed"), "gradient=Checkpointed.*Use gradient=Direct"),
        ("hessian", dict(event=no.Event(lambda t, y: y[0] - 5.0)), "second derivatives"),
        ("grad", dict(dense=True), "dense is not supported"),
        ("grad", dict(compile=True), "compile is not supported"),
    ],
)
def test_what_torch_func_cannot_transform_is_refused_with_the_fix(transform, options, message):
    """A gradient other than Direct() under any transform, dense output and compile under
    grad (jacrev, jvp too) and events under second derivatives (hessian) are refused before
    they reach torch's internals."""

    def last(y: torch.Tensor) -> torch.Tensor:
        return no.solve(decay, y, TS, **options).ys[-1].sum()

    transforms = dict(vmap=torch.func.vmap, grad=torch.func.grad, hessian=torch.func.hessian)
    transformed = transforms[transform](last)
    with pytest.raises(ValueError, match=message):
        transformed(starts(2) if transform == "vmap" else starts(1)[0])


def test_forward_mode_derivatives_with_respect_to_the_times():
    """jvp, jacfwd and forward_ad duals of ts carry dy(t_i)/dt_i = f(t_i, y_i), as
    reverse mode does (x(t) = cos(2 t) from (1, 0))."""

    def oscillator(t, y):
        return torch.stack([y[1], -4.0 * y[0]])

    y0 = torch.tensor([1.0, 0.0], dtype=F64)
    times = torch.tensor([0.0, 0.5, 1.0], dtype=F64)

    def x_end(ts: torch.Tensor) -> torch.Tensor:
        sol = no.solve(oscillator, y0, ts, controller=no.PIController(1e-10, 1e-12))
        return sol.ys[-1, 0]

    reverse = torch.func.jacrev(x_end)(times)
    expected = torch.tensor([2 * math.sin(2.0), 0.0, -2 * math.sin(2.0)], dtype=F64)
    torch.testing.assert_close(reverse, expected, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(torch.func.jacfwd(x_end)(times), reverse, rtol=1e-9, atol=1e-10)
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(times, torch.tensor([0.0, 0.0, 1.0], dtype=F64))
        tangent = torch.autograd.forward_ad.unpack_dual(x_end(dual)).tangent
    torch.testing.assert_close(tangent, reverse[2], rtol=1e-9, atol=1e-10)


def test_captured_per_problem_tensors_beneath_vmap_need_the_device_loop():
    """One by one, f must not capture a tensor batched by the vmap (a per-problem
    parameter): refused with the fix; a solve that does not depend on the vmapped values
    runs as before."""
    y0s = starts(3)
    mus = torch.tensor([0.5, 1.0, 2.0], dtype=F64)

    def loss(y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return no.solve(lambda t, z: -mu * z, y, TS, solver="radau").ys[-1].sum()

    with pytest.raises(ValueError, match="carry it in the state"):
        torch.func.vmap(torch.func.grad(loss))(y0s, mus)
    with pytest.raises(ValueError, match="carry it in the state"):
        torch.func.vmap(torch.func.grad(loss, argnums=1), in_dims=(None, 0))(y0s[0], mus)
    scaled = torch.func.vmap(lambda m: m * no.solve(decay, y0s[0], TS, solver="radau").ys)(mus)
    alone = no.solve(decay, y0s[0], TS, solver="radau").ys
    torch.testing.assert_close(scaled, mus[:, None, None] * alone, rtol=1e-14, atol=0)


def test_execution_is_one_validated_choice():
    """per_sample and compile, with the older flags as aliases; invalid combinations are
    refused from one place with the reason."""
    Execution = no.Execution
    assert Execution.of(True, "step") == Execution(per_sample=True, compile="step")
    assert Execution.of(compile_step=True) == Execution(compile="step")
    assert Execution.of(compile=True) == Execution(compile="solve")
    assert Execution.of("skip_finished") == Execution(per_sample=True, skip_finished=True)
    assert Execution.of(device_loop=True, cuda_graph=True) == Execution(
        device_loop=True, cuda_graph=True
    )
    assert Execution.of(compile="cuda_graph", per_sample=True).cuda_graph
    # one problem with CUDA graphs runs in the device loop (a batch of one)
    assert Execution.of(compile="cuda_graph") == Execution(device_loop=True, cuda_graph=True)
    assert Execution.of(cuda_graph=True) == Execution(device_loop=True, cuda_graph=True)
    with pytest.raises(ValueError, match="compile must be False, True"):
        Execution.of(compile="fast")
    with pytest.raises(ValueError, match="per_sample must be False, True or 'skip_finished'"):
        Execution.of(per_sample="yes")
    with pytest.raises(ValueError, match="compile=True or compile_step=True, not both"):
        Execution.of(compile=True, compile_step=True)
    with pytest.raises(ValueError, match="compile='step' does not support skip_finished"):
        Execution.of("skip_finished", "step")
    with pytest.raises(ValueError, match="choose one"):
        Execution.of(True, True, cuda_graph=True)
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        no.solve(vdp, torch.ones(2), TS, fast=True)
    with pytest.raises(ValueError, match="compile=True supports the explicit Runge-Kutta"):
        no.solve(vdp, torch.ones(2, dtype=torch.float64), TS, solver="radau", compile=True)


def test_falling_back_from_the_whole_solve_compiles_each_step(monkeypatch):
    """compile=True where the whole solve cannot be one graph (here: with autograd) runs the
    solve with each step compiled, as compile='step' does."""
    import neuralode._loop as loop
    import neuralode.controllers.pi as pi

    calls = []
    for module in (loop, pi):  # record instead of compiling
        monkeypatch.setattr(module, "compiled", lambda fn, key, **kw: calls.append(fn) or fn)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, requires_grad=True)
    controller = no.PIController(**TOL)
    sol = no.solve(vdp, y0, TS, controller=controller, compile=True)
    eager = no.solve(vdp, y0, TS, controller=controller)
    assert loop._attempt in calls
    torch.testing.assert_close(sol.ys, eager.ys, rtol=1e-12, atol=1e-12)


def test_checkpointed_with_compile_true_records_its_steps(monkeypatch):
    """Checkpointed()'s forward solve runs without an autograd graph but recomputes the steps
    it records, which the whole solve as one graph keeps none of: compile=True compiles each
    step there, and the gradients equal the eager Checkpointed()'s."""
    import neuralode._loop as loop
    import neuralode._whole_plan as plan
    import neuralode.controllers.pi as pi

    for module in (loop, pi, plan):  # run the compiled functions eagerly (no compiling)
        monkeypatch.setattr(module, "compiled", lambda fn, key, **kw: fn)
    field = torch.nn.Linear(2, 2).double()
    y0 = torch.tensor([2.0, 0.5], dtype=torch.float64, requires_grad=True)
    grads = []
    for options in ({}, {"compile": True}):
        sol = no.solve(lambda t, y: field(y), y0, TS[:3], controller=no.PIController(**TOL),
                       gradient=no.Checkpointed(list(field.parameters())), **options)  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), [y0, *field.parameters()]))
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)


@needs_compiler
def test_whole_solve_compiled_takes_the_eager_steps_and_reuses_its_graph():
    """compile=True, per sample: the same outputs, steps and evaluations as the eager device
    loop; new y0, output times and parameters of the same shapes reuse the graph."""
    from torch._dynamo.utils import counters

    class Decay(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -self.rate[:, None] * y + torch.cos(t)[:, None]

    field = Decay()
    y0 = torch.ones(3, 2, dtype=torch.float64)
    kwargs = dict(controller=no.PIController(1e-6, 1e-8), per_sample=True)
    with torch.no_grad():
        eager = no.solve(field, y0, TS, **kwargs)
        compiled = no.solve(field, y0, TS, compile=True, **kwargs)
        graphs = counters["stats"]["unique_graphs"]
        field.rate.mul_(1.5)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = no.solve(field, 2 * y0, 0.5 * TS, compile=True, **kwargs)
        reference = no.solve(field, 2 * y0, 0.5 * TS, **kwargs)
    assert counters["stats"]["unique_graphs"] == graphs
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.ys, reference.ys, rtol=1e-12, atol=1e-12)
    for name in ("sample_steps", "sample_accepted", "sample_nfe"):
        assert torch.equal(getattr(compiled.stats, name), getattr(eager.stats, name)), name
    # batched calls of f: the graph stops with the last sample, the eager loop at a check
    steps = int(compiled.stats.sample_steps.max())
    assert compiled.stats.nfe == 6 * steps + 2 <= eager.stats.nfe


@pytest.mark.slow
@needs_compiler
def test_whole_solve_compiled_as_one_problem_matches_the_host_loop():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    y0 = torch.randn(4, 2)
    ts = torch.linspace(0.0, 1.0, 4)
    controller = no.PIController(1e-5, 1e-7)
    with torch.no_grad():
        eager = no.solve(lambda t, y: net(y), y0, ts, controller=controller)
        compiled = odeint(
            lambda t, y: net(y), y0, ts, rtol=1e-5, atol=1e-7, options=dict(compile=True)
        )
        with pytest.raises(no.MaxStepsError, match="reached max_steps=2"):
            no.solve(lambda t, y: net(y), y0, ts, controller=controller, max_steps=2, compile=True)
    torch.testing.assert_close(compiled, eager.ys, rtol=1e-5, atol=1e-6)


@needs_compiler
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the stopping logic)
def test_whole_solve_compiled_stops_at_a_failing_step_held_at_min_step():
    """f is NaN past t = 1 (sample 0's, per sample): the step there fails, shrinks to
    min_step and would be attempted again unchanged until max_steps. The compiled whole
    solve stops there with the StepSizeUnderflowError that the host loop raises (one
    problem) and the eager device loop (per sample), naming the same step. (With
    throw=False compile=True compiles each step, whose loops stop the same way.)"""
    walls = torch.tensor([1.0, 5.0], dtype=torch.float64)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 / torch.sqrt(walls - t)[:, None] + 0 * y

    def one(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 1 / torch.sqrt(1.0 - t) + 0 * y

    ts = torch.tensor([0.0, 2.0], dtype=torch.float64)
    kwargs = dict(controller=no.PIController(1e-6, 1e-8, min_step=0.05), max_steps=2000)
    rows, y0 = torch.zeros(2, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)

    def step_of(f, y, **options) -> list[float]:
        """The failing step the solve's StepSizeUnderflowError names: [t, t1]."""
        with pytest.raises(no.StepSizeUnderflowError) as error:
            no.solve(f, y, ts, **kwargs, **options)
        message = str(error.value)
        assert "min_step" in message and ("of sample 0 " in message) == ("per_sample" in options)
        return [float(x) for x in re.search(r"from t=(\S+) to t=(\S+) failed", message).groups()]

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the host loop's warning of steps at min_step)
        host = step_of(one, y0)
        assert math.isclose(host[1] - host[0], 0.05, rel_tol=1e-8)
        assert step_of(one, y0, compile=True) == pytest.approx(host, rel=1e-9)
        assert step_of(field, rows, per_sample=True) == pytest.approx(host, rel=1e-9)
        assert step_of(field, rows, per_sample=True, compile=True) == pytest.approx(host, rel=1e-9)


@needs_compiler
@pytest.mark.usefixtures("whole_solve_traced_only")  # (its dispatch)
def test_backsolve_after_a_whole_solve_compiles_its_backward_solve_whole(monkeypatch):
    """compile=True with Backsolve(): the backward solve of [y, adjoint, parameter gradients]
    runs as one compiled graph too (its seminorm measured per part inside the graph) and
    gives the gradients, steps and evaluations of the eager backward solve."""
    import neuralode._whole_solve as whole

    class Decay(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -self.rate[:, None] * torch.sin(y) + torch.cos(t)

    field = Decay()
    y0 = torch.ones(3, 2, dtype=torch.float64, requires_grad=True)
    ts = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    calls = []
    solve_whole = whole.integrate_whole
    monkeypatch.setattr(
        whole, "integrate_whole", lambda term, *a: calls.append(term.func) or solve_whole(term, *a)
    )
    grads, stats = [], []
    for options in ({}, {"compile": True}):
        sol = no.solve(field, y0, ts, controller=no.PIController(**TOL),
                       gradient=no.Backsolve(), **options)  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys.square().sum(), [field.rate, y0]))
        stats.append(sol.stats)
    # the forward solve and both backward segments (after the eager run's none)
    assert len(calls) == 3 and calls[0] is field and calls[1] is calls[2] is not field
    for eager, compiled in zip(*grads):
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)
    assert stats[1].n_steps_backward == stats[0].n_steps_backward
    assert stats[1].nfe_backward == stats[0].nfe_backward
    with torch._dynamo.config.patch(error_on_recompile=True):  # both graphs reused
        sol = no.solve(field, 2 * y0, ts, controller=no.PIController(**TOL),
                       gradient=no.Backsolve(), compile=True)  # fmt: skip
        torch.autograd.grad(sol.ys.square().sum(), [field.rate, y0])


@pytest.mark.usefixtures("whole_solve_traced_only")  # (dynamo reads them)
def test_constants_cached_under_a_transform_are_plain_tensors(monkeypatch):
    """Coefficients and tolerances are cached across solves; made first under
    torch.func.grad they are still plain tensors (a tensor of the transform's level would
    outlive it and break later solves: a compiled graph cannot read its data)."""
    from torch._C._functorch import is_functorch_wrapped_tensor

    from neuralode import _norms
    from neuralode.solvers import _rk_coefficients

    monkeypatch.setattr(_rk_coefficients, "_SHARED", {})
    monkeypatch.setattr(_norms, "_TOLERANCES", {})
    solver = no.solvers.Tsit5()
    implicit = no.solvers.RadauIIA5()

    def loss(y: torch.Tensor) -> torch.Tensor:
        ends = [no.solve(decay, y, TS[:3], solver=s).ys[-1] for s in (solver, implicit)]
        return sum(e.pow(2).sum() for e in ends)

    y0 = starts(1)[0]
    torch.func.grad(loss)(y0)
    cached = [
        *(v for co in _rk_coefficients._SHARED.values() for v in (co.b, co.b_error, *co.a)),
        *_norms._TOLERANCES.values(),
        *(v for co in implicit._cache.values() for v in (co.a, co.inverse, co.d)),
    ]
    assert cached and not any(is_functorch_wrapped_tensor(v) for v in cached)
    with torch.no_grad():  # the cached constants serve a plain solve and a compiled one
        eager = no.solve(decay, y0, TS[:3], solver=solver).ys
        whole = no.solve(decay, y0, TS[:3], solver=solver, compile=True).ys
    torch.testing.assert_close(whole, eager, rtol=1e-12, atol=1e-12)


def test_constants_cached_under_inference_mode_serve_later_solves_with_autograd(monkeypatch):
    """An evaluation under torch.inference_mode() that first makes the cached coefficients,
    tolerances and pooled stage buffers must not leave inference tensors there: a later
    solve with autograd (the next training step) saves them for backward, and a later
    graph-free solve writes into the buffers, both of which autograd refuses for inference
    tensors outside inference mode."""
    from neuralode import _norms
    from neuralode.solvers import _rk_coefficients

    monkeypatch.setattr(_rk_coefficients, "_SHARED", {})
    monkeypatch.setattr(_norms, "_TOLERANCES", {})
    solvers = no.solvers.Tsit5(), no.solvers.RadauIIA5()
    y0 = starts(1)[0]
    with torch.inference_mode():
        for solver in solvers:
            no.solve(decay, y0, TS[:3], solver=solver)
    cached = [
        *(v for co in _rk_coefficients._SHARED.values() for v in (co.b, co.b_error, *co.a)),
        *_norms._TOLERANCES.values(),
        *(v for co in solvers[1]._cache.values() for v in (co.a, co.inverse, co.d)),
    ]
    assert cached and not any(v.is_inference() for v in cached)

    def gradients(solvers) -> list[torch.Tensor]:
        y = y0.clone().requires_grad_(True)
        ends = [no.solve(decay, y, TS[:3], solver=s).ys[-1].sum() for s in solvers]
        return [torch.autograd.grad(end, y)[0] for end in ends]

    after_inference = gradients(solvers)
    with torch.no_grad():  # graph-free: into a pooled stage buffer made under inference mode
        eager = no.solve(decay, y0, TS[:3], solver=solvers[0]).ys
    with torch.inference_mode():
        torch.testing.assert_close(no.solve(decay, y0, TS[:3], solver=solvers[0]).ys, eager)
    monkeypatch.setattr(_rk_coefficients, "_SHARED", {})  # made afresh, with autograd on
    monkeypatch.setattr(_norms, "_TOLERANCES", {})
    fresh = gradients((no.solvers.Tsit5(), no.solvers.RadauIIA5()))
    for got, expected in zip(after_inference, fresh):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
