"""NFE reduction by the regularisers: train one small neural ODE classifier per regulariser.

    PYTHONPATH=src python benchmarks/bench_regularisers.py [--data digits|rings] [--epochs N]

Same seed, data, model and optimiser for every row; only the regularisers differ (the steer
rows: STEER, each training solve of t in [0, 1] ending at a random time in [1 - b, 1 + b),
b = --steer; alone, and with the kinetic energy). ``--only`` picks rows. Prints a
markdown table: final train/test accuracy, forward and backward NFE of one training step at
the end, forward NFE of evaluation, and training time.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from neuralode._cli_types import (
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
    random_seed,
)
from neuralode.models import (
    DerivativePenalty,
    JacobianFrobenius,
    KineticEnergy,
    MLPDynamics,
    ODEBlock,
    RandomEndTime,
)

CONFIGS = {
    "none": lambda w: [],
    "kinetic": lambda w: [KineticEnergy(w)],
    "jacobian": lambda w: [JacobianFrobenius(w)],
    "kinetic+jacobian": lambda w: [KineticEnergy(w), JacobianFrobenius(w)],
    "derivative2": lambda w: [DerivativePenalty(2, w)],
    "steer": lambda w: [],
    "steer+kinetic": lambda w: [KineticEnergy(w)],
}
STEER_ROWS = ("steer", "steer+kinetic")  # these rows also draw random end times


def rings(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two concentric noisy rings in 2-D (inner: class 0), a problem hard for plain ODEs."""
    labels = torch.arange(n) % 2
    angles = torch.rand(n, generator=generator) * 2 * math.pi
    radius = torch.where(labels == 0, 0.5, 1.5) + 0.15 * torch.randn(n, generator=generator)
    return torch.stack([radius * angles.cos(), radius * angles.sin()], 1), labels


def load(name: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    if name == "rings":
        x_train, y_train = rings(512, g)
        x_test, y_test = rings(512, g)
        return x_train, y_train, x_test, y_test, 2
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=g)
    train, test = order[:1297], order[1297:]
    return x[train], y[train], x[test], y[test], 10


class Classifier(nn.Module):
    """Linear encoder, an MLP ODE block (tanh), linear head."""

    def __init__(
        self, features: int, classes: int, width: int, regularisers, tol: float, end_time=None
    ):
        super().__init__()
        self.encode = nn.Linear(features, width)
        self.ode = ODEBlock(
            MLPDynamics(width, 64, activation="tanh"),
            rtol=tol,
            atol=tol,
            gradient="adjoint",
            regularisers=regularisers,
            end_time=end_time,
        )
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.ode(self.encode(x)))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).float().mean().item()
    model.train()
    return correct


def train(name: str, args, data) -> dict:
    x_train, y_train, x_test, y_test, classes = data
    torch.manual_seed(args.seed)
    width = 3 if args.data == "rings" else 32
    end_time = RandomEndTime(args.steer) if name in STEER_ROWS else None
    model = Classifier(
        x_train.shape[1], classes, width, CONFIGS[name](args.weight), args.tol, end_time
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(x_train))
        for i in range(0, len(x_train), args.batch):
            batch = order[i : i + args.batch]
            logits = model(x_train[batch])
            loss = nn.functional.cross_entropy(logits, y_train[batch])
            loss = loss + model.ode.regularisation
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        print(
            f"  {name:17s} epoch {epoch + 1}/{args.epochs} loss {loss.item():.3f} "
            f"NFE {model.ode.nfe_forward}/{model.ode.nfe_backward}",
            flush=True,
        )
    seconds = time.perf_counter() - start
    # NFE of one more training step on a fixed batch, and of evaluation on the test set
    logits = model(x_train[: args.batch])
    (
        nn.functional.cross_entropy(logits, y_train[: args.batch]) + model.ode.regularisation
    ).backward()
    nfe_forward, nfe_backward = model.ode.nfe_forward, model.ode.nfe_backward
    test_accuracy = accuracy(model, x_test, y_test)
    return {
        "name": name,
        "train": accuracy(model, x_train, y_train),
        "test": test_accuracy,
        "nfe_forward": nfe_forward,
        "nfe_backward": nfe_backward,
        "nfe_eval": model.ode.nfe_forward,
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=["digits", "rings"], default="digits")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--batch", type=positive_int, default=128)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument(
        "--tol", type=positive_float, default=1e-5, help="rtol = atol of the solves"
    )
    parser.add_argument(
        "--weight", type=non_negative_float, default=0.01, help="weight of each regulariser"
    )
    parser.add_argument(
        "--steer",
        type=fraction,
        default=0.5,
        help="STEER's spread b of the steer rows (end times in [1 - b, 1 + b)), in [0, 1)",
    )
    parser.add_argument("--seed", type=random_seed, default=0)
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    data = load(args.data, args.seed)
    rows = [train(name, args, data) for name in args.only]
    print(
        f"\n{args.data}, {args.epochs} epochs, batch {args.batch}, dopri5 rtol=atol={args.tol}, "
        f"adjoint gradients, regulariser weight {args.weight}, steer b = {args.steer}, "
        f"seed {args.seed}\n"
    )
    print(
        "| regulariser | train acc | test acc | NFE fwd (train step) | NFE bwd | NFE eval "
        "| train time (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['train']:.3f} | {r['test']:.3f} | {r['nfe_forward']} "
            f"| {r['nfe_backward']} | {r['nfe_eval']} | {r['seconds']:.1f} |"
        )


if __name__ == "__main__":
    main()
