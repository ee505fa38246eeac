"""``step_t`` and ``jump_t`` in the device loop (``per_sample=True``, ``device_loop=True``) and
in the compiled whole solve (``compile=True``): the host loop's steps, outputs and
evaluations of f, row by row."""

from __future__ import annotations

import math
import shutil
import warnings

import pytest
import torch
from conftest import adaptive_tolerances, make_solver

import neuralode as no
from neuralode.solvers.explicit_rk import ExplicitRK

# the adaptive explicit Runge-Kutta methods, which the device loop runs: FSAL (bosh3, dopri5,
# tsit5) and not (adaptive_heun, fehlberg2, dopri8, whose dense output adds stages)
DEVICE_METHODS = ["adaptive_heun", "bosh3", "dopri5", "dopri8", "fehlberg2", "tsit5"]
JUMPS = [0.5, 0.75]
TOLERANCES = {"rtol": 1e-8, "atol": 1e-10}
needs_compiler = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def rate(t: torch.Tensor) -> torch.Tensor:
    """a(t): 1 before 0.5, -2 up to 0.75, 0.5 after (jumps at JUMPS; one side only at each)."""
    return torch.where(t < 0.5, 1.0, torch.where(t < 0.75, -2.0, 0.5))


class Logged:
    """y' = a(t) y, per row, logging every time f is evaluated at."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.times.extend(torch.as_tensor(t).reshape(-1).tolist())
        return field(t, y)


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y' = a(t) y, t 0-dim or one time per row."""
    t = torch.as_tensor(t, dtype=y.dtype)
    return rate(t.reshape(-1, 1) if t.dim() else t) * y


def exact(y0: torch.Tensor, t: float) -> torch.Tensor:
    """y0 exp(int_0^t a)."""
    integral = min(t, 0.5) - 2 * max(0.0, min(t, 0.75) - 0.5) + 0.5 * max(0.0, t - 0.75)
    return y0 * math.exp(integral)


def _times(backward: bool) -> torch.Tensor:
    # outputs inside the steps next to both jumps, interpolated there
    ts = torch.tensor([0.0, 0.3, 0.4999, 0.5003, 0.74, 0.76, 1.0], dtype=torch.float64)
    return ts.flip(0) if backward else ts


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("kind", ["jump_t", "step_t"])
@pytest.mark.parametrize("name", DEVICE_METHODS)
def test_per_sample_rows_take_the_host_loops_steps(name: str, kind: str, backward: bool) -> None:
    """Each row of a per-sample solve takes the steps the host loop takes for it alone, so
    its outputs (inside the steps next to the landing points too) and its evaluations of f
    are the host loop's, and with jump_t f is never evaluated at a jump. A method without
    FSAL evaluates f at the end of a step onto a jump (the left limit, kept for its
    interpolant) as well as just past it: up to one evaluation more per jump than the host
    loop, which evaluates the left limit only for an output inside that step."""
    solver = make_solver(name)
    assert isinstance(solver, ExplicitRK)
    rtol, atol = adaptive_tolerances(solver)
    ts = _times(backward)
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0], [-5.0, 0.02]], dtype=torch.float64)
    y_start = torch.stack([exact(row, float(ts[0])) for row in y0])
    logged = Logged()
    together = no.solve(
        logged, y_start, ts, solver=make_solver(name),
        controller=no.PIController(rtol=rtol, atol=atol), per_sample=True, **{kind: JUMPS},
    )  # fmt: skip
    if kind == "jump_t":
        assert not set(JUMPS) & set(logged.times)
    for i in range(3):
        alone = no.solve(
            Logged(), y_start[i : i + 1], ts, solver=make_solver(name),
            controller=no.PIController(rtol=rtol, atol=atol), **{kind: JUMPS},
        )  # fmt: skip
        assert int(together.stats.sample_steps[i]) == alone.stats.n_steps
        left_limits = 0 if solver.tableau.fsal or kind == "step_t" else len(JUMPS)
        extra = int(together.stats.sample_nfe[i]) - alone.stats.nfe
        assert 0 <= extra <= left_limits
        torch.testing.assert_close(together.ys[:, i], alone.ys[:, 0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["dopri5", "fehlberg2"])
def test_device_loop_with_jump_t_is_accurate_and_the_host_loops(name: str) -> None:
    """One problem in the device loop: the host loop's steps and outputs, and the exact
    solution to the tolerance (without jump_t: more steps, rejected at the jumps)."""
    ts = _times(False)
    y0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    runs = {}
    for device_loop in (False, True):
        for jumps in (JUMPS, []):
            runs[device_loop, bool(jumps)] = no.solve(
                Logged(), y0, ts, solver=make_solver(name), jump_t=jumps,
                controller=no.PIController(**TOLERANCES), device_loop=device_loop,
            )  # fmt: skip
    device, host = runs[True, True], runs[False, True]
    assert device.stats.n_steps == host.stats.n_steps
    left_limits = 0 if make_solver(name).tableau.fsal else len(JUMPS)  # (see above)
    assert 0 <= device.stats.nfe - host.stats.nfe <= left_limits
    torch.testing.assert_close(device.ys, host.ys, rtol=1e-12, atol=1e-14)
    want = torch.stack([exact(y0, float(t)) for t in ts])
    torch.testing.assert_close(device.ys, want, rtol=1e-6, atol=1e-8)
    assert runs[True, False].stats.n_rejected > device.stats.n_rejected


@needs_compiler
@pytest.mark.parametrize("per_sample", [False, True], ids=["one-problem", "per-sample"])
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the landing logic)
def test_whole_solve_graph_lands_like_the_eager_loop(per_sample: bool) -> None:
    """compile=True runs jump_t and step_t inside the one graph (no fallback): the eager
    solve's steps, evaluations of f and outputs; other landing times of the same count
    reuse the graph."""
    ts = _times(False)
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0], [-5.0, 0.02]], dtype=torch.float64)
    options = dict(controller=no.PIController(**TOLERANCES), per_sample=per_sample)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*whole solve")
        for step_t in ([0.2], [0.35]):
            landings = dict(jump_t=JUMPS, step_t=step_t)
            eager = no.solve(field, y0, ts, **landings, **options)
            patch = torch._dynamo.config.patch(error_on_recompile=step_t != [0.2])
            with patch:
                whole = no.solve(field, y0, ts, compile=True, **landings, **options)
            assert whole.stats.n_steps == eager.stats.n_steps
            assert whole.stats.nfe == eager.stats.nfe
            if per_sample:
                assert torch.equal(whole.stats.sample_nfe, eager.stats.sample_nfe)
            torch.testing.assert_close(whole.ys, eager.ys, rtol=1e-12, atol=1e-14)


def test_per_sample_backsolve_across_jumps_equals_direct() -> None:
    """The adjoint of a per-sample solve with jump_t: the gradients of backpropagation
    through the host loop's solve, and the exact ones (d y(1) / d y0 = exp(int a))."""
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0]], dtype=torch.float64, requires_grad=True)
    grads = []
    module = torch.nn.Module()  # (Backsolve differentiates a module's parameters: none)
    module.forward = field
    for options in (dict(per_sample=True, gradient=no.Backsolve()), {}):
        sol = no.solve(
            module, y0, ts, controller=no.PIController(rtol=1e-10, atol=1e-12),
            jump_t=JUMPS, **options,
        )  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), y0)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(grads[0], torch.full_like(y0, exact(torch.tensor(1.0), 1.0).item()))


def test_landings_the_device_loop_refuses() -> None:
    """SDE methods per sample take no landing points (their Brownian increments are drawn
    before each attempt's end is known)."""
    from neuralode import sde

    class Additive(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return torch.ones_like(y)

    vbt = sde.VirtualBrownianTree(t0=0.0, t1=1.0, size=(3, 1), entropy=0)
    term = sde.SDETerm(Additive(), vbt)
    with pytest.raises(ValueError, match="with an SDE method does not support jump_t"):
        no.solve(
            term, torch.zeros(3, 1), torch.tensor([0.0, 1.0]),
            solver=sde.SDESolver("euler", step_doubling=True),
            controller=no.PIController(rtol=1e-3, atol=1e-4), per_sample=True, jump_t=[0.5],
        )  # fmt: skip


def test_vmap_lands_each_problem_like_its_solve_alone() -> None:
    """torch.func.vmap over a solve with jump_t runs the device loop (each problem its own
    steps onto the jumps): each problem's solve alone, and grad composes with it (the
    exact d y(1) / d y0 = exp(int a))."""
    ts = _times(False)
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0], [-5.0, 0.02]], dtype=torch.float64)
    controller = no.PIController(**TOLERANCES)

    def solve(y: torch.Tensor) -> torch.Tensor:
        return no.solve(field, y, ts, controller=controller, jump_t=JUMPS).ys

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # (no batching rule missing: no slow fallback)
        mapped = torch.func.vmap(solve)(y0)
        grads = torch.func.vmap(torch.func.grad(lambda y: solve(y)[-1].sum()))(y0)
    for i in range(3):
        torch.testing.assert_close(mapped[i], solve(y0[i]), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads, torch.full_like(y0, math.exp(0.125)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("mode", ["per_sample", "device_loop"])
def test_float32_states_evaluate_f_one_float32_ulp_from_a_jump(mode: str, backward: bool) -> None:
    """A float32 state's f receives float32 times: the evaluations one ulp either side of a
    jump are one float32 ulp away (a float64 ulp rounds back onto the jump, where f takes
    its far side's value and the error estimate rejects step after step), so every row
    takes the host loop's steps and evaluations of f."""
    ts = _times(backward).float()
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0], [-5.0, 0.02]])
    logged = Logged()
    options = dict(controller=no.PIController(rtol=1e-5, atol=1e-7), jump_t=JUMPS)
    rows = y0 if mode == "per_sample" else y0[:1]
    together = no.solve(logged, rows, ts, **{mode: True}, **options)
    assert not set(JUMPS) & set(logged.times)
    for i in range(rows.shape[0]):
        alone = no.solve(field, y0[i : i + 1], ts, **options)
        steps = together.stats.sample_steps[i] if mode == "per_sample" else together.stats.n_steps
        assert int(steps) == alone.stats.n_steps
        torch.testing.assert_close(together.ys[:, i], alone.ys[:, 0], rtol=1e-6, atol=1e-6)


@needs_compiler
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the landing logic)
def test_whole_solve_float32_lands_like_the_host_loop() -> None:
    """compile=True on a float32 state: the host loop's steps across the jumps (f one
    float32 ulp from each)."""
    ts = _times(False).float()
    y0 = torch.tensor([[1.0, -2.0]])
    options = dict(controller=no.PIController(rtol=1e-5, atol=1e-7), jump_t=JUMPS)
    host = no.solve(field, y0, ts, **options)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*whole solve")
        whole = no.solve(field, y0, ts, compile=True, **options)
    assert whole.stats.n_steps == host.stats.n_steps
    torch.testing.assert_close(whole.ys, host.ys, rtol=1e-6, atol=1e-6)


class _Rated(torch.nn.Module):
    """y' = a(t) y with a's three values a parameter, logging the times f sees, per row."""

    def __init__(self, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.values = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=dtype))
        self.times: list[torch.Tensor] = []

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.times.append(t.detach().clone())
        a, b, c = self.values
        t = t.reshape(-1, 1)
        return torch.where(t < 0.5, a, torch.where(t < 0.75, b, c)) * y


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("case", ["spans", "events"])
def test_backsolve_on_per_sample_clocks_lands_on_the_jumps(
    case: str, backward: bool, dtype: torch.dtype
) -> None:
    """Per-sample time spans, and per-sample terminal events, differentiate by one adjoint
    solve on per-sample clocks (each sample's t a linear function of a common s): its steps
    land on every sample's s of each jump, so each sample's f is seen just either side of
    the jumps in its span (in f's time dtype) and never at them, and the gradients are
    backpropagation's to the tolerance, as Backsolve's of one sample."""
    double = dtype == torch.float64
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0], [-5.0, 0.02]], dtype=dtype)
    if case == "spans":
        ts = torch.tensor([[0.0, 0.3, 1.0], [0.2, 0.6, 0.9], [0.6, 0.7, 0.8]], dtype=dtype)
        ts, event = (ts.flip(1) if backward else ts), None
        spans = ts[:, [0, -1]]
    else:  # the samples stop at 0.6, 0.7 and 0.8: their clocks slower, or still, on [0, 1]
        ts = torch.tensor([1.0, 0.0] if backward else [0.0, 1.0], dtype=dtype)
        stops = torch.tensor([0.6, 0.7, 0.8], dtype=dtype)
        event = no.Event(lambda t, y: t - stops + 0 * y[..., 0], terminal=True)
        spans = ts.expand(3, 2)
    grads = []
    tolerances = dict(rtol=1e-10, atol=1e-12) if double else dict(rtol=1e-6, atol=1e-8)
    for gradient in ("backsolve", "direct"):
        module = _Rated(dtype)
        y = y0.clone().requires_grad_()
        sol = no.solve(
            module, y, ts, controller=no.PIController(**tolerances), jump_t=JUMPS,
            per_sample=True, event=event,
            gradient=no.Backsolve(module.parameters()) if gradient == "backsolve" else None,
        )  # fmt: skip
        forward_calls = len(module.times)
        grads.append(torch.autograd.grad(sol.ys.pow(2).sum(), (y, module.values)))
        if gradient == "direct":
            continue
        seen = torch.stack(module.times[forward_calls:], 1)  # (batch, calls)
        assert not bool(torch.isin(seen, torch.tensor(JUMPS, dtype=seen.dtype)).any())
        if event is not None:
            assert bool(sol.event_mask.all())
            spans = torch.stack([spans[:, 0], sol.event_t.detach()], 1)
        near = 1e-14 if double else 1e-6
        for i in range(3):
            low, high = sorted(spans[i].tolist())
            for jump in (jump for jump in JUMPS if low < jump < high):
                assert bool(((seen[i] < jump) & (seen[i] > jump - near)).any())
                assert bool(((seen[i] > jump) & (seen[i] < jump + near)).any())
    for backsolve, direct in zip(*grads):
        if double:
            torch.testing.assert_close(backsolve, direct, rtol=1e-8, atol=2e-8)
        else:
            torch.testing.assert_close(backsolve, direct, rtol=1e-4, atol=1e-4)


# the compiled backward case compiles a whole solve of its own (20 s): slow, its landing
# covered by the compiled forward case and the eager backward ones
@pytest.mark.parametrize(
    "mode, backward",
    [
        pytest.param(
            mode,
            backward,
            id=f"{mode}-{'backward' if backward else 'forward'}",
            marks=[pytest.mark.slow] if mode == "compile" and backward else [],
        )
        for backward in (False, True)
        for mode in ("host", "per_sample", "device_loop", "compile")
    ],
)
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the landing logic)
def test_a_span_between_two_jumps_is_the_smooth_piece(mode: str, backward: bool) -> None:
    """A span from one jump to the next (solving piece by piece): f is evaluated just inside
    the span at both ends, never on a jump, so the solve is that of the smooth piece y' = -2 y
    (the same steps, the same values)."""
    if mode == "compile" and not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    ts = torch.tensor([0.5, 0.6, 0.75], dtype=torch.float64)
    ts = ts.flip(0) if backward else ts
    y0 = torch.tensor([[1.0, -2.0], [0.3, 4.0]], dtype=torch.float64)
    options = {
        "host": {}, "per_sample": dict(per_sample=True), "device_loop": dict(device_loop=True),
        "compile": dict(compile=True),
    }[mode]  # fmt: skip
    logged = Logged()
    f = field if mode == "compile" else logged
    with torch.no_grad():
        sol = no.solve(f, y0, ts, controller=no.PIController(**TOLERANCES), jump_t=JUMPS, **options)
        smooth = no.solve(
            lambda t, y: -2 * y, y0, ts, controller=no.PIController(**TOLERANCES), **options
        )
    assert not set(JUMPS) & set(logged.times)
    assert sol.stats.n_steps == smooth.stats.n_steps
    torch.testing.assert_close(sol.ys, smooth.ys, rtol=1e-13, atol=1e-15)
