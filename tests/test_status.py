"""``throw=False`` and ``Solution.status``: a failing sample stops with its status while the
others go on intact; one problem returns the outputs it reached; ``throw=True`` names the
failing samples."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode import Status

F64 = torch.float64
TS = torch.linspace(0.0, 1.5, 7, dtype=F64)  # 0, 0.25, ..., 1.5


def riccati(t, y):
    """dy/dt = y^2: y = y0 / (1 - y0 t) blows up at t = 1/y0 (sample y0 = 1: at t = 1)."""
    return y * y


def _alone(func, y0, ts, **kwargs):
    rows = [no.solve(func, y0[i : i + 1], ts, per_sample=True, **kwargs) for i in range(len(y0))]
    return torch.cat([r.ys for r in rows], 1)


def test_status_codes_are_exported() -> None:
    assert [s.name for s in Status] == [
        "SUCCESS",
        "MAX_STEPS",
        "STEP_SIZE_UNDERFLOW",
        "NON_FINITE",
        "EVENT",
    ]
    assert int(Status.SUCCESS) == 0


def test_a_blow_up_stops_its_sample_and_the_others_are_intact() -> None:
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)
    sol = no.solve(riccati, y0, TS, per_sample=True, throw=False)
    assert sol.status[1] in (Status.STEP_SIZE_UNDERFLOW, Status.NON_FINITE)
    assert sol.status[[0, 2]].tolist() == [0, 0] and not sol.succeeded
    ok = torch.tensor([0, 2])
    assert sol.ys[:, ok].equal(_alone(riccati, y0[ok], TS))  # bit-equal to solving alone
    # the failing sample: the values it has alone, up to t = 0.75 (< 1) those of the exact
    # solution, NaN after its stop
    alone = no.solve(riccati, y0[1:2], TS, per_sample=True, throw=False)
    torch.testing.assert_close(sol.ys[:, 1], alone.ys[:, 0], rtol=0, atol=0, equal_nan=True)
    assert alone.status.equal(sol.status[1:2])
    torch.testing.assert_close(sol.ys[:4, 1, 0], 1 / (1 - TS[:4]), rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[5:, 1]).all()
    assert int(sol.stats.sample_steps[1]) > 0  # statistics per sample are filled


def test_throw_true_names_every_failing_sample() -> None:
    y0 = torch.tensor([[0.5], [1.0], [0.2], [1.0]], dtype=F64)
    with pytest.raises(no.SolverError, match=r"Failed: 2 of 4 samples: 1 \(.*\), 3 \(") as info:
        no.solve(riccati, y0, TS, per_sample=True)
    assert "sample 1" in str(info.value) and "throw=False" in str(info.value)


def test_max_steps_counts_each_samples_own_steps() -> None:
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)
    sol = no.solve(riccati, y0, TS, per_sample=True, throw=False, max_steps=20)
    assert sol.status.tolist() == [0, Status.MAX_STEPS, 0]
    assert sol.stats.sample_steps[1] == 20 and sol.stats.sample_steps[0] <= 20
    ok = torch.tensor([0, 2])
    assert sol.ys[:, ok].equal(_alone(riccati, y0[ok], TS, max_steps=20))
    reached = ~torch.isnan(sol.ys[:, 1, 0])
    assert reached[:2].all() and not reached[-1]  # its outputs up to its stop, NaN after
    assert bool((reached[:-1].long() - reached[1:].long() >= 0).all())  # NaN only after
    with pytest.raises(no.MaxStepsError, match="sample 1 reached max_steps=20"):
        no.solve(riccati, y0, TS, per_sample=True, max_steps=20)


def test_a_stiff_sample_runs_out_of_steps_alone() -> None:
    rates = torch.tensor([1.0, 1e5, 2.0], dtype=F64)

    def decay(t, y):
        return -rates[:, None] * (y - torch.cos(t)[:, None])

    y0 = torch.ones(3, 1, dtype=F64)
    ts = torch.linspace(0.0, 10.0, 5, dtype=F64)
    sol = no.solve(decay, y0, ts, per_sample=True, throw=False, max_steps=2000)
    assert sol.status.tolist() == [0, Status.MAX_STEPS, 0]
    assert torch.isfinite(sol.ys[:, [0, 2]]).all() and torch.isnan(sol.ys[-1, 1]).all()


def test_a_non_finite_start_never_runs() -> None:
    def field(t, y):
        return torch.where(y > 5.0, torch.nan, -y)

    y0 = torch.tensor([[1.0], [6.0], [2.0]], dtype=F64)
    sol = no.solve(field, y0, TS, per_sample=True, throw=False)
    assert sol.status.tolist() == [0, Status.NON_FINITE, 0]
    assert sol.ys[0, 1].equal(y0[1]) and torch.isnan(sol.ys[1:, 1]).all()
    torch.testing.assert_close(sol.ys[:, 0, 0], torch.exp(-TS), rtol=1e-5, atol=1e-7)
    with pytest.raises(
        no.NonFiniteError, match=r"for sample 1, .*\)\)\. Failed: 2 of 4 samples: 1 .*3 "
    ):
        no.solve(field, torch.cat([y0, y0[1:2] + 1]), TS, per_sample=True)


def test_per_sample_spans_with_a_failure() -> None:
    ts = torch.stack([TS, TS + 0.5, TS - 1.0])  # sample 1 meets its blow-up at t = 1.5
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)
    sol = no.solve(riccati, y0, ts, per_sample=True, throw=False)
    assert sol.status[[0, 2]].tolist() == [0, 0] and sol.status[1] != 0
    assert torch.isfinite(sol.ys[:5, 1]).all() and torch.isnan(sol.ys[5:, 1]).all()
    for i in range(3):
        alone = no.solve(riccati, y0[i : i + 1], ts[i], per_sample=True, throw=False)
        torch.testing.assert_close(sol.ys[:, i], alone.ys[:, 0], rtol=0, atol=0, equal_nan=True)


def test_other_samples_gradients_are_intact() -> None:
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64, requires_grad=True)

    def field(t, y):
        return scale * y * y

    sol = no.solve(field, y0, TS, per_sample=True, throw=False)
    ok = sol.status == Status.SUCCESS
    got = torch.autograd.grad(sol.ys[:, ok].sum(), (scale, y0))
    alone = no.solve(field, y0[ok], TS, per_sample=True)
    expected = torch.autograd.grad(alone.ys.sum(), (scale, y0))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


@pytest.mark.parametrize("first_step", [None, 0.5])
def test_a_non_finite_sample_leaves_shared_parameter_gradients_exact(first_step) -> None:
    """Sample 1 blows up (y' = w y^3 from 30: its attempts reach inf) and sample 3 starts
    outside f's domain (sqrt of a negative y0; with the automatic first step it never
    starts, f(t0, y0) being NaN): their attempts and f(t0, y0) hold non-finite values, and
    f's backward there multiplies a zero gradient by them unless their rows are kept out of
    the graph. The gradients of the loss over the others, w included, are those of solving
    the others alone."""
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)

    def field(t, y):
        return scale * torch.sqrt(y) ** 6  # y^3 where y >= 0, NaN below

    y0 = torch.tensor([[0.1], [30.0], [0.2], [-1.0]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    controller = no.PIController(rtol=1e-3, atol=1e-6, first_step=first_step)
    sol = no.solve(field, y0, ts, controller=controller, per_sample=True, throw=False)
    ok = sol.status == Status.SUCCESS
    assert ok.tolist() == [True, False, True, False]
    assert first_step or sol.status[3] == Status.NON_FINITE
    got = torch.autograd.grad(sol.ys[-1, ok].sum(), (scale, y0))
    alone = no.solve(field, y0[ok], ts, controller=controller, per_sample=True)
    expected = torch.autograd.grad(alone.ys[-1].sum(), (scale, y0))
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_one_problem_returns_what_it_reached() -> None:
    y0 = torch.tensor([1.0], dtype=F64)
    sol = no.solve(riccati, y0, TS, throw=False)
    assert sol.status.ndim == 0 and sol.status in (Status.STEP_SIZE_UNDERFLOW, Status.NON_FINITE)
    assert not sol.succeeded
    torch.testing.assert_close(sol.ys[:4, 0], 1 / (1 - TS[:4]), rtol=1e-5, atol=0)
    assert torch.isnan(sol.ys[5:]).all()
    short = no.solve(riccati, y0, TS, throw=False, max_steps=10)
    assert short.status == Status.MAX_STEPS and torch.isnan(short.ys[-1]).all()
    assert torch.isfinite(short.ys[0]).all()
    with pytest.raises(no.StepSizeUnderflowError):
        no.solve(riccati, y0, TS)
    device = no.solve(riccati, y0, TS, device_loop=True, throw=False)  # a batch of one
    assert device.status.ndim == 0 and device.status == sol.status
    assert torch.isnan(device.ys[5:]).all() and torch.isfinite(device.ys[:4]).all()
    fine = no.solve(riccati, y0 * 0.5, TS, throw=False)
    assert fine.status == Status.SUCCESS and fine.succeeded
    # odeint: the option, NaN after the failure
    ys = no.odeint(riccati, y0, TS, options=dict(throw=False))
    torch.testing.assert_close(ys, sol.ys, rtol=0, atol=0, equal_nan=True)
    per = no.odeint(riccati, y0.expand(2, 1) * torch.tensor([[1.0], [0.5]], dtype=F64), TS,
                    options=dict(per_sample=True, throw=False))  # fmt: skip
    assert torch.isnan(per[-1, 0]).all() and torch.isfinite(per[:, 1]).all()


def test_fixed_steps_stop_at_max_steps() -> None:
    """The fixed grid's step count, refused before the solve with throw=True, stops the solve
    where it runs out with throw=False."""
    ts = torch.linspace(0.0, 1.0, 5, dtype=F64)
    kwargs = dict(solver="rk4", controller=no.FixedGrid(step_size=0.05), max_steps=10)
    sol = no.solve(lambda t, y: -y, torch.ones(1, dtype=F64), ts, throw=False, **kwargs)
    assert sol.status == Status.MAX_STEPS
    torch.testing.assert_close(sol.ys[:3, 0], torch.exp(-ts[:3]), rtol=1e-6, atol=0)
    assert torch.isnan(sol.ys[3:]).all()
    with pytest.raises(no.MaxStepsError, match="max_steps=10"):
        no.solve(lambda t, y: -y, torch.ones(1, dtype=F64), ts, **kwargs)


def test_events_give_the_event_status() -> None:
    sol = no.solve(
        lambda t, y: -y,
        torch.tensor([[1.0], [2.0]], dtype=F64),
        TS,
        event=no.Event(lambda t, y: y[:, 0] - 0.8),
        per_sample=True,
    )
    assert sol.status.tolist() == [Status.EVENT, Status.EVENT] and sol.succeeded
    one = no.solve(lambda t, y: -y, torch.tensor([1.0], dtype=F64), TS,
                   event=no.Event(lambda t, y: y[0] - 0.8))  # fmt: skip
    assert one.status == Status.EVENT and one.succeeded
    assert math.isclose(float(one.event_t), math.log(1 / 0.8), rel_tol=1e-6)


def test_throw_false_needs_direct_gradients_and_no_odeint_event() -> None:
    y0 = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="throw=False is not supported with event_fn"):
        no.odeint_event(
            riccati, y0[0], TS[0], event_fn=lambda t, y: y - 2, options=dict(throw=False)
        )
    with pytest.raises(ValueError, match="throw=False needs gradient=Direct"):
        no.solve(riccati, y0, TS, per_sample=True, throw=False, gradient=no.Backsolve(params=()))


def test_vmap_gives_each_problem_its_status() -> None:
    def one(y0):
        sol = no.solve(riccati, y0, TS, throw=False)
        return sol.ys, sol.status

    y0 = torch.tensor([[0.5], [1.0]], dtype=F64)
    ys, status = torch.func.vmap(one)(y0)
    assert status.tolist() == [0, Status.STEP_SIZE_UNDERFLOW]
    assert torch.isfinite(ys[0]).all() and torch.isnan(ys[1, -1]).all()


def test_a_failing_sample_beside_terminal_events() -> None:
    y0 = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)
    event = no.Event(lambda t, y: y[:, 0] - 0.9)  # sample 0 reaches 0.9 at t = 0.8889
    sol = no.solve(riccati, y0, TS, per_sample=True, event=event, throw=False)
    assert sol.status[0] == Status.EVENT and sol.status[2] == Status.SUCCESS
    assert sol.status[1] in (Status.STEP_SIZE_UNDERFLOW, Status.NON_FINITE)
    assert sol.event_mask.tolist() == [True, False, False]
    torch.testing.assert_close(sol.ys[-1, 0, 0], torch.tensor(0.9, dtype=F64))
    # sample 1 starts above 0.9 and never crosses: its outputs after its failure are NaN
    assert torch.isfinite(sol.ys[:4, 1]).all() and torch.isnan(sol.ys[5:, 1]).all()


def test_one_problem_with_an_event_returns_what_it_reached() -> None:
    """With an event that has not fired, one problem's failure shows in the status (host
    loop and device loop, terminal or not) as it does without an event; a terminal event's
    EVENT code is in ``stats.status`` too."""
    y0 = torch.tensor([1.0], dtype=F64)
    for kwargs in ({}, dict(device_loop=True)):
        alone = no.solve(riccati, y0, TS, throw=False, **kwargs)
        for terminal in (True, False):
            event = no.Event(lambda t, y: t - 10.0, terminal=terminal)  # never fires
            sol = no.solve(riccati, y0, TS, throw=False, event=event, **kwargs)
            assert sol.status == alone.status and sol.stats.status == alone.status
            assert not sol.succeeded and sol.event_t is None
            torch.testing.assert_close(sol.ys, alone.ys, rtol=0, atol=0, equal_nan=True)
        recorded = no.Event(lambda t, y: t - 0.2, terminal=False)  # fires, then the failure
        sol = no.solve(riccati, y0, TS, throw=False, event=recorded, **kwargs)
        assert sol.status == alone.status and sol.event_ts.tolist() == [pytest.approx(0.2)]
        stop = no.Event(lambda t, y: t - 0.2)
        sol = no.solve(riccati, y0, TS, throw=False, event=stop, **kwargs)
        assert sol.status == Status.EVENT and sol.stats.status == Status.EVENT
    with pytest.raises(no.StepSizeUnderflowError):
        no.solve(riccati, y0, TS, event=no.Event(lambda t, y: t - 10.0))


def test_vmap_one_by_one_gives_each_problem_its_status() -> None:
    """A method per-sample mode cannot run (radau) solves the problems one by one."""

    def one(y0):
        return no.solve(riccati, y0, TS, solver="radau", throw=False).status

    status = torch.func.vmap(one)(torch.tensor([[0.5], [1.0]], dtype=F64))
    assert status[0] == Status.SUCCESS and status[1] != Status.SUCCESS


def test_dense_output_of_a_failed_sample_is_nan_after_its_stop() -> None:
    """As its outputs: evaluate and derivative give NaN between where a failed sample
    stopped and the end asked for, its values before; the others are unchanged; times
    outside the span asked for stay an error."""
    y0 = torch.tensor([[0.5], [1.0]], dtype=F64)
    sol = no.solve(riccati, y0, TS, per_sample=True, throw=False, dense=True)
    assert sol.status.tolist()[0] == 0 and sol.status[1] != 0
    t = torch.tensor([[0.5, 1.2, 1.5], [0.5, 1.2, 1.5]], dtype=F64)
    values = sol.evaluate(t)[..., 0]
    torch.testing.assert_close(values[0], 0.5 / (1 - 0.5 * t[0]), rtol=1e-5, atol=0)
    assert abs(float(values[1, 0]) - 2.0) < 1e-4 and torch.isnan(values[1, 1:]).all()
    assert torch.isnan(sol.derivative(torch.tensor([1.2, 1.2], dtype=F64))[1]).all()
    with pytest.raises(ValueError, match="outside the solution's span from 0.0 to 1.5"):
        sol.evaluate(torch.tensor([1.2, 1.6], dtype=F64))
    one = no.solve(riccati, y0[1], TS, throw=False, dense=True)
    assert torch.isnan(one.evaluate(torch.tensor(1.2, dtype=F64))).all()


def test_a_failing_step_held_at_min_step_stops_its_sample_at_the_next_check() -> None:
    """Sample 0's f is NaN past t = 1: its step there fails, shrinks to min_step and would
    be retried unchanged until max_steps. It stops with STEP_SIZE_UNDERFLOW at the next
    check, as the host loop raises at the first repeat; sample 1 is intact."""
    walls = torch.tensor([1.0, 5.0], dtype=F64)

    def field(t, y):
        return 1 / torch.sqrt(walls - t)[:, None] + 0 * y

    ts = torch.tensor([0.0, 2.0], dtype=F64)
    kwargs = dict(controller=no.PIController(1e-6, 1e-8, min_step=0.05), max_steps=2000)
    y0 = torch.zeros(2, 1, dtype=F64)
    sol = no.solve(field, y0, ts, per_sample=True, throw=False, **kwargs)
    assert sol.status.tolist() == [Status.STEP_SIZE_UNDERFLOW, Status.SUCCESS]
    assert int(sol.stats.sample_steps[0]) < 100  # not max_steps' 2000
    assert abs(float(sol.ys[-1, 1, 0]) - 2 * (5**0.5 - 3**0.5)) < 1e-3
    with pytest.raises(no.StepSizeUnderflowError, match="step of sample 0 from t=.* min_step"):
        no.solve(field, y0, ts, per_sample=True, **kwargs)
