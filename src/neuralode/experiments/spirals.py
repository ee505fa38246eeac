"""Latent ODE vs RNN on irregularly sampled spirals: the Neural ODE paper's Table 2.

For each number of observations (30, 50, 100 random times of a 100-point window) both models
see the noisy observed points of a spiral and are trained to fit them (``--protocol paper``,
as the paper's official example: extrapolation is never trained) or also the 100 noisy
points after the window (``--protocol extrapolation``). The metric is the RMSE of the
extrapolated 100 points against the noise-free spiral, on held-out spirals. The latent ODE
is a VAE (RNN encoder with time gaps run backwards, latent 10, autonomous dz/dt = A z +
MLP(z), linear read-out W z + b: linear paths that can represent the spirals exactly and
extrapolate past the radii seen in training; trained on the importance-weighted bound of
``--samples`` posterior draws per spiral, 3 by default, ``--bound iwae``); the RNN
gets the previous values, the mask and the time gaps as inputs, and with more than 30
observations some of its observed inputs are hidden at each training step (``--rnn-hide``,
default 1 - 30 / observations) so that it learns to run on its own predictions, as it must
when extrapolating (without this, at 100/100 observations it never does in training). Both
get the same number of optimiser steps, and each ends with its weights that extrapolated a
validation split best (``--select best``; the test spirals never enter a choice).
``--seeds K`` repeats every setting with K seeds (``--workers`` in parallel processes) and
reports means and spreads. Writes ``table2.md``, ``metrics.json``, the weights and
``spirals_obs{N}_seed{S}.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from .._cli_types import (
    fraction,
    int_at_least,
    int_in_range,
    positive_float,
    positive_int,
    random_seed,
    thread_count,
)
from ..data.spirals import SpiralData, make_spirals
from ..models.latent import DECODERS, DYNAMICS, LatentODE, RNNBaseline
from ..training.runtime import follow_stop, machine, shared_stop
from ..training.trainer import Run, Trainer, add_run_arguments, open_experiment
from ..viz.plots import require_matplotlib

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
    "A z + MLP(z) and the linear read-out W z + b, which can represent "
    "both spiral families exactly (the paper: latent 4, MLPs). The RNN has a fraction "
    "1 - 30 / observations of its observed inputs hidden at each training step (`--rnn-hide`)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="out/spirals", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--obs",
        type=int_in_range(1, 100),
        nargs="+",
        default=[30, 50, 100],
        help="observations per spiral, one run each (default 30 50 100)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimiser steps per model, the same for both (default 2000; 20 with --quick)",
    )
    parser.add_argument(
        "--spirals",
        type=int_at_least(3),
        default=None,
        help="spirals generated: 20%% test, 8%% validation, 72%% train (default 1000, 40 with "
        "--quick)",
    )
    parser.add_argument(
        "--batch", type=positive_int, default=50, help="spirals per step (default 50)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=0.01, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--encoder",
        choices=["rnn", "odernn"],
        default="rnn",
        help="latent ODE encoder: GRU with time gaps (paper; default) or ODE-RNN",
    )
    parser.add_argument(
        "--latent", type=positive_int, default=10, help="latent dimension (default 10)"
    )
    parser.add_argument(
        "--samples",
        type=positive_int,
        default=3,
        help="posterior samples per spiral in the latent ODE's training bound at each step "
        "(default 3)",
    )
    parser.add_argument(
        "--bound",
        choices=["iwae", "elbo"],
        default="iwae",
        help="the latent ODE's training objective from its --samples draws: the "
        "importance-weighted bound (Burda et al. 2016; tighter than the ELBO for K > 1, and "
        "the K draws need not all decode well; default) or the mean of their ELBOs",
    )
    parser.add_argument(
        "--dynamics",
        choices=DYNAMICS,
        default="linear+mlp",
        help="latent vector field: MLP (paper) or A z + MLP(z) (default)",
    )
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default="linear",
        help="decoder: MLP (paper), W z + b (default) or W z + b + MLP(z)",
    )
    parser.add_argument(
        "--rnn-hide",
        type=fraction,
        default=None,
        help="fraction of the observed inputs hidden from the RNN at each training step "
        "(it then runs on its own predictions there, as when extrapolating; the loss still "
        "covers every observed point; default 1 - 30 / observations: it trains on about 30 "
        "inputs per window, as at 30 observations)",
    )
    parser.add_argument(
        "--select",
        choices=["best", "last"],
        default="best",
        help="report each model's weights with the lowest extrapolation RMSE on the "
        "validation spirals (best, evaluated every --eval-every steps) or its last weights "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        default=None,
        help="steps between validation evaluations (default steps / 20)",
    )
    parser.add_argument(
        "--protocol",
        choices=["paper", "extrapolation"],
        default="paper",
        help="train on the observed window only (paper; default), or also on the points after it",
    )
    parser.add_argument("--seed", type=random_seed, default=0, help="first seed (default 0)")
    parser.add_argument(
        "--seeds",
        type=positive_int,
        default=1,
        help="seeds per setting, --seed, --seed + 1, ...: each a new draw of the spirals, "
        "initialisations and batches; the table gives means and spreads (default 1)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="settings (observations x seed) trained at once in separate processes; with "
        "--threads 1, up to one per core (default 1)",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch threads (default: torch's default)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    add_run_arguments(parser)


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
    validation: SpiralData,
    test: SpiralData,
    args: argparse.Namespace,
    steps: int,
    run: Run | None = None,
) -> dict:
    """Adam with cosine decay for ``steps`` steps of ``args.batch`` spirals (reshuffled after
    each pass); the latent ODE maximises its bound (``--bound``), the RNN minimises the
    squared error.

    Every ``eval_every`` steps the model extrapolates the validation spirals; with
    ``--select best`` it ends with the weights whose RMSE against their noisy points after the
    window (what a user has) was lowest. The test RMSE in the history is never used. With a
    ``run`` the job is checkpointed at every evaluation and resumes there (a finished job
    returns its saved result and weights)."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    rnn_hide = _rnn_hide(args, int(train.observed[0].sum()))
    eval_every = args.eval_every or max(1, steps // 20)
    observed, target = _masks(train, args.protocol)
    values = train.noisy
    gen = torch.Generator().manual_seed(args.seed)
    batch = min(args.batch, len(train))
    state = {
        "history": [],
        "nfe": [],
        "best_score": math.inf,
        "best_step": 0,
        "best_state": None,
        "order": torch.randperm(len(train), generator=gen),
        "position": 0,
        "losses": [],
        "time_s": 0.0,
        "cpu_s": 0.0,
    }
    objects = {"model": model, "optimizer": opt, "schedule": sched}
    trainer = Trainer(name, steps, objects, {"batches": gen}, state, run=run)
    if trainer.done:
        return trainer.result
    for step in trainer:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        if state["position"] + batch > len(train):
            state["order"], state["position"] = torch.randperm(len(train), generator=gen), 0
        idx = state["order"][state["position"] : state["position"] + batch]
        state["position"] += batch
        x, m, tm = values[idx], observed[idx], target[idx]
        if isinstance(model, LatentODE):
            # the posterior draws come from the run's own generator, like its batches
            noise = torch.randn(args.samples, len(idx), model.latent_dim, generator=gen)
            bound = model.elbo(
                train.ts,
                x,
                m,
                target_mask=tm,
                n_samples=args.samples,
                iwae=args.bound == "iwae",
                noise=noise,
            )
            loss = bound.loss()
            state["nfe"].append(model.nfe)
        else:
            if rnn_hide > 0:  # hide inputs: the RNN learns to run on its own predictions
                shown = torch.rand(m.shape[:2], generator=gen) >= rnn_hide
                pred = model(train.ts, x, m * shown.to(m.dtype)[..., None])
            else:
                pred = model(train.ts, x, m)
            loss = ((pred - values[idx]).pow(2) * tm).sum() / tm.sum()
        trainer.check_loss(loss)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        state["losses"].append(float(loss.detach()))
        state["time_s"] += time.perf_counter() - tick
        state["cpu_s"] += time.process_time() - cpu_tick
        trainer.show(loss=state["losses"][-1])
        if step == steps or step % eval_every == 0:
            val = _evaluate(model, validation)
            row = {
                "step": step,
                "loss": sum(state["losses"]) / len(state["losses"]),
                "validation_rmse_extrapolation_noisy": val["rmse_extrapolation_noisy"],
                "validation_rmse_extrapolation": val["rmse_extrapolation"],
                "test_rmse_extrapolation": _evaluate(model, test)["rmse_extrapolation"],
            }
            state["losses"] = []
            state["history"].append(row)
            if row["validation_rmse_extrapolation_noisy"] < state["best_score"]:
                state["best_score"] = row["validation_rmse_extrapolation_noisy"]
                state["best_step"] = step
                state["best_state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            trainer.log({k: v for k, v in row.items() if k != "step"})
            if step == steps or step % max(eval_every, steps // 8) == 0:
                print(  # one write per line: worker processes share the terminal
                    f"  {name:<24} step {step:5d}/{steps}  loss {row['loss']:8.4f}  "
                    f"RMSE extrap validation {row['validation_rmse_extrapolation']:.4f} "
                    f"test {row['test_rmse_extrapolation']:.4f}  "
                    f"({state['time_s']:5.1f} s)\n",
                    end="",
                    flush=True,
                )
    if args.select == "best" and state["best_state"] is not None:
        model.load_state_dict(state["best_state"])
    result = {
        "train_seconds": state["time_s"],
        "train_cpu_seconds": state["cpu_s"],
        "steps": steps,
        "selected_step": state["best_step"] if args.select == "best" else steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        **_evaluate(model, test),
        "validation_rmse_extrapolation": _evaluate(model, validation)["rmse_extrapolation"],
        "history": state["history"],
    }
    if state["nfe"]:
        result["mean_nfe_per_latent_solve"] = sum(state["nfe"]) / len(state["nfe"])
    else:
        result["inputs_hidden_in_training"] = rnn_hide
    state["best_state"] = None  # the selected weights are the model's now
    return trainer.finish(result)


def _plot(path: Path, models: dict[str, torch.nn.Module], test: SpiralData, count: int) -> None:
    from ..viz.plots import figure

    w = test.n_window
    count = min(count, len(test))
    fig = figure(figsize=(4.2 * len(models), 3.8 * count))
    axes = fig.subplots(count, len(models), squeeze=False)
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _summary(runs: dict[int, dict[int, dict]]) -> dict[int, dict]:
    """Per observation count: each model's test RMSE per seed, mean and sample std, the
    latent / RNN ratio of the means and per seed, and the seeds the latent ODE wins."""
    summary = {}
    for n_obs, by_seed in runs.items():
        row: dict = {}
        for model in ("latent_ode", "rnn"):
            per_seed = {seed: r[model]["rmse_extrapolation"] for seed, r in by_seed.items()}
            mean, std = _mean_std(list(per_seed.values()))
            row[model] = {"mean": mean, "std": std, "per_seed": per_seed}
        ratios = {
            seed: row["latent_ode"]["per_seed"][seed] / rmse
            for seed, rmse in row["rnn"]["per_seed"].items()
        }
        row["ratio_of_means"] = row["latent_ode"]["mean"] / row["rnn"]["mean"]
        row["ratio_per_seed"] = ratios
        row["latent_wins"] = sum(r < 1 for r in ratios.values())
        summary[n_obs] = row
    return summary


def _table(summary: dict[int, dict]) -> str:
    """Means (+- sample std over seeds) beside the paper's numbers, then each seed."""
    lines = [
        "| observations | RNN (paper) | Latent ODE (paper) | RNN (ours) | Latent ODE (ours) "
        "| ratio (latent / RNN) | latent wins |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(stats: dict) -> str:
        return f"{stats['mean']:.4f}" + (f" ± {stats['std']:.4f}" if stats["std"] else "")

    for n_obs, row in summary.items():
        paper = PAPER_RMSE.get(n_obs, {})
        lines.append(
            f"| {n_obs}/100 | {paper.get('rnn', math.nan):.4f} "
            f"| {paper.get('latent_ode', math.nan):.4f} | {cell(row['rnn'])} "
            f"| {cell(row['latent_ode'])} | {row['ratio_of_means']:.2f} "
            f"| {row['latent_wins']}/{len(row['ratio_per_seed'])} |"
        )
    lines += ["", "| observations | seed | RNN | Latent ODE | ratio |", "|---|---:|---:|---:|---:|"]
    for n_obs, row in summary.items():
        for seed, ratio in row["ratio_per_seed"].items():
            lines.append(
                f"| {n_obs}/100 | {seed} | {row['rnn']['per_seed'][seed]:.4f} "
                f"| {row['latent_ode']['per_seed'][seed]:.4f} | {ratio:.2f} |"
            )
    return "\n".join(lines)


def _sizes(args: argparse.Namespace) -> tuple[int, int, int, int]:
    """Optimiser steps, spirals, test spirals (the first 20 %) and validation spirals (the
    next 10 % of the rest); the others train."""
    steps = args.steps or (20 if args.quick else 2000)
    n_spirals = args.spirals or (40 if args.quick else 1000)
    n_test = max(1, n_spirals // 5)
    return steps, n_spirals, n_test, max(1, (n_spirals - n_test) // 10)


def _run_setting(args: argparse.Namespace, n_obs: int, seed: int, run: Run | None = None) -> dict:
    """Train and evaluate both models for one observation count and one seed (a draw of the
    spirals, initialisations and batches); save their weights and a plot into ``--out``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    steps, n_spirals, n_test, n_val = _sizes(args)
    data = make_spirals(n_spirals, n_obs=n_obs, seed=seed)
    train = data.subset(slice(n_test + n_val, None))
    validation = data.subset(slice(n_test, n_test + n_val))
    test = data.subset(slice(0, n_test))
    # Each model's initialisation and training draws depend on the seed alone, not on the
    # other model's options.
    torch.manual_seed(seed)
    latent = LatentODE(
        2,
        latent_dim=args.latent,
        encoder=args.encoder,
        obs_std=0.3,
        dynamics=args.dynamics,
        decoder=args.decoder,
    )
    torch.manual_seed(seed)
    rnn = RNNBaseline(2, hidden_dim=25)
    seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
    tag = f"obs {n_obs} seed {seed}"
    result = {
        "latent_ode": _train(
            f"{tag} latent ODE", latent, train, validation, test, seed_args, steps, run
        ),
        "rnn": _train(f"{tag} RNN", rnn, train, validation, test, seed_args, steps, run),
    }
    name = f"obs{n_obs}_seed{seed}"
    torch.save(latent.state_dict(), out / f"latent_ode_{name}.pt")
    torch.save(rnn.state_dict(), out / f"rnn_{name}.pt")
    _plot(out / f"spirals_{name}.png", {"latent ODE": latent, "RNN": rnn}, test, 3)
    return result


def run(args: argparse.Namespace) -> int:
    if args.rnn_hide is not None and not 0 <= args.rnn_hide < 1:  # before any training
        raise ValueError(f"--rnn-hide must be in [0, 1), got {args.rnn_hide}")
    for name in ("workers", "seeds", "samples"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1, got {getattr(args, name)}")
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _run_all(args, run)


def _run_all(args: argparse.Namespace, run: Run) -> int:
    """Every setting (observations x seed), in this process or in ``--workers``, then the
    table, metrics.json and the weights; a resumed run skips the finished jobs."""
    out = Path(args.out)
    steps, n_spirals, n_test, n_val = _sizes(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    jobs = [(n_obs, seed) for n_obs in args.obs for seed in seeds]
    print(
        f"spirals: {n_spirals} spirals ({n_spirals - n_test - n_val} train, {n_val} "
        f"validation, {n_test} test), {steps} steps of {args.batch} per model, "
        f"observations {args.obs}, seeds {seeds}, {min(args.workers, len(jobs))} worker(s), "
        f"writing to {out}/",
        flush=True,
    )
    runs: dict[int, dict[int, dict]] = {n_obs: {} for n_obs in args.obs}
    if args.workers > 1:
        if not args.threads:  # share the cores instead of each worker taking them all
            cores = os.cpu_count() or 1
            args = argparse.Namespace(**{**vars(args), "threads": max(1, cores // args.workers)})
        context = multiprocessing.get_context("spawn")
        with (
            shared_stop(context) as stop,  # a stop of this process alone stops the workers
            ProcessPoolExecutor(
                min(args.workers, len(jobs)),
                mp_context=context,
                initializer=follow_stop,
                initargs=(stop, "experiment spirals"),
            ) as pool,
        ):
            quiet = dataclasses.replace(run, progress=False)  # bars of parallel jobs collide
            futures = {pool.submit(_run_setting, args, *job, quiet): job for job in jobs}
            try:
                for future in as_completed(futures):
                    n_obs, seed = futures[future]
                    runs[n_obs][seed] = future.result()
            except KeyboardInterrupt:  # stopped at once: the workers (its only children) too
                for process in multiprocessing.active_children():
                    process.kill()
                raise
            except BaseException:  # a job stopped or failed: the jobs not started stay so
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    else:
        for n_obs, seed in jobs:
            runs[n_obs][seed] = _run_setting(args, n_obs, seed, run)
    runs = {n_obs: dict(sorted(by_seed.items())) for n_obs, by_seed in runs.items()}
    summary = _summary(runs)
    table = _table(summary)
    print(table, flush=True)
    options = [f"--out {args.out}", f"--steps {steps}", "--obs", *map(str, args.obs)]
    options += [f"--batch {args.batch}", f"--lr {args.lr}", f"--seed {args.seed}"]
    options += [f"--seeds {args.seeds}", f"--latent {args.latent}", f"--samples {args.samples}"]
    options += [f"--bound {args.bound}"]
    options += [f"--dynamics {args.dynamics}", f"--decoder {args.decoder}"]
    options += [f"--encoder {args.encoder}", f"--protocol {args.protocol}"]
    options += [f"--select {args.select}"]
    options += [f"--eval-every {args.eval_every}"] if args.eval_every else []
    options += [] if args.rnn_hide is None else [f"--rnn-hide {args.rnn_hide}"]
    options += [f"--spirals {n_spirals}"] + (["--quick"] if args.quick else [])
    threads = args.threads or torch.get_num_threads()
    meta = {
        "command": "neuralode experiment spirals " + " ".join(options),
        "machine": f"{machine(threads)} per run, {min(args.workers, len(jobs))} run(s) at a time",
        "spirals": n_spirals,
        "test_spirals": n_test,
        "validation_spirals": n_val,
        "seeds": seeds,
        "metric": "RMSE of the 100 extrapolated points against the noise-free spiral, "
        "test set"
        + (
            ", weights chosen by the RMSE on the validation spirals' noisy points"
            if args.select == "best"
            else ", last weights"
        ),
        "paper_table2": PAPER_RMSE,
    }
    (out / "metrics.json").write_text(
        json.dumps(
            {
                "meta": meta,
                "summary": {str(k): v for k, v in summary.items()},
                "runs": {str(k): v for k, v in runs.items()},
            },
            indent=1,
        )
    )
    (out / "table2.md").write_text(
        "# Spirals: extrapolation RMSE (Neural ODE paper, Table 2)\n\n"
        + table
        + f"\n\nPaper: Chen et al. 2018, Table 2 (predictive RMSE). Ours: {meta['metric']}; "
        f"mean ± sample standard deviation over seeds {seeds}; `{meta['command']}`; "
        f"{meta['machine']}.\n\n{DATA_NOTE}\n"
    )
    print(f"wrote {out / 'table2.md'}, {out / 'metrics.json'}, weights and plots")
    return 0
