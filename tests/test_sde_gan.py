"""The SDE-GAN (Kidger et al. 2021): a series as the driving path of a CDE, the generator and
discriminator, and the experiment end to end at a small size."""

from __future__ import annotations

import json

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
