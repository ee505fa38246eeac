"""CNF/FFJORD maximum likelihood on a 2-D toy density: held-out NLL, density/sample/path PNG.

Trains a stack of CNF blocks with concat-squash MLP vector fields on fresh samples of the
density each step (FFJORD's set-up; by default rk4 with 4 steps over [0, T] and RNODE's
penalties, which keep the learned flow easy to integrate), then reports the held-out NLL on
a fixed test set, solved by dopri5 at a tight tolerance. For ``8gaussians`` the data's
differential entropy (the best possible expected NLL) and the true density's NLL on the
same test points are reported too; their difference from the model's NLL is a paired
estimate of KL(data || model) with a small error. At each logging point the held-out NLL
(and, for 8gaussians, the paired KL) on 2,000 other fresh points is recorded against the
training CPU time (its own time left out) and drawn in ``nll_curve.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._cli_types import (
    method_name,
    non_negative_float,
    open_unit,
    positive_float,
    positive_int,
    widths,
)
from ..data.toy2d import TOY_DENSITIES, entropy_8gaussians, log_density_8gaussians, sample_toy
from ..models.cnf import SequentialFlow, ffjord_2d
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    fill_defaults,
    open_experiment,
    quick_help,
)
from ..viz.plots import require_matplotlib

EXTENT = (-4.0, 4.0, -4.0, 4.0)


# The defaults of the options that --quick shrinks: (full run, --quick); an option given
# explicitly keeps its value.
DEFAULTS = {
    "iters": (1500, 5),
    "batch": (512, 64),
    "hidden": ("64,64,64", "16,16"),
    "n_test": (20000, 500),
    "tol": (1e-4, 1e-3),
    "eval_tol": (1e-6, 1e-4),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="8gaussians",
        choices=sorted(TOY_DENSITIES),
        help="the density (default %(default)s)",
    )
    parser.add_argument("--out", default="out/toy2d", help="output directory (default %(default)s)")
    parser.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help=quick_help("training steps", DEFAULTS["iters"]),
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help=quick_help("samples per step", DEFAULTS["batch"]),
    )
    parser.add_argument(
        "--hidden",
        type=widths,
        default=None,
        help=quick_help("hidden widths of f", DEFAULTS["hidden"]),
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=5e-3,
        help="Adam learning rate, cosine (default %(default)s)",
    )
    parser.add_argument(
        "--blocks",
        type=positive_int,
        default=1,
        help="CNF blocks in the stack (default %(default)s)",
    )
    parser.add_argument(
        "--T",
        type=positive_float,
        default=0.5,
        help="initial integration time (default %(default)s)",
    )
    parser.add_argument("--fixed-T", action="store_true", help="do not learn T")
    parser.add_argument(
        "--trace",
        default="exact",
        choices=["exact", "hutchinson"],
        help="divergence of f: exact or Hutchinson's estimator (default %(default)s)",
    )
    parser.add_argument(
        "--gradient",
        default="direct",
        choices=["direct", "adjoint"],
        help="backpropagation through the solver or the adjoint (default %(default)s)",
    )
    parser.add_argument(
        "--method", type=method_name, default="rk4", help="training solver (default %(default)s)"
    )
    parser.add_argument(
        "--steps", type=positive_int, default=4, help="fixed steps, rk4 etc. (default %(default)s)"
    )
    parser.add_argument(
        "--tol",
        type=open_unit,
        default=None,
        help=quick_help("training rtol = atol", DEFAULTS["tol"]),
    )
    parser.add_argument(
        "--eval-tol",
        type=open_unit,
        default=None,
        help=quick_help("evaluation rtol = atol", DEFAULTS["eval_tol"]),
    )
    parser.add_argument(
        "--kinetic",
        type=non_negative_float,
        default=0.01,
        help="RNODE kinetic weight (default %(default)s)",
    )
    parser.add_argument(
        "--jacobian",
        type=non_negative_float,
        default=0.01,
        help="RNODE Frobenius weight (default %(default)s)",
    )
    parser.add_argument(
        "--n-test",
        type=positive_int,
        default=None,
        help=quick_help("held-out samples", DEFAULTS["n_test"]),
    )
    add_seed_and_threads(parser)
    parser.add_argument(
        "--no-curve", dest="curve", action="store_false",
        help="skip the held-out NLL at each logging point (and nll_curve.png)",
    )  # fmt: skip
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the small defaults marked 'with --quick' (options given are kept)",
    )
    add_run_arguments(parser)


def build_model(args: argparse.Namespace) -> SequentialFlow:
    hidden = tuple(int(h) for h in str(args.hidden).split(","))
    return ffjord_2d(
        blocks=args.blocks,
        hidden=hidden,
        T=args.T,
        train_T=not args.fixed_T,
        trace=args.trace,
        method=args.method,
        steps=args.steps,
        rtol=args.tol,
        atol=args.tol,
        gradient=args.gradient,
        kinetic=args.kinetic,
        jacobian=args.jacobian,
    )


def set_tolerance(model: SequentialFlow, tol: float) -> None:
    """Evaluate with dopri5 at rtol = atol = ``tol`` (the model's density, not the solver's)."""
    for block in model.blocks:
        block.method, block.steps, block.rtol, block.atol = "dopri5", None, tol, tol


def held_out_monitor(
    model: SequentialFlow, args: argparse.Namespace, n: int = 5000
) -> Callable[[], dict[str, float]]:
    """A function giving the held-out NLL now, on ``n`` fixed fresh samples (not the final
    test set) by dopri5 at ``--eval-tol`` with the exact trace; training settings restored.
    For 8gaussians also the paired KL estimate (model NLL minus the true density's NLL on
    the same points), free of the test points' sampling error."""
    points = torch.from_numpy(sample_toy(args.data, n, 20_000 + args.seed))
    true_log_p = None
    if args.data == "8gaussians":
        true_log_p = torch.from_numpy(log_density_8gaussians(points.double().numpy()))

    def monitor() -> dict[str, float]:
        saved = [(b.method, b.steps, b.rtol, b.atol, b.trace) for b in model.blocks]
        set_tolerance(model, args.eval_tol)
        for block in model.blocks:
            block.trace = "exact"
        try:
            log_p = evaluate(model, points).double()
        finally:
            for block, (method, steps, rtol, atol, trace) in zip(model.blocks, saved):
                block.method, block.steps, block.rtol, block.atol = method, steps, rtol, atol
                block.trace = trace
        result = {"held_out_nll": float(-log_p.mean())}
        if true_log_p is not None:
            result["held_out_kl"] = float((true_log_p - log_p).mean())
        return result

    return monitor


def train(
    model: SequentialFlow,
    args: argparse.Namespace,
    log: Any = print,
    nfe_trace: list[int] | None = None,
    monitor: Callable[[], dict[str, float]] | None = None,
    run: Run | None = None,
) -> dict[str, Any]:
    """Maximum likelihood on fresh samples; returns the training curve and totals
    (``nfe_trace`` collects the forward NFE of every step). ``monitor()`` (held-out metrics)
    is called at each logging point; its time is left out of the training clocks. With a
    ``run`` the loop is checkpointed at each logging point and resumes from there."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.iters, 1))
    rng = np.random.default_rng(args.seed + 1)
    state = {"curve": [], "nfe_forward": 0, "nfe_backward": 0, "time_s": 0.0, "cpu_s": 0.0}
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule}
    trainer = Trainer(f"toy2d {args.data}", args.iters, objects, {"data": rng}, state, run=run)
    for step in trainer:
        tick, cpu_tick = time.perf_counter(), time.process_time()
        x = torch.from_numpy(sample_toy(args.data, args.batch, rng))
        nll = -model.log_prob(x).mean()
        loss = nll + model.regularization.mean()
        optimizer.zero_grad()
        trainer.check_loss(loss)
        loss.backward()
        optimizer.step()
        schedule.step()
        state["nfe_forward"] += model.nfe_forward
        if nfe_trace is not None:
            nfe_trace.append(model.nfe_forward)
        state["nfe_backward"] += model.nfe_backward
        state["time_s"] += time.perf_counter() - tick
        state["cpu_s"] += time.process_time() - cpu_tick
        trainer.show(nll=nll.item(), nfe=f"{model.nfe_forward}+{model.nfe_backward}")
        if step % max(1, args.iters // 20) == 0 or step == args.iters:
            elapsed, cpu = state["time_s"], state["cpu_s"]
            point = {"step": step, "nll": nll.item(), "time_s": elapsed, "cpu_s": cpu}
            held_out, nfe = "", f"{model.nfe_forward}+{model.nfe_backward}"
            if monitor is not None:  # outside the training clocks
                point.update(monitor())
                held_out = f"  held-out {point['held_out_nll']:.4f}"
                if "held_out_kl" in point:
                    held_out += f" (KL {point['held_out_kl']:.4f})"
            state["curve"].append(point)
            trainer.log({k: v for k, v in point.items() if k != "step"})
            log(
                f"step {step:5d}/{args.iters}  nll {nll.item():.4f}{held_out}  "
                f"nfe {nfe}  T {_times(model)}  "
                f"cpu {cpu:.0f}s wall {elapsed:.0f}s"
            )
    trainer.finish()
    return {
        "curve": state["curve"],
        "train_time_s": state["time_s"],
        "train_cpu_s": state["cpu_s"],
        "nfe_forward_per_step": state["nfe_forward"] / max(args.iters, 1),
        "nfe_backward_per_step": state["nfe_backward"] / max(args.iters, 1),
    }


def _times(model: SequentialFlow) -> str:
    return ",".join(f"{b.T.item():.3f}" for b in model.blocks)


def evaluate(model: SequentialFlow, x: torch.Tensor, chunk: int = 5000) -> torch.Tensor:
    """log p(x) per test point, solved in chunks without a graph."""
    with torch.no_grad():
        return torch.cat([model.log_prob(part) for part in x.split(chunk)])


def grid_density(model: SequentialFlow, points: int) -> np.ndarray:
    axis = torch.linspace(EXTENT[0], EXTENT[1], points)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    return evaluate(model, grid).exp().reshape(points, points).numpy()


def run(args: argparse.Namespace) -> int:
    fill_defaults(args, DEFAULTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        torch.manual_seed(args.seed)
        model = build_model(args)
        n_params = sum(p.numel() for p in model.parameters())
        print(
            f"toy2d {args.data}: CNF with {args.blocks} block(s), {n_params} parameters -> {out}/"
        )
        size = 500 if args.quick else 2000
        monitor = held_out_monitor(model, args, size) if args.curve else None
        history = train(model, args, monitor=monitor, run=run)
        return _report(model, args, history, out)


def _report(
    model: SequentialFlow, args: argparse.Namespace, history: dict[str, Any], out: Path
) -> int:
    """The held-out NLL by dopri5 at ``--eval-tol``, metrics.json, the weights and plots."""

    set_tolerance(model, args.eval_tol)
    start = time.perf_counter()
    test = torch.from_numpy(sample_toy(args.data, args.n_test, 10_000 + args.seed))
    log_p = evaluate(model, test).double()
    nll = float(-log_p.mean())
    metrics: dict[str, Any] = {
        "data": args.data,
        "test_nll": nll,
        "test_nll_stderr": float(log_p.std() / math.sqrt(len(log_p))),
        "n_test": args.n_test,
        "parameters": sum(p.numel() for p in model.parameters()),
        "integration_times": [b.T.item() for b in model.blocks],
        "train_time_s": history["train_time_s"],
        "train_cpu_s": history["train_cpu_s"],
        "nfe_forward_per_step": history["nfe_forward_per_step"],
        "nfe_backward_per_step": history["nfe_backward_per_step"],
        "eval_nfe": model.nfe_forward,
        "eval_time_s": time.perf_counter() - start,
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "torch_threads": torch.get_num_threads(),
        "curve": history["curve"],
    }
    if args.data == "8gaussians":
        true_log_p = torch.from_numpy(log_density_8gaussians(test.double().numpy()))
        gap = true_log_p - log_p
        metrics["entropy"] = entropy_8gaussians()
        metrics["true_density_test_nll"] = float(-true_log_p.mean())
        metrics["kl_estimate"] = float(gap.mean())
        metrics["kl_estimate_stderr"] = float(gap.std() / math.sqrt(len(gap)))
        metrics["gap_to_entropy"] = nll - metrics["entropy"]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save(model.state_dict(), out / "model.pt")
    _plot(model, test, out / "toy2d.png", args, nll)
    if args.curve:
        _plot_curve(history["curve"], metrics.get("entropy"), out / "nll_curve.png", args.data)
    print(f"held-out NLL {nll:.4f} nats (+- {metrics['test_nll_stderr']:.4f})", end="")
    if "entropy" in metrics:
        print(
            f"; entropy {metrics['entropy']:.4f}, gap {metrics['gap_to_entropy']:+.4f}; "
            f"paired KL estimate {metrics['kl_estimate']:.4f} "
            f"+- {metrics['kl_estimate_stderr']:.4f}"
        )
    else:
        print()
    print(f"wrote {out / 'metrics.json'}, {out / 'toy2d.png'}, {out / 'model.pt'}", end="")
    print(f", {out / 'nll_curve.png'}" if args.curve else "")
    return 0


def _plot(
    model: SequentialFlow, test: torch.Tensor, path: Path, args: argparse.Namespace, nll: float
) -> None:
    from ..viz.flows import save_flow_panels

    points = 40 if args.quick else 120
    density = grid_density(model, points)
    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():
        samples = model.sample(2000 if not args.quick else 200, generator=generator)
        base = torch.randn(150 if not args.quick else 20, 2, generator=generator)
        paths = model.trajectory(base, 11)
    save_flow_panels(
        path,
        [
            {"title": f"data ({args.data})", "points": test[:2000].numpy(), "extent": EXTENT},
            {"title": "learned density", "density": density, "extent": EXTENT},
            {"title": "samples", "points": samples.numpy(), "extent": EXTENT, "color": "C3"},
            {"title": "trajectories base -> data", "paths": paths.numpy(), "extent": EXTENT},
        ],
        title=f"CNF on {args.data}: held-out NLL {nll:.3f} nats",
    )


def _plot_curve(curve: list[dict[str, Any]], entropy: float | None, path: Path, data: str) -> None:
    """Held-out NLL (and the training batches' NLL) against the training CPU time; for
    8gaussians also the paired KL estimate against the goal of 0.02 nats."""
    from ..viz.plots import figure

    with_kl = "held_out_kl" in curve[0]
    fig = figure(figsize=(11 if with_kl else 6, 4))
    axes = fig.subplots(1, 2 if with_kl else 1)
    ax = axes[0] if with_kl else axes
    cpu = [p["cpu_s"] for p in curve]
    held_out = [p["held_out_nll"] for p in curve]
    ax.plot(cpu, [p["nll"] for p in curve], color="0.6", lw=1, label="training batch NLL")
    ax.plot(cpu, held_out, "o-", color="C0", label="held-out NLL")
    if entropy is not None:
        ax.axhline(entropy, color="k", ls="--", lw=1, label=f"entropy {entropy:.4f}")
    low = min(held_out + ([entropy] if entropy is not None else []))
    ax.set_ylim(low - 0.05, max(low + 0.6, held_out[-1] + 0.2))
    ax.set_xlabel("training CPU time (s, one thread)")
    ax.set_ylabel("NLL (nats)")
    ax.set_title(f"CNF on {data}")
    ax.legend()
    if with_kl:
        kl = axes[1]
        kl.semilogy(cpu, [max(p["held_out_kl"], 1e-4) for p in curve], "o-", color="C1")
        kl.axhline(0.02, color="C2", ls="--", label="goal: 0.02 nats")
        kl.set_xlabel("training CPU time (s, one thread)")
        kl.set_ylabel("paired KL(data || model) estimate (nats)")
        kl.set_title("model NLL - true density NLL, same points")
        kl.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
