"""The first step (Hairer's rule) and the PI controller's rule after an accepted step,
against the formula and against a step sequence recorded from diffrax."""

import math

import pytest
import torch

import neuralode as no
from neuralode._norms import rms_norm
from neuralode._term import ODETerm
from neuralode._tree import tree_spec
from neuralode.bench import core
from neuralode.controllers.initial_step import initial_step, select_initial_step


def _field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[:, 1], 3.0 * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], -1) + t


def _hairer(y0: torch.Tensor, rtol: float, atol: float, exponent: float) -> float:
    """Hairer, Norsett & Wanner, Solving ODEs I, II.4, steps (a)-(f), written out in float64
    with the RMS norm."""
    t0 = 0.5
    scale = atol + rtol * y0.abs()
    rms = lambda x: math.sqrt(float((x / scale).pow(2).mean()))  # noqa: E731
    f0 = _field(torch.tensor(t0, dtype=torch.float64), y0)
    d0, d1 = rms(y0), rms(f0)
    h0 = 1e-6 if min(d0, d1) < 1e-5 else 0.01 * d0 / d1
    d2 = rms(_field(torch.tensor(t0 + h0, dtype=torch.float64), y0 + h0 * f0) - f0) / h0
    big = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if big <= 1e-15 else (0.01 / big) ** exponent
    return min(100 * h0, h1)


@pytest.mark.parametrize("y0", [[[2.0, 0.0], [0.5, -1.0]], [[1e-3, 2e-3], [0.0, 1e-3]]])
def test_initial_step_is_hairers_rule(y0: list) -> None:
    y0 = torch.tensor(y0, dtype=torch.float64)
    rtol, atol, exponent = 1e-6, 1e-8, 1 / 5  # dopri5: error estimate of order 4
    expected = _hairer(y0, rtol, atol, exponent)
    spec, _ = tree_spec(y0)
    term, flat = ODETerm(_field, spec, y0), y0.reshape(-1)  # the engine's flat state
    f0 = term(0.5, flat)
    host = select_initial_step(term, 0.5, flat, f0, 1.0, exponent, rtol, atol, rms_norm)
    assert host == pytest.approx(expected, rel=1e-12)
    t0 = torch.tensor(0.5, dtype=torch.float64)
    f0 = _field(t0, y0)
    device, _ = initial_step(_field, t0, y0, f0, 1.0, exponent, rtol, atol, rms_norm)
    assert float(device) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("t0", [1.0, 100.0, -50.0])
@pytest.mark.parametrize("mode", ["host", "per_sample", "device_loop"])
def test_a_round_off_y0_away_from_t0_0_starts_with_a_step_the_loop_resolves(
    t0: float, mode: str
) -> None:
    """y0 of round-off size, not 0, makes Hairer's step 0.01 d0 / d1 about 5e-17 here: at
    t0 = 1 that is below an ulp of t0, a step that cannot move t. The first step is at least
    twice the smallest step the solve resolves at t0, so the solve runs (and is exact: f is
    constant) instead of stopping with a step-size underflow at its first step."""
    y0 = torch.tensor([[-5.6e-17], [1.0]], dtype=torch.float64)
    ts = torch.tensor([t0, t0 + 1.0], dtype=torch.float64)
    options = {"host": {}, "per_sample": {"per_sample": True}, "device_loop": {"device_loop": True}}
    control = no.PIController(rtol=1e-10, atol=1e-12)
    for rows in (y0[:1], y0):  # alone, and beside a sample of ordinary size
        sol = no.solve(
            lambda t, y: -torch.ones_like(y), rows, ts, controller=control, **options[mode]
        )
        assert torch.allclose(sol.ys[-1], rows - 1.0, rtol=0, atol=1e-14)
    term = ODETerm(lambda t, y: -torch.ones_like(y), tree_spec(y0[0])[0], y0[0])
    f0 = -torch.ones(1, dtype=torch.float64)
    step = select_initial_step(term, t0, y0[0], f0, 1.0, 0.2, 1e-10, 1e-12, rms_norm, span=1.0)
    floor = 4 * 2.0**-52 * abs(t0)
    assert step == 2 * floor  # the rule's step (~5e-17) raised to twice the floor
    device, _ = initial_step(
        lambda t, y: -torch.ones_like(y), torch.tensor(t0, dtype=torch.float64), y0[0], f0,
        1.0, 0.2, 1e-10, 1e-12, rms_norm, torch.tensor(1.0, dtype=torch.float64),
    )  # fmt: skip
    assert float(device) == step


@pytest.mark.parametrize("as_tensor", [False, True])
def test_no_shrink_after_accept(as_tensor: bool) -> None:
    """``shrink_after_accept=False``: an accepted step's factor is at least 1 (0.9 * r**-0.2
    is below 1 for r > 0.59); a rejected step's is unchanged."""
    ratios, size, exponent = [0.99, 0.7, 1e-4, 2.0], 0.1, 0.2
    expected = [0.1, 0.1, 0.1 * min(10.0, 0.9 * 1e-4**-0.2), 0.1 * 0.9 * 2.0**-0.2]
    default = [0.1 * min(10.0, 0.9 * r**-0.2) for r in ratios]
    for shrink, want in ((False, expected), (True, default)):
        control = no.PIController(1e-6, 1e-8, shrink_after_accept=shrink)
        if as_tensor:
            ratio = torch.tensor(ratios, dtype=torch.float64)
            accept, new, _ = control.decide(ratio, torch.full_like(ratio, size), 1.0, exponent)
            assert accept.tolist() == [True, True, True, False]
            assert new.tolist() == pytest.approx(want, rel=1e-14)
        else:
            got = [control.decide(r, size, 1.0, exponent) for r in ratios]
            assert [g[0] for g in got] == [True, True, True, False]
            assert [g[1] for g in got] == pytest.approx(want, rel=1e-14)


# diffrax 0.7.2 (jax 0.10.2, CPU, float64), PIDController(rtol=1e-6, atol=1e-8), dt0=None, on
# Van der Pol mu 1..25, batch 256, one system, t in [0, 10], recorded with
#   PYTHONPATH=src python benchmarks/bench_steps_diffrax.py \
#       --diffrax-python /work/venv-jax/bin/python
# (its "vdp 256" case): 419 accepted / 72 rejected; the first attempts' sizes and the first
# rejected attempts' indices (0-based).
DIFFRAX_VDP_COUNTS = (419, 72)
DIFFRAX_VDP_SIZES = [0.01, 0.004229096799911, 0.004229096799911, 0.004548470494354,
                     0.004980999966035, 0.005413878962451, 0.005873637650794,
                     0.006373689297085, 0.006928810283465, 0.007555308251034]  # fmt: skip
DIFFRAX_VDP_REJECTED = [0, 26, 31, 36, 41, 46, 51, 57, 62, 67, 72, 77, 83, 88, 93, 98, 104,
                        109, 117, 121]  # fmt: skip


def test_diffrax_settings_take_diffraxs_steps() -> None:
    """With diffrax's first step (0.01: 0.7's ``dt0=None`` for every ODE) and its rule of
    no shrinking after an accepted step, the defaults take diffrax's step sequence."""
    problem = core.vdp_problem(256)
    sizes, accepted = [], []

    class Logged(no.PIController):
        def decide(self, ratio, size, previous_ratio, exponent, running=None):  # noqa: ANN001
            out = super().decide(ratio, size, previous_ratio, exponent, running)
            sizes.append(size)
            accepted.append(out[0])
            return out

    control = Logged(core.RTOL, core.ATOL, first_step=0.01, shrink_after_accept=False)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    with torch.no_grad():
        sol = no.solve(problem.f, problem.y0, ts, solver=no.Dopri5(), controller=control)
    assert (sol.stats.n_accepted, sol.stats.n_rejected) == DIFFRAX_VDP_COUNTS
    assert sizes[: len(DIFFRAX_VDP_SIZES)] == pytest.approx(DIFFRAX_VDP_SIZES, rel=1e-9)
    rejected = [i for i, a in enumerate(accepted) if not a]
    assert rejected[: len(DIFFRAX_VDP_REJECTED)] == DIFFRAX_VDP_REJECTED


def test_no_shrink_per_sample_equals_alone() -> None:
    """The option in the per-sample loop (tensor decisions): each sample takes the steps it
    takes when solved alone."""
    problem = core.vdp_problem(4)
    ts = torch.tensor([0.0, 3.0], dtype=torch.float64)
    control = no.PIController(core.RTOL, core.ATOL, shrink_after_accept=False)
    with torch.no_grad():
        both = no.solve(problem.f, problem.y0, ts, solver=no.Dopri5(), controller=control,
                        per_sample=True)  # fmt: skip
        mu = core.vdp_mu(4)
        for i in range(4):
            alone = no.solve(
                lambda t, y, m=mu[i]: torch.stack(
                    [y[:, 1], m * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], -1
                ),
                problem.y0[i : i + 1], ts, solver=no.Dopri5(), controller=control,
            )  # fmt: skip
            assert int(both.stats.sample_accepted[i]) == alone.stats.n_accepted
            assert int(both.stats.sample_rejected[i]) == alone.stats.n_rejected
            torch.testing.assert_close(both.ys[-1, i], alone.ys[-1, 0], rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("whole_solve_traced_only")  # (the graph's layout of the tolerances)
def test_per_element_tolerances_in_every_mode() -> None:
    """A tensor rtol broadcasting against the state (one per column of a (3, 2) state) is
    laid out as the flat state in every mode: the host loop, per sample and the compiled
    whole solve take the same steps, a looser column changes them, and a tolerance that
    does not broadcast is refused."""
    rates = torch.tensor([1.0, 3.0], dtype=torch.float64)
    y0, ts = torch.ones(3, 2, dtype=torch.float64), torch.linspace(0, 1, 3, dtype=torch.float64)

    def decay(t, y):
        return -rates * y

    steps = {}
    for rtol in ((1e-8, 1e-3), (1e-3, 1e-3)):
        controller = no.PIController(torch.tensor(rtol, dtype=torch.float64), 1e-12)
        with torch.no_grad():
            host = no.solve(decay, y0, ts, controller=controller)
            per_sample = no.solve(decay, y0, ts, controller=controller, per_sample=True)
            whole = no.solve(decay, y0, ts, controller=controller, compile=True)
        assert whole.stats.n_steps == host.stats.n_steps
        assert per_sample.stats.sample_steps.tolist() == [host.stats.n_steps] * 3
        torch.testing.assert_close(whole.ys, host.ys)
        steps[rtol] = host.stats.n_steps
    assert steps[(1e-8, 1e-3)] > steps[(1e-3, 1e-3)]
    with pytest.raises(ValueError, match=r"rtol of shape \(3,\) does not broadcast"):
        no.solve(decay, y0, ts, controller=no.PIController(torch.ones(3) * 1e-6))


@pytest.mark.parametrize("mode", ["host", "per_sample", "compile"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_uniform_grid_over_rounded_times_takes_no_sliver_step(mode: str, dtype) -> None:
    """0.3 in float32 is 0.30000001: steps of 0.1 from 0 cover it in 3 steps, as in float64
    (and torchdiffeq), not 3 and one of 1e-8; a remainder above the times' round-off is a
    step (0.31: 4 steps)."""
    y0 = torch.ones(2, 1, dtype=dtype)
    kw = (
        dict(per_sample=True)
        if mode == "per_sample"
        else dict(compile=True)
        if mode == "compile"
        else {}
    )
    for t1, steps in ((0.3, 3), (0.31, 4), (-0.3, 3)):
        ts = torch.tensor([0.0, t1], dtype=dtype)
        grid = no.FixedGrid(step_size=0.1)
        solution = no.solve(lambda t, y: -y, y0, ts, solver="rk4", controller=grid, **kw)
        per_solve = 2 if mode == "per_sample" else 1  # (per sample: summed over the rows)
        assert solution.stats.n_steps == steps * per_solve, (t1, solution.stats.n_steps)
        exact = torch.exp(-ts[-1].double())
        assert abs(float(solution.ys[-1, 0, 0]) - float(exact)) < 1e-5


@pytest.mark.parametrize("mode", ["host", "per_sample", "compile", "fixed", "implicit"])
@pytest.mark.parametrize(
    "t0, t1", [(1.0, 1.0 + 4 * 2.0**-52), (1e8, 1e8 + 2.0**-26), (1.0, 1.0 - 2.0**-52)]
)
def test_a_span_of_a_few_ulps_is_one_step_onto_its_end(mode: str, t0: float, t1: float) -> None:
    """Times 1-4 float64 ulps apart (a span the loop cannot resolve into steps) are solved
    by one step onto the end, y0 + (t1 - t0) f to round-off, as torchdiffeq; they raised a
    step-size underflow."""
    kw = {
        "host": {},
        "per_sample": dict(per_sample=True),
        "compile": dict(compile=True),
        "fixed": dict(solver="rk4", controller=no.FixedGrid(step_size=0.01)),
        "implicit": dict(solver="kvaerno5"),
    }[mode]
    y0 = torch.ones(2, 1, dtype=torch.float64)
    ts = torch.tensor([t0, t1], dtype=torch.float64)
    solution = no.solve(lambda t, y: -y, y0, ts, **kw)
    expected = 1 - (t1 - t0)
    assert torch.allclose(solution.ys[-1], torch.full_like(y0, expected), rtol=0, atol=1e-15)
    assert solution.stats.n_steps == (2 if mode == "per_sample" else 1)
