"""Latent SDE (Li et al. 2020) fitted to generated geometric Brownian motion paths by the ELBO.

Data: ``--series`` paths of a geometric Brownian motion dX = mu X dt + sigma X dW (mu = 0.5,
sigma = 0.4, X0 drawn from [0.8, 1.2]), observed at ``--times`` equally spaced times on [0, 1]
with Gaussian noise of std ``--noise``. The model (``neuralode.models.latent_sde.LatentSDE``)
has a posterior SDE conditioned on a GRU context, a prior SDE, a diagonal diffusion shared by
both and a linear decoder; training maximises the ELBO (log-likelihood minus the KL of the
initial state and of the path, ``logqp=True``), with the KL weight annealed from 0 to 1 over
the first third of the iterations. The ELBO, its KL term and the log-likelihood are logged per
step in metrics.json's ``history``. Writes ``metrics.json``, ``checkpoint.pt``,
``posterior.png`` (posterior sample paths over the observations of a few series) and
``prior.png`` (prior sample paths against the data's paths) to ``--out``.

"Fits its data": the RMSE between the posterior mean and the observations is at most twice the
observation noise, and at least 80 % of the observations lie within the band of posterior samples
(mean plus or minus two standard deviations, the observation noise included) - both reported.
Defaults: 256 series, 21 times, noise 0.05, 1000 iterations of Adam (lr 5e-3), batch 64,
Euler-Maruyama with dt 0.02, one thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._cli_types import int_at_least, positive_float, positive_float_at_most, positive_int
from ..models.latent_sde import LatentSDE
from ..sde import BrownianInterval, sdeint
from ..training.runtime import machine
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    open_experiment,
)
from ..viz.plots import require_matplotlib


class _GBM(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, mu: float, sigma: float):
        super().__init__()
        self.mu, self.sigma = mu, sigma

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y


# the series' time span [0, SPAN]: the SDE steps (--dt) fit within it
SPAN = 1.0


def make_data(series: int, times: int, noise: float, seed: int):
    """GBM paths observed with noise: ``(ts, clean, observed)``, paths of shape (T, series, 1)."""
    gen = torch.Generator().manual_seed(seed)
    ts = torch.linspace(0, SPAN, times)
    x0 = 0.8 + 0.4 * torch.rand(series, 1, generator=gen)
    bm = BrownianInterval(
        0.0, 1.0, size=(series, 1), entropy=seed, levy_area_approximation="space-time"
    )
    with torch.no_grad():
        clean = sdeint(_GBM(0.5, 0.4), x0, ts, bm=bm, method="srk", dt=1e-3)
    observed = clean + noise * torch.randn(clean.shape, generator=gen)
    return ts, clean, observed


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="out/latent-sde", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--series", type=positive_int, default=256, help="training series (default %(default)s)"
    )
    parser.add_argument(
        "--times",
        type=int_at_least(2),
        default=21,
        help="observation times on [0, 1] (default %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=positive_float_at_most(1e6),  # (float32 data: far larger noise overflows)
        default=0.05,
        help="observation noise std, at most 1e6 (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=1000,
        help="optimiser steps (default %(default)s)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=64, help="series per step (default %(default)s)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=5e-3, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--dt",
        type=positive_float_at_most(SPAN),
        default=0.02,
        help=f"SDE solver step, at most the series' span {SPAN:g} (default %(default)s)",
    )
    parser.add_argument(
        "--latent", type=positive_int, default=4, help="latent state size (default %(default)s)"
    )
    parser.add_argument(
        "--hidden", type=positive_int, default=64, help="hidden width (default %(default)s)"
    )
    parser.add_argument(
        "--adjoint", action="store_true", help="gradients by the stochastic adjoint (O(1) memory)"
    )
    add_seed_and_threads(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    for name in ("series", "times", "iterations", "batch", "latent", "hidden"):
        if getattr(args, name) < (2 if name == "times" else 1):
            raise ValueError(
                f"--{name} must be positive (times at least 2), got {getattr(args, name)}"
            )
    if not (args.noise > 0 and args.dt > 0):
        raise ValueError("--noise and --dt must be positive")
    if not args.dt <= SPAN:
        raise ValueError(f"--dt must be at most the series' span {SPAN:g}, got {args.dt}")
    if args.threads:
        torch.set_num_threads(args.threads)
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _train(args, run)


def _train(args: argparse.Namespace, run: Run) -> int:
    """Trains in ``run`` (checkpointed, resumable with ``--resume``), then evaluates, plots
    and writes metrics.json and checkpoint.pt."""
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # the Brownian intervals' entropy (as torchsde: NumPy's RNG)
    out = Path(args.out)
    ts, clean, xs = make_data(args.series, args.times, args.noise, args.seed)
    model = LatentSDE(obs_dim=1, latent_dim=args.latent, hidden=args.hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iterations, 0.1 * args.lr)
    objects = {"model": model, "optimizer": optimiser, "schedule": schedule}
    state: dict[str, Any] = {"history": [], "time_s": 0.0, "cpu_s": 0.0}
    trainer = Trainer("latent-sde", args.iterations, objects, None, state, run=run)
    history = state["history"]
    warmup = max(1, args.iterations // 3)
    log_every = max(1, args.iterations // 100)
    for step in trainer:
        it = step - 1
        tick, cpu_tick = time.perf_counter(), time.process_time()
        index = torch.randint(0, args.series, (min(args.batch, args.series),))
        log_lik, kl, _, _ = model.elbo(xs[:, index], ts, args.noise, args.dt, args.adjoint)
        kl_weight = min(1.0, (it + 1) / warmup)
        loss = -(log_lik - kl_weight * kl)
        optimiser.zero_grad()
        trainer.check_loss(loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimiser.step()
        schedule.step()
        elbo = float((log_lik - kl).detach())
        record = {"elbo": elbo, "kl": float(kl.detach()), "log_likelihood": float(log_lik.detach())}
        history.append({"step": step, **record})
        state["time_s"] += time.perf_counter() - tick
        state["cpu_s"] += time.process_time() - cpu_tick
        trainer.show(elbo=elbo, kl=record["kl"])
        if step == args.iterations or step % log_every == 0:
            trainer.log(record)
    if not trainer.done:
        trainer.finish()
    seconds, cpu_seconds = state["time_s"], state["cpu_s"]
    fit = evaluate(model, ts, xs, args)
    metrics = {
        "experiment": "latent-sde",
        "data": "geometric Brownian motion mu=0.5 sigma=0.4, noisy observations",
        "series": args.series,
        "times": args.times,
        "noise_std": args.noise,
        "iterations": args.iterations,
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "final_elbo": history[-1]["elbo"],
        "final_kl": history[-1]["kl"],
        **fit,
        "fits_data": fit["posterior_rmse"] <= 2 * args.noise and fit["coverage"] >= 0.8,
        "parameters": sum(p.numel() for p in model.parameters()),
        "environment": machine(),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save(
        {"model": model.state_dict(), "args": vars(args) | {"run": None}}, out / "checkpoint.pt"
    )
    plot(model, ts, clean, xs, args, out)
    print(
        f"latent SDE on GBM: ELBO {metrics['final_elbo']:.1f} (KL {metrics['final_kl']:.2f}), "
        f"posterior RMSE {fit['posterior_rmse']:.4f} (noise {args.noise}), coverage "
        f"{100 * fit['coverage']:.0f}%, {seconds:.0f} s ({cpu_seconds:.0f} CPU s); wrote "
        f"{out}/metrics.json, checkpoint.pt, posterior.png, prior.png"
    )
    return 0


def evaluate(model: LatentSDE, ts, xs, args) -> dict[str, float]:
    """The posterior mean's RMSE against the observations and the coverage of the band of
    posterior samples (two standard deviations, observation noise included)."""
    torch.manual_seed(args.seed + 1)
    n = min(args.series, 128)
    samples = model.sample_posterior(xs[:, :n], ts, args.dt, 16)
    mean = samples.mean(0)
    std = (samples.var(0) + args.noise**2).sqrt()
    inside = ((xs[:, :n] - mean).abs() <= 2 * std).float().mean()
    return {
        "posterior_rmse": float(((mean - xs[:, :n]) ** 2).mean().sqrt()),
        "coverage": float(inside),
        "posterior_band_mean_std": float(samples.std(0).mean()),
    }


def plot(model: LatentSDE, ts, clean, xs, args, out: Path) -> None:
    from ..viz.plots import figure

    torch.manual_seed(args.seed + 2)
    shown = min(4, args.series)
    samples = model.sample_posterior(xs[:, :shown], ts, args.dt, 20)
    fig = figure(figsize=(3.2 * shown, 3))
    axes = fig.subplots(1, shown, squeeze=False)
    for i, ax in enumerate(axes[0]):
        for s in samples[:, :, i, 0]:
            ax.plot(ts, s, color="tab:blue", alpha=0.25, lw=1)
        ax.plot(ts, clean[:, i, 0], color="k", lw=1, label="true path")
        ax.scatter(ts, xs[:, i, 0], color="tab:red", s=10, zorder=3, label="observations")
        ax.set_title(f"series {i}: posterior samples")
        ax.set_xlabel("t")
    axes[0][0].legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "posterior.png", dpi=100)
    prior = model.sample_prior(ts, 64, args.dt)
    fig = figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for i in range(min(64, args.series)):
        ax.plot(ts, xs[:, i, 0], color="tab:red", alpha=0.3, lw=1)
    for p in prior[:, :, 0].T:
        ax.plot(ts, p, color="tab:blue", alpha=0.3, lw=1)
    ax.plot([], [], color="tab:red", label="data (observed)")
    ax.plot([], [], color="tab:blue", label="prior samples")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("t")
    ax.set_title("prior SDE sample paths over the data")
    fig.tight_layout()
    fig.savefig(out / "prior.png", dpi=100)
