"""Gradients of every strategy against finite differences and against each other."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import neuralode as no

STRATEGIES = {
    "direct": lambda params: no.Direct(),
    "backsolve": lambda params: no.Backsolve(params=params),
    "backsolve-fullnorm": lambda params: no.Backsolve(params=params, seminorm=False),
    "checkpointed": lambda params: no.Checkpointed(params=params),
}

# (solver, controller) pairs: fixed steps and adaptive, tight enough that finite differences
# of the discrete solve agree with the exact flow's derivatives. (dopri8 is left out: its
# quartic dense output between its long steps is not accurate enough for derivatives in the
# output times to match finite differences at 1e-6.)
SETUPS = {
    "rk4-fixed": lambda: (no.RK4(), no.FixedGrid(step_size=0.05)),
    "dopri5": lambda: (no.Dopri5(), no.PIController(rtol=1e-10, atol=1e-10)),
    "tsit5": lambda: (no.Tsit5(), no.PIController(rtol=1e-10, atol=1e-10)),
    "adams-fixed": lambda: (no.ImplicitAdams(), no.FixedGrid(step_size=0.025)),
}


def _field(weight: torch.Tensor, bias: torch.Tensor):
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ weight.T + bias) * (1 + 0.3 * torch.cos(2 * t)) - 0.1 * y

    return f


def _inputs(direction: float):
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(3, 3, generator=gen, dtype=torch.float64) * 0.8
    bias = torch.randn(3, generator=gen, dtype=torch.float64) * 0.2
    ts = torch.tensor([0.0, 0.3, 0.75, 1.0], dtype=torch.float64) * direction + 0.1
    return [x.requires_grad_(True) for x in (y0, weight, bias, ts)]


def _duplicate(setup: str, strategy: str) -> bool:
    """Cases whose code paths other default-run cases take (run with ``-m slow``): the full
    norm on fixed steps (no error control, so Backsolve's seminorm option changes nothing),
    and tsit5's first-order strategies (dopri5's adaptive explicit RK path)."""
    fixed = setup.endswith("-fixed")
    return (fixed and strategy == "backsolve-fullnorm") or (
        setup == "tsit5" and strategy != "direct"
    )


@pytest.mark.parametrize(
    ("strategy", "setup"),
    [
        pytest.param(strategy, setup, marks=pytest.mark.slow)
        if _duplicate(setup, strategy)
        else (strategy, setup)
        for strategy in STRATEGIES
        for setup in SETUPS
    ],
)
@pytest.mark.parametrize("direction", [1.0, -1.0], ids=["forward", "backward"])
def test_gradcheck(strategy: str, setup: str, direction: float) -> None:
    """Gradients w.r.t. y0, the parameters and every output time (random projections)."""
    _gradcheck(setup, strategy, direction, fast_mode=True)


# Backsolve's full Jacobian (~7 s) in the slow run; test_gradcheck checks its projections
@pytest.mark.parametrize("strategy", ["direct", pytest.param("backsolve", marks=pytest.mark.slow)])
def test_gradcheck_full_jacobian(strategy: str) -> None:
    _gradcheck("dopri5", strategy, 1.0, fast_mode=False)


def _gradcheck(setup: str, strategy: str, direction: float, fast_mode: bool) -> None:
    if setup == "adams-fixed" and strategy == "checkpointed":
        pytest.skip("checkpointing needs a one-step method")

    def run(y0, weight, bias, ts):
        solver, controller = SETUPS[setup]()
        sol = no.solve(
            _field(weight, bias),
            y0,
            ts,
            solver=solver,
            controller=controller,
            gradient=STRATEGIES[strategy]((weight, bias)),
        )
        return sol.ys

    assert torch.autograd.gradcheck(
        run, _inputs(direction), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast_mode
    )


@pytest.mark.parametrize("method", [m for m, cls in no.METHODS.items() if not cls.multistep])
def test_checkpointed_equals_direct_to_round_off(method: str) -> None:
    solver = no.solvers.METHODS[method]()
    # equal to round-off at any tolerance: a loose one keeps first-order pairs to a few steps
    controller = no.PIController(1e-4, 1e-6) if solver.adaptive else no.FixedGrid(step_size=0.1)
    y0, weight, bias, ts = _inputs(1.0)
    ts = torch.linspace(0.1, 1.3, 7, dtype=torch.float64, requires_grad=True)
    grads = {}
    for name in ("direct", "checkpointed"):
        sol = no.solve(
            _field(weight, bias),
            y0,
            ts,
            solver=solver,
            controller=controller,
            gradient=STRATEGIES[name]((weight, bias)),
        )
        loss = (sol.ys**2).sum() + sol.ys[2].sin().sum()
        grads[name] = torch.autograd.grad(loss, (y0, weight, bias, ts))
    for a, b in zip(grads["direct"], grads["checkpointed"]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seminorm", [True, False])
def test_backsolve_agrees_with_direct_within_tolerance(seminorm: bool) -> None:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    func = lambda t, y: model(y)  # noqa: E731
    y0 = torch.randn(8, 4, requires_grad=True)
    ts = torch.linspace(0, 1, 5)
    params = tuple(model.parameters())
    grads = {}
    for name, gradient in (
        ("direct", no.Direct()),
        ("adjoint", no.Backsolve(params=params, seminorm=seminorm)),
    ):
        sol = no.solve(func, y0, ts, controller=no.PIController(1e-7, 1e-9), gradient=gradient)
        loss = sol.ys.pow(2).mean()
        grads[name] = torch.autograd.grad(loss, (y0, *params))
    for a, b in zip(grads["direct"], grads["adjoint"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_backsolve_counts_backward_work_separately() -> None:
    model = torch.nn.Linear(2, 2)
    y0 = torch.randn(3, 2, requires_grad=True)
    sol = no.solve(
        lambda t, y: model(y),
        y0,
        torch.tensor([0.0, 1.0]),
        gradient=no.Backsolve(model.parameters()),
    )
    nfe = sol.stats.nfe
    assert sol.stats.nfe_backward == 0
    sol.ys.sum().backward()
    assert sol.stats.nfe == nfe
    assert sol.stats.nfe_backward > 0 and sol.stats.n_steps_backward > 0
    assert model.weight.grad is not None and y0.grad is not None


def test_seminorm_saves_backward_steps_on_parameter_heavy_problem() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2))
    y0 = torch.randn(64, 2)
    ts = torch.tensor([0.0, 2.0])
    nfe = {}
    for seminorm in (True, False):
        sol = no.solve(
            lambda t, y: model(y),
            y0,
            ts,
            controller=no.PIController(1e-6, 1e-6),
            gradient=no.Backsolve(model.parameters(), seminorm=seminorm),
        )
        sol.ys[-1].pow(2).sum().backward()
        nfe[seminorm] = sol.stats.nfe_backward
    assert nfe[True] < nfe[False]


def test_double_backward_through_direct() -> None:
    y0, weight, bias, _ = _inputs(1.0)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)

    def run(y0, weight):
        sol = no.solve(_field(weight, bias), y0, ts, solver=no.RK4(), controller=no.FixedGrid(0.25))
        return sol.ys

    assert torch.autograd.gradgradcheck(run, (y0, weight), eps=1e-6, atol=1e-5, rtol=1e-3)


@pytest.mark.parametrize("strategy", ["backsolve", "checkpointed"])
def test_create_graph_through_a_first_order_strategy_warns(strategy: str) -> None:
    """Backsolve's and Checkpointed's gradients carry no graph: a backward pass with
    create_graph=True (a Hessian, a gradient penalty) warns, naming Direct(), rather than the
    second derivatives going missing without a word. A first-order backward does not warn."""
    y0 = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    gradient = {"backsolve": no.Backsolve(()), "checkpointed": no.Checkpointed(())}[strategy]
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = no.solve(lambda t, y: -0.7 * y**2, y0, ts, gradient=gradient)
        torch.autograd.grad(sol.ys[-1].sum(), y0)
    sol = no.solve(lambda t, y: -0.7 * y**2, y0, ts, gradient=gradient)
    with pytest.warns(UserWarning, match=r"is first-order only.*use gradient=Direct\(\)"):
        (first,) = torch.autograd.grad(sol.ys[-1].sum(), y0, create_graph=True)
    assert not first.requires_grad
    # Direct: y(1) = y0 / (1 + 0.7 y0), d2y/dy0^2 = -1.4 / 1.7^3
    sol = no.solve(lambda t, y: -0.7 * y**2, y0, ts, controller=no.PIController(1e-10, 1e-12))
    (first,) = torch.autograd.grad(sol.ys[-1].sum(), y0, create_graph=True)
    (second,) = torch.autograd.grad(first.sum(), y0)
    assert float(second) == pytest.approx(-1.4 / 1.7**3, rel=1e-7)


def test_checkpointed_refuses_multistep_methods() -> None:
    with pytest.raises(ValueError, match="one-step method"):
        no.solve(
            lambda t, y: -y,
            torch.ones(2),
            torch.linspace(0, 1, 5),
            solver=no.ExplicitAdams(),
            gradient=no.Checkpointed(params=()),
        )


@pytest.mark.parametrize("per_sample", [False, True])
def test_adjoint_strategies_require_params_for_plain_functions(per_sample: bool) -> None:
    """One message in every mode, naming the fix and () for no parameters (per sample,
    Checkpointed recomputes its segments through f itself, so a closure's tensors get
    their gradients without being listed)."""
    y0 = torch.ones(2, 1, requires_grad=True)
    for gradient in (no.Backsolve(),) if per_sample else (no.Backsolve(), no.Checkpointed()):
        with pytest.raises(
            ValueError, match=r"func is a function, not a torch.nn.Module.*pass \(\) if"
        ):
            no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), gradient=gradient,
                     per_sample=per_sample)  # fmt: skip


def test_empty_params_allowed_and_only_y0_gets_gradient() -> None:
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    for gradient in (no.Backsolve(params=()), no.Checkpointed(params=())):
        sol = no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0]), gradient=gradient)
        (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
        torch.testing.assert_close(grad, torch.full((2,), torch.e**-1, dtype=torch.float64))


def test_tuple_state_gradients() -> None:
    gen = torch.Generator().manual_seed(3)
    a0 = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    b0 = torch.randn(2, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    mix = torch.randn(3, 4, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(t, state):
        a, b = state
        return torch.tanh(mix @ b.reshape(-1)), -b * a[:2].sum()

    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    grads = {}
    for name in ("direct", "backsolve", "checkpointed"):
        sol = no.solve(
            f,
            (a0, b0),
            ts,
            controller=no.PIController(1e-10, 1e-10),
            gradient=STRATEGIES[name]((mix,)),
        )
        a, b = sol.ys
        grads[name] = torch.autograd.grad(a.sum() + (b**2).sum(), (a0, b0, mix))
    for name in ("backsolve", "checkpointed"):
        for x, y in zip(grads["direct"], grads[name]):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-8)


def test_backsolve_memory_does_not_keep_step_graphs() -> None:
    """The forward pass of Backsolve builds no autograd graph through the steps."""
    model = torch.nn.Linear(3, 3)
    y0 = torch.randn(4, 3, requires_grad=True)
    sol = no.solve(
        lambda t, y: model(y),
        y0,
        torch.tensor([0.0, 1.0]),
        gradient=no.Backsolve(model.parameters()),
    )
    node = sol.ys.grad_fn
    # A single custom node (behind the view back to y0's shape) stands for the whole solve.
    names = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if n is None:
            continue
        names.add(type(n).__name__)
        stack.extend(next_fn for next_fn, _ in n.next_functions)
    assert not any("Addmv" in name or "Stack" in name for name in names), names


def test_backsolve_when_f_depends_on_time_only() -> None:
    """dy/dt = cos(t): y(t1) = y0 + sin(t1) - sin(t0); the adjoint is constant and the
    gradients w.r.t. y0 and the times are analytic (f has no graph to y)."""
    y0 = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64, requires_grad=True)
    sol = no.solve(
        lambda t, y: torch.cos(t).expand(2),
        y0,
        ts,
        controller=no.PIController(rtol=1e-10, atol=1e-12),
        gradient=no.Backsolve(params=()),
    )
    torch.testing.assert_close(sol.ys[-1].detach(), y0.detach() + math.sin(1.5))
    g_y0, g_ts = torch.autograd.grad(sol.ys[-1].sum(), (y0, ts))
    torch.testing.assert_close(g_y0, torch.ones(2, dtype=torch.float64))
    expected_ts = torch.tensor([-2.0, 0.0, 2 * math.cos(1.5)], dtype=torch.float64)
    torch.testing.assert_close(g_ts, expected_ts)


FIRST_ORDER = {
    "backsolve": lambda params: no.Backsolve(params=params),
    "checkpointed": lambda params: no.Checkpointed(params=params),
    "reversible": lambda params: no.Reversible(params=params),
}
FORWARD_MODE_REFUSAL = r"does not support forward-mode differentiation.*gradient=Direct\(\)"


def _counted_field(weight: torch.Tensor, calls: list[int]):
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return torch.tanh(y @ weight.T)

    return f


@pytest.mark.parametrize("strategy", FIRST_ORDER)
@pytest.mark.parametrize("dual", ["y0", "ts", "captured", "captured-event"])
def test_forward_mode_ad_through_a_first_order_strategy_is_refused(
    strategy: str, dual: str
) -> None:
    """A torch.autograd.forward_ad dual tensor reaching a strategy whose derivatives come from
    a backward pass only is refused before any step, naming Direct(): through y0 or ts (f
    never called), or captured by f (its output's tangent, seen in one evaluation; without
    the refusal the tangent was silently dropped). Direct() carries the same tangent."""
    if strategy == "reversible" and dual == "captured-event":
        pytest.skip("Reversible refuses events before any forward mode is looked for")
    y0, weight, _, ts = (x.detach() for x in _inputs(1.0))
    fa = torch.autograd.forward_ad
    calls = [0]
    event = no.Event(lambda t, y: y[0, 0] - 100.0) if dual == "captured-event" else None
    with fa.dual_level():
        direction = torch.ones_like({"y0": y0, "ts": ts}.get(dual, weight))
        y0_in = fa.make_dual(y0, direction) if dual == "y0" else y0
        ts_in = fa.make_dual(ts, direction) if dual == "ts" else ts
        w_in = fa.make_dual(weight, direction) if dual.startswith("captured") else weight
        gradient = FIRST_ORDER[strategy](())
        with pytest.raises(ValueError, match=FORWARD_MODE_REFUSAL):
            no.solve(_counted_field(w_in, calls), y0_in, ts_in, gradient=gradient, event=event)
        assert calls[0] == (0 if dual in ("y0", "ts") else 1)
        direct = no.solve(_field(w_in, weight[0] * 0), y0_in, ts_in).ys
        assert fa.unpack_dual(direct).tangent is not None


@pytest.mark.parametrize("strategy", FIRST_ORDER)
def test_a_dual_level_without_duals_leaves_first_order_strategies_alone(strategy: str) -> None:
    """Inside a dual level, a solve that no dual tensor reaches runs and backpropagates."""
    y0, weight, bias, _ = _inputs(1.0)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    with torch.autograd.forward_ad.dual_level():
        sol = no.solve(_field(weight, bias), y0, ts, gradient=FIRST_ORDER[strategy](()))
        (grad,) = torch.autograd.grad(sol.ys[-1].sum(), y0)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("strategy", FIRST_ORDER)
def test_a_dual_level_leaves_the_random_draws_of_f_alone(strategy: str) -> None:
    """The evaluation of f that looks for tangents inside a dual level restores the random
    number generator: an f that draws from it (dropout, noise) solves with the same draws,
    and so the same states, as outside a dual level."""
    y0, weight, bias, ts = (x.detach() for x in _inputs(1.0))
    smooth = _field(weight, bias)

    def noisy(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return smooth(t, y) + 0.01 * torch.rand_like(y)

    def run() -> torch.Tensor:
        torch.manual_seed(5)
        gradient = FIRST_ORDER[strategy](())
        solver = no.solvers.method_class("rk4")()
        controller = no.controllers.FixedGrid(step_size=0.1)
        return no.solve(noisy, y0, ts, solver=solver, controller=controller, gradient=gradient).ys

    outside = run()
    with torch.autograd.forward_ad.dual_level():
        inside = run()
    assert torch.equal(inside, outside)


FA = torch.autograd.forward_ad
TIGHT = dict(controller=no.PIController(rtol=1e-11, atol=1e-12))


def _decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


@pytest.mark.parametrize("per_sample", [False, True])
def test_forward_mode_event_time_and_state_of_a_decay_equal_the_closed_form(
    per_sample: bool,
) -> None:
    """y' = -y from y0 until y = c: t* = log(y0 / c) and y* = c, so dt*/dy0 = 1 / y0,
    dt*/dc = -1 / c, dy*/dy0 = 0 and dy*/dc = 1, by forward_ad duals of y0 and of the event
    function's threshold c (per sample: each sample's own, also in the outputs after
    the event), through odeint_event too."""
    y0 = torch.tensor([[2.0], [3.0]] if per_sample else [[2.0]], dtype=torch.float64)
    ts = torch.tensor([0.0, 5.0], dtype=torch.float64)
    c = torch.tensor(0.5, dtype=torch.float64)
    with FA.dual_level():
        dual = FA.make_dual(y0, torch.ones_like(y0))
        event = no.Event(lambda t, y: y[:, 0] - c)
        solution = no.solve(_decay, dual, ts, event=event, per_sample=per_sample, **TIGHT)
        t_dot = FA.unpack_dual(solution.event_t).tangent
        y_dot = FA.unpack_dual(solution.event_y).tangent
        # per sample the outputs after the event hold its state (one problem's end there)
        held = FA.unpack_dual(solution.ys[-1]).tangent if per_sample else torch.zeros_like(y0)
        dual_c = FA.make_dual(c, torch.ones_like(c))
        event = no.Event(lambda t, y: y[:, 0] - dual_c)
        by_c = no.solve(_decay, y0, ts, event=event, per_sample=per_sample, **TIGHT)
        tc_dot = FA.unpack_dual(by_c.event_t).tangent
        yc_dot = FA.unpack_dual(by_c.event_y).tangent
        if not per_sample:
            t_compat, _ = no.odeint_event(
                _decay, dual, ts[0], event_fn=lambda t, y: y[0, 0] - c, rtol=1e-11, atol=1e-12
            )
            torch.testing.assert_close(FA.unpack_dual(t_compat).tangent, 1 / y0[0, 0])
    torch.testing.assert_close(t_dot, (1 / y0[:, 0]).reshape(t_dot.shape))
    torch.testing.assert_close(y_dot, torch.zeros_like(y0), atol=1e-9, rtol=0)
    torch.testing.assert_close(held, torch.zeros_like(y0), atol=1e-9, rtol=0)
    torch.testing.assert_close(tc_dot, torch.full_like(tc_dot, -1 / float(c)))
    torch.testing.assert_close(yc_dot, torch.ones_like(y0))


def _ball(
    h0: torch.Tensor, v0: torch.Tensor, per_sample: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ball from height h0 with velocity v0 under gravity 9.81 until it hits the ground:
    its event time and state, (samples,) and (samples, 2)."""

    def gravity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], torch.full_like(y[:, 1], -9.81)], 1)

    y0 = torch.stack([h0, v0], 1)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event = no.Event(lambda t, y: y[:, 0], direction=-1)
    solution = no.solve(gravity, y0, ts, event=event, per_sample=per_sample, **TIGHT)
    return solution.event_t.reshape(-1), solution.event_y.reshape(-1, 2)


def _ball_exact(h0: torch.Tensor, v0: torch.Tensor) -> torch.Tensor:
    return (v0 + torch.sqrt(v0**2 + 2 * 9.81 * h0)) / 9.81


@pytest.mark.parametrize("per_sample", [False, True])
def test_forward_mode_ball_hitting_the_ground_by_jvp_jacfwd_and_finite_differences(
    per_sample: bool,
) -> None:
    """A falling ball's event time t* = (v0 + sqrt(v0^2 + 2 g h0)) / g and state (0, v0 - g t*):
    their tangents in (h0, v0) by torch.func.jvp and jacfwd equal the closed form's
    derivative and central finite differences (float64)."""
    h0 = torch.tensor([2.0, 1.0] if per_sample else [2.0], dtype=torch.float64)
    v0 = torch.tensor([1.0, -0.5] if per_sample else [1.0], dtype=torch.float64)
    dh, dv = torch.full_like(h0, 0.3), torch.full_like(v0, -0.7)
    (t_star, y_star), (t_dot, y_dot) = torch.func.jvp(
        lambda h, v: _ball(h, v, per_sample), (h0, v0), (dh, dv)
    )
    exact_t, exact_dot = torch.func.jvp(_ball_exact, (h0, v0), (dh, dv))
    torch.testing.assert_close(t_star, exact_t)
    torch.testing.assert_close(t_dot, exact_dot)
    exact_y_dot = torch.stack([torch.zeros_like(h0), dv - 9.81 * exact_dot], 1)
    torch.testing.assert_close(y_dot, exact_y_dot, atol=1e-8, rtol=1e-8)
    eps = 1e-6
    plus = _ball(h0 + eps * dh, v0 + eps * dv, per_sample)
    minus = _ball(h0 - eps * dh, v0 - eps * dv, per_sample)
    torch.testing.assert_close(t_dot, (plus[0] - minus[0]) / (2 * eps), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(y_dot, (plus[1] - minus[1]) / (2 * eps), atol=1e-5, rtol=1e-6)
    jacobian = torch.func.jacfwd(lambda h: _ball(h, v0, per_sample)[0])(h0)
    exact_jacobian = torch.func.jacfwd(lambda h: _ball_exact(h, v0))(h0)
    torch.testing.assert_close(jacobian, exact_jacobian)


@pytest.mark.parametrize("per_sample", [False, True])
def test_forward_mode_event_derivatives_agree_with_reverse_mode(per_sample: bool) -> None:
    """<vjp(u), v> = <u, jvp(v)> for the event time and state of a nonlinear field, with
    tangents in y0, f's weight and the event function's threshold at once (float64)."""
    gen = torch.Generator().manual_seed(3)
    batch = 3 if per_sample else 1
    y0 = torch.tensor([[1.0, 0.2]], dtype=torch.float64).repeat(batch, 1)
    y0 = y0 + 0.1 * torch.rand(batch, 2, generator=gen, dtype=torch.float64)
    weight = torch.tensor([[0.1, 1.0], [-1.0, -0.2]], dtype=torch.float64)
    level = torch.tensor(0.3, dtype=torch.float64)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)

    def run(y0: torch.Tensor, weight: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.tanh(y @ weight.T)

        event = no.Event(lambda t, y: y[:, 0] - level)
        solution = no.solve(field, y0, ts, event=event, per_sample=per_sample, **TIGHT)
        return torch.cat([solution.event_t.reshape(-1, 1), solution.event_y.reshape(batch, -1)], 1)

    inputs = (y0, weight, level)
    tangents = tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in inputs)
    with FA.dual_level():
        out = run(*(FA.make_dual(x, v) for x, v in zip(inputs, tangents, strict=True)))
        primal, jvp = FA.unpack_dual(out)
    assert bool((primal[:, 0] > 0).all()) and bool((primal[:, 0] < 10).all())  # it fired
    leaves = tuple(x.clone().requires_grad_(True) for x in inputs)
    u = torch.randn(primal.shape, generator=gen, dtype=torch.float64)
    vjp = torch.autograd.grad(run(*leaves), leaves, u)
    left = sum((g * v).sum() for g, v in zip(vjp, tangents, strict=True))
    torch.testing.assert_close(left, (u * jvp).sum(), atol=1e-10, rtol=1e-10)


def test_forward_mode_through_an_event_that_does_not_fire_keeps_direct_tangents() -> None:
    """An event that does not fire leaves Direct()'s tangent, that of the cosine's exact flow."""
    ts = torch.linspace(0.0, 3.0, 4, dtype=torch.float64)
    y0 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)

    def spring(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], -y[:, 0]], 1)

    with FA.dual_level():
        dual = FA.make_dual(y0, torch.tensor([[1.0, 0.0]], dtype=torch.float64))
        ys = no.solve(spring, dual, ts, event=no.Event(lambda t, y: y[:, 0] - 5.0)).ys
        tangent = FA.unpack_dual(ys[-1]).tangent
    exact = torch.tensor([[math.cos(3.0), -math.sin(3.0)]], dtype=torch.float64)
    torch.testing.assert_close(tangent, exact, atol=1e-5, rtol=0)


@pytest.mark.parametrize("strategy", FIRST_ORDER)
@pytest.mark.parametrize("transform", ["jvp", "jacfwd"])
def test_torch_func_forward_mode_through_a_first_order_strategy_is_refused(
    strategy: str, transform: str
) -> None:
    """torch.func.jvp and jacfwd over the solve are refused with the torch.func transforms,
    naming Direct()."""
    y0, weight, bias, ts = (x.detach() for x in _inputs(1.0))

    def last(y: torch.Tensor) -> torch.Tensor:
        gradient = FIRST_ORDER[strategy](())
        return no.solve(_field(weight, bias), y, ts, gradient=gradient).ys[-1]

    with pytest.raises(ValueError, match=r"not supported under torch.func.*gradient=Direct\(\)"):
        if transform == "jvp":
            torch.func.jvp(last, (y0,), (torch.ones_like(y0),))
        else:
            torch.func.jacfwd(last)(y0)


def test_forward_mode_ad_through_odeint_adjoint_is_refused() -> None:
    """The torchdiffeq façade's odeint_adjoint (Backsolve) refuses a dual y0, naming odeint."""
    y0, weight, bias, ts = (x.detach() for x in _inputs(1.0))
    fa = torch.autograd.forward_ad
    with fa.dual_level():
        dual = fa.make_dual(y0, torch.ones_like(y0))
        with pytest.raises(ValueError, match=FORWARD_MODE_REFUSAL + r".*odeint instead"):
            no.odeint_adjoint(_field(weight, bias), dual, ts, adjoint_params=())
        assert fa.unpack_dual(no.odeint(_field(weight, bias), dual, ts)).tangent is not None


def test_second_derivatives_in_the_output_times_are_the_flows() -> None:
    """y' = cos(t) y: y(t) = y0 exp(sin t - sin t0). Direct()'s Hessian of a loss in the
    output times (t0 among them) equals the closed form's, diagonal included (the time
    terms are exact to second order), in one problem and with per-sample time spans."""
    f64 = torch.float64
    controller = no.PIController(rtol=1e-12, atol=1e-12)
    y0 = torch.tensor([[1.5], [0.7]], dtype=f64)

    def exact(times: torch.Tensor) -> torch.Tensor:
        times = times.reshape(2, 3)
        ys = y0 * torch.exp(torch.sin(times[:, 1:]) - torch.sin(times[:, :1]))
        return ys.pow(2).sum()

    def per_sample(times: torch.Tensor) -> torch.Tensor:
        sol = no.solve(lambda t, y: torch.cos(t)[:, None] * y, y0, times.reshape(2, 3),
                       controller=controller, per_sample=True)  # fmt: skip
        return sol.ys[1:].pow(2).sum()

    def one(times: torch.Tensor) -> torch.Tensor:
        sol = no.solve(lambda t, y: torch.cos(t) * y, y0[0, 0], times, controller=controller)
        return sol.ys[1:].pow(2).sum()

    times = torch.tensor([0.1, 0.7, 1.3, 0.0, 0.4, 0.9], dtype=f64)
    expected = torch.func.hessian(exact)(times)
    torch.testing.assert_close(
        torch.func.hessian(per_sample)(times), expected, rtol=1e-8, atol=1e-8
    )
    alone = torch.func.hessian(lambda x: exact(torch.cat([x, times[3:]])))(times[:3])
    torch.testing.assert_close(torch.func.hessian(one)(times[:3]), alone, rtol=1e-8, atol=1e-8)
    # and by double backward
    leaf = times[:3].clone().requires_grad_(True)
    (first,) = torch.autograd.grad(one(leaf), leaf, create_graph=True)
    (second,) = torch.autograd.grad(first[1], leaf)
    torch.testing.assert_close(second, alone[1], rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "make, options, message",
    [
        (lambda: no.Backsolve(rtol=0, atol=0), {}, "rtol=0, atol=0.*exactly zero"),
        (lambda: no.Backsolve(max_steps=0), {}, "max_steps must be a positive integer"),
        (lambda: no.Backsolve(max_steps=2.5), {}, "max_steps must be a positive integer"),
        (
            lambda: no.Backsolve(controller=no.PIController(1e-9), rtol=1e-2),
            {},
            "rtol/atol or a controller, not both",
        ),
        (
            lambda: no.Backsolve(rtol=1e-2, solver="dopri5", params=()),
            dict(solver=no.RK4(), controller=no.FixedGrid(step_size=0.1)),
            "takes the forward solve's FixedGrid",
        ),
        (
            lambda: no.Backsolve(solver="rk4", params=()),
            {},
            "rk4 takes fixed steps.*FixedGrid",
        ),
    ],
)
def test_backsolve_options_that_cannot_work_are_refused_before_the_forward_solve(
    make, options, message
) -> None:
    calls = []

    def field(t, y):
        calls.append(1)
        return -y

    with pytest.raises(ValueError, match=message):
        no.solve(field, torch.ones(2, requires_grad=True), torch.tensor([0.0, 1.0]),
                 gradient=make(), **options)  # fmt: skip
    assert not calls  # (no forward solve ran)
