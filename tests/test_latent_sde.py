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
