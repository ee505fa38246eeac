"""Latent ODE vs RNN on irregularly sampled spirals: the Neural ODE paper's Table 2.

For each number of observations (30, 50, 100 random times of a 100-point window) both models
see the noisy observed points of a spiral and are trained to fit them (``--protocol paper``,
as the paper's official example: extrapolation is never trained) or also the 100 noisy points
after the window (``--protocol extrapolation``). The metric is the RMSE of the extrapolated
100 points against the noise-free spiral, on held-out spirals. The latent ODE is a VAE (RNN
encoder with time gaps run backwards, latent 4, autonomous ODE, decoder); the RNN gets the
time gaps and the mask as inputs. Writes ``table2.md``, ``metrics.json`` and
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
        "--epochs",
        type=int,
        default=None,
        help="passes over the training spirals (default 40; 2 with --quick)",
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


def _train(
    name: str,
    model: torch.nn.Module,
    train: SpiralData,
    test: SpiralData,
    args: argparse.Namespace,
    epochs: int,
) -> dict:
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    observed, target = _masks(train, args.protocol)
    values = train.noisy
    gen = torch.Generator().manual_seed(args.seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    history = []
    nfe = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(train), generator=gen)
        losses = []
        for i in range(0, len(train), args.batch):
            idx = order[i : i + args.batch]
            x, m, tm = values[idx], observed[idx], target[idx]
            if isinstance(model, LatentODE):
                loss = model.elbo(train.ts, x, m, target_mask=tm).loss()
                nfe.append(model.nfe)
            else:
                pred = model(train.ts, x, m)
                loss = ((pred - values[idx]).pow(2) * tm).sum() / tm.sum()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            losses.append(float(loss.detach()))
        sched.step()
        row = {"epoch": epoch, "loss": sum(losses) / len(losses)}
        if epoch == epochs or epoch % max(1, epochs // 8) == 0:
            row.update(_evaluate(model, test))
            print(
                f"    {name:<10} epoch {epoch:3d}/{epochs}  loss {row['loss']:8.4f}  "
                f"test RMSE extrap {row['rmse_extrapolation']:.4f} "
                f"recon {row['rmse_reconstruction']:.4f}  "
                f"({time.perf_counter() - start:5.1f} s)",
                flush=True,
            )
        history.append(row)
    result = {
        "train_seconds": time.perf_counter() - start,
        "train_cpu_seconds": time.process_time() - cpu_start,
        "epochs": epochs,
        "parameters": sum(p.numel() for p in model.parameters()),
        **_evaluate(model, test),
        "history": history,
    }
    if nfe:
        result["mean_nfe_per_latent_solve"] = sum(nfe) / len(nfe)
    return result


def _plot(path: Path, models: dict[str, torch.nn.Module], test: SpiralData, count: int) -> None:
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
            ax.set_title(f"{name}, test spiral {row}", fontsize=9)
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
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    epochs = args.epochs or (2 if args.quick else 40)
    n_spirals = args.spirals or (40 if args.quick else 1000)
    n_test = max(1, n_spirals // 5)
    print(
        f"spirals: {n_spirals} spirals ({n_spirals - n_test} train, {n_test} test), "
        f"{epochs} epochs per model, observations {args.obs}, writing to {out}/"
    )
    results: dict[int, dict] = {}
    for n_obs in args.obs:
        torch.manual_seed(args.seed)
        data = make_spirals(n_spirals, n_obs=n_obs, seed=args.seed)
        train, test = data.subset(slice(n_test, None)), data.subset(slice(0, n_test))
        print(f"  {n_obs} observations of 100:", flush=True)
        latent = LatentODE(2, encoder=args.encoder, obs_std=0.3)
        rnn = RNNBaseline(2, hidden_dim=25)
        results[n_obs] = {
            "latent_ode": _train("latent ODE", latent, train, test, args, epochs),
            "rnn": _train("RNN", rnn, train, test, args, epochs),
        }
        _plot(out / f"spirals_obs{n_obs}.png", {"latent ODE": latent, "RNN": rnn}, test, 3)
        table = _table(results)
        print(table, flush=True)
    meta = {
        "command": "neuralode experiment spirals "
        + " ".join(
            [f"--out {args.out}", f"--epochs {epochs}", "--obs", *map(str, args.obs)]
            + [f"--seed {args.seed}", f"--encoder {args.encoder}", f"--protocol {args.protocol}"]
            + (["--quick"] if args.quick else [])
        ),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads",
        "spirals": n_spirals,
        "test_spirals": n_test,
        "metric": "RMSE of the 100 extrapolated points against the noise-free spiral, test set",
        "paper_table2": PAPER_RMSE,
    }
    (out / "metrics.json").write_text(
        json.dumps({"meta": meta, "results": {str(k): v for k, v in results.items()}}, indent=1)
    )
    (out / "table2.md").write_text(
        "# Spirals: extrapolation RMSE (Neural ODE paper, Table 2)\n\n"
        + _table(results)
        + f"\n\nPaper: Chen et al. 2018, Table 2 (predictive RMSE). Ours: {meta['metric']}; "
        f"`{meta['command']}`; {meta['machine']}.\n"
    )
    print(f"wrote {out / 'table2.md'}, {out / 'metrics.json'} and the spirals_obs*.png plots")
    return 0
