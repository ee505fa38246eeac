"""``Reversible()``: exact gradients of the reversible solve in memory independent of the
number of steps (McCallum & Foster 2024), its order, its inverse and its refusals."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch

import neuralode as no
from neuralode.adjoint import GRADIENTS, Checkpointed, Reversible
from neuralode.adjoint._reversible_pair import PairSolve
from neuralode.adjoint.base import GradientStrategy, Problem

F64 = torch.float64


class _BackpropThroughPairs(GradientStrategy):
    """Direct backpropagation through the same reversible forward solve (the reference)."""

    def __init__(self, coupling: float):
        self.coupling = coupling

    def run(self, problem: Problem) -> torch.Tensor:
        solve = PairSolve(problem, self.coupling)
        return solve.run(problem.y0, problem.times, problem.stats)[:, : solve.n]


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    return net.to(F64)


class _Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = _mlp()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) * torch.cos(t)


def _solve_and_grads(func, y0, ts, gradient, **kwargs):
    y0 = y0.detach().requires_grad_(True)
    sol = no.solve(func, y0, ts, gradient=gradient, **kwargs)
    weights = torch.linspace(0.5, 2.0, sol.ys.numel(), dtype=F64).view_as(sol.ys)
    loss = (weights * sol.ys.sin()).sum()
    grads = torch.autograd.grad(loss, [y0, *func.parameters()])
    return sol, grads


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


CASES = {
    "dopri5": dict(solver="dopri5", controller=no.PIController(rtol=1e-6, atol=1e-8)),
    "tsit5": dict(solver="tsit5", controller=no.PIController(rtol=1e-5, atol=1e-7)),
    "rk4": dict(solver="rk4", controller=no.FixedGrid(step_size=0.1)),
    "dopri5-jump": dict(
        solver="dopri5", controller=no.PIController(rtol=1e-6, atol=1e-8), jump_t=[0.5]
    ),
}


@pytest.mark.parametrize("coupling", [0.999, 0.7])
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_equal_backprop_through_the_same_reversible_solve(case, coupling) -> None:
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64)
    ts = torch.tensor([0.0, 0.35, 0.9, 1.6], dtype=F64)
    sol, grads = _solve_and_grads(func, y0, ts, Reversible(coupling), **CASES[case])
    ref, ref_grads = _solve_and_grads(func, y0, ts, _BackpropThroughPairs(coupling), **CASES[case])
    assert torch.equal(sol.ys, ref.ys)  # the same steps
    assert sol.stats.n_steps == ref.stats.n_steps and sol.stats.n_accepted > 3
    for g, r in zip(grads, ref_grads):
        assert _rel_error(g, r) < 1e-10
    # the backward pass recomputes two base steps per accepted step
    assert sol.stats.n_steps_backward == sol.stats.n_accepted
    assert sol.stats.nfe_backward > 0


def test_gradient_with_respect_to_the_output_times_is_the_flow_derivative() -> None:
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64)
    grads = []
    for gradient in (Reversible(), _BackpropThroughPairs(0.999)):
        ts = torch.tensor([0.0, 0.5, 1.2], dtype=F64, requires_grad=True)
        sol = no.solve(
            func, y0, ts, gradient=gradient, controller=no.PIController(rtol=1e-6, atol=1e-8)
        )
        grads.append(torch.autograd.grad(sol.ys.sin().sum(), ts)[0])
    assert _rel_error(grads[0], grads[1]) < 1e-10


def test_gradcheck() -> None:
    torch.manual_seed(1)
    weight = (0.5 * torch.randn(2, 2, dtype=F64)).requires_grad_(True)
    bias = torch.randn(2, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.4, 1.0], dtype=F64)

    def outputs(y0, weight, bias):
        def f(t, y):
            return torch.tanh(y @ weight.T + bias)

        gradient = Reversible(0.9, params=(weight, bias))
        return no.solve(
            f, y0, ts, solver="rk4", controller=no.FixedGrid(step_size=0.1), gradient=gradient
        ).ys

    y0 = torch.tensor([0.2, -0.5], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(outputs, (y0, weight, bias))


def _reversible_ctx(ys: torch.Tensor):
    """The autograd node of the reversible solve behind ``ys``."""
    stack, seen = [ys.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if hasattr(node, "records"):
            return node
        stack.extend(next_node for next_node, _ in node.next_functions)
    raise AssertionError("no reversible solve in the graph")


@pytest.mark.parametrize("coupling", [1.0, 0.999])
@pytest.mark.parametrize(("solver", "rtol"), [("dopri5", 1e-7), ("bosh3", 1e-5)])
def test_the_backward_walk_reconstructs_the_initial_state(solver, rtol, coupling) -> None:
    # (the inverse divides by the coupling each step: round-off grows like coupling^-steps,
    # negligible for a coupling close to 1)
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    controller = no.PIController(rtol=rtol, atol=1e-9)
    gradient = Reversible(coupling)
    sol = no.solve(func, y0, ts, solver=solver, controller=controller, gradient=gradient)
    ctx = _reversible_ctx(sol.ys)
    assert len(ctx.records) > 30
    y_last, z_last = ctx.last[:3], ctx.last[3:]
    assert not torch.allclose(y_last, z_last, rtol=0, atol=1e-9)  # y and z part ways
    sol.ys[-1].sum().backward()
    y_start, z_start = ctx.reconstructed
    assert torch.allclose(y_start, y0.detach(), rtol=0, atol=1e-14)
    assert torch.allclose(z_start, y0.detach(), rtol=0, atol=1e-14)


def _linear_problem(theta: torch.Tensor):
    matrix = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)

    def f(t, y):
        return theta * (matrix @ y)

    return f, matrix


@pytest.mark.parametrize(("solver", "order"), [("rk4", 4), ("midpoint", 2)])
def test_the_reversible_method_has_the_base_order_and_its_gradient_converges(solver, order) -> None:
    theta = torch.tensor(1.0, dtype=F64, requires_grad=True)
    f, matrix = _linear_problem(theta)
    end = 3.0
    y0 = torch.tensor([1.0, 0.5], dtype=F64, requires_grad=True)
    weights = torch.tensor([0.7, -1.3], dtype=F64)
    exact_map = torch.linalg.matrix_exp(matrix * end)  # theta = 1
    exact_y = exact_map @ y0.detach()
    exact_grad_y0 = exact_map.T @ weights
    exact_grad_theta = weights @ (matrix * end) @ exact_y  # d/dtheta of expm(theta A T)
    errors, grad_errors = [], []
    steps = [16, 32, 64] if order == 4 else [32, 64, 128]
    for n in steps:
        controller = no.FixedGrid(step_size=end / n)
        gradient = Reversible(0.999, params=(theta,))
        ts = torch.tensor([0.0, end], dtype=F64)
        sol = no.solve(f, y0, ts, solver=solver, controller=controller, gradient=gradient)
        g_y0, g_theta = torch.autograd.grad(weights @ sol.ys[-1], [y0, theta])
        errors.append(float((sol.ys[-1].detach() - exact_y).abs().max()))
        grad_errors.append(
            max(float((g_y0 - exact_grad_y0).abs().max()), float(abs(g_theta - exact_grad_theta)))
        )
    for errs in (errors, grad_errors):
        observed = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
        assert all(abs(p - order) < 0.3 for p in observed), (errs, observed)


def _tensors_held(ctx) -> int:
    """The tensors the autograd node of a solve keeps, in its attributes and their lists
    and records (the parameters themselves left out)."""

    def count(value) -> int:
        if isinstance(value, torch.Tensor):
            return 1
        if isinstance(value, (list, tuple)):
            return sum(map(count, value))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return sum(count(getattr(value, f.name)) for f in dataclasses.fields(value))
        return 0

    kept = {k: v for k, v in vars(ctx).items() if k not in ("params", "problem", "solver")}
    return count(list(kept.values()))


@pytest.mark.parametrize("gradient", [Reversible(), Checkpointed()], ids=["rev", "ckpt"])
def test_the_forward_pass_keeps_no_per_step_state(gradient) -> None:
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    held = []
    for steps in (10, 100):
        sol = no.solve(
            func,
            y0,
            ts,
            solver="rk4",
            controller=no.FixedGrid(step_size=1.0 / steps),
            gradient=gradient,
        )
        ctx = _reversible_ctx(sol.ys)
        assert len(ctx.records) == steps
        held.append(_tensors_held(ctx))
    if isinstance(gradient, Reversible):
        assert held[0] == held[1] <= 2  # (y_N, z_N), whatever the number of steps
        assert all(rec.y0 is None and rec.replay is None for rec in ctx.records)
    else:  # the check sees a start state a step
        assert held[1] - held[0] == 90


def test_the_names_and_models_accept_reversible() -> None:
    assert GRADIENTS["reversible"] is Reversible and no.Reversible is Reversible
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    sol = no.solve(func, y0, ts, gradient="reversible")
    assert sol.ys.requires_grad
    block = no.models.ODEBlock(_Field(), gradient="reversible")
    x = torch.randn(4, 3, dtype=F64)
    block(x).sum().backward()
    assert block.last_stats.nfe_backward > 0


def test_nested_state_callbacks_and_per_element_tolerances() -> None:
    func = _Field()

    def f(t, state):
        a, b = state
        return func(t, torch.cat([a, b]))[:2], func(t, torch.cat([a, b]))[2:]

    seen = []

    class Watch:
        def on_accept(self, t, y, dt):
            seen.append(tuple(x.shape for x in y))

    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    outs = []
    for gradient in (Reversible(params=tuple(func.parameters())), _BackpropThroughPairs(0.999)):
        sol = no.solve(
            f, (y0[:2], y0[2:]), ts, gradient=gradient, callbacks=Watch(),
            controller=no.PIController(rtol=torch.tensor([1e-6, 1e-6, 1e-4], dtype=F64), atol=1e-8),
        )  # fmt: skip
        loss = sol.ys[0].sum() + sol.ys[1].square().sum()
        outs.append(torch.autograd.grad(loss, [y0, *func.parameters()]))
    assert seen[0] == (torch.Size([2]), torch.Size([1]))
    for g, r in zip(*outs):
        assert _rel_error(g, r) < 1e-10


def test_create_graph_warns_that_it_is_first_order() -> None:
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64, requires_grad=True)
    sol = no.solve(func, y0, torch.tensor([0.0, 1.0], dtype=F64), gradient=Reversible())
    with pytest.warns(UserWarning, match="first-order only"):
        torch.autograd.grad(sol.ys.sum(), y0, create_graph=True)


# ---------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("coupling", [0.0, -0.5, 1.5, float("nan")])
def test_a_coupling_outside_the_unit_interval_is_refused(coupling) -> None:
    with pytest.raises(ValueError, match=r"coupling must be in \(0, 1\]"):
        Reversible(coupling)


@pytest.mark.parametrize("coupling", [True, "0.9", None, [0.9]])
def test_a_coupling_that_is_not_a_number_is_refused(coupling) -> None:
    with pytest.raises(TypeError, match="first argument is the coupling, a real number"):
        Reversible(coupling)


def test_parameters_given_first_are_told_to_go_by_name_in_a_short_message() -> None:
    """(Backsolve and Checkpointed take the parameters first; the message does not print
    them)"""
    module = torch.nn.Linear(30, 30)
    with pytest.raises(TypeError, match=r"got a list; the parameters go by name") as info:
        Reversible(list(module.parameters()))
    assert len(str(info.value)) < 250


def _refused(match: str, **kwargs) -> None:
    func = _Field()
    y0 = torch.tensor([[0.3, -0.8, 1.1]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=match):
        no.solve(func, y0, ts, gradient=Reversible(), **kwargs)


@pytest.mark.parametrize("solver", ["implicit_euler", "kvaerno3", "radau"])
def test_implicit_methods_are_refused(solver) -> None:
    _refused("needs an explicit Runge-Kutta method", solver=solver)


def test_multistep_methods_are_refused() -> None:
    _refused("explicit_adams|ExplicitAdams.*multistep", solver="explicit_adams")


def test_events_are_refused() -> None:
    event = no.Event(lambda t, y: y.sum() - 10.0)
    _refused("does not support events", event=event)


@pytest.mark.parametrize(
    "mode",
    [dict(per_sample=True), dict(device_loop=True), dict(compile=True), dict(compile_step=True)],
    ids=["per_sample", "device_loop", "compile", "compile_step"],
)
def test_other_execution_modes_are_refused(mode) -> None:
    _refused("Reversible", **mode)


def test_cuda_graphs_are_refused() -> None:
    _refused("device_loop=True supports .*got Reversible", cuda_graph=True)


def test_torch_func_transforms_are_refused() -> None:
    func = _Field()
    ts = torch.tensor([0.0, 1.0], dtype=F64)

    def loss(y0):
        return no.solve(func, y0, ts, gradient=Reversible()).ys.sum()

    with pytest.raises(ValueError, match="Reversible.*torch.func"):
        torch.func.grad(loss)(torch.tensor([0.3, -0.8, 1.1], dtype=F64))


def test_sde_methods_are_refused() -> None:
    from neuralode import sde as nsde

    class Decay(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    bm = nsde.BrownianInterval(0.0, 1.0, size=(2, 1), dtype=F64, entropy=3)
    y0 = torch.ones(2, 1, dtype=F64)
    with pytest.raises(ValueError, match="gradient=Direct"):
        no.solve(
            nsde.SDETerm(Decay(), bm), y0, torch.tensor([0.0, 1.0], dtype=F64),
            solver=nsde.SDESolver("euler"), controller=no.FixedGrid(step_size=0.1),
            gradient=Reversible(),
        )  # fmt: skip


def test_training_with_reversible_gradients_runs_an_epoch(tmp_path) -> None:
    pytest.importorskip("sklearn", reason="the training CLI uses scikit-learn's digits")
    from neuralode.cli import main

    argv = ["train", "odenet", "--data", "digits", "--train-subset", "32", "--test-subset", "16"]
    argv += ["--epochs", "1", "--channels", "4", "--batch-size", "16", "--threads", "1"]
    argv += ["--rtol", "0.01", "--atol", "0.01", "--no-plots", "--gradient", "reversible"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    record = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert '"nfe_backward"' in record and '"nfe_backward": 0' not in record


def _decay(rate: float):
    lam = torch.tensor(-rate, dtype=F64, requires_grad=True)
    return (lambda t, y: lam * y), lam


def test_a_pair_parted_by_fast_decay_warns() -> None:
    # y' = -10 y: the pair's parasitic mode grows like exp(10 t) for a coupling near 1
    f, lam = _decay(10.0)
    ts = torch.tensor([0.0, 3.0], dtype=F64)
    controller = no.PIController(rtol=1e-6, atol=1e-9)
    with pytest.warns(UserWarning, match="parted by"):
        sol = no.solve(f, torch.ones(1, dtype=F64), ts, controller=controller,
                       gradient=Reversible(params=(lam,)))  # fmt: skip
    assert sol.ys[-1].abs().item() > 1.0  # (the exact solution: 1e-13)


def test_a_reconstruction_that_misses_y0_warns() -> None:
    # a small coupling: round-off in the reconstruction grows like 2^steps
    f, lam = _decay(10.0)
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    controller = no.PIController(rtol=1e-6, atol=1e-9)
    with pytest.warns(UserWarning, match="parted by"):  # (the pair is unstable too)
        sol = no.solve(f, torch.ones(1, dtype=F64, requires_grad=True), ts,
                       controller=controller, gradient=Reversible(0.5, params=(lam,)))  # fmt: skip
    with pytest.warns(UserWarning, match="reconstructed the initial state"):
        sol.ys[-1].sum().backward()


def test_a_failed_solve_without_throw_reports_its_status_without_the_split_warning() -> None:
    func = _Field()
    y0 = torch.tensor([0.3, -0.8, 1.1], dtype=F64)
    ts = torch.tensor([0.0, 100.0], dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (the halves' NaN end is the failure, not a split)
        with torch.no_grad():
            sol = no.solve(func, y0, ts, gradient=Reversible(), throw=False, max_steps=5)
    assert int(sol.status) == int(no.Status.MAX_STEPS) and sol.ys[-1].isnan().all()


@pytest.mark.parametrize("method", ["radau", "explicit_adams"])
def test_training_refuses_a_method_it_cannot_reverse_before_any_work(tmp_path, capsys, method):
    from neuralode.cli import main

    out = tmp_path / "run"
    argv = ["train", "odenet", "--data", "digits", "--gradient", "reversible"]
    assert main([*argv, "--method", method, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gradient reversible needs an explicit Runge-Kutta" in err
    assert not out.exists()
