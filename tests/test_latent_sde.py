"""The latent SDE model and ``neuralode experiment latent-sde`` at a tiny size, the SDE
benchmark part's rows, and the SDE docs' snippets."""

from __future__ import annotations

import json
import math

import pytest
import torch

from neuralode.cli import build_parser, main
from neuralode.models.latent_sde import LatentSDE


def test_latent_sde_elbo_and_samples_have_the_right_shapes():
    torch.manual_seed(0)
    model = LatentSDE(obs_dim=2, latent_dim=3, hidden=8)
    ts = torch.linspace(0, 1, 5)
    xs = torch.randn(5, 4, 2)
    log_lik, kl, zs, xs_mean = model.elbo(xs, ts, 0.1, 0.1)
    assert zs.shape == (5, 4, 3) and xs_mean.shape == (5, 4, 2)
    assert kl.item() >= 0 and math.isfinite(log_lik.item())
    (-(log_lik - kl)).backward()
    assert all(p.grad is not None for p in model.f_net.parameters())
    assert model.sample_posterior(xs, ts, 0.1, 3).shape == (3, 5, 4, 2)
    assert model.sample_prior(ts, 6, 0.1).shape == (5, 6, 2)
    # the adjoint gives the same kind of gradients
    model.zero_grad()
    log_lik, kl, _, _ = model.elbo(xs, ts, 0.1, 0.1, adjoint=True)
    (-(log_lik - kl)).backward()
    assert all(p.grad is not None for p in model.h_net.parameters())


def test_encode_moves_the_times_to_the_observations_device_and_dtype():
    """Times on the CPU and observations elsewhere (the meta device stands for a GPU): the
    encoder reads the times on the observations' device, in their dtype."""
    model = LatentSDE(obs_dim=2, latent_dim=3, hidden=8).to("meta")
    xs = torch.empty(5, 4, 2, device="meta", dtype=torch.float32)
    context = model.encode(xs, torch.linspace(0, 1, 5, dtype=torch.float64))
    assert context.device.type == "meta" and context.dtype == torch.float32
    assert context.shape == (5, 4, 16)


def test_experiment_writes_metrics_checkpoint_and_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    argv = ["experiment", "latent-sde", "--out", str(tmp_path), "--series", "8", "--times", "5"]
    argv += ["--iterations", "3", "--batch", "4", "--dt", "0.1", "--hidden", "8", "--no-progress"]
    assert main(argv) == 0
    assert "latent SDE on GBM" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert len(metrics["history"]) == 3
    assert {"elbo", "kl", "log_likelihood"} <= set(metrics["history"][0])
    for key in ("posterior_rmse", "coverage", "final_elbo", "final_kl"):
        assert math.isfinite(metrics[key])
    assert (tmp_path / "checkpoint.pt").stat().st_size > 1000
    for name in ("posterior.png", "prior.png"):
        assert (tmp_path / name).stat().st_size > 5000


def test_experiment_bad_input_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:  # refused by the option's type, as it parses
        main(["experiment", "latent-sde", "--out", str(out), "--times", "1"])
    assert stopped.value.code == 2 and not out.exists()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --times: must be an integer >= 2, got 1" in err


@pytest.mark.slow
def test_bench_sde_part_compares_with_torchsde():
    pytest.importorskip("torchsde")
    from neuralode.bench import sde

    assert build_parser().parse_args(["bench", "--parts", "sde"]).parts == ["sde"]
    rows = sde.run(repeats=1, methods=("euler",))
    assert [(r.method, r.mode) for r in rows] == [
        ("euler", "forward"),
        ("euler", "forward + adjoint backward"),
    ]
    assert all(r.diff < 1e-4 and r.speedup > 0 for r in rows)  # the same Brownian motion
    assert "| euler | forward |" in sde.table(rows)


@pytest.mark.slow
def test_adjoint_memory_is_flat_in_the_number_of_steps():
    pytest.importorskip("torchsde")
    from neuralode.bench import sde

    (_, ours100, _, backprop100), (_, ours1000, _, backprop1000) = sde.memory((100, 1000))
    # tensors: flat; the Brownian tree adds 80 bytes a step and the forward grid 8 (0.1 MiB)
    assert ours1000 <= 1.1 * ours100, (ours100, ours1000)  # 1-5% more in BENCHMARKS.md
    assert backprop1000 > 3 * backprop100  # backprop's memory grows with the steps


def test_elbo_kl_is_the_initial_kl_plus_half_the_integral_of_u_squared():
    """With constant drifts f = a, h = b and a constant diffusion g the path KL is exactly
    0.5 |(a - b) / g|^2 (t1 - t0) per series; the initial state's KL is the closed form of two
    Gaussians; ``elbo`` returns their sum, averaged over the batch."""
    torch.manual_seed(0)
    model = LatentSDE(obs_dim=1, latent_dim=2, context_dim=3, hidden=8).double()
    a, b = torch.tensor([0.3, -0.2]), torch.tensor([-0.1, 0.4])
    with torch.no_grad():
        for net, bias in ((model.f_net, a), (model.h_net, b)):
            net[-1].weight.zero_()
            net[-1].bias.copy_(bias)
        model.g_net.w2.zero_()
        model.g_net.b2.copy_(torch.tensor([0.5, -1.0]))
        model.pz0_mean.copy_(torch.tensor([0.2, -0.3]))
        model.pz0_logstd.copy_(torch.tensor([0.1, -0.4]))
    g = model.diffusion_scale * torch.sigmoid(torch.tensor([0.5, -1.0], dtype=torch.float64))
    ts = torch.linspace(0.0, 1.5, 4, dtype=torch.float64)
    xs = torch.randn(4, 5, 1, dtype=torch.float64)
    log_lik, kl, _, _ = model.elbo(xs, ts, 0.1, 0.05)
    mean, logstd = model.qz0(model.encode(xs, ts)[0]).chunk(2, dim=-1)
    var_q, var_p = (2 * logstd).exp(), (2 * model.pz0_logstd).exp()
    kl0 = 0.5 * (
        var_q / var_p + (mean - model.pz0_mean) ** 2 / var_p - 1 + var_p.log() - var_q.log()
    )
    path = 0.5 * (((a - b).double() / g) ** 2).sum() * 1.5
    torch.testing.assert_close(kl, kl0.sum(-1).mean() + path)


@pytest.mark.parametrize(
    ("xs", "ts", "message"),
    [
        (torch.randn(5, 4), torch.linspace(0, 1, 5), r"xs must be \(T, batch, 1\)"),
        (torch.randn(5, 4, 2), torch.linspace(0, 1, 5), r"xs must be \(T, batch, 1\)"),
        (torch.randn(5, 4, 1), torch.linspace(0, 1, 4), "ts must be the 5 observation times"),
    ],
)
def test_elbo_refuses_series_that_do_not_fit_the_model(xs, ts, message):
    model = LatentSDE(hidden=8)
    with pytest.raises(ValueError, match=message):
        model.elbo(xs, ts, 0.1, 0.1)
    with pytest.raises(ValueError, match=message):
        model.sample_posterior(xs, ts, 0.1, 2)


@pytest.mark.parametrize(
    ("noise_std", "dt", "message"),
    [
        (0.0, 0.1, "noise_std must be positive and finite, got 0.0"),
        (math.inf, 0.1, "noise_std must be positive and finite, got inf"),
        (math.nan, 0.1, "noise_std must be positive and finite, got nan"),
        (0.1, -0.1, "dt must be positive, got -0.1"),
        (0.1, math.nan, "dt must be positive, got nan"),
    ],
)
def test_elbo_refuses_a_noise_or_step_that_is_not_positive(noise_std, dt, message):
    xs, ts = torch.randn(5, 4, 1), torch.linspace(0, 1, 5)
    with pytest.raises(ValueError, match=message):
        LatentSDE(hidden=8).elbo(xs, ts, noise_std, dt)


def test_elbo_refuses_observations_that_are_not_finite():
    xs, ts = torch.randn(5, 4, 1), torch.linspace(0, 1, 5)
    xs[2, 1] = math.nan
    with pytest.raises(ValueError, match="xs contains NaN or infinite observations"):
        LatentSDE(hidden=8).elbo(xs, ts, 0.1, 0.1)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"latent_dim": 0}, "latent_dim must be an integer >= 1, got 0"),
        ({"obs_dim": 0}, "obs_dim must be an integer >= 1, got 0"),
        ({"hidden": 2.5}, "hidden must be an integer >= 1, got 2.5"),
        # at 0 the path KL divides by g = 0 (NaN); a negative scale makes g negative
        ({"diffusion_scale": 0.0}, "diffusion_scale must be positive and finite, got 0.0"),
        ({"diffusion_scale": -1.0}, "diffusion_scale must be positive and finite"),
        ({"diffusion_scale": math.inf}, "diffusion_scale must be positive and finite"),
    ],
)
def test_the_model_refuses_sizes_and_scales_it_cannot_use(options, message):
    with pytest.raises(ValueError, match=message):
        LatentSDE(**options)


def test_sampling_refuses_no_samples():
    model, ts = LatentSDE(hidden=8), torch.linspace(0, 1, 5)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        model.sample_posterior(torch.randn(5, 2, 1), ts, 0.1, 0)
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 2.5"):
        model.sample_posterior(torch.randn(5, 2, 1), ts, 0.1, 2.5)
    with pytest.raises(ValueError, match="batch must be an integer >= 1, got 0"):
        model.sample_prior(ts, 0, 0.1)


def test_posterior_drift_without_a_context_for_the_batch_is_a_clear_error():
    from neuralode.sde import sdeint

    model, ts = LatentSDE(hidden=8), torch.linspace(0, 1, 5)
    z0 = torch.zeros(3, 4)
    with pytest.raises(RuntimeError, match="call elbo .* first .*context for None series"):
        sdeint(model, z0, ts, dt=0.1, method="euler")
    model.elbo(torch.randn(5, 2, 1), ts, 0.1, 0.1)
    with pytest.raises(RuntimeError, match="context for 2 series, state of 3"):
        sdeint(model, z0, ts, dt=0.1, method="euler")


def test_a_trained_model_deep_copies_and_pickles_without_its_last_batch():
    """After ``elbo`` the model holds the batch's encoded context, an intermediate of the
    graph: ``copy.deepcopy`` (an EMA copy, a snapshot of the best weights) must still work,
    and the copy computes what the original does."""
    import copy
    import pickle

    import numpy

    torch.manual_seed(0)
    model, ts = LatentSDE(obs_dim=1, latent_dim=2, hidden=8), torch.linspace(0, 1, 5)
    xs = torch.randn(5, 3, 1)
    log_lik, kl, _, _ = model.elbo(xs, ts, 0.1, 0.1)
    (kl - log_lik).backward()
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone._context is None and model._context is not None
        results = []
        for m in (model, clone):
            # z0's draw comes from torch, the Brownian motion's seed from NumPy
            torch.manual_seed(1)
            numpy.random.seed(1)
            results.append(m.elbo(xs, ts, 0.1, 0.1)[0])
        assert torch.equal(*results)
