"""A neural SDE trained as a time-series GAN (Kidger et al. 2021) on an Ornstein-Uhlenbeck process.

Data: ``--series`` paths of the time-dependent process dY = (mu t - theta Y) dt + sigma dW
(mu = 0.02, theta = 0.1, sigma = 0.4, Y_0 uniform on [-1, 1]) at ``--times`` integer times 0,
1, ..., normalised by the initial values' mean and standard deviation. The generator
(``SDEGenerator``: a Stratonovich neural SDE, reversible Heun with its exact adjoint) and the
discriminator (``CDEDiscriminator``: a neural CDE driven by the series) are trained as a
Wasserstein GAN with Adadelta, the discriminator's weights clipped; the generator that is
evaluated and saved is the average of its weights over the second half of training
(stochastic weight averaging).

How well the generator fits is measured on held-out series, against the same generator
before training (its initial weights, ``untrained`` in ``metrics.json``) and against a
second held-out sample of real series (the sampling noise floor): the 1-D Wasserstein
distance between generated and real marginals at every time, averaged over the times, and
the same for the increments Y(t + lag) - Y(t) (the temporal structure). Writes
``metrics.json`` (with the per-step losses), ``checkpoint.pt``, ``samples.png`` (generated
against real paths) and ``marginals.png`` (mean and quantiles over time).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._cli_types import int_at_least, positive_float, positive_int
from ..models.sde_gan import CDEDiscriminator, SDEGenerator, with_time
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


class _TimeDependentOU(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, mu: float = 0.02, theta: float = 0.1, sigma: float = 0.4):
        super().__init__()
        self.mu, self.theta, self.sigma = mu, theta, sigma

    def f(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.mu * t - self.theta * y

    def g(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.sigma * torch.ones_like(y)


def make_data(series: int, times: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ts, ys)``: normalised Ornstein-Uhlenbeck paths (series, times, 1) at ``ts``."""
    gen = torch.Generator().manual_seed(seed)
    ts = torch.arange(times, dtype=torch.float32)
    y0 = 2 * torch.rand(series, 1, generator=gen) - 1
    bm = BrownianInterval(
        0.0, float(times - 1), size=(series, 1), entropy=seed, levy_area_approximation="space-time"
    )
    with torch.no_grad():
        ys = sdeint(_TimeDependentOU(), y0, ts, bm=bm, dt=0.1).transpose(0, 1)
    ys = (ys - ys[:, 0].mean()) / ys[:, 0].std()
    return ts, ys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="out/sde-gan", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--series", type=positive_int, default=4096, help="training series (default %(default)s)"
    )
    parser.add_argument(
        "--times",
        type=int_at_least(3),
        default=32,
        help="observation times 0, 1, ... (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=3000,
        help="optimiser steps (default %(default)s)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=128, help="series per step (default %(default)s)"
    )
    parser.add_argument(
        "--generator-lr",
        type=positive_float,
        default=2e-4,
        help="Adadelta learning rate of the generator (default %(default)s)",
    )
    parser.add_argument(
        "--discriminator-lr",
        type=positive_float,
        default=1e-3,
        help="Adadelta learning rate of the discriminator (default %(default)s)",
    )
    parser.add_argument(
        "--hidden",
        type=positive_int,
        default=16,
        help="SDE and CDE state size (default %(default)s)",
    )
    parser.add_argument(
        "--width", type=positive_int, default=16, help="MLP width (default %(default)s)"
    )
    parser.add_argument(
        "--lag",
        type=positive_int,
        default=4,
        help="lag of the increments measured (default %(default)s)",
    )
    add_seed_and_threads(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    for name in ("series", "iterations", "batch", "hidden", "width", "lag"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.times < 3:
        raise ValueError(f"--times must be at least 3, got {args.times}")
    if args.lag >= args.times:
        raise ValueError(
            f"--lag ({args.lag}) must be below --times ({args.times}): the increments are "
            "measured between times --lag apart"
        )
    if args.threads:
        torch.set_num_threads(args.threads)
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _train(args, run)


def _train(args: argparse.Namespace, run: Run) -> int:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)  # the Brownian intervals' entropy (as torchsde: NumPy's RNG)
    out = Path(args.out)
    ts, ys = make_data(args.series + 2048, args.times, args.seed)
    train, held_out = ys[: args.series], ys[args.series :]
    generator = SDEGenerator(hidden_size=args.hidden, width=args.width)
    discriminator = CDEDiscriminator(hidden_size=args.hidden, width=args.width)
    averaged = torch.optim.swa_utils.AveragedModel(generator)
    # the baseline: the generator that is trained, at its initial weights (on a resumed run
    # the same ones: the seed makes them, before the checkpoint is loaded)
    untrained = _fit(generator, ts, held_out, args)
    gen_opt = torch.optim.Adadelta(generator.parameters(), lr=args.generator_lr, weight_decay=0.01)
    disc_opt = torch.optim.Adadelta(
        discriminator.parameters(), lr=args.discriminator_lr, weight_decay=0.01
    )
    objects = {
        "generator": generator,
        "discriminator": discriminator,
        "averaged": averaged,
        "generator_optimizer": gen_opt,
        "discriminator_optimizer": disc_opt,
    }
    state: dict[str, Any] = {"history": [], "time_s": 0.0, "cpu_s": 0.0}
    trainer = Trainer("sde-gan", args.iterations, objects, None, state, run=run)
    history = state["history"]
    average_from = args.iterations // 2
    log_every = max(1, args.iterations // 100)
    real_series = with_time(ts, train)
    for step in trainer:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        index = torch.randint(0, args.series, (min(args.batch, args.series),))
        fake = generator(ts, len(index))
        loss = discriminator(fake) - discriminator(real_series[index])
        trainer.check_loss(loss)
        loss.backward()
        for p in generator.parameters():  # the generator ascends what the critic descends
            p.grad.neg_()
        gen_opt.step()
        disc_opt.step()
        gen_opt.zero_grad()
        disc_opt.zero_grad()
        discriminator.clip_weights()
        if step > average_from:
            averaged.update_parameters(generator)
        record = {"wasserstein_estimate": -float(loss.detach())}
        history.append({"step": step, **record})
        state["time_s"] += time.perf_counter() - tick
        state["cpu_s"] += time.process_time() - cpu_tick
        trainer.show(w=record["wasserstein_estimate"])
        if step == args.iterations or step % log_every == 0:
            trainer.log(record)
    if not trainer.done:
        trainer.finish()
    final = averaged.module if args.iterations > average_from else generator
    fit = _fit(final, ts, held_out, args)
    half = len(held_out) // 2
    floor = _distances(held_out[:half], held_out[half:], args.lag)
    metrics = {
        "experiment": "sde-gan",
        "data": "time-dependent Ornstein-Uhlenbeck mu=0.02 theta=0.1 sigma=0.4, normalised",
        "series": args.series,
        "times": args.times,
        "iterations": args.iterations,
        "train_seconds": state["time_s"],
        "train_cpu_seconds": state["cpu_s"],
        "trained": fit,
        "untrained": untrained,
        "real_vs_real": floor,
        "parameters": sum(p.numel() for p in generator.parameters()),
        "environment": machine(),
        "history": history,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save(
        {
            "generator": final.state_dict(),
            "discriminator": discriminator.state_dict(),
            "args": vars(args) | {"run": None},
        },
        out / "checkpoint.pt",
    )
    plot(final, ts, held_out, out)
    print(
        f"SDE-GAN on Ornstein-Uhlenbeck: marginal W1 {fit['marginal_w1']:.3f} (untrained "
        f"{untrained['marginal_w1']:.3f}, real vs real {floor['marginal_w1']:.3f}), increment "
        f"W1 {fit['increment_w1']:.3f} (untrained {untrained['increment_w1']:.3f}, real vs "
        f"real {floor['increment_w1']:.3f}); {state['time_s']:.0f} s "
        f"({state['cpu_s']:.0f} CPU s); wrote {out}/metrics.json, checkpoint.pt, samples.png, "
        "marginals.png"
    )
    return 0


def _w1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The 1-D Wasserstein distance between equal-size samples along dimension 0, per column."""
    return (a.sort(0).values - b.sort(0).values).abs().mean(0)


def _distances(fake: torch.Tensor, real: torch.Tensor, lag: int) -> dict[str, float]:
    """Marginal and lag-``lag`` increment W1 distances, averaged over the times."""
    n = min(len(fake), len(real))
    fake, real = fake[:n, :, 0], real[:n, :, 0]
    increments = _w1(fake[:, lag:] - fake[:, :-lag], real[:, lag:] - real[:, :-lag])
    return {
        "marginal_w1": float(_w1(fake, real).mean()),
        "increment_w1": float(increments.mean()),
    }


@torch.no_grad()
def _fit(generator: SDEGenerator, ts, held_out, args) -> dict[str, float]:
    torch.manual_seed(args.seed + 1)
    fake = generator(ts, len(held_out) // 2)[:, :, 1:]
    return _distances(fake, held_out[: len(held_out) // 2], args.lag)


@torch.no_grad()
def plot(generator: SDEGenerator, ts, real, out: Path) -> None:
    from ..viz.plots import figure

    torch.manual_seed(2)
    fake = generator(ts, len(real))[:, :, 1]
    real = real[:, :, 0]
    fig = figure(figsize=(9, 3.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, paths, name, colour in (
        (axes[0], real, "real", "tab:red"),
        (axes[1], fake, "generated", "tab:blue"),
    ):
        for path in paths[:32]:
            ax.plot(ts, path, color=colour, alpha=0.35, lw=1)
        ax.set_title(f"{name} paths")
        ax.set_xlabel("t")
    fig.tight_layout()
    fig.savefig(out / "samples.png", dpi=100)
    fig = figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for paths, name, colour in ((real, "real", "tab:red"), (fake, "generated", "tab:blue")):
        q = torch.quantile(paths, torch.tensor([0.1, 0.5, 0.9]), dim=0)
        ax.plot(ts, q[1], color=colour, label=f"{name}: median, 10-90%")
        ax.fill_between(ts, q[0], q[2], color=colour, alpha=0.2)
    ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("t")
    ax.set_title("marginal distributions over time")
    fig.tight_layout()
    fig.savefig(out / "marginals.png", dpi=100)
