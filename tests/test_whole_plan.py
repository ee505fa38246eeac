"""The compiled whole solve's cached plans (``_whole_plan.planned``): a solve with the same
f, settings and shapes reuses the plan and the graph without recompiling; a changed f, a
different f, or a controller changed after an earlier solve is never served a stale plan or
graph (each solve equals the eager one)."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import neuralode as no
from neuralode import _whole_plan
from neuralode.models import MLPDynamics

# plans, guards and recompiles are dynamo's: the whole solve's graphs run uncompiled by
# inductor (conftest's whole_solve_traced_only); the fallback to compiled steps compiles
pytestmark = [
    pytest.mark.skipif(
        not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
        reason="torch.compile's CPU backend needs a C++ compiler",
    ),
    pytest.mark.usefixtures("whole_solve_traced_only"),
]


TS = torch.linspace(0.0, 1.0, 3, dtype=torch.float64)


def same(compiled: no.Solution, eager: no.Solution) -> None:
    assert compiled.stats.n_steps == eager.stats.n_steps
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-9, atol=1e-10)


def test_new_y0_weights_and_default_objects_reuse_the_plan_and_the_graph():
    """Default ``Dopri5()`` and ``PIController()`` made anew by each solve, a new y0 and new
    weights of the same shapes: one plan, no recompilation, the eager results."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net = net.double()

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(y)

    y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    with torch.no_grad():
        same(no.solve(f, y0, TS, compile=True), no.solve(f, y0, TS))
        plans = dict(_whole_plan._PLANS)
        net[0].weight.mul_(1.1)
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = no.solve(f, -y0, TS, compile=True)
        same(again, no.solve(f, -y0, TS))
    assert _whole_plan._PLANS == plans


def test_a_changed_or_different_f_and_a_changed_controller_are_not_served_stale_graphs():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    net = net.double()

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return net(y)

    y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    first = no.PIController(rtol=1e-7, atol=1e-9)
    with torch.no_grad():
        same(
            no.solve(f, y0, TS, controller=first, compile=True),
            no.solve(f, y0, TS, controller=first),
        )
        # the model changed in place: another hidden layer of another width
        net[2] = torch.nn.Sequential(torch.nn.Linear(8, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        net.double()
        same(
            no.solve(f, y0, TS, controller=first, compile=True),
            no.solve(f, y0, TS, controller=first),
        )

        # a different f of the same shapes
        def g(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -2.0 * y + torch.sin(t)

        same(
            no.solve(g, y0, TS, controller=first, compile=True),
            no.solve(g, y0, TS, controller=first),
        )
        # the caller's controller changed after its solve: a new controller with the
        # earlier settings gets them, the changed one its own
        first.safety = 0.5
        fresh = no.PIController(rtol=1e-7, atol=1e-9)
        changed = no.solve(g, y0, TS, controller=first, compile=True)
        same(changed, no.solve(g, y0, TS, controller=first))
        same(
            no.solve(g, y0, TS, controller=fresh, compile=True),
            no.solve(g, y0, TS, controller=fresh),
        )
    assert changed.stats.n_steps != no.solve(g, y0, TS, controller=fresh).stats.n_steps


def test_a_controller_with_tensor_tolerances_gets_a_plan_of_its_own_solve():
    """Tensor tolerances (no plain settings to key on): no cached plan, the eager result,
    also after the tolerance tensor is changed in place."""

    def g(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -2.0 * y + torch.sin(t)

    y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    rtol = torch.tensor(1e-7, dtype=torch.float64)
    controller = no.PIController(rtol=rtol, atol=1e-9)
    with torch.no_grad():
        plans = dict(_whole_plan._PLANS)
        kwargs = dict(controller=controller)
        same(no.solve(g, y0, TS, compile=True, **kwargs), no.solve(g, y0, TS, **kwargs))
        rtol.fill_(1e-4)
        loose = no.solve(g, y0, TS, compile=True, **kwargs)
        same(loose, no.solve(g, y0, TS, **kwargs))
    assert _whole_plan._PLANS == plans
    assert (
        loose.stats.n_steps
        < no.solve(g, y0, TS, controller=no.PIController(1e-7, 1e-9)).stats.n_steps
    )


def test_past_torchs_recompile_limit_each_step_is_compiled_instead(steps_traced_only):
    """More whole-solve graphs of one solver than torch's ``recompile_limit``: the solve
    warns, naming the limit, and compiles each step instead (the eager results), rather
    than raising torch's FailOnRecompileLimitHit."""
    import neuralode._loop as loop

    y0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    fields = [lambda t, y, k=k: -k * y for k in (1.0, 2.0, 3.0)]
    with torch._dynamo.config.patch(recompile_limit=1), pytest.warns(UserWarning) as caught:
        with torch.no_grad():
            for f in fields:
                compiled = no.solve(f, y0, TS, compile=True)
                same(compiled, no.solve(f, y0, TS))
    assert any("recompile_limit" in str(w.message) for w in caught)
    assert loop._attempt in steps_traced_only


def test_an_unhashable_f_gets_a_plan_of_its_own_solve():
    """f as a dataclass with ``eq=True`` (unhashable) cannot key a cached plan: the solve
    makes its own and equals the eager one."""
    from dataclasses import dataclass

    @dataclass
    class Decay:
        rate: float

        def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -self.rate * y

    y0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    with torch.no_grad():
        same(no.solve(Decay(1.5), y0, TS, compile=True), no.solve(Decay(1.5), y0, TS))


def test_plans_of_other_settings_never_share_a_compiled_copy_whose_guards_skip_them():
    """Kept plans' compiled copies check f's guards, not the plan's: the plans given to a
    copy differ only in f and the tolerances. Other tolerances, a new closure of the same
    code, another direction of time, another max_steps or safety factor, one after the
    other and back: each solve is the eager one; new tolerances and a new f of the same
    code and an equal closure compile nothing."""
    from torch._dynamo.utils import counters

    def rate(k: float):
        return lambda t, y: -k * y + torch.sin(t)

    y0 = torch.tensor([[0.5, -0.3]], dtype=torch.float64)
    decay = rate(1.5)
    with torch.no_grad():
        same(no.solve(decay, y0, TS, compile=True), no.solve(decay, y0, TS))
        graphs = counters["stats"]["unique_graphs"]
        with torch._dynamo.config.patch(error_on_recompile=True):
            for rtol in (1e-3, 1e-9, 1e-6):
                ctrl = no.PIController(rtol=rtol, atol=1e-9)
                same(
                    no.solve(decay, y0, TS, controller=ctrl, compile=True),
                    no.solve(decay, y0, TS, controller=ctrl),
                )
            again = rate(1.5)  # (another f: the same code, an equal closure)
            same(no.solve(again, y0, TS, compile=True), no.solve(again, y0, TS))
        assert counters["stats"]["unique_graphs"] == graphs
        cases = [
            (rate(0.5), TS, {}),
            (decay, TS.flip(0), {}),
            (decay, TS, {"max_steps": 3}),
            (decay, TS, {"controller": no.PIController(safety=0.5)}),
            (decay, TS, {}),
        ]
        for f, ts, kwargs in cases + cases:
            if "max_steps" in kwargs:
                with pytest.raises(no.MaxStepsError):
                    no.solve(f, y0, ts, compile=True, **kwargs)
                continue
            same(no.solve(f, y0, ts, compile=True, **kwargs), no.solve(f, y0, ts, **kwargs))


@pytest.mark.parametrize("seminorm", [True, False])
def test_backsolves_compiled_backward_compiles_once(seminorm):
    """Each backward solve of ``Backsolve`` has new adjoint dynamics and a new seminorm or
    mixed norm (equal to the last; the mixed norm is odeint_adjoint's default): the second
    forward and backward compile nothing and give the eager gradients."""
    from torch._dynamo.utils import counters

    torch.manual_seed(4)
    field = MLPDynamics(2, hidden=8, layers=1, autonomous=True).double()
    y0 = torch.tensor([[0.5, -0.3], [0.1, 0.2]], dtype=torch.float64)

    def gradients(**options):
        sol = no.solve(field, y0, TS, gradient=no.Backsolve(seminorm=seminorm), **options)
        return torch.autograd.grad(sol.ys[-1].sum(), list(field.parameters()))

    gradients(compile=True)
    graphs = counters["stats"]["unique_graphs"]
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = gradients(compile=True)
    assert counters["stats"]["unique_graphs"] == graphs
    for c, e in zip(compiled, gradients()):
        torch.testing.assert_close(c, e, rtol=1e-7, atol=1e-9)


def test_the_copies_keep_fs_guards_and_drop_the_plans():
    ours = _whole_plan._ours
    for name in ("plan", "plan.solver._cache", "dict(type(plan).__dict__)", "L['plan'].sign"):
        assert ours(name), name
    assert ours("G['attempt']") and ours("G['__import_neuralode_dot__attempt'].torch")
    assert ours("G['__import_neuralode']._solve")
    for name in (
        "plan.func", "plan.func.__closure__[0].cell_contents._forward_hooks",
        "dict(type(plan.func).__dict__)", "L['plan'].func", "planet", "y0", "ts", "",
        "G['__import_userf'].SCALE", "G['torch']",
        "G['__import_neuralode_user'].K", "G['__import_neuralodes_dot_fields'].K",
        "G['__import_torch_dot_nn_dot_modules_dot_module']._global_forward_hooks",
    ):  # fmt: skip
        assert not ours(name), name


def test_the_fallback_names_torchs_reason_and_the_fix_for_aliasing() -> None:
    """torch's refusal of the while_loop graph announces its reason on a first line ending in
    a colon: the warning carries the reason too, and for views of one tensor, the fix."""
    from neuralode._whole_solve import _reason

    error = torch._dynamo.exc.UncapturedHigherOrderOpError(
        "This higher order operator doesn't work unless it is captured completely with "
        "torch.compile. Got graph break/error:\n\nEncountered aliasing during higher order op "
        "tracing\n  Higher Order Operator: torch.while_loop\n  Developer debug context: "
        "Input-to-input aliasing detected at nodes getattr_4 and getattr_5"
    )
    reason = _reason(error)
    assert "Got graph break/error: Encountered aliasing during higher order op tracing" in reason
    assert "write F.linear(y, W, b), or .clone() the slices" in reason
    assert "debug context" not in reason
    assert _reason(RuntimeError("one line")) == "one line"


def test_an_f_reading_a_float_compiles_each_step_and_equals_eager(monkeypatch, steps_traced_only):
    """``.item()`` or ``float()`` of a tensor inside f: inside ``while_loop`` dynamo captures
    the number and inductor (torch 2.13) computes with it in single precision (a float64
    solve 3e-9 off), so the backend refuses the graph: the solve warns, naming the read, and
    compiles each step, where the read is a graph break (the eager results)."""
    from neuralode import _whole_backend

    def refusing_eager(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        _whole_backend.refuse_float_reads(gm)
        return gm.forward

    monkeypatch.setattr(_whole_plan, "whole_solve_backend", refusing_eager)
    y0 = torch.tensor([0.7, 0.3], dtype=torch.float64)
    for f in (lambda t, y: -y * y.sum().item(), lambda t, y: -y * float(y.sum())):
        with torch.no_grad(), pytest.warns(UserWarning, match=r"as a Python float \(\.item\(\)"):
            compiled = no.solve(f, y0, TS, compile=True)
        eager = no.solve(f, y0, TS)
        assert compiled.stats.n_steps == eager.stats.n_steps
        torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-14, atol=1e-15)
    # an f that reads no tensor's value compiles whole, without a warning
    g = lambda t, y: -y * y.shape[0]  # noqa: E731
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        same(no.solve(g, y0, TS, compile=True), no.solve(g, y0, TS))


@pytest.mark.parametrize(
    "f, error, match",
    [
        (lambda t, y: (-y).float(), TypeError, "returned dtype torch.float32"),
        # the right number of entries in the wrong shape would pass the graph's reshape
        (lambda t, y: -y.T, ValueError, r"output has shape \(3, 2\); expected \(2, 3\)"),
        (lambda t, y: -y[:1], ValueError, r"output has shape \(1, 3\)"),
    ],
)
@pytest.mark.parametrize("per_sample", [False, True])
def test_fs_output_is_checked_before_the_graph_is_traced(
    steps_traced_only, f, error, match, per_sample
):
    """f's output is checked once eagerly before tracing: the host solve's error at once,
    with nothing compiled and no warning about torch.compile."""
    y0 = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad(), pytest.raises(error, match=match), warnings.catch_warnings():
        warnings.simplefilter("error")
        no.solve(f, y0, TS, compile=True, per_sample=per_sample)
    assert steps_traced_only == [] and _whole_plan._PLANS == {}


def test_per_sample_f_that_cannot_broadcast_t_gets_the_fix_before_tracing(steps_traced_only):
    """Per sample, t is (batch,): an f written for one time fails inside torch, and the
    error names the fix, as the host solve's does."""
    y0 = torch.randn(5, 4, dtype=torch.float64)
    fix = r"broadcast it against y as t\[:, None\]"
    with torch.no_grad(), pytest.raises(RuntimeError, match=fix):
        no.solve(lambda t, y: -y * t, y0, TS, compile=True, per_sample=True)
    assert _whole_plan._PLANS == {}


def test_one_output_time_gives_each_samples_counts():
    y0 = torch.randn(2, 3, dtype=torch.float64)
    ts = TS[:1]
    with torch.no_grad():
        for compile in (False, True):
            sol = no.solve(lambda t, y: -y, y0, ts, per_sample=True, compile=compile)
            torch.testing.assert_close(sol.ys, y0[None])
            assert sol.stats.sample_steps.tolist() == [0, 0]
            assert sol.stats.sample_nfe.tolist() == [0, 0]
