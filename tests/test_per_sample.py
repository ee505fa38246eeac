"""Per-sample mode: a batch of independent problems, each taking the steps it would alone."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import neuralode
from neuralode import (
    AdaptiveHeun,
    Backsolve,
    Bosh3,
    Checkpointed,
    Direct,
    Dopri5,
    Dopri8,
    MaxStepsError,
    PIController,
    Tsit5,
    odeint,
    odeint_adjoint,
    solve,
)

B = 5
RTOL, ATOL = 1e-5, 1e-7


class VanDerPol(torch.nn.Module):
    """x'' = mu (1 - x^2) x' - x with one mu per sample (a parameter, for gradients)."""

    def __init__(self, mu: torch.Tensor):
        super().__init__()
        self.mu = torch.nn.Parameter(mu.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], 1)


def problem(batch: int = B):
    mu = torch.linspace(0.5, 3.0, batch, dtype=torch.float64)
    x0 = torch.linspace(0.5, 2.0, batch, dtype=torch.float64)
    y0 = torch.stack([x0, torch.zeros_like(x0)], 1)
    ts = torch.linspace(0.0, 4.0, 4, dtype=torch.float64)
    return mu, y0, ts


def alone(solver_cls, mu, y0, ts, i, **kwargs):
    field = VanDerPol(mu[i : i + 1])
    return field, solve(
        field, y0[i : i + 1], ts, solver=solver_cls(), controller=PIController(RTOL, ATOL), **kwargs
    )


@pytest.mark.parametrize("solver_cls", [Dopri5, Tsit5, Bosh3])
def test_each_sample_takes_the_steps_it_takes_alone(solver_cls):
    mu, y0, ts = problem()
    with torch.no_grad():
        sol = solve(
            VanDerPol(mu),
            y0,
            ts,
            solver=solver_cls(),
            controller=PIController(RTOL, ATOL),
            per_sample=True,
        )
    stats = sol.stats
    assert sol.ys.shape == (len(ts), B, 2)
    for i in range(B):
        with torch.no_grad():
            _, ref = alone(solver_cls, mu, y0, ts, i)
        assert int(stats.sample_steps[i]) == ref.stats.n_steps
        assert int(stats.sample_accepted[i]) == ref.stats.n_accepted
        assert int(stats.sample_rejected[i]) == ref.stats.n_rejected
        assert int(stats.sample_nfe[i]) == ref.stats.nfe
        # same steps; the batched and the single-sample arithmetic round differently
        torch.testing.assert_close(sol.ys[:, i], ref.ys[:, 0], rtol=1e-10, atol=1e-10)
    # the samples really differ: one shared step size would not reproduce these counts
    assert len(set(stats.sample_steps.tolist())) > 1


def test_dopri8_per_sample_is_close_to_alone():
    """dopri8's error estimate cancels 13 stages, so round-off in the order of the sums
    (batched vs alone) moves tiny error ratios by up to ~1e-4 relative: step sizes then
    differ slightly, step counts by at most one."""
    mu, y0, ts = problem()
    with torch.no_grad():
        sol = solve(
            VanDerPol(mu),
            y0,
            ts,
            solver=Dopri8(),
            controller=PIController(RTOL, ATOL),
            per_sample=True,
        )
        for i in range(B):
            _, ref = alone(Dopri8, mu, y0, ts, i)
            assert abs(int(sol.stats.sample_steps[i]) - ref.stats.n_steps) <= 1
            torch.testing.assert_close(sol.ys[:, i], ref.ys[:, 0], rtol=1e-6, atol=1e-6)


def test_stats_totals_and_finished_samples_stop():
    mu, y0, ts = problem()
    seen = []

    def field(t, y):
        seen.append(t.clone())
        return VanDerPol(mu)(t, y)

    with torch.no_grad():
        sol = solve(field, y0, ts, controller=PIController(RTOL, ATOL), per_sample=True)
    s = sol.stats
    assert torch.equal(s.sample_accepted + s.sample_rejected, s.sample_steps)
    assert s.n_steps == int(s.sample_steps.sum())
    assert s.n_accepted == int(s.sample_accepted.sum())
    assert s.n_rejected == int(s.sample_rejected.sum())
    assert s.nfe == len(seen) == int(s.sample_nfe.max())  # f is called for the whole batch
    assert all(t.shape == (B,) for t in seen)  # one time per sample
    # the sample with the fewest steps finishes first and then stands still at t1
    first = int(s.sample_steps.argmin())
    finished_calls = seen[int(s.sample_nfe[first]) :]
    assert finished_calls and all(float(t[first]) == 4.0 for t in finished_calls)


def test_one_output_time_has_zero_per_sample_stats():
    """ts of one time integrates nothing, and the per-sample statistics (documented to be
    there in per-sample mode) are zeros of shape (batch,), not None."""
    y0 = torch.ones(B, 2, dtype=torch.float64)
    for mode in (True, "skip_finished"):
        sol = solve(lambda t, y: -y, y0, torch.tensor([0.0], dtype=torch.float64), per_sample=mode)
        assert torch.equal(sol.ys[0], y0)
        s = sol.stats
        for counts in (s.sample_nfe, s.sample_steps, s.sample_accepted, s.sample_rejected):
            assert torch.equal(counts, torch.zeros(B, dtype=torch.long))
        assert s.nfe == s.n_steps == s.rows_evaluated == 0


def test_a_field_broadcasting_the_per_sample_times_wrongly_is_told_how():
    """Per sample, f receives t of shape (batch,): y * t on a (batch, 1) state broadcasts
    to (batch, batch); the shape error says what t is and how to broadcast it."""
    y0 = torch.ones(B, 1, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    for mode in (True, "skip_finished"):
        with pytest.raises(ValueError, match=r"shape \(5, 5\); expected \(5, 1\).*t\[:, None\]"):
            solve(lambda t, y: -y * t, y0, ts, per_sample=mode)
    sol = solve(lambda t, y: -y * t[:, None], y0, ts, per_sample=True)
    torch.testing.assert_close(sol.ys[-1], torch.full_like(y0, math.exp(-0.5)))


def test_odeint_option_matches_core():
    mu, y0, ts = problem()
    with torch.no_grad():
        core = solve(VanDerPol(mu), y0, ts, controller=PIController(RTOL, ATOL), per_sample=True)
        compat = odeint(VanDerPol(mu), y0, ts, rtol=RTOL, atol=ATOL, options={"per_sample": True})
    assert torch.equal(core.ys, compat)


def test_gradients_direct_backsolve_and_alone_agree():
    mu, y0, ts = problem(3)
    y0 = y0.clone().requires_grad_(True)
    field = VanDerPol(mu)

    def loss_of(ys):
        return (ys[1:] ** 2).sum()

    grads = {}
    for name, gradient in (("direct", Direct()), ("backsolve", Backsolve(rtol=1e-9, atol=1e-11))):
        sol = solve(
            field,
            y0,
            ts,
            controller=PIController(RTOL, ATOL),
            gradient=gradient,
            per_sample=True,
        )
        grads[name] = torch.autograd.grad(loss_of(sol.ys), (y0, field.mu))
        if name == "backsolve":
            backward_steps = sol.stats.n_steps_backward
    # every sample alone, Direct
    g_y0, g_mu = torch.zeros_like(y0), torch.zeros_like(mu)
    for i in range(3):
        y0_i = y0[i : i + 1].detach().requires_grad_(True)
        f_i = VanDerPol(mu[i : i + 1])
        sol = solve(f_i, y0_i, ts, solver=Dopri5(), controller=PIController(RTOL, ATOL))
        gy, gm = torch.autograd.grad(loss_of(sol.ys), (y0_i, f_i.mu))
        g_y0[i], g_mu[i] = gy[0], gm[0]
    torch.testing.assert_close(grads["direct"][0], g_y0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grads["direct"][1], g_mu, rtol=1e-10, atol=1e-10)
    # the adjoint: one backward solve for the batch, accurate to its tolerance
    # (it differentiates the exact flow, Direct the discrete solve at rtol=1e-5)
    torch.testing.assert_close(grads["backsolve"][0], g_y0, rtol=5e-3, atol=1e-4)
    torch.testing.assert_close(grads["backsolve"][1], g_mu, rtol=5e-3, atol=1e-4)
    batched = solve(
        field,
        y0,
        ts,
        controller=PIController(RTOL, ATOL),
        gradient=Backsolve(rtol=1e-9, atol=1e-11),
    )
    loss_of(batched.ys).backward()
    # one backward solve of the whole batch (its restarts at the forward outputs differ
    # slightly, so the counts are close, not equal); not one solve per sample
    assert 0 < backward_steps <= 1.1 * batched.stats.n_steps_backward


def test_checkpointed_per_sample_backpropagates_twice_through_one_graph():
    """A graph kept for a second backward pass (two grad calls, a Jacobian, gradcheck)
    recomputes its checkpoints again: the same gradients as Direct(), counted each time."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 3, dtype=torch.float64, generator=gen).requires_grad_()
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=gen).requires_grad_()
    ts = torch.tensor([0.0, 0.8], dtype=torch.float64)
    grads, counts = {}, []
    for gradient in (Direct(), Checkpointed(params=(w,))):
        sol = solve(lambda t, y: torch.tanh(y @ w.T) - 0.2 * y, y0, ts, solver="tsit5",
                    gradient=gradient, per_sample=True)  # fmt: skip
        first = torch.autograd.grad(sol.ys[-1, 0].sum(), (y0, w), retain_graph=True)
        counts.append(sol.stats.nfe_backward)
        second = torch.autograd.grad(sol.ys[-1, 1].sum(), (y0, w))
        counts.append(sol.stats.nfe_backward)
        grads[type(gradient).__name__] = first + second
    for ours, direct in zip(grads["Checkpointed"], grads["Direct"], strict=True):
        torch.testing.assert_close(ours, direct, rtol=0, atol=1e-15)
    assert counts[2] > 0 and counts[3] == 2 * counts[2]  # (Direct evaluates none)


class _MLPField(torch.nn.Module):
    """An MLP field with one rate per sample: the samples take different steps."""

    def __init__(self, batch: int):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 2)
        ).double()
        self.rates = torch.linspace(0.5, 4.0, batch, dtype=torch.float64)[:, None]

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.rates * self.net(y) * torch.cos(t).reshape(-1, 1)  # (t: per sample or 0-dim)


@pytest.mark.parametrize(
    "case", ["adaptive", "fixed", "own times", "time gradients", "event", "device loop"]
)
def test_checkpointed_per_sample_gives_directs_gradients_keeping_no_activations(case):
    """Checkpointed() per sample: each attempt and each evaluation of f a checkpoint, so the
    gradients are Direct()'s to the bit, the graph saves none of f's activations, and the
    backward pass evaluates f again (counted in nfe_backward)."""
    field = _MLPField(4)
    y0 = torch.linspace(-1.0, 1.0, 8, dtype=torch.float64).reshape(4, 2).requires_grad_(True)
    ts = torch.linspace(0.0, 2.0, 4, dtype=torch.float64)
    kwargs = dict(controller=PIController(1e-7, 1e-9), per_sample=True)
    if case == "fixed":
        kwargs.update(solver="rk4", controller=neuralode.FixedGrid(step_size=0.1))
    if case == "own times":
        ts = torch.stack([ts, ts / 2, ts + 1, ts.flip(0)[:1].expand(4) * torch.arange(4.0) / 3])
    if case == "time gradients":
        ts = ts.clone().requires_grad_(True)
    if case == "event":
        kwargs["event"] = neuralode.Event(lambda t, y: y[:, 0] - 0.2)
    if case == "device loop":
        kwargs.update(per_sample=False, device_loop=True)
    inputs = [y0, *field.parameters(), *([ts] if ts.requires_grad else [])]
    results = {}
    for gradient in (Direct(), Checkpointed()):
        saved = []

        def pack(x: torch.Tensor, saved: list = saved) -> torch.Tensor:
            saved.append(x.numel())  # (those a checkpoint saves are its own)
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            sol = solve(field, y0, ts, gradient=gradient, **kwargs)
        loss = sol.ys.square().sum() + (0 if sol.event_t is None else sol.event_t.sum())
        results[type(gradient).__name__] = (torch.autograd.grad(loss, inputs), sum(saved), sol)
    (direct, saved_direct, _), (grads, saved, sol) = results["Direct"], results["Checkpointed"]
    for ours, theirs in zip(grads, direct, strict=True):
        assert torch.equal(ours, theirs)
    assert saved < saved_direct / 5  # the hidden layer's activations: 64 per row, each stage
    # every evaluation again but the first step size's (and the time gradients' two at each
    # of ts: f there and at the midpoint of its shift)
    assert 0 <= sol.stats.nfe - sol.stats.nfe_backward <= 2 + 2 * ts.shape[-1]


def test_odeint_adjoint_per_sample():
    mu, y0, ts = problem(3)
    field = VanDerPol(mu)
    ys = odeint_adjoint(field, y0, ts, rtol=RTOL, atol=ATOL, options={"per_sample": True})
    ys[-1].sum().backward()
    assert field.mu.grad is not None and torch.isfinite(field.mu.grad).all()
    with pytest.raises(ValueError, match="adjoint_options cannot set per_sample"):
        odeint_adjoint(field, y0, ts, adjoint_options={"per_sample": True})


def test_time_gradients_per_sample():
    mu, y0, ts = problem(2)
    ts = ts.clone().requires_grad_(True)
    field = VanDerPol(mu)
    ys = solve(field, y0, ts, controller=PIController(RTOL, ATOL), per_sample=True).ys
    (g,) = torch.autograd.grad(ys[-1, :, 0].sum(), ts)
    with torch.no_grad():
        expected = field(ts[-1].expand(2), ys[-1])[:, 0].sum()
    torch.testing.assert_close(g[-1], expected)


def test_errors_are_named():
    mu, y0, ts = problem()
    field = VanDerPol(mu)
    with pytest.raises(ValueError, match="batch dimension"):
        solve(lambda t, y: -y, torch.tensor(1.0), ts, per_sample=True)
    with pytest.raises(ValueError, match="every tensor's first dimension to be the batch"):
        solve(lambda t, y: y, (y0, y0[:2]), ts, per_sample=True)
    with pytest.raises(ValueError, match="supports the explicit Runge-Kutta methods"):
        solve(field, y0, ts, solver="implicit_euler", per_sample=True)
    with pytest.raises(ValueError, match="rk4 has no error estimate.*FixedGrid"):
        solve(field, y0, ts, solver=neuralode.RK4(), controller=PIController(), per_sample=True)
    with pytest.raises(ValueError, match=r"Direct\(\), Backsolve\(\) and Checkpointed"):
        solve(field, y0, ts, gradient=neuralode.Reversible(), per_sample=True)
    with pytest.raises(
        ValueError, match="Checkpointed.. with per_sample=True checkpoints the eager"
    ):
        solve(field, y0, ts, gradient=Checkpointed(), per_sample=True, compile="step")
    with pytest.raises(ValueError, match="Checkpointed.. with skip_finished=True"):
        solve(field, y0, ts, gradient=Checkpointed(), per_sample="skip_finished")
    with pytest.raises(MaxStepsError, match="sample 1 reached max_steps=20"):
        solve(field, y0, ts, controller=PIController(RTOL, ATOL), max_steps=20, per_sample=True)


def test_backward_in_time_and_any_sample_shape():
    rates = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    ts = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    controller = PIController(1e-8, 1e-10)
    sol = solve(lambda t, y: -rates[:, None] * y, y0, ts, controller=controller, per_sample=True)
    exact = torch.exp(rates[None, :, None] * (2 - ts[:, None, None])).expand(3, 3, 2)
    torch.testing.assert_close(sol.ys, exact, rtol=1e-6, atol=0)
    for i in range(3):
        ref = solve(lambda t, y, rate=rates[i]: -rate * y, y0[i : i + 1], ts, controller=controller)
        assert int(sol.stats.sample_steps[i]) == ref.stats.n_steps
        torch.testing.assert_close(sol.ys[:, i], ref.ys[:, 0], rtol=1e-12, atol=1e-12)


class StateVanDerPol(torch.nn.Module):
    """Van der Pol with mu carried in the state (dmu/dt = 0), scaled by a shared parameter:
    rows independent of their position in the batch, as ``skip_finished`` requires."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v, mu = y[:, 0], y[:, 1], y[:, 2]
        dv = self.scale * mu * (1 - x * x) * v - x
        return torch.stack([v, dv, torch.zeros_like(mu)], 1)


def skip_problem(batch: int = 6):
    mu, y0, ts = problem(batch)
    return torch.cat([y0, mu[:, None]], 1), ts


@pytest.mark.parametrize("solver_cls", [Dopri5, Bosh3])
def test_skip_finished_evaluates_only_running_samples_and_changes_nothing(solver_cls):
    """Same states, steps and per-sample NFE; f is called on exactly the rows of the samples
    still running, so the rows evaluated are the sum of the per-sample NFE."""
    y0, ts = skip_problem()
    common = dict(controller=PIController(RTOL, ATOL), per_sample=True)
    with torch.no_grad():
        full = solve(StateVanDerPol(), y0, ts, solver=solver_cls(), **common)
        skip = solve(StateVanDerPol(), y0, ts, solver=solver_cls(), skip_finished=True, **common)
    torch.testing.assert_close(skip.ys, full.ys, rtol=0, atol=1e-13)
    assert torch.equal(skip.stats.sample_steps, full.stats.sample_steps)
    assert torch.equal(skip.stats.sample_nfe, full.stats.sample_nfe)
    assert len(set(full.stats.sample_steps.tolist())) > 1  # samples finish at different steps
    assert full.stats.rows_evaluated == len(y0) * full.stats.nfe
    assert skip.stats.nfe == full.stats.nfe
    if solver_cls is Dopri5:  # FSAL and no f(t1, y1) for dense output: exact accounting
        assert skip.stats.rows_evaluated == int(skip.stats.sample_nfe.sum())
    assert skip.stats.rows_evaluated < full.stats.rows_evaluated


@pytest.mark.parametrize("gradient", [Direct, Backsolve])
def test_skip_finished_gradients_equal_the_full_batch(gradient):
    y0, ts = skip_problem()
    grads = []
    for skip in (False, True):
        field, y = StateVanDerPol(), y0.clone().requires_grad_()
        sol = solve(
            field,
            y,
            ts,
            controller=PIController(RTOL, ATOL),
            per_sample=True,
            skip_finished=skip,
            gradient=gradient(),
        )
        (sol.ys[1:, :, :2] ** 2).sum().backward()
        grads.append((y.grad, field.scale.grad))
    for full, skipped in zip(*grads):
        torch.testing.assert_close(skipped, full, rtol=1e-10, atol=1e-12)


def test_skip_finished_with_per_sample_events_and_odeint():
    y0, _ = skip_problem()
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event = neuralode.Event(lambda t, y: y[:, 0] + 0.5, direction=-1)
    sols = [
        solve(
            StateVanDerPol(),
            y0,
            ts,
            controller=PIController(RTOL, ATOL),
            per_sample=True,
            skip_finished=skip,
            event=event,
        )
        for skip in (False, True)
    ]
    torch.testing.assert_close(sols[1].event_t, sols[0].event_t, rtol=0, atol=1e-12)
    assert sols[1].stats.rows_evaluated < sols[0].stats.rows_evaluated
    ts = torch.linspace(0.0, 4.0, 5, dtype=torch.float64)
    options = dict(per_sample=True, skip_finished=True)
    ys = odeint(StateVanDerPol(), y0, ts, rtol=RTOL, atol=ATOL, options=options)
    reference = odeint(
        StateVanDerPol(), y0, ts, rtol=RTOL, atol=ATOL, options=dict(per_sample=True)
    )
    torch.testing.assert_close(ys, reference, rtol=0, atol=1e-13)


def test_skip_finished_errors_are_named():
    y0, ts = skip_problem()
    with pytest.raises(ValueError, match="skip_finished=True needs per_sample=True"):
        solve(StateVanDerPol(), y0, ts, skip_finished=True)
    constant = torch.ones_like(y0)  # a full-batch tensor returned for any rows: wrong
    with pytest.raises(ValueError, match="must return one row per sample it is given"):
        solve(lambda t, y: constant * y.sum(), y0, ts, per_sample=True, skip_finished=True)


def _count_calls(monkeypatch, module, *names: str) -> dict[str, int]:
    """Count the calls of ``module``'s functions ``names`` (reset by the caller)."""
    calls = dict.fromkeys(names, 0)

    def counting(name: str):
        fn = getattr(module, name)

        def counted(*args):
            calls[name] += 1
            return fn(*args)

        return counted

    for name in names:
        monkeypatch.setattr(module, name, counting(name))
    return calls


def _count_host_reads(monkeypatch) -> dict[str, int]:
    """Count every call that reads a tensor's values back to the host (on a GPU: a sync)."""
    reads = {"host": 0}

    def counting(read):
        def counted(self, *args, **kwargs):
            reads["host"] += 1
            return read(self, *args, **kwargs)

        return counted

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero"):
        monkeypatch.setattr(torch.Tensor, name, counting(getattr(torch.Tensor, name)))
    return reads


def _controller(solver_cls) -> PIController:
    """RTOL, ATOL; ten times looser for a first-order error estimate (adaptive Heun), whose
    steps grow like 1 / sqrt(rtol): ~1600 on ``_stiffening_batch`` to t = 10 against ~5200
    at RTOL."""
    return PIController(1e-4, 1e-6) if solver_cls is AdaptiveHeun else PIController(RTOL, ATOL)


def _stiffening_batch(batch: int = 16):
    """Van der Pol with mu from 1 to 25 carried in the state (``StateVanDerPol``)."""
    mu = torch.linspace(1.0, 25.0, batch, dtype=torch.float64)
    return torch.stack([torch.full((batch,), 2.0), torch.zeros(batch), mu], 1).to(torch.float64)


@pytest.mark.parametrize("solver_cls", [Dopri5, Tsit5, Bosh3, Dopri8, AdaptiveHeun])
def test_solves_read_the_device_only_at_scheduled_checks(solver_cls, monkeypatch):
    """No host read per step, only termination checks scheduled a quarter of the way to the
    slowest sample's end, whether only the end state is asked for or many outputs (the steps
    wait for theirs until a check); the same states, steps and calls of f as a solve that
    checks after every step."""
    import neuralode._per_sample as per_sample

    y0 = _stiffening_batch()
    runs = []
    for ts, every_step in (([0.0, 10.0], False), (41, False), (41, True)):
        ts = torch.linspace(0.0, 10.0, ts) if isinstance(ts, int) else torch.tensor(ts)
        with monkeypatch.context() as patch, torch.no_grad():
            if every_step:
                patch.setattr(per_sample, "_MAX_UNCHECKED", 1)
            checks = _count_calls(patch, per_sample, "_read_progress")
            host = _count_host_reads(patch)
            sol = solve(
                StateVanDerPol(),
                y0,
                ts.to(torch.float64),
                solver=solver_cls(),
                controller=_controller(solver_cls),
                per_sample=True,
            )
        runs.append((sol, checks["_read_progress"], host["host"]))
    (end_only, end_checks, end_host), (outputs, out_checks, out_host), per_step_run = runs
    per_step, step_checks, _ = per_step_run
    steps = int(end_only.stats.sample_steps.max())
    for sol in (outputs, per_step):
        assert torch.equal(end_only.ys[-1], sol.ys[-1])
        assert torch.equal(end_only.stats.sample_steps, sol.stats.sample_steps)
    # the same checks; dense outputs with extra stages (dopri8) evaluate them, on the whole
    # batch, in the steps that hold outputs
    extra = sum(c != 1 for c in solver_cls.tableau.dense.extra_c) if solver_cls.tableau.dense else 0
    assert 0 <= outputs.stats.nfe - end_only.stats.nfe <= extra * steps
    assert torch.equal(outputs.stats.sample_nfe, per_step.stats.sample_nfe)
    # (the order of the sums differs with the outputs written per check: dopri8's degree-7
    # weights, up to ~800, amplify that round-off)
    close = 1e-12 if extra else 1e-14
    torch.testing.assert_close(outputs.ys, per_step.ys, rtol=close, atol=close)
    assert step_checks == steps
    assert 1 <= end_checks <= steps / 5 and out_checks == end_checks, (end_checks, out_checks)
    # every read: one per check, one more where a check writes outputs (two with extra dense
    # stages: which steps need them), and a few to set up and to report; none per step
    reads = 3 if extra else 2
    assert end_host <= end_checks + 10 and out_host <= reads * out_checks + 10, (end_host, out_host)


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "non_terminal"])
@pytest.mark.parametrize("solver_cls", [Dopri5, AdaptiveHeun])
def test_events_are_located_at_the_checks(solver_cls, terminal, monkeypatch):
    """Samples crossing their event wait (a terminal one frozen at its step's end) until the
    next scheduled check locates all their crossings in one batch per round: the same event
    times, outputs, steps and calls of f as a solve that checks and locates after every
    step, with a few reads per solve instead of one per step."""
    import neuralode._per_sample as per_sample

    calls = _count_calls(monkeypatch, per_sample, "_read_progress", "_locate_events")
    y0 = _stiffening_batch()
    ts = torch.linspace(0.0, 10.0, 41, dtype=torch.float64)
    # falling through x = 1: each sample's first time at most once (terminal), or every time
    event = neuralode.Event(lambda t, y: y[:, 0] - 1.0, direction=-1, terminal=terminal)
    runs = []
    for every_step in (False, True):
        for name in calls:
            calls[name] = 0
        with monkeypatch.context() as patch, torch.no_grad():
            if every_step:
                patch.setattr(per_sample, "_MAX_UNCHECKED", 1)
                patch.setattr(per_sample, "_MAX_UNCHECKED_TERMINAL", 1)
            host = _count_host_reads(patch)
            sol = solve(
                StateVanDerPol(),
                y0,
                ts,
                solver=solver_cls(),
                controller=_controller(solver_cls),
                per_sample=True,
                event=event,
            )
        runs.append((sol, dict(calls, host=host["host"])))
    (deferred, deferred_calls), (per_step, step_calls) = runs
    steps = int(per_step.stats.sample_steps.max())
    if terminal:
        assert 0 < int(deferred.event_mask.sum()) < len(y0)  # some samples end early
        torch.testing.assert_close(
            deferred.event_t, per_step.event_t, rtol=0, atol=0, equal_nan=True
        )
    else:
        assert deferred.event_ts.shape[1] > 1  # samples cross several times
    torch.testing.assert_close(deferred.event_ts, per_step.event_ts, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(deferred.ys, per_step.ys, rtol=1e-14, atol=1e-14)
    for name in ("sample_steps", "sample_accepted", "sample_nfe"):
        assert torch.equal(getattr(deferred.stats, name), getattr(per_step.stats, name)), name
    assert step_calls["_read_progress"] == steps
    assert deferred_calls["_read_progress"] <= steps / 5, deferred_calls
    assert 1 <= deferred_calls["_locate_events"] <= step_calls["_locate_events"]
    # every read: the checks (and their outputs), the locations (a read every two
    # evaluations of the event function), set-up and results; the per-step solve: far more
    most = 2 * deferred_calls["_read_progress"] + 10 * deferred_calls["_locate_events"] + 10
    assert deferred_calls["host"] <= most < steps <= step_calls["host"], deferred_calls


@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
def test_steps_waiting_for_their_outputs_are_bounded_in_memory(grad, monkeypatch):
    """When the steps waiting for their outputs would hold more than ``_PENDING_BYTES``, a
    check writes them early: the same outputs, and gradients, with a check after every step."""
    import neuralode._per_sample as per_sample

    checks = []
    steps_left = per_sample._read_progress
    monkeypatch.setattr(per_sample, "_read_progress", lambda *a: checks.append(1) or steps_left(*a))
    mu, y0, _ = problem()
    ts = torch.linspace(0.0, 4.0, 23, dtype=torch.float64)
    results = []
    for budget in (per_sample._PENDING_BYTES, 1):
        monkeypatch.setattr(per_sample, "_PENDING_BYTES", budget)
        field, start = VanDerPol(mu), y0.clone().requires_grad_(grad)
        checks.clear()
        with torch.set_grad_enabled(grad):
            sol = solve(field, start, ts, controller=PIController(RTOL, ATOL), per_sample=True)
        steps = int(sol.stats.sample_steps.max())
        assert len(checks) == steps if budget == 1 else len(checks) < steps / 2
        if grad:
            sol.ys.pow(2).sum().backward()
            results.append((sol.ys.detach(), start.grad, field.mu.grad))
        else:
            results.append((sol.ys, sol.stats.sample_nfe))
    for bounded, default in zip(results[1], results[0]):
        torch.testing.assert_close(bounded, default, rtol=1e-12, atol=1e-14)


def test_end_point_solves_still_stop_at_max_steps_and_non_finite_states():
    field = VanDerPol(torch.linspace(0.5, 3.0, B, dtype=torch.float64))
    y0 = torch.ones(B, 2, dtype=torch.float64)
    ts = torch.tensor([0.0, 4.0], dtype=torch.float64)
    with pytest.raises(MaxStepsError, match="sample 1 reached max_steps=20"):
        solve(field, y0, ts, controller=PIController(RTOL, ATOL), max_steps=20, per_sample=True)

    def blows_up(t, y):  # sample 2 becomes NaN after t = 1
        nan = torch.where((t > 1) & (torch.arange(B) == 2), torch.nan, 0.0)
        return -y + nan[:, None]

    # its steps are rejected down to nothing; the next scheduled check says which sample
    with pytest.raises(neuralode.StepSizeUnderflowError, match="in sample 2 at t=1:"):
        solve(blows_up, y0, ts, controller=PIController(RTOL, ATOL), per_sample=True)


def _vdp_batch(batch: int = 6):
    mu = torch.linspace(1.0, 8.0, batch, dtype=torch.float64)
    y0 = torch.stack([torch.linspace(0.5, 2.0, batch), torch.zeros(batch)], 1).to(torch.float64)
    return mu, y0, torch.linspace(0.0, 3.0, 7, dtype=torch.float64)


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_compiled_step_matches_the_eager_loop_and_does_not_recompile():
    """compile_step=True: each step attempt (f included) is one torch.compile graph; the
    solve takes the same steps and calls of f, and a new y0 of the same shape reuses the
    compiled code."""
    from torch._dynamo.utils import counters

    mu, y0, ts = _vdp_batch()
    field = VanDerPol(mu)
    kwargs = dict(solver=Dopri5(), controller=PIController(RTOL, ATOL), per_sample=True)
    with torch.no_grad():
        eager = solve(field, y0, ts, **kwargs)
        graphs = counters["stats"]["unique_graphs"]
        compiled = solve(field, y0, ts, compile_step=True, **kwargs)
        assert counters["stats"]["unique_graphs"] == graphs + 1  # the attempt: one graph
        with torch._dynamo.config.patch(error_on_recompile=True):
            again = solve(field, 1.1 * y0, ts, compile_step=True, **kwargs)
            reference = solve(field, 1.1 * y0, ts, **kwargs)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.ys, reference.ys, rtol=1e-12, atol=1e-12)
    for name in ("sample_steps", "sample_accepted", "sample_nfe"):
        assert torch.equal(getattr(compiled.stats, name), getattr(eager.stats, name)), name
    assert compiled.stats.nfe == eager.stats.nfe
    assert compiled.stats.rows_evaluated == eager.stats.rows_evaluated


@pytest.mark.slow
@pytest.mark.parametrize("gradient", [Direct(), Backsolve()], ids=["direct", "backsolve"])
def test_compiled_step_gradients_and_events_match_the_eager_loop(gradient):
    mu, y0, ts = problem()
    event = neuralode.Event(lambda t, y: y[:, 0], direction=-1)
    results = []
    for compile_step in (False, True):
        field = VanDerPol(mu)
        start = y0.clone().requires_grad_(True)
        kwargs = dict(controller=PIController(RTOL, ATOL), per_sample=True)
        sol = solve(field, start, ts, gradient=gradient, compile_step=compile_step, **kwargs)
        sol.ys[-1].pow(2).sum().backward()
        with torch.no_grad():
            hit = solve(field, y0, ts, event=event, compile_step=compile_step, **kwargs)
        results.append((sol.ys, start.grad, field.mu.grad, hit.event_t, hit.ys))
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-9, atol=1e-12, equal_nan=True)


def test_compiled_step_rejects_what_it_does_not_support():
    mu, y0, ts = _vdp_batch()
    field = VanDerPol(mu)
    with pytest.raises(ValueError, match="compile_step=True supports the explicit Runge-K"):
        solve(field, y0, ts, solver=neuralode.METHODS["radau"](), compile_step=True)
    with pytest.raises(ValueError, match="does not support skip_finished"):
        solve(field, y0, ts, per_sample=True, skip_finished=True, compile_step=True)
    with pytest.raises(ValueError, match="compile_step=True supports the explicit Runge-K"):
        odeint(
            field, y0, ts, method="implicit_adams", options=dict(compile_step=True)
        )  # reaches solve


@pytest.fixture
def attempts(monkeypatch) -> list:
    """Records each step attempt of the per-sample (device) loop."""
    import neuralode._attempt as attempts

    calls: list = []
    attempt = attempts.attempt
    monkeypatch.setattr(attempts, "attempt", lambda *a: calls.append(1) or attempt(*a))
    return calls


def _one_system_vdp(t, y):
    """Van der Pol (mu = 3) for a batch of initial states, solved as one system."""
    x, v = y[:, 0], y[:, 1]
    return torch.stack([v, 3.0 * (1 - x * x) * v - x], 1)


@pytest.mark.parametrize("solver_cls", [Dopri5, Tsit5, Bosh3, Dopri8])
@pytest.mark.parametrize(
    "times", [(0.0, 6.0), (1.5, 0.0), (0.0, 1.0, 2.5, 6.0)], ids=["end", "backward", "outputs"]
)
def test_device_loop_takes_the_standard_loops_steps(solver_cls, times, attempts):
    """device_loop=True: the whole state as one problem in the device-side loop gives the
    standard loop's steps, calls of f and states (float64, where round-off does not move
    a decision). Without FSAL (dopri8) f(t1, y1) is evaluated before the decision is read,
    so a rejected step costs one call more than in the standard loop."""
    y0 = torch.stack([torch.linspace(-1.0, 1.0, 8), torch.linspace(0.5, -0.5, 8)], 1)
    y0, ts = y0.to(torch.float64), torch.tensor(times, dtype=torch.float64)
    kwargs = dict(solver=solver_cls(), controller=PIController(RTOL, ATOL))
    with torch.no_grad():
        standard = solve(_one_system_vdp, y0, ts, **kwargs)
        assert not attempts
        device = solve(_one_system_vdp, y0, ts, device_loop=True, **kwargs)
    stats, ref = device.stats, standard.stats
    assert len(attempts) == stats.n_steps  # every step was an attempt of the device loop
    extra = 0 if solver_cls.tableau.fsal else ref.n_steps - ref.n_accepted
    assert (stats.n_steps, stats.n_accepted) == (ref.n_steps, ref.n_accepted)
    assert stats.nfe == ref.nfe + extra
    assert stats.sample_nfe is None  # one problem: no per-sample statistics
    # dopri8's error estimate cancels 13 stages: its round-off moves step sizes by ~1e-10
    tol = 1e-8 if solver_cls is Dopri8 else 1e-12
    torch.testing.assert_close(device.ys, standard.ys, rtol=tol, atol=tol)


@pytest.mark.parametrize("gradient", [Direct(), Backsolve()], ids=["direct", "backsolve"])
def test_device_loop_gradients_match_the_standard_loop(gradient, attempts):
    mu, y0, ts = problem()
    grads = []
    for device_loop in (False, True):
        field = VanDerPol(mu)
        start = y0.clone().requires_grad_(True)
        kwargs = dict(controller=PIController(RTOL, ATOL), gradient=gradient)
        sol = solve(field, start, ts, device_loop=device_loop, **kwargs)  # t unused
        sol.ys.pow(2).sum().backward()
        grads.append((sol.ys, start.grad, field.mu.grad))
        assert bool(attempts) == device_loop
    for standard, device in zip(*grads):
        torch.testing.assert_close(device, standard, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_device_loop_compiled_step_matches_the_standard_loop():
    y0 = torch.stack([torch.linspace(-1.0, 1.0, 8), torch.linspace(0.5, -0.5, 8)], 1)
    y0, ts = y0.to(torch.float64), torch.tensor([0.0, 6.0], dtype=torch.float64)
    with torch.no_grad():
        standard = solve(_one_system_vdp, y0, ts, controller=PIController(RTOL, ATOL))
        compiled = solve(
            _one_system_vdp,
            y0,
            ts,
            controller=PIController(RTOL, ATOL),
            device_loop=True,
            compile_step=True,
        )
    assert (compiled.stats.n_steps, compiled.stats.nfe) == (
        standard.stats.n_steps,
        standard.stats.nfe,
    )
    torch.testing.assert_close(compiled.ys, standard.ys, rtol=1e-12, atol=1e-12)


def test_the_loop_checks_soon_enough_for_steps_that_grow_fast():
    """y' = -y^2 from y0 = 10 to t = 100: the steps grow about geometrically, so the solve
    ends long before its first step sizes say. The checks come at 1, 2, 4, 8, ... attempts
    at first, so the attempts after the end (f evaluated at t1 for nothing, until the check)
    stay few: the device loop's NFE is the standard loop's here (a first check scheduled from
    the first step's size alone comes after 64 attempts: 3.6x the NFE). With max_steps the
    steps the solve needs, the attempt that ends the solve reaches it: no failure."""
    calls = {"at_t1": 0}

    def decay(t, y):
        calls["at_t1"] += int(bool((t == 100.0).all()))
        return -y * y

    ts = torch.tensor([0.0, 100.0], dtype=torch.float64)
    controller = PIController(rtol=1e-3, atol=1e-5)
    with torch.no_grad():
        standard = solve(decay, torch.tensor([10.0], dtype=torch.float64), ts,
                         controller=controller)  # fmt: skip
        calls["at_t1"] = 0
        device = solve(decay, torch.tensor([10.0], dtype=torch.float64), ts,
                       controller=controller, device_loop=True)  # fmt: skip
        assert device.stats.nfe == standard.stats.nfe and calls["at_t1"] <= 2
        needed = standard.stats.n_steps
        for options in (dict(device_loop=True), dict(per_sample=True)):
            y0 = torch.tensor([[10.0]] if "per_sample" in options else [10.0], dtype=torch.float64)
            exact = solve(decay, y0, ts, controller=controller, max_steps=needed, **options)
            torch.testing.assert_close(exact.ys[-1].reshape(-1), standard.ys[-1])
            assert int(exact.status.max()) == 0


# (at this tolerance Backsolve's reconstruction of the limit cycle's approach misses, and it
# says so: the test compares the two loops, not Backsolve with Direct)
@pytest.mark.filterwarnings("ignore:Backsolve")
@pytest.mark.parametrize("gradient", [Direct, Backsolve], ids=["direct", "backsolve"])
@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "non_terminal"])
def test_device_loop_events_match_the_standard_loop(gradient, terminal, monkeypatch):
    """device_loop=True with an event: located at the termination checks, and read out as
    the standard loop's (outputs only up to a terminal event, its time and state, every
    event time), with the same gradients, including the event time's; the device loop
    reads back at its checks only, not once per step."""
    import neuralode._per_sample as per_sample

    calls = _count_calls(monkeypatch, per_sample, "_read_progress")
    y0 = torch.stack([torch.linspace(-1.0, 1.0, 4), torch.linspace(0.5, -0.5, 4)], 1)
    ts = torch.linspace(0.0, 20.0, 11, dtype=torch.float64)
    # the first sample's x through -1.5, down and up: four times before t = 20
    event = neuralode.Event(lambda t, y: y[0, 0] + 1.5, terminal=terminal)
    results = []
    for device_loop in (False, True):
        calls["_read_progress"] = 0
        start = y0.to(torch.float64).requires_grad_(True)
        strategy = Backsolve(params=()) if gradient is Backsolve else Direct()
        kwargs = dict(controller=PIController(RTOL, ATOL), gradient=strategy)
        sol = solve(_one_system_vdp, start, ts, event=event, device_loop=device_loop, **kwargs)
        loss = sol.ys.pow(2).sum() + (sol.event_t + sol.event_y.sum() if terminal else 0)
        loss.backward()
        results.append((sol, start.grad, calls["_read_progress"]))
    (standard, standard_grad, _), (device, device_grad, reads) = results
    # (the reads of the forward and, with Backsolve, the backward solve)
    assert reads <= (standard.stats.n_steps + standard.stats.n_steps_backward) / 5
    assert len(standard.event_ts) == (1 if terminal else 4)
    torch.testing.assert_close(device.event_ts, standard.event_ts, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(device.ts, standard.ts, rtol=0, atol=0)
    torch.testing.assert_close(device.ys, standard.ys, rtol=1e-10, atol=1e-10)
    if terminal:
        assert device.ts.shape[0] < ts.shape[0]  # cut at the event
        torch.testing.assert_close(device.event_t, standard.event_t, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(device.event_y, standard.event_y, rtol=1e-10, atol=1e-10)
    else:
        assert device.event_t is None and standard.event_t is None
    torch.testing.assert_close(device_grad, standard_grad, rtol=1e-7, atol=1e-9)


class _OtherController(neuralode.controllers.StepSizeController):
    """A controller neither a PIController nor a FixedGrid (never reached: refused first)."""

    def init(self, *args):
        raise AssertionError("refused before the solve")

    def adapt(self, *args):
        raise AssertionError("refused before the solve")


def test_device_loop_rejects_what_it_does_not_support():
    y0 = torch.ones(3, 2, dtype=torch.float64)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    field = _one_system_vdp
    with pytest.raises(ValueError, match="device_loop=True needs y0 to be one tensor"):
        solve(lambda t, y: y, (y0, y0), ts, device_loop=True)
    with pytest.raises(ValueError, match="device_loop=True does not support norm, perturb"):
        solve(field, y0, ts, device_loop=True, norm=lambda x: x.abs().max(), perturb=True)
    with pytest.raises(ValueError, match="device_loop=True supports the gradients"):
        solve(field, y0, ts, device_loop=True, gradient=neuralode.Reversible())
    with pytest.raises(ValueError, match="device_loop=True supports the explicit Runge-Kutta"):
        solve(field, y0, ts, device_loop=True, solver="implicit_euler")
    with pytest.raises(ValueError, match="device_loop=True needs a PIController or a FixedGrid"):
        solve(field, y0, ts, device_loop=True, controller=_OtherController())
    with pytest.raises(ValueError, match="device_loop=True does not support norm"):
        odeint(field, y0, ts, options=dict(device_loop=True, norm=lambda x: x.abs().max()))


class _Replayer:
    """A stand-in for CUDA graphs that runs on the CPU: the capture runs ``fn`` once to get
    its outputs, and each replay runs it again on the captured inputs and writes the results
    into those same output tensors, as a CUDA graph's replay does."""

    captures = 0

    def capture(self, fn, inputs):
        _Replayer.captures += 1
        self.fn, self.inputs = fn, inputs
        self.outputs = fn(*inputs)
        return self.outputs

    def replay(self):
        for static, value in zip(self.outputs, self.fn(*self.inputs), strict=True):
            if static is not None:
                static.copy_(value)


@pytest.mark.parametrize("solver_cls", [Dopri5, Dopri8])
def test_cuda_graph_replays_reuse_its_tensors_and_change_nothing(solver_cls, monkeypatch):
    """``cuda_graph=True`` copies each step's inputs into the captured tensors and the
    replay's outputs out of them (a replay overwrites them; the loop keeps steps until their
    outputs and events are written): per sample with outputs and an event, and one system
    with ``device_loop``, the results, steps and calls of f are the eager loop's."""
    from neuralode._cuda_graph import GraphedStep

    monkeypatch.setattr(GraphedStep, "backend", _Replayer)
    y0 = _stiffening_batch(8)
    ts = torch.linspace(0.0, 6.0, 13, dtype=torch.float64)
    event = neuralode.Event(lambda t, y: y[:, 0] - 1.0, direction=-1)
    one_system_event = neuralode.Event(lambda t, y: y[0, 0] - 1.0, direction=-1)
    kwargs = dict(solver=solver_cls(), controller=PIController(RTOL, ATOL))
    with torch.no_grad():
        for options, times in (
            (dict(per_sample=True, event=event), ts),
            (dict(per_sample=True), ts[[0, -1]]),  # keeps no step: takes the outputs as they are
            (dict(device_loop=True), ts),
            (dict(device_loop=True, event=one_system_event), ts),
        ):
            eager = solve(StateVanDerPol(), y0, times, **options, **kwargs)
            graphed = solve(StateVanDerPol(), y0, times, cuda_graph=True, **options, **kwargs)
            torch.testing.assert_close(graphed.ys, eager.ys, rtol=0, atol=0)
            assert graphed.stats.nfe == eager.stats.nfe
            assert graphed.stats.n_steps == eager.stats.n_steps
            if "event" in options:
                torch.testing.assert_close(graphed.event_t, eager.event_t, equal_nan=True)
                torch.testing.assert_close(graphed.event_ts, eager.event_ts, equal_nan=True)
            if options.get("per_sample"):
                assert torch.equal(graphed.stats.sample_nfe, eager.stats.sample_nfe)
            if "event" not in options:
                continue
            if options.get("per_sample"):
                assert 0 < int(graphed.event_mask.sum()) < len(y0)  # some samples stop early
            else:
                assert graphed.ys.shape[0] < len(ts)  # the outputs end at the event
        # one problem with compile="cuda_graph" alone: the device loop (a batch of one)
        captures = _Replayer.captures
        graphed = solve(StateVanDerPol(), y0, ts, compile="cuda_graph", **kwargs)
        eager = solve(StateVanDerPol(), y0, ts, device_loop=True, **kwargs)
        torch.testing.assert_close(graphed.ys, eager.ys, rtol=0, atol=0)
        assert _Replayer.captures == captures + 1
        options = dict(per_sample=True, cuda_graph=True)  # the torchdiffeq-style option
        captures = _Replayer.captures
        ys = odeint(StateVanDerPol(), y0, ts, rtol=RTOL, atol=ATOL, options=options)
        reference = odeint(
            StateVanDerPol(), y0, ts, rtol=RTOL, atol=ATOL, options=options | {"cuda_graph": False}
        )
        torch.testing.assert_close(ys, reference, rtol=0, atol=0)
        assert _Replayer.captures == captures + 1
    grads = []  # Backsolve(): its forward solve is graph-free, so it can be replayed
    y0, ts = skip_problem()  # mu <= 3: stable backwards in time
    for graph in (False, True):
        field, start = StateVanDerPol(), y0.clone().requires_grad_()
        sol = solve(
            field, start, ts, gradient=Backsolve(), per_sample=True, cuda_graph=graph, **kwargs
        )
        sol.ys.pow(2).sum().backward()
        grads.append((start.grad, field.scale.grad))
    for graphed_grad, eager_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(graphed_grad, eager_grad, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_cuda_graph_replays_a_compiled_step(monkeypatch):
    """cuda_graph=True with compile_step=True: the compiled attempt is what is captured
    and replayed (here by the stand-in); the results are the compiled eager loop's."""
    from neuralode._cuda_graph import GraphedStep

    monkeypatch.setattr(GraphedStep, "backend", _Replayer)
    y0 = _stiffening_batch(8)
    ts = torch.linspace(0.0, 6.0, 13, dtype=torch.float64)
    kwargs = dict(controller=PIController(RTOL, ATOL), per_sample=True, compile_step=True)
    with torch.no_grad():
        compiled = solve(StateVanDerPol(), y0, ts, **kwargs)
        captures = _Replayer.captures
        graphed = solve(StateVanDerPol(), y0, ts, cuda_graph=True, **kwargs)
    assert _Replayer.captures == captures + 1
    torch.testing.assert_close(graphed.ys, compiled.ys, rtol=0, atol=0)
    assert torch.equal(graphed.stats.sample_nfe, compiled.stats.sample_nfe)
    assert graphed.stats.nfe == compiled.stats.nfe


def test_cuda_graph_errors_are_named():
    y0, ts = _stiffening_batch(4), torch.linspace(0.0, 1.0, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not support skip_finished"):
        solve(StateVanDerPol(), y0, ts, cuda_graph=True, per_sample=True, skip_finished=True)
    with pytest.raises(ValueError, match="records no autograd graph"):
        solve(StateVanDerPol(), y0, ts, cuda_graph=True, per_sample=True)
    with torch.no_grad(), pytest.raises(ValueError, match="needs the state on a CUDA device"):
        solve(StateVanDerPol(), y0, ts, cuda_graph=True, per_sample=True)


@pytest.mark.cuda
def test_cuda_graph_on_a_gpu_matches_the_eager_loop():
    """The real capture: per sample with outputs, and Backsolve's forward solve."""
    y0, ts = (x.cuda() for x in skip_problem(64))
    kwargs = dict(controller=PIController(RTOL, ATOL), per_sample=True)
    with torch.no_grad():
        eager = solve(StateVanDerPol().cuda(), y0, ts, **kwargs)
        graphed = solve(StateVanDerPol().cuda(), y0, ts, cuda_graph=True, **kwargs)
    torch.testing.assert_close(graphed.ys, eager.ys, rtol=1e-12, atol=1e-12)
    assert torch.equal(graphed.stats.sample_steps, eager.stats.sample_steps)
    grads = []
    for graph in (False, True):
        field, start = StateVanDerPol().cuda(), y0.clone().requires_grad_()
        sol = solve(field, start, ts, gradient=Backsolve(), cuda_graph=graph, **kwargs)
        sol.ys.pow(2).sum().backward()
        grads.append((start.grad, field.scale.grad))
    for graphed_grad, eager_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(graphed_grad, eager_grad, rtol=1e-10, atol=1e-12)


class _Decay(torch.nn.Module):
    """y' = -k y written as -k sqrt(y) sqrt(y): NaN (and NaN derivatives) where y < 0."""

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(3.0, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.k * torch.sqrt(y) * torch.sqrt(y)


@pytest.mark.parametrize(
    "execution",
    [dict(per_sample=True), dict(per_sample="skip_finished"), dict(device_loop=True)],
    ids=["per_sample", "skip_finished", "device_loop"],
)
def test_rejected_attempts_outside_fs_domain_leave_gradients_exact(execution):
    """A first step of 1 overshoots below y = 0, where f is NaN: the attempts are rejected,
    and backpropagation through the loop's masks multiplies their zero gradient by f's NaN
    derivatives there unless their rows are kept out of the graph. The gradients equal the
    standard loop's, which drops rejected steps (each sample solved alone)."""
    y0 = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    ts = torch.tensor([0.0, 4.0], dtype=torch.float64)
    controller = PIController(1e-6, 1e-8, first_step=1.0)
    field = _Decay()
    start = y0.clone().requires_grad_(True)
    sol = solve(field, start, ts, controller=controller, **execution)
    assert sol.stats.n_rejected > 0
    got = torch.autograd.grad(sol.ys[-1].sum(), (start, field.k))
    # device_loop: the whole state is one problem; else each sample is one
    parts = [slice(None)] if "device_loop" in execution else [slice(i, i + 1) for i in range(3)]
    expected_y0, expected_k = torch.zeros_like(y0), 0.0
    for part in parts:
        start_part = y0[part].clone().requires_grad_(True)
        ref = solve(field, start_part, ts, controller=controller)
        g_y0, g_k = torch.autograd.grad(ref.ys[-1].sum(), (start_part, field.k))
        expected_y0[part] = g_y0
        expected_k = expected_k + g_k
    torch.testing.assert_close(got[0], expected_y0, rtol=1e-9, atol=0)
    torch.testing.assert_close(got[1], expected_k, rtol=1e-9, atol=0)
