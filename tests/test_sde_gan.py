"""The SDE-GAN (Kidger et al. 2021): a series as the driving path of a CDE, the generator and
discriminator, and the experiment end to end at a small size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from neuralode.cli import main
from neuralode.models.sde_gan import CDEDiscriminator, PathIncrements, SDEGenerator, with_time
from neuralode.sde import sdeint


class _LinearCDE(torch.nn.Module):
    """dH = H dY for a scalar path Y: H(T) = H(0) exp(Y(T) - Y(0)) for a path of bounded
    variation (the Riemann-Stieltjes, i.e. Stratonovich, integral)."""

    sde_type, noise_type = "stratonovich", "general"

    def f(self, t, h):
        return torch.zeros_like(h)

    def g(self, t, h):
        return h[:, :, None]


def _series(batch: int = 3, times: int = 9) -> tuple[torch.Tensor, torch.Tensor]:
    ts = torch.linspace(0.0, 2.0, times, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    ys = torch.randn(batch, times, 1, dtype=torch.float64, generator=gen).cumsum(1) * 0.3
    return ts, ys


def test_path_increments_interpolate_the_series_linearly():
    ts, ys = _series()
    path = PathIncrements(ts, ys)
    assert path.shape == (3, 1) and path.dtype == torch.float64
    torch.testing.assert_close(path(ts[2], ts[5]), ys[:, 5] - ys[:, 2])
    half = 0.5 * (ts[3] + ts[4])
    torch.testing.assert_close(path(ts[3], half), 0.5 * (ys[:, 4] - ys[:, 3]))
    torch.testing.assert_close(path(ts[-1]), ys[:, -1] - ys[:, 0])
    with pytest.raises(ValueError, match="no Lévy area"):
        path(ts[0], ts[1], return_U=True)


def test_a_series_drives_a_cde_exactly():
    """dH = H dY solved by reversible Heun on the interpolated series converges to
    H(0) exp(Y(T) - Y(0)), at second order in the step, and is differentiable in the series."""
    ts, ys = _series()
    ys.requires_grad_(True)
    h0 = torch.ones(3, 1, dtype=torch.float64)
    exact = h0 * torch.exp(ys[:, -1] - ys[:, 0])
    errors = []
    for substeps in (4, 8, 16):
        dt = float(ts[1] - ts[0]) / substeps
        path = PathIncrements(ts, ys)
        hs = sdeint(_LinearCDE(), h0, ts[[0, -1]], bm=path, method="reversible_heun", dt=dt)
        errors.append(float((hs[-1] - exact).detach().abs().max()))
    assert errors[-1] < 3e-4 and min(errors[0] / errors[1], errors[1] / errors[2]) > 3.0, errors
    (grad,) = torch.autograd.grad(hs[-1].sum(), ys)
    exact_grad = torch.zeros_like(ys)
    exact_grad[:, -1], exact_grad[:, 0] = exact, -exact
    torch.testing.assert_close(grad, exact_grad, rtol=1e-2, atol=1e-3)


def test_generator_and_discriminator_train_together():
    torch.manual_seed(0)
    ts = torch.arange(6, dtype=torch.float32)
    generator, discriminator = SDEGenerator(hidden_size=4, width=8), CDEDiscriminator(width=8)
    fake = generator(ts, 5)
    assert fake.shape == (5, 6, 2)
    torch.testing.assert_close(fake[:, :, 0], ts.expand(5, 6))
    real = with_time(ts, torch.randn(5, 6, 1))
    loss = discriminator(fake) - discriminator(real)
    loss.backward()
    for model in (generator, discriminator):
        for name, p in model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(float(p.grad.abs().sum()) > 0 for p in generator.field.parameters())
    discriminator.clip_weights()
    for module in discriminator.modules():
        if isinstance(module, torch.nn.Linear):
            assert float(module.weight.detach().abs().max()) <= 1.0 / module.out_features


def test_sde_gan_experiment_writes_its_results(tmp_path):
    out = tmp_path / "gan"
    args = ["experiment", "sde-gan", "--out", str(out), "--iterations", "4", "--series", "64"]
    assert main([*args, "--times", "8", "--batch", "16", "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("trained", "untrained", "real_vs_real"):
        assert set(metrics[key]) == {"marginal_w1", "increment_w1"}
    assert len(metrics["history"]) == 4
    for name in ("checkpoint.pt", "samples.png", "marginals.png"):
        assert (out / name).is_file(), name


def test_sde_gan_baseline_is_the_trained_generator_at_its_initial_weights(tmp_path, monkeypatch):
    """``untrained`` in metrics.json is the generator that is trained, measured before its
    first step (not another random generator): one generator is made, and the baseline's
    fit sees its initial weights."""
    from neuralode.experiments import sde_gan

    made, fitted = [], []

    class Recorded(SDEGenerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append({k: v.clone() for k, v in self.state_dict().items()})

    fit = sde_gan._fit

    def recorded_fit(generator, *args):
        fitted.append({k: v.clone() for k, v in generator.state_dict().items()})
        return fit(generator, *args)

    monkeypatch.setattr(sde_gan, "SDEGenerator", Recorded)
    monkeypatch.setattr(sde_gan, "_fit", recorded_fit)
    out = tmp_path / "gan"
    args = ["experiment", "sde-gan", "--out", str(out), "--iterations", "2", "--series", "32"]
    assert main([*args, "--times", "6", "--batch", "8", "--no-progress"]) == 0
    assert len(made) == 1 and len(fitted) == 2  # the baseline's fit, then the trained one's
    initial, (baseline, trained) = made[0], fitted
    assert baseline.keys() == initial.keys()
    assert all(torch.equal(baseline[k], initial[k]) for k in initial)
    assert not all(torch.equal(trained[k], initial[k]) for k in initial)  # it has trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["untrained"] != metrics["trained"]


def test_generator_draws_in_the_models_dtype_whatever_the_times_dtype():
    """The initial noise and the solve follow the parameters: a float64 generator on float32
    times gives float64 series, a float32 one on float64 times float32 series."""
    torch.manual_seed(0)
    ts = torch.arange(5, dtype=torch.float32)
    fake = SDEGenerator(hidden_size=4, width=8).double()(ts, 3)
    assert fake.dtype == torch.float64 and fake.shape == (3, 5, 2)
    torch.testing.assert_close(fake[:, :, 0], ts.double().expand(3, 5))
    assert SDEGenerator(hidden_size=4, width=8)(ts.double(), 3).dtype == torch.float32


def test_generator_default_step_is_the_smallest_spacing_of_unequal_times():
    """On unequal times the default step is the smallest spacing: a step of ts[1] - ts[0] =
    0.5 would span [0.5, 0.6] and [0.6, 1] in one step, the output at 0.6 then the linear
    interpolation 0.8 y(0.5) + 0.2 y(1) of that step. The same seeds give the series of
    dt = 0.6 - 0.5; an equally spaced grid keeps its spacing ts[1] - ts[0]."""
    generator = SDEGenerator(hidden_size=4, width=8).double()
    ts = torch.tensor([0.0, 0.5, 0.6, 1.0], dtype=torch.float64)

    def draw(times: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        torch.manual_seed(0)
        np.random.seed(0)
        with torch.no_grad():
            return generator(times, 16, dt)[:, :, 1]

    default, smallest = draw(ts), draw(ts, float(ts[2] - ts[1]))
    torch.testing.assert_close(default, smallest, rtol=0, atol=0)
    one_step = draw(ts, 0.5)  # (what the first spacing gave)
    interpolated = 0.8 * one_step[:, 1] + 0.2 * one_step[:, 3]
    torch.testing.assert_close(one_step[:, 2], interpolated)
    assert float((default[:, 2] - (0.8 * default[:, 1] + 0.2 * default[:, 3])).abs().max()) > 1e-3
    equal = torch.linspace(0.0, 1.0, 6, dtype=torch.float32)
    torch.testing.assert_close(draw(equal), draw(equal, float(equal[1] - equal[0])), rtol=0, atol=0)


def test_generator_gradients_by_reversible_heun_adjoint_equal_backprop():
    """On one Brownian path in float64, reversible Heun's adjoint gives the gradients of
    backpropagation through the solver to rounding (it is exact, not an approximation)."""
    from neuralode.sde import BrownianInterval, sdeint_adjoint

    torch.manual_seed(0)
    field = SDEGenerator(hidden_size=4, width=8).double().field
    ts = torch.arange(6, dtype=torch.float64)
    x0 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for solve, options in (
        (sdeint, {}),
        (sdeint_adjoint, {"adjoint_method": "adjoint_reversible_heun"}),
    ):
        bm = BrownianInterval(0.0, 5.0, size=(3, 3), dtype=torch.float64, entropy=7)
        xs = solve(field, x0, ts, bm=bm, method="reversible_heun", dt=0.5, **options)
        grads.append(torch.autograd.grad((xs**2).sum(), [x0, *field.parameters()]))
    for backprop, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, backprop, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    ("ys", "message"),
    [
        (torch.randn(3, 5), r"ys must be \(batch, T, 2\)"),
        (torch.randn(3, 1, 2), r"ys must be \(batch, T, 2\).*T at least 2"),
        (torch.randn(3, 5, 3), r"ys must be \(batch, T, 2\)"),
        (
            torch.cat([torch.arange(6.0).view(2, 3, 1), torch.zeros(2, 3, 1)], 2),
            "time channels .* differ across the batch",
        ),
        (with_time(torch.tensor([0.0, 2.0, 1.0]), torch.zeros(2, 3, 1)), "strictly increasing"),
        (
            with_time(torch.tensor([0.0, 1.0, 3.0]), torch.zeros(2, 3, 1)),
            r"needs equally spaced times .*spacings from 1\.0 to 2\.0",
        ),
        (
            with_time(torch.tensor([0.0, 0.5, 1.0, 2.0]), torch.zeros(2, 4, 1)),
            "needs equally spaced times",
        ),
    ],
)
def test_discriminator_refuses_series_of_the_wrong_shape_or_times(ys, message):
    with pytest.raises(ValueError, match=message):
        CDEDiscriminator(width=8)(ys)


def test_discriminator_refuses_values_it_cannot_score():
    ys = with_time(torch.linspace(0.0, 1.0, 4), torch.randn(2, 4, 1))
    broken = ys.clone()
    broken[1, 2, 1] = float("nan")
    with pytest.raises(ValueError, match="ys contains NaN or infinite values"):
        CDEDiscriminator(width=8)(broken)
    with pytest.raises(ValueError, match="ys is torch.float64 but the discriminator's weights"):
        CDEDiscriminator(width=8)(ys.double())
    with pytest.raises(ValueError, match=r"with_time takes ts \(T,\) and ys .* got shapes"):
        with_time(torch.linspace(0.0, 1.0, 5), torch.randn(2, 4, 1))


def test_discriminator_takes_equally_spaced_times_up_to_rounding():
    """float32 grids from linspace are equal up to rounding: scored, not refused."""
    for ts in (torch.linspace(0.0, 1.0, 301), torch.linspace(1000.0, 1001.0, 17)):
        score = CDEDiscriminator(width=8)(with_time(ts, torch.randn(2, len(ts), 1)))
        assert score.shape == () and bool(torch.isfinite(score))


def test_path_increments_and_generator_refuse_bad_times():
    ts, ys = _series()
    with pytest.raises(ValueError, match="T = 9 times"):
        PathIncrements(ts, ys[:, :5])
    with pytest.raises(ValueError, match="at least two times"):
        PathIncrements(ts[:1], ys[:, :1])
    with pytest.raises(ValueError, match="at least two times"):
        SDEGenerator()(torch.zeros(1), 3)
    with pytest.raises(ValueError, match="batch must be at least 1"):
        SDEGenerator()(torch.arange(3.0), 0)


def test_sde_gan_experiment_names_the_option_out_of_range(tmp_path, capsys):
    out = tmp_path / "gan"
    assert main(["experiment", "sde-gan", "--out", str(out), "--lag", "40"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--lag (40) must be below --times (32)" in err
    assert not out.exists()
