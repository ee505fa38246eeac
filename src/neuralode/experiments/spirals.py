"""Latent ODE vs RNN on irregularly sampled spirals: the Neural ODE paper's Table 2.

For each number of observations (30, 50, 100 random times of a 100-point window) both models
see the noisy observed points of a spiral and are trained to fit them (``--protocol paper``,
as the paper's official example: extrapolation is never trained) or also the 100 noisy points
after the window (``--protocol extrapolation``). The metric is the RMSE of the extrapolated
100 points against the noise-free spiral, on held-out spirals. The latent ODE is a VAE (RNN
encoder with time gaps run backwards, latent 10, autonomous dz/dt = A z + MLP(z), decoder
W z + b + MLP(z): linear paths that can represent the spirals exactly and extrapolate past
the radii seen in training); the RNN gets the previous values, the mask and the time gaps
as inputs, and with more than 30 observations some of its observed inputs are hidden at
each training step (``--rnn-hide``, default 1 - 30 / observations) so that it learns to run
on its own predictions, as it must when extrapolating (without this, at 100/100
observations it never does in training). Both get the same number of
optimiser steps. ``--split validation`` evaluates on a validation split of the training
spirals, for choosing a recipe. Writes ``table2.md``, ``metrics.json`` and
``spirals_obs{N}.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from ..data.spirals import SpiralData, make_spirals
from ..models.latent import LatentODE, RNNBaseline

# The Neural ODE paper (Chen et al. 2018), Table 2: predictive RMSE on the test set.
PAPER_RMSE = {
    30: {"rnn": 0.3937, "latent_ode": 0.1642},
    50: {"rnn": 0.3202, "latent_ode": 0.1502},
    100: {"rnn": 0.1813, "latent_ode": 0.1346},
}


DATA_NOTE = (
    "Data as the paper's official example (torchdiffeq `examples/latent_ode.py`: 1,000 "
    "points of theta in [0, 6 pi], r = 0.3 theta around (5, 0), noise 0.3, windows of 100 "
    "points starting away from both ends), with two differences: the clockwise spirals are "
    "the mirror image of the counter-clockwise ones (the official code uses the hyperbolic "
    "spiral r = 15 / theta there, theta running from 6 pi + 1 down to 1), and each window "
    "is followed by the 100 points to extrapolate (starts in [100, 700], so that they "
    "exist). The latent ODE is not the paper's: by default latent 10 with dynamics "
    "A z + MLP(z) and decoder W z + b + MLP(z), which can represent "
    "both spiral families exactly (the paper: latent 4, MLPs). The RNN has a fraction "
    "1 - 30 / observations of its observed inputs hidden at each training step (`--rnn-hide`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/spirals", help="output directory")
    parser.add_argument(
        "--obs",
        type=int,
        nargs="+",
        default=[30, 50, 100],
        help="observations per spiral, one run each (default 30 50 100)",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="optimiser steps per model, the same for both (default 2000; 20 with --quick)",
    )
    parser.add_argument(
        "--spirals",
        type=int,
        default=None,
        help="spirals generated, 80%% train / 20%% test (default 1000)",
    )
    parser.add_argument("--batch", type=int, default=50, help="spirals per step (default 50)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument(
        "--encoder",
        choices=["rnn", "odernn"],
        default="rnn",
        help="latent ODE encoder: GRU with time gaps (paper) or ODE-RNN",
    )
    parser.add_argument("--latent", type=int, default=10, help="latent dimension (default 10)")
    parser.add_argument(
        "--dynamics",
        choices=["mlp", "linear+mlp"],
        default="linear+mlp",
        help="latent vector field: MLP (paper) or A z + MLP(z) (default)",
    )
    parser.add_argument(
        "--decoder",
        choices=["mlp", "linear+mlp"],
        default="linear+mlp",
        help="decoder: MLP (paper) or W z + b + MLP(z) (default)",
    )
    parser.add_argument(
        "--rnn-hide",
        type=float,
        default=None,
        help="fraction of the observed inputs hidden from the RNN at each training step "
        "(it then runs on its own predictions there, as when extrapolating; the loss still "
        "covers every observed point; default 1 - 30 / observations: it trains on about 30 "
        "inputs per window, as at 30 observations)",
    )
    parser.add_argument(
        "--split",
        choices=["test", "validation"],
        default="test",
        help="evaluate on the test spirals, or on a validation split of the training "
        "spirals (for tuning; the test spirals are then not used)",
    )
    parser.add_argument(
        "--protocol",
        choices=["paper", "extrapolation"],
        default="paper",
        help="train on the observed window only (paper), or also on the points after it",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")


def _masks(data: SpiralData, protocol: str = "paper") -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder mask (the observed window points) and training target mask: the same points
    (``paper``), or those and the noisy points after the window (``extrapolation``)."""
    observed = data.observed[..., None].expand_as(data.noisy).to(data.noisy.dtype)
    if protocol == "paper":
        return observed, observed
    extrap = torch.zeros_like(observed)
    extrap[:, data.n_window :] = 1
    return observed, torch.clamp(observed + extrap, max=1)


def _rmse(pred: torch.Tensor, true: torch.Tensor) -> float:
    return float((pred - true).pow(2).mean().sqrt())


@torch.no_grad()
def _predict(model: torch.nn.Module, data: SpiralData) -> torch.Tensor:
    """Predictions at all times (N, W + E, 2): posterior-mean decoding, or the RNN's."""
    observed, _ = _masks(data)
    if isinstance(model, LatentODE):
        return model(data.ts, data.noisy * observed, observed, data.ts)
    return model(data.ts, data.noisy * observed, observed)


def _evaluate(model: torch.nn.Module, data: SpiralData) -> dict[str, float]:
    pred = _predict(model, data)
    w = data.n_window
    return {
        "rmse_extrapolation": _rmse(pred[:, w:], data.trajectories[:, w:]),
        "rmse_reconstruction": _rmse(pred[:, :w], data.trajectories[:, :w]),
        "rmse_extrapolation_noisy": _rmse(pred[:, w:], data.noisy[:, w:]),
    }


def _rnn_hide(args: argparse.Namespace, n_obs: int) -> float:
    """The fraction of observed inputs hidden from the RNN in training: ``--rnn-hide``, or
    by default 1 - 30 / n_obs (none at 30 observations)."""
    if args.rnn_hide is not None:
        return args.rnn_hide
    return max(0.0, 1 - 30 / n_obs)


def _train(
    name: str,
    model: torch.nn.Module,
    train: SpiralData,
    test: SpiralData,
    args: argparse.Namespace,
    steps: int,
) -> dict:
    """Adam with cosine decay for ``steps`` steps of ``args.batch`` spirals (reshuffled after
    each pass); the latent ODE maximises the ELBO, the RNN minimises the squared error."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rnn_hide = _rnn_hide(args, int(train.observed[0].sum()))
    observed, target = _masks(train, args.protocol)
    values = train.noisy
    gen = torch.Generator().manual_seed(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = []
    nfe = []
    batch = min(args.batch, len(train))
    order, position, losses = torch.randperm(len(train), generator=gen), 0, []
    for step in range(1, steps + 1):
        if position + batch > len(train):
            order, position = torch.randperm(len(train), generator=gen), 0
        idx = order[position : position + batch]
        position += batch
        x, m, tm = values[idx], observed[idx], target[idx]
        if isinstance(model, LatentODE):
            loss = model.elbo(train.ts, x, m, target_mask=tm).loss()
            nfe.append(model.nfe)
        else:
            if rnn_hide > 0:  # hide inputs: the RNN learns to run on its own predictions
                shown = torch.rand(m.shape[:2], generator=gen) >= rnn_hide
                pred = model(train.ts, x, m * shown.to(m.dtype)[..., None])
            else:
                pred = model(train.ts, x, m)
            loss = ((pred - values[idx]).pow(2) * tm).sum() / tm.sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step == steps or step % max(1, steps // 8) == 0:
            row = {"step": step, "loss": sum(losses) / len(losses), **_evaluate(model, test)}
            losses = []
            print(
                f"    {name:<10} step {step:5d}/{steps}  loss {row['loss']:8.4f}  "
                f"{args.split} RMSE extrap {row['rmse_extrapolation']:.4f} "
                f"recon {row['rmse_reconstruction']:.4f}  "
                f"({time.perf_counter() - start:5.1f} s)",
                flush=True,
            )
            history.append(row)
    result = {
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        **_evaluate(model, test),
        "history": history,
    }
    if nfe:
        result["mean_nfe_per_latent_solve"] = sum(nfe) / len(nfe)
    else:
        result["inputs_hidden_in_training"] = rnn_hide
    return result


def _plot(
    path: Path, models: dict[str, torch.nn.Module], test: SpiralData, count: int, split: str
) -> None:
    from ..viz.plots import _pyplot

    plt = _pyplot()
    w = test.n_window
    count = min(count, len(test))
    fig, axes = plt.subplots(
        count, len(models), figsize=(4.2 * len(models), 3.8 * count), squeeze=False
    )
    preds = {name: _predict(model, test.subset(slice(0, count))) for name, model in models.items()}
    for row in range(count):
        for col, (name, pred) in enumerate(preds.items()):
            ax = axes[row][col]
            true = test.trajectories[row]
            ax.plot(true[:, 0], true[:, 1], color="0.75", lw=3, label="true")
            obs = test.noisy[row][test.observed[row]]
            ax.plot(obs[:, 0], obs[:, 1], "k.", ms=4, label="observed")
            ax.plot(pred[row, :w, 0], pred[row, :w, 1], "C0-", lw=1.5, label="reconstruction")
            ax.plot(pred[row, w:, 0], pred[row, w:, 1], "C3--", lw=1.5, label="extrapolation")
            ax.set_title(f"{name}, {split} spiral {row}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
            if row == 0 and col == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(results: dict[int, dict]) -> str:
    lines = [
        "| observations | RNN (paper) | Latent ODE (paper) | RNN (ours) | Latent ODE (ours) "
        "| ratio ours (latent / RNN) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for n_obs, result in results.items():
        paper = PAPER_RMSE.get(n_obs, {})
        rnn = result["rnn"]["rmse_extrapolation"]
        latent = result["latent_ode"]["rmse_extrapolation"]
        lines.append(
            f"| {n_obs}/100 | {paper.get('rnn', math.nan):.4f} "
            f"| {paper.get('latent_ode', math.nan):.4f} | {rnn:.4f} | {latent:.4f} "
            f"| {latent / rnn:.2f} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.rnn_hide is not None and not 0 <= args.rnn_hide < 1:  # before any training
        raise ValueError(f"--rnn-hide must be in [0, 1), got {args.rnn_hide}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (20 if args.quick else 2000)
    n_spirals = args.spirals or (40 if args.quick else 1000)
    n_test = max(1, n_spirals // 5)
    n_val = max(1, (n_spirals - n_test) // 5) if args.split == "validation" else 0
    where = (
        f"{n_spirals - n_test - n_val} train, {n_val} validation (test spirals unused)"
        if n_val
        else f"{n_spirals - n_test} train, {n_test} test"
    )
    print(
        f"spirals: {n_spirals} spirals ({where}), {steps} steps of {args.batch} per model, "
        f"observations {args.obs}, writing to {out}/"
    )
    results: dict[int, dict] = {}
    for n_obs in args.obs:
        torch.manual_seed(args.seed)
        data = make_spirals(n_spirals, n_obs=n_obs, seed=args.seed)
        train = data.subset(slice(n_test + n_val, None))
        held_out = data.subset(slice(n_test, n_test + n_val) if n_val else slice(0, n_test))
        print(f"  {n_obs} observations of 100:", flush=True)
        latent = LatentODE(
            2,
            latent_dim=args.latent,
            encoder=args.encoder,
            obs_std=0.3,
            dynamics=args.dynamics,
            decoder=args.decoder,
        )
        rnn = RNNBaseline(2, hidden_dim=25)
        results[n_obs] = {
            "latent_ode": _train("latent ODE", latent, train, held_out, args, steps),
            "rnn": _train("RNN", rnn, train, held_out, args, steps),
        }
        models = {"latent ODE": latent, "RNN": rnn}
        _plot(out / f"spirals_obs{n_obs}.png", models, held_out, 3, args.split)
        table = _table(results)
        print(table, flush=True)
    options = [f"--out {args.out}", f"--steps {steps}", "--obs", *map(str, args.obs)]
    options += [f"--batch {args.batch}", f"--lr {args.lr}", f"--seed {args.seed}"]
    options += [f"--latent {args.latent}", f"--dynamics {args.dynamics}"]
    options += [f"--decoder {args.decoder}", f"--encoder {args.encoder}"]
    options += [f"--protocol {args.protocol}", f"--split {args.split}"]
    options += [] if args.rnn_hide is None else [f"--rnn-hide {args.rnn_hide}"]
    options += [f"--spirals {n_spirals}"] + (["--quick"] if args.quick else [])
    meta = {
        "command": "neuralode experiment spirals " + " ".join(options),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "spirals": n_spirals,
        "test_spirals": n_test,
        "validation_spirals": n_val,
        "metric": "RMSE of the 100 extrapolated points against the noise-free spiral, "
        + ("validation split of the training spirals" if n_val else "test set"),
        "paper_table2": PAPER_RMSE,
    }
    (out / "metrics.json").write_text(
        json.dumps({"meta": meta, "results": {str(k): v for k, v in results.items()}}, indent=1)
    )
    (out / "table2.md").write_text(
        "# Spirals: extrapolation RMSE (Neural ODE paper, Table 2)\n\n"
        + _table(results)
        + f"\n\nPaper: Chen et al. 2018, Table 2 (predictive RMSE). Ours: {meta['metric']}; "
        f"`{meta['command']}`; {meta['machine']}.\n\n{DATA_NOTE}\n"
    )
    print(f"wrote {out / 'table2.md'}, {out / 'metrics.json'} and the spirals_obs*.png plots")
    return 0
