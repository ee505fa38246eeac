"""Progress meters (``progress_meter=``): what a meter receives from each loop, the tqdm bar,
closing on errors, no extra host reads in per-sample mode, and the refusals."""

from __future__ import annotations

import io
import math

import pytest
import torch
from test_per_sample import StateVanDerPol, _count_calls, _count_host_reads, _stiffening_batch

import neuralode as no
from neuralode.cde import LinearInterpolation, cdeint, linear_interpolation_coeffs
from neuralode.sde import sdeint

F64 = torch.float64


class Recorder(no.ProgressMeter):
    """Keeps every call a solve makes."""

    def __init__(self):
        self.calls: list[tuple] = []

    def start(self, t0, t1):
        self.calls.append(("start", t0, t1))

    def update(self, progress):
        self.calls.append(("update", progress))

    def close(self, error):
        self.calls.append(("close", error))

    @property
    def updates(self) -> list[no.Progress]:
        return [call[1] for call in self.calls if call[0] == "update"]


def decay(t, y):
    return -y


def van_der_pol(t, y):  # mu = 5: the adaptive steps reject some attempts
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, 5.0 * (1 - x * x) * v - x], -1)


def _last_line(text: str) -> str:
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_host_loop_reports_every_attempt_and_closes():
    """One problem: start(t0, t1), one update per step attempt with the fraction of the
    span, t and the counts so far (the last: 100 %, t1, the solve's counts), then close."""
    meter = Recorder()
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ts = torch.linspace(0.0, 8.0, 5, dtype=F64)
    sol = no.solve(van_der_pol, y0, ts, progress_meter=meter)
    reference = no.solve(van_der_pol, y0, ts)
    assert torch.equal(sol.ys, reference.ys)  # the meter changes nothing
    assert sol.stats.n_rejected > 0
    assert meter.calls[0] == ("start", 0.0, 8.0) and meter.calls[-1] == ("close", None)
    updates = meter.updates
    assert len(updates) == sol.stats.n_steps
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for u in updates:
        assert u.fraction == pytest.approx(u.t / 8.0, abs=1e-12)
    last = updates[-1]
    assert (last.t, last.n_accepted, last.n_rejected) == (
        8.0,
        sol.stats.n_accepted,
        sol.stats.n_rejected,
    )
    assert [u.n_accepted + u.n_rejected for u in updates] == list(range(1, len(updates) + 1))


def test_tqdm_bar_reaches_100_percent():
    buffer = io.StringIO()
    meter = no.TqdmProgressMeter(desc="decay", refresh_steps=1, file=buffer, mininterval=0)
    ts = torch.linspace(0.0, 5.0, 6, dtype=F64)
    sol = no.solve(decay, torch.ones(3, dtype=F64), ts, progress_meter=meter)
    torch.testing.assert_close(sol.ys[-1], torch.full((3,), math.exp(-5.0), dtype=F64))
    line = _last_line(buffer.getvalue())
    assert line.startswith("decay: 100%")
    assert f"t=5, accepted={sol.stats.n_accepted}, rejected=0" in line
    assert buffer.getvalue().endswith("\n") and meter.bar is None  # closed


def test_tqdm_redraws_every_refresh_steps():
    """refresh_steps=8: the bar is redrawn at most once per 8 attempts (and at the end)."""
    drawn = []
    for refresh in (1, 8):
        buffer = io.StringIO()
        meter = no.TqdmProgressMeter(refresh_steps=refresh, file=buffer, mininterval=0)
        sol = no.solve(decay, torch.ones(3, dtype=F64), torch.tensor([0.0, 20.0], dtype=F64),
                       progress_meter=meter)  # fmt: skip
        drawn.append(buffer.getvalue().count("\r"))
    steps = sol.stats.n_steps
    assert steps > 40 and drawn[0] >= steps and drawn[1] <= steps // 8 + 3, (steps, drawn)


@pytest.mark.parametrize("per_sample", [False, True], ids=["host", "per_sample"])
def test_bar_is_closed_with_partial_progress_when_the_solve_raises(per_sample):
    """MaxStepsError: the meter is closed with the error, the tqdm bar closed where it
    stopped (between 0 and 100 %), no bar left open."""
    y0 = torch.tensor([[2.0, 0.0]], dtype=F64)
    y0 = y0 if per_sample else y0[0]
    ts = torch.tensor([0.0, 8.0], dtype=F64)
    meter = Recorder()
    with torch.no_grad(), pytest.raises(no.MaxStepsError):
        no.solve(van_der_pol, y0, ts, max_steps=30, per_sample=per_sample, progress_meter=meter)
    assert isinstance(meter.calls[-1][1], no.MaxStepsError)
    assert [c[0] for c in meter.calls].count("close") == 1
    assert 0.0 < meter.updates[-1].fraction < 1.0
    buffer = io.StringIO()
    bar = no.TqdmProgressMeter(refresh_steps=1, file=buffer, mininterval=0)
    with torch.no_grad(), pytest.raises(no.MaxStepsError):
        no.solve(van_der_pol, y0, ts, max_steps=30, per_sample=per_sample, progress_meter=bar)
    assert bar.bar is None and buffer.getvalue().endswith("\n")
    percent = int(_last_line(buffer.getvalue()).split("%")[0].split()[-1])
    assert 0 < percent < 100


def test_per_sample_reports_at_the_scheduled_checks_without_extra_reads(monkeypatch):
    """Per-sample mode: one update per termination check, from values read in the check's
    own read: the same host reads, checks and results as without a meter; the fraction is
    the slowest running sample's, ending at 100 % with the batch's step counts."""
    import neuralode._per_sample as per_sample

    y0 = _stiffening_batch()
    ts = torch.linspace(0.0, 10.0, 41, dtype=F64)
    runs = []
    for meter in (None, Recorder()):
        with monkeypatch.context() as patch, torch.no_grad():
            checks = _count_calls(patch, per_sample, "_read_progress")
            host = _count_host_reads(patch)
            sol = no.solve(StateVanDerPol(), y0, ts, per_sample=True, progress_meter=meter)
        runs.append((sol, checks["_read_progress"], host["host"], meter))
    (plain, plain_checks, plain_reads, _), (metered, checks, reads, meter) = runs
    assert torch.equal(plain.ys, metered.ys)
    assert (checks, reads) == (plain_checks, plain_reads)
    updates = meter.updates
    assert len(updates) == checks and 1 < checks < int(plain.stats.sample_steps.max()) / 5
    fractions = [u.fraction for u in updates]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and fractions[0] < 1.0
    assert updates[-1].n_accepted == int(plain.stats.sample_accepted.sum())
    assert updates[-1].n_rejected == int(plain.stats.sample_rejected.sum())


def test_per_sample_fraction_is_the_slowest_running_sample():
    """With the checks after every step, each update is the least (t - t0) / (t1 - t0)
    over the samples still running; per-sample spans open the meter on the widest span."""
    import neuralode._per_sample as per_sample

    ts = torch.tensor([[0.0, 1.0], [0.0, 4.0]], dtype=F64)  # sample 1 has 4x the span
    meter, seen = Recorder(), []
    original = per_sample.device_values

    def spy(t, t_start, t_stop, still, *counts):
        seen.append(((t - t_start) / (t_stop - t_start), t.clone(), still.clone()))
        return original(t, t_start, t_stop, still, *counts)

    with pytest.MonkeyPatch.context() as patch, torch.no_grad():
        patch.setattr(per_sample, "_MAX_UNCHECKED", 1)
        patch.setattr(per_sample, "device_values", spy)
        no.solve(decay, torch.ones(2, 1, dtype=F64), ts, per_sample=True, progress_meter=meter)
    assert meter.calls[0] == ("start", 0.0, 4.0)
    assert len(seen) == len(meter.updates) > 3
    for (done, t, still), update in zip(seen, meter.updates):
        if bool(still.any()):  # the slowest running sample
            i = int(torch.where(still, done, 2.0).argmin())
            assert (update.fraction, update.t) == (pytest.approx(float(done[i]), abs=1e-15), t[i])
        else:  # done: the latest time
            assert (update.fraction, update.t) == (1.0, 4.0)


def test_whole_solve_graph_reports_once_at_its_end(whole_solve_traced_only):
    """compile=True's whole-solve graph has no host step: the meter opens, receives one
    update (100 %, t1, the solve's counts) after the graph's read, and closes."""
    meter = Recorder()
    ts = torch.linspace(0.0, 2.0, 3, dtype=F64)
    with torch.no_grad():
        sol = no.solve(decay, torch.ones(4, dtype=F64), ts, compile=True, progress_meter=meter)
    assert [c[0] for c in meter.calls] == ["start", "update", "close"]
    (update,) = meter.updates
    assert (update.fraction, update.t) == (1.0, 2.0)
    assert (update.n_accepted, update.n_rejected) == (sol.stats.n_accepted, sol.stats.n_rejected)
    torch.testing.assert_close(sol.ys[-1], torch.full((4,), math.exp(-2.0), dtype=F64))


def test_event_search_reports_nan_fraction():
    """Towards t = inf there is no fraction: NaN, with t and the counts."""
    meter = Recorder()
    event = no.Event(lambda t, y: y[0] - 0.5)
    ts = torch.tensor([0.0, math.inf], dtype=F64)
    sol = no.solve(decay, torch.ones(1, dtype=F64), ts, event=event, progress_meter=meter)
    assert float(sol.event_t) == pytest.approx(math.log(2.0), rel=1e-5)
    assert meter.calls[0] == ("start", 0.0, math.inf)
    assert all(math.isnan(u.fraction) for u in meter.updates) and meter.updates
    drawn = []
    for refresh in (1, 4):
        buffer = io.StringIO()
        bar = no.TqdmProgressMeter(refresh_steps=refresh, file=buffer, mininterval=0)
        no.solve(decay, torch.ones(1, dtype=F64), ts, event=event, progress_meter=bar)
        assert "%" not in buffer.getvalue() and "accepted=" in buffer.getvalue()
        drawn.append(buffer.getvalue().count("\r"))
    assert drawn[1] <= drawn[0] // 4 + 2 < drawn[0], drawn  # refresh_steps holds there too


@pytest.mark.parametrize(
    "mode",
    ["direct", "backsolve", "checkpointed", "per_sample", "device_loop"],
)
def test_a_terminal_event_leaves_the_meter_where_it_fired(mode):
    """Progress never goes back and ends short of 100 % at the event, in every mode: the
    gradient strategies that locate the event first and then solve up to it show the
    search once."""
    y0 = torch.tensor([2.0, 0.0], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 8.0], dtype=F64)
    event = no.Event(lambda t, y: y[..., 0] + 1.0, terminal=True)  # x falls through -1
    options: dict = {"per_sample": True} if mode == "per_sample" else {}
    options |= {"device_loop": True} if mode == "device_loop" else {}
    if mode in ("backsolve", "checkpointed"):
        strategy = {"backsolve": no.Backsolve, "checkpointed": no.Checkpointed}[mode]
        options["gradient"] = strategy(params=())
    state = y0[None] if mode == "per_sample" else y0
    meter = Recorder()
    sol = no.solve(van_der_pol, state, ts, event=event, progress_meter=meter, **options)
    fractions = [u.fraction for u in meter.updates]
    assert fractions == sorted(fractions), fractions
    event_t = float(sol.event_t.detach().max())
    assert 0.1 < fractions[-1] < 1.0 and event_t < 8.0
    assert meter.updates[-1].t >= event_t - 1e-12
    if mode in ("backsolve", "checkpointed"):
        alone = Recorder()
        no.solve(van_der_pol, y0.detach(), ts, event=event, progress_meter=alone)
        assert [u.t for u in meter.updates] == [u.t for u in alone.updates]


def test_tqdm_bar_closes_where_the_solve_stopped():
    """refresh_steps=8: the bar closed by an error shows the last attempt's t and counts,
    not its last redraw."""
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    ts = torch.tensor([0.0, 8.0], dtype=F64)
    meter, buffer = Recorder(), io.StringIO()
    bar = no.TqdmProgressMeter(refresh_steps=8, file=buffer, mininterval=0)
    for each in (meter, bar):
        with torch.no_grad(), pytest.raises(no.MaxStepsError):
            no.solve(van_der_pol, y0, ts, max_steps=25, progress_meter=each)
    last = meter.updates[-1]
    assert last.n_accepted + last.n_rejected == 25
    counts = f"t={last.t:.6g}, accepted={last.n_accepted}, rejected={last.n_rejected}"
    assert counts in _last_line(buffer.getvalue())


def test_backsolve_meter_shows_the_forward_solve_only():
    meter = Recorder()
    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    sol = no.solve(decay, y0, ts, gradient=no.Backsolve(params=()), progress_meter=meter)
    calls = len(meter.calls)
    assert meter.calls[-1] == ("close", None)
    sol.ys[-1].sum().backward()
    torch.testing.assert_close(y0.grad, torch.full((2,), math.exp(-1.0), dtype=F64))
    assert len(meter.calls) == calls and sol.stats.n_steps_backward > 0


def test_odeint_and_sdeint_options():
    meter = Recorder()
    ts = torch.linspace(0.0, 1.0, 3, dtype=F64)
    ys = no.odeint(decay, torch.ones(2, dtype=F64), ts, options=dict(progress_meter=meter))
    torch.testing.assert_close(ys[-1], torch.full((2,), math.exp(-1.0), dtype=F64))
    assert meter.updates[-1].fraction == 1.0 and meter.calls[-1] == ("close", None)
    meter = Recorder()
    no.odeint(decay, torch.ones(2, dtype=F64), ts, method="rk4",
              options=dict(step_size=0.1, progress_meter=meter))  # fmt: skip
    assert len(meter.updates) == 10 and meter.updates[-1].fraction == 1.0
    # cdeint passes odeint's options: z' = X'(t) on a linear path X(t) = t gives z(1) = 1
    path = LinearInterpolation(linear_interpolation_coeffs(ts[None, :, None].clone(), ts), ts)
    meter = Recorder()
    field = lambda t, z: torch.ones(1, 1, 1, dtype=F64)  # noqa: E731
    options = dict(step_size=0.25, progress_meter=meter)
    z0 = torch.zeros(1, 1, dtype=F64)
    z = cdeint(X=path, func=field, z0=z0, t=path.interval, method="rk4", options=options)
    torch.testing.assert_close(z[:, -1], torch.ones(1, 1, dtype=F64))
    assert meter.updates[-1].fraction == 1.0 and meter.calls[-1] == ("close", None)

    class Ornstein(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.1 * torch.ones_like(y)

    meter = Recorder()
    sdeint(Ornstein(), torch.ones(4, 1, dtype=F64), ts, dt=0.05,
           options=dict(progress_meter=meter))  # fmt: skip
    assert meter.calls[0] == ("start", 0.0, 1.0) and meter.calls[-1] == ("close", None)
    assert len(meter.updates) == 20 and meter.updates[-1].fraction == pytest.approx(1.0)


def test_bad_meters_are_refused():
    y0, ts = torch.ones(2, dtype=F64), torch.tensor([0.0, 1.0], dtype=F64)
    with pytest.raises(TypeError, match="progress_meter must be a neuralode.ProgressMeter"):
        no.solve(decay, y0, ts, progress_meter="tqdm")
    with pytest.raises(TypeError, match="progress_meter must be"):
        no.odeint(decay, y0, ts, options=dict(progress_meter=print))
    with pytest.raises(NotImplementedError, match="must define update"):
        no.solve(decay, y0, ts, progress_meter=no.ProgressMeter())
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="refresh_steps must be a positive integer"):
            no.TqdmProgressMeter(refresh_steps=bad)
    with pytest.raises(ValueError, match="desc must be a string"):
        no.TqdmProgressMeter(desc=3)
    with pytest.raises(ValueError, match="not supported under torch.func transforms"):
        torch.func.vmap(lambda y: no.solve(decay, y, ts, progress_meter=Recorder()).ys)(
            torch.ones(3, 2, dtype=F64)
        )
    with pytest.raises(ValueError, match="scipy_solver takes no progress_meter"):
        no.odeint(decay, y0, ts, method="scipy_solver", options=dict(progress_meter=Recorder()))
    with pytest.raises(ValueError, match="adjoint_options cannot set progress_meter"):
        no.odeint_adjoint(decay, y0, ts, adjoint_options=dict(progress_meter=Recorder()),
                          adjoint_params=())  # fmt: skip
