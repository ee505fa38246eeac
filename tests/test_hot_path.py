"""The graph-free step (stage buffer reused across steps, used under torch.no_grad()) gives
the same results as the autograd step (stages stacked per step) for every explicit RK method,
with dense output, jumps, perturbed ends, rejections and events."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import neuralode as no
from neuralode.solvers.explicit_rk import ExplicitRK

RK_METHODS = [name for name, cls in no.METHODS.items() if issubclass(cls, ExplicitRK)]


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # a rotation with a time-dependent decay and a jump at t = 1.5
    rate = 0.3 + (t > 1.5).to(y.dtype)
    return torch.stack([y[..., 1], -y[..., 0]], -1) - rate * y


def both(**kwargs) -> tuple[no.Solution, no.Solution]:
    with torch.enable_grad():
        graph = no.solve(**kwargs)
    with torch.no_grad():
        free = no.solve(**kwargs)
    return graph, free


@pytest.mark.parametrize("method", RK_METHODS)
def test_graph_free_step_matches_autograd_step(method):
    solver = no.METHODS[method]()
    y0 = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
    ts = torch.linspace(0, 3, 7, dtype=torch.float64)
    controller = (
        no.PIController(1e-6, 1e-9, first_step=0.5)  # large first step: rejections
        if solver.adaptive
        else no.FixedGrid(step_size=0.05)
    )
    graph, free = both(func=field, y0=y0, ts=ts, solver=solver, controller=controller, jump_t=[1.5])
    assert graph.stats == free.stats
    torch.testing.assert_close(free.ys, graph.ys, rtol=1e-13, atol=1e-13)
    if solver.adaptive and method != "dopri8":  # dopri8 takes 0.5 at once
        assert free.stats.n_rejected > 0


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_graph_free_events_and_perturb(method):
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event = no.Event(lambda t, y: y[0], direction=-1)
    kwargs = dict(func=field, y0=y0, ts=ts, solver=no.METHODS[method](), event=event)
    graph, free = both(**kwargs, perturb=True)
    assert float(free.event_t) == pytest.approx(float(graph.event_t), abs=1e-12)
    assert 0 < float(free.event_t) < math.pi
    torch.testing.assert_close(free.event_y, graph.event_y, rtol=1e-12, atol=1e-12)


needs_cxx = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def tree_field(t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]):
    a, b = y
    return field(t, a), -b * (1 + t)


def test_compile_step_takes_the_eager_steps_and_reuses_its_graphs(steps_traced_only):
    """compile_step=True in the standard loop (each step with its error ratio as one graph,
    f(t0, y0) with the initial step size as another): the eager loop's steps, rejections,
    NFE and outputs, on a tuple state (mixed norm) with several outputs and a jump, with a
    given or a computed first step; a solve with a new y0 and end time compiles nothing new;
    NaN in f(t0, y0) is reported as in the eager loop. The graphs and their reuse are
    dynamo's: they run by its eager backend (inductor's code of the steps is tested by
    test_compile_step_matches_eager_for_every_explicit_method)."""
    import neuralode._loop as loop
    import neuralode.controllers.pi as pi

    torch._dynamo.reset()

    def run(scale: float, t_end: float, compile_step: bool, first_step=None, f=tree_field):
        y0 = (torch.tensor([1.0, 0.0], dtype=torch.float64) * scale,
              torch.tensor([0.5], dtype=torch.float64))  # fmt: skip
        ts = torch.linspace(0, t_end, 5, dtype=torch.float64)
        controller = no.PIController(1e-6, 1e-9, first_step=first_step)
        with torch.no_grad():
            return no.solve(f, y0, ts, controller=controller, jump_t=[1.5],
                            compile_step=compile_step)  # fmt: skip

    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for scale, t_end, first_step in ((1.0, 3.0, 0.5), (1.2, 2.5, 0.5), (1.0, 3.0, None)):
        compiled = run(scale, t_end, True, first_step)
        eager = run(scale, t_end, False, first_step)
        assert compiled.stats == eager.stats
        assert eager.stats.n_rejected > 0 or first_step is None  # 0.5 is too large
        for got, want in zip(compiled.ys, eager.ys):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs
    assert loop._attempt in steps_traced_only and pi.first_evaluations in steps_traced_only
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = run(0.8, 2.8, True)
    assert again.stats == run(0.8, 2.8, False).stats

    def nan_field(t, y):
        a, b = tree_field(t, y)
        return a * math.nan, b

    with pytest.raises(no.NonFiniteError, match=r"f\(t0, y0\) contains NaN"):
        run(1.0, 3.0, True, f=nan_field)


@pytest.mark.parametrize("per_sample", [False, True])
def test_compile_step_compiles_once_recording_a_graph_from_a_plain_y0(
    per_sample, steps_traced_only
):
    """A training solve (f's parameters record a graph, y0 does not): the steps from y0 run
    eagerly, so the compiled step sees one requires_grad and compiles once, with Direct()'s
    gradients and the eager solve's steps and evaluations."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    y0 = torch.randn(3, 2)
    ts = torch.linspace(0.0, 1.0, 3)
    results = []
    for compile in ("step", False):
        with torch._dynamo.config.patch(error_on_recompile=True):
            sol = no.solve(lambda t, y: net(y), y0, ts, compile=compile, per_sample=per_sample)
        results.append((sol, torch.autograd.grad(sol.ys.square().sum(), list(net.parameters()))))
    (compiled, grads), (eager, eager_grads) = results
    assert steps_traced_only  # (the steps were compiled)
    assert compiled.stats.nfe == eager.stats.nfe and compiled.stats.n_steps == eager.stats.n_steps
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@needs_cxx
@pytest.mark.slow  # one compilation per method: a few minutes in all on a 2-core CPU
@pytest.mark.parametrize("method", RK_METHODS)
def test_compile_step_matches_eager_for_every_explicit_method(method):
    """Steps, NFE, outputs (with a jump) and a terminal event's time equal the eager loop's;
    dopri8 to 1e-7 (its 13-stage error estimate rounds differently when fused)."""
    y0 = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
    ts = torch.linspace(0, 3, 7, dtype=torch.float64)
    event = no.Event(lambda t, y: y[0, 0] - 0.1, direction=-1)
    solutions = []
    for compile_step in (False, True):
        solver = no.METHODS[method]()
        controller = (no.PIController(1e-6, 1e-9) if solver.adaptive
                      else no.FixedGrid(step_size=0.05))  # fmt: skip
        kwargs = dict(solver=solver, controller=controller, compile_step=compile_step)
        with torch.no_grad():
            outputs = no.solve(field, y0, ts, jump_t=[1.5], **kwargs)
            hit = no.solve(field, y0, torch.tensor([0.0, 10.0], dtype=torch.float64),
                           event=event, **kwargs)  # fmt: skip
        solutions.append((outputs, hit))
    (outputs, hit), (outputs_c, hit_c) = solutions
    assert outputs_c.stats == outputs.stats and hit_c.stats == hit.stats
    assert hit.event_t is not None and 0 < float(hit.event_t) < 10
    torch.testing.assert_close(outputs_c.ys, outputs.ys, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(hit_c.event_t, hit.event_t, rtol=1e-7, atol=1e-9)


@pytest.mark.slow  # compiles forward and backward graphs: about a minute on a 2-core CPU
@pytest.mark.parametrize("gradient", ["direct", "backsolve"])
def test_compile_step_gradients_match_eager(gradient):
    """compile_step=True while training: values and parameter gradients equal the eager
    loop's, also for tsit5 and rk4 on a fixed grid. Direct() backpropagates through the
    compiled steps; Backsolve() compiles its forward solve and, for a module's parameters,
    its backward solve too (the VJPs by torch.func); with parameters given for a plain
    function its backward solve runs eagerly."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, t, y):
            return self.net(y) * (1 + 0.1 * t)

    y0 = torch.randn(4, 2)
    module = Field()

    def run(solver, controller, t1: float, compile_step: bool, func) -> tuple[torch.Tensor, ...]:
        net.zero_grad()
        params = tuple(net.parameters())
        backwards = compile_step and func is module  # the backward solve compiles too
        strategy = (no.Direct() if gradient == "direct"
                    else no.Backsolve(params=params, compile_step=backwards))  # fmt: skip
        ts = torch.tensor([0.0, 0.5, t1])
        sol = no.solve(func, y0, ts, solver=solver, controller=controller,
                       gradient=strategy, compile_step=compile_step)  # fmt: skip
        sol.ys[-1].pow(2).sum().backward()
        return (sol.ys.detach(), *(p.grad.clone() for p in net.parameters()))

    cases = [(no.Dopri5, no.PIController(1e-6, 1e-8)), (no.Tsit5, no.PIController(1e-6, 1e-8)),
             (no.RK4, no.FixedGrid(step_size=0.1))]  # fmt: skip
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):  # no eager fallback
        for solver, controller in cases:
            for t1, func in ((1.0, module), (1.3, module), (1.2, lambda t, y: module(t, y))):
                eager = run(solver(), controller, t1, False, func)
                compiled = run(solver(), controller, t1, True, func)
                for got, want in zip(compiled, eager):
                    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs


def test_adjoint_compiles_its_vjps_only_for_a_modules_parameters():
    """Backsolve(compile_step=True) substitutes the parameters by name (torch.func): a
    plain function, or parameters that are not func's, get a clear error before solving;
    so does a backward method it cannot compile."""
    from neuralode.adjoint._dynamics import _parameter_names

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(2, 2)

        def forward(self, t, y):
            return self.net(y)

    field, other = Field(), torch.zeros(2, requires_grad=True)
    ts = torch.tensor([0.0, 1.0])
    for func, params in ((lambda t, y: field(t, y), None), (field, (other,))):
        strategy = no.Backsolve(params=params or tuple(field.parameters()), compile_step=True)
        with pytest.raises(ValueError, match="needs func to be an nn.Module"):
            no.solve(func, torch.ones(2), ts, gradient=strategy)
    strategy = no.Backsolve(solver=no.METHODS["radau"](), compile_step=True)
    with pytest.raises(ValueError, match="backward solve supports the explicit Runge-Kutta"):
        no.solve(field, torch.ones(2), ts, gradient=strategy)
    params = tuple(field.parameters())
    assert _parameter_names(field, params[1:]) == ("net.bias",)


def test_stage_buffers_are_reused_across_solves_and_not_shared_by_nested_ones(monkeypatch):
    from neuralode import _term

    made = []
    new_buffer = _term.ODETerm._new_buffer
    monkeypatch.setattr(_term.ODETerm, "_new_buffer", lambda *a: made.append(1) or new_buffer(*a))
    monkeypatch.setattr(_term, "_POOL", {})
    y0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    controller = no.PIController(1e-10, 1e-12)

    def inner(t, y):  # f solves z' = -z from y over [0, 1]: f(y) = -exp(-1) y
        return -no.solve(lambda s, z: -z, y, ts, controller=controller).ys[-1]

    with torch.no_grad():
        no.solve(field, y0, ts)
        no.solve(field, y0, ts)
        assert len(made) == 1  # the second solve took the first one's buffer
        # every evaluation of the outer f runs an inner solve of the same shape while the
        # outer solve holds its buffer: they must not write into one buffer
        ys = no.solve(inner, y0, ts, controller=controller).ys
    torch.testing.assert_close(ys[-1], y0 * math.exp(-math.exp(-1)), rtol=1e-8, atol=0)
    assert len(made) == 2


def nested_field(t, y):  # a rotation across two tensors, and a decaying scalar
    x, rest = y["x"], y["rest"]
    return {"x": torch.stack([x[1], -x[0]]) - 0.3 * x - rest, "rest": x[:1] - rest, "s": -y["s"]}


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_graph_free_nested_state_matches_autograd_and_its_buffers_keep_their_structure(method):
    # f's output goes into the stage buffer tensor by tensor; a buffer made for one structure
    # must not serve another one of the same size from the pool
    ts = torch.linspace(0, 2, 5, dtype=torch.float64)
    solver = no.METHODS[method]()
    controller = no.PIController(1e-8, 1e-10) if solver.adaptive else no.FixedGrid(0.05)
    y0 = {
        "x": torch.tensor([1.0, 0.5], dtype=torch.float64),
        "rest": torch.tensor([0.0], dtype=torch.float64),
        "s": torch.tensor(2.0, dtype=torch.float64),
    }
    kwargs = dict(func=nested_field, y0=y0, ts=ts, solver=solver, controller=controller)
    graph, free = both(**kwargs)
    assert graph.stats == free.stats
    for key in y0:
        torch.testing.assert_close(free.ys[key], graph.ys[key], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(free.ys["s"], 2.0 * torch.exp(-ts), rtol=1e-6, atol=1e-8)
    with torch.no_grad():  # the same four numbers as one tensor, then as another structure
        flat = no.solve(lambda t, y: -y, torch.ones(4, dtype=torch.float64), ts, solver=solver,
                        controller=controller).ys  # fmt: skip
        pair = no.solve(lambda t, y: (-y[0], -2 * y[1]), (y0["x"].new_ones(3), y0["s"]), ts,
                        solver=solver, controller=controller).ys  # fmt: skip
    exact = torch.tensor([math.exp(-2), math.exp(-4)], dtype=torch.float64)
    torch.testing.assert_close(flat[-1], exact[0].expand(4), rtol=1e-6, atol=0)
    torch.testing.assert_close(pair[0][-1], exact[0].expand(3), rtol=1e-6, atol=0)
    torch.testing.assert_close(pair[1][-1], 2 * exact[1], rtol=1e-5, atol=0)


def test_graph_free_nested_output_of_the_wrong_shape_is_refused():
    y0 = (torch.ones(3), torch.ones(2))
    with torch.no_grad(), pytest.raises(ValueError, match=r"tensor 1 of the state.*expected"):
        no.solve(lambda t, y: (-y[0], -y[1][:1]), y0, torch.tensor([0.0, 1.0]))
