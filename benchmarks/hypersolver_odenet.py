"""Hypersolvers on a trained ODE-Net (Poli et al., "Hypersolvers: Toward Fast
Continuous-Depth Models", NeurIPS 2020, their image-classification experiment).

An ODE-Net is trained with ``neuralode train`` (dopri5 at its tolerance) on mnist5k, or a
trained run is loaded from its directory. A HyperEuler correction g(t, y, f(t, y)) (a small
convolutional network) is fitted with ``fit_hypersolver`` on the ODE block's inputs of the
training images (the state after the down-sampling stem), one per step count. The test
accuracy, the agreement with the dopri5 model's predictions and the evaluations of f per
forward pass are then measured for dopri5, euler / midpoint / rk4 at 1, 2, 4, 8 steps and
HyperEuler at 1, 2, 4 steps. The correction's cost is given as its multiply-accumulates and
parameters against f's (no wall-clock times: NFE and MACs are the machine-independent
measure).

Writes ``OUT/results.md`` (the table), ``OUT/results.json`` and ``OUT/accuracy_vs_nfe.png``;
the trained run goes to ``OUT/train`` unless ``--run`` names another directory (a directory
that holds a ``checkpoint.pt`` is loaded, not trained again).

    python benchmarks/hypersolver_odenet.py --out out/hypersolver-odenet
    python benchmarks/hypersolver_odenet.py --small --out /tmp/hyper   # a seconds-long smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import neuralode as no
from neuralode._cli_types import positive_float, positive_int, random_seed
from neuralode.solvers import METHODS, HyperEuler
from neuralode.training import TrainConfig, build_model, fit_hypersolver, load_checkpoint, train
from neuralode.training.loop import load_data

# the demo's recipe (Makefile's DEMO_RECIPE) without its epochs and threads
RECIPE = dict(
    lr=6e-3, warmup_epochs=0.25, weight_decay=5e-4, crop_padding=2, pool="max", rtol=1e-2, atol=1e-2
)
BASES = ("euler", "midpoint", "rk4")


class ConvCorrection(nn.Module):
    """g(t, y, f(t, y)): a 1x1 convolution of the state, f and the time (a constant channel)
    to ``hidden`` channels, softplus, and a 3x3 convolution back to the state's channels.

    Arguments:
        channels: the ODE block's state channels.
        hidden: the hidden channels.
    """

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(2 * channels + 1, hidden, 1),
            nn.Softplus(),
            nn.Conv2d(hidden, channels, 3, padding=1),
        )

    def forward(self, t: torch.Tensor, y: torch.Tensor, dy: torch.Tensor, dt: torch.Tensor):
        """The correction of one step from ``(t, y)``; ``dt`` is not an input (one correction
        is fitted per step size)."""
        time = t.to(y.dtype).expand(y.shape[0], 1, *y.shape[2:])
        return self.net(torch.cat([y, dy, time], 1))


def multiply_accumulates(module: nn.Module, batch: int, *inputs: torch.Tensor) -> int:
    """The multiply-accumulates of the convolutions and linear layers of one call of
    ``module(*inputs)`` on ``batch`` samples, per sample; normalisations and activations are
    not counted."""
    total = 0

    def count(layer: nn.Module, args: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_output = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
        else:
            per_output = layer.in_features
        total += out.numel() * per_output

    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    handles = [layer.register_forward_hook(count) for layer in layers]
    try:
        with torch.no_grad():
            module(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return total // batch


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, TrainConfig]:
    """The ODE-Net of ``args.run``'s checkpoint, trained there first when it has none."""
    run = Path(args.run) if args.run else Path(args.out) / "train"
    if not (run / "checkpoint.pt").is_file():
        config = TrainConfig(
            model="odenet",
            data=args.data,
            epochs=args.epochs,
            channels=args.channels,
            train_subset=args.train_subset or 0,
            test_subset=args.test_subset or 0,
            threads=args.threads,
            seed=args.seed,
            plots=False,
            out=str(run),
            **RECIPE,
        )
        result = train(config)
        if result.status != 0:
            sys.exit(f"training stopped with status {result.status}")
    else:
        print(f"loading the trained run in {run}", file=sys.stderr)
    saved = load_checkpoint(run / "checkpoint.pt")
    config = TrainConfig(**{**TrainConfig().as_dict(), **saved["config"]})
    if config.model != "odenet":
        sys.exit(f"{run} holds a {config.model}, not an odenet")
    model = build_model(config)
    model.load_state_dict(saved["model"])
    return model.eval(), config


@dataclass
class Row:
    """One solver's results on the test set."""

    method: str
    steps: int | None
    nfe: float
    correction_calls: int = 0
    accuracy: float = 0.0
    agreement: float = 0.0
    error: float = 0.0


def block_inputs(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """The ODE block's inputs: the images through the down-sampling stem."""
    with torch.no_grad():
        return torch.cat([model.features(x[i : i + batch]) for i in range(0, len(x), batch)])


def classify(model: nn.Module, h: torch.Tensor, solver, steps: int | None, batch: int):
    """The ODE block solved from ``h`` with ``solver`` on ``steps`` fixed steps (``None``: the
    model's own block, dopri5 at its tolerance), then the head.

    Returns:
        The predictions, the block's outputs y(t1) and the mean evaluations of f per forward
            pass of ``batch`` images.
    """
    block = model.ode
    ts = torch.tensor([block.t0, block.t1], dtype=h.dtype)
    outputs, nfes = [], []
    with torch.no_grad():
        for i in range(0, len(h), batch):
            hb = h[i : i + batch]
            if steps is None:
                outputs.append(block(hb))
                nfes.append(block.nfe_forward)
            else:
                grid = no.FixedGrid(step_size=(block.t1 - block.t0) / steps)
                sol = no.solve(block.dynamics, hb, ts, solver=solver, controller=grid)
                outputs.append(sol.ys[-1])
                nfes.append(sol.stats.nfe)
        y1 = torch.cat(outputs)
        predictions = torch.cat(
            [model.head(y1[i : i + batch]).argmax(1) for i in range(0, len(y1), batch)]
        )
    return predictions, y1, sum(nfes) / len(nfes)


def exact_outputs(model: nn.Module, h: torch.Tensor, batch: int, tol: float) -> torch.Tensor:
    """The ODE block's outputs y(t1) to ``tol``: dopri5 at rtol = atol = ``tol`` on batches
    of ``batch`` images (one error norm per batch; at 1e-5 far below the errors measured)."""
    block = model.ode
    ts = torch.tensor([block.t0, block.t1], dtype=h.dtype)
    control = no.PIController(rtol=tol, atol=tol)
    with torch.no_grad():
        return torch.cat(
            [
                no.solve(block.dynamics, h[i : i + batch], ts, controller=control).ys[-1]
                for i in range(0, len(h), batch)
            ]
        )


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    styles = {"euler": "o-", "midpoint": "s-", "rk4": "^-", "hyper_euler": "D-"}
    for method, style in styles.items():
        mine = [r for r in rows if r.method == method]
        if mine:
            label = "HyperEuler" if method == "hyper_euler" else method
            ax.plot([r.nfe for r in mine], [100 * r.accuracy for r in mine], style, label=label)
    (reference,) = [r for r in rows if r.method == "dopri5"]
    ax.plot([reference.nfe], [100 * reference.accuracy], "k*", ms=12, label="dopri5 (trained)")
    ax.axhline(100 * reference.accuracy, color="k", lw=0.6, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluations of f per forward pass (NFE)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ODE-Net on mnist5k: accuracy vs NFE")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[Row], cost: dict, config: TrainConfig) -> str:
    lines = [
        f"ODE-Net ({config.channels} channels, trained {config.epochs} epoch(s) with dopri5 at "
        f"rtol = atol = {config.rtol:g}) on {config.data}; the correction g has "
        f"{cost['g_params']:,} parameters against f's {cost['f_params']:,} and "
        f"{cost['g_macs']:,} multiply-accumulates per image against f's {cost['f_macs']:,} "
        f"(ratio {cost['ratio']:.2f}).",
        "",
        "| method | steps | NFE (f) | g calls | cost in f evaluations | error of y(1) "
        "| test accuracy | agreement with dopri5 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        steps = "adaptive" if r.steps is None else str(r.steps)
        total = r.nfe + r.correction_calls * cost["ratio"]
        name = "HyperEuler" if r.method == "hyper_euler" else r.method
        lines.append(
            f"| {name} | {steps} | {r.nfe:g} | {r.correction_calls} | {total:.2f} | "
            f"{r.error:.2e} | {100 * r.accuracy:.2f}% | {100 * r.agreement:.2f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="out/hypersolver-odenet", help="output directory")
    parser.add_argument("--run", help="the trained run's directory (default OUT/train)")
    parser.add_argument("--small", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--data", choices=["mnist5k", "digits"], default="mnist5k")
    parser.add_argument("--epochs", type=positive_int, default=8)
    parser.add_argument("--channels", type=positive_int, default=32)
    parser.add_argument("--train-subset", type=positive_int, help="the first N train images")
    parser.add_argument("--test-subset", type=positive_int, help="the first N test images")
    parser.add_argument("--hidden", type=positive_int, default=8, help="g's hidden channels")
    parser.add_argument("--fit-images", type=positive_int, default=2000)
    parser.add_argument("--fit-steps", type=positive_int, default=600, help="Adam iterations")
    parser.add_argument("--fit-batch", type=positive_int, default=256, help="images per iter")
    parser.add_argument("--fit-lr", type=positive_float, default=3e-3)
    parser.add_argument("--hyper-steps", type=positive_int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--base-steps", type=positive_int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--exact-tol", type=positive_float, default=1e-5, help="tolerance of the exact y(1)"
    )
    parser.add_argument("--batch", type=positive_int, default=500, help="images per forward")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--seed", type=random_seed, default=0)
    args = parser.parse_args(argv)
    if args.small:
        args.epochs, args.channels, args.hidden = 1, 8, 8
        args.train_subset = args.train_subset or 256
        args.test_subset = args.test_subset or 100
        args.fit_images, args.fit_steps, args.fit_batch = 64, 20, 32
        args.batch = min(args.batch, 100)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, config = trained_model(args)
    data = load_data(config)
    h_train = block_inputs(model, data.train_x[: args.fit_images], args.batch)
    h_test = block_inputs(model, data.test_x, args.batch)
    labels = data.test_y

    rows: list[Row] = []
    exact = exact_outputs(model, h_test, args.batch, args.exact_tol)
    exact_norm = exact.flatten(1).norm(dim=1)
    reference, y1, nfe = classify(model, h_test, None, None, args.batch)

    def record(row: Row, predictions: torch.Tensor, y1: torch.Tensor) -> None:
        row.accuracy = (predictions == labels).float().mean().item()
        row.agreement = (predictions == reference).float().mean().item()
        row.error = ((y1 - exact).flatten(1).norm(dim=1) / exact_norm).mean().item()
        rows.append(row)
        print(f"{row.method} {row.steps}: accuracy {row.accuracy:.4f}", file=sys.stderr)

    record(Row("dopri5", None, nfe), reference, y1)
    for name in BASES:
        for steps in args.base_steps:
            predictions, y1, nfe = classify(model, h_test, METHODS[name](), steps, args.batch)
            record(Row(name, steps, nfe), predictions, y1)

    dynamics = model.ode.dynamics
    for p in dynamics.parameters():
        p.requires_grad_(False)
    width = h_train.shape[1]
    losses = {}
    generator = torch.Generator().manual_seed(args.seed)
    for steps in args.hyper_steps:
        torch.manual_seed(args.seed)
        hyper = HyperEuler(ConvCorrection(width, args.hidden))
        dt = (model.ode.t1 - model.ode.t0) / steps
        history = fit_hypersolver(
            hyper,
            dynamics,
            h_train,
            model.ode.t0,
            model.ode.t1,
            dt,
            steps=args.fit_steps,
            lr=args.fit_lr,
            batch_size=args.fit_batch,
            progress=False,
            generator=generator,
        )
        losses[steps] = (history[0], min(history[-10:]))
        predictions, y1, nfe = classify(model, h_test, hyper, steps, args.batch)
        record(Row("hyper_euler", steps, nfe, correction_calls=steps), predictions, y1)

    sample = h_test[:2]
    t = torch.zeros(())
    f_sample = dynamics(t, sample)
    correction = ConvCorrection(width, args.hidden)
    cost = {
        "f_macs": multiply_accumulates(dynamics, len(sample), t, sample),
        "g_macs": multiply_accumulates(correction, len(sample), t, sample, f_sample, t),
        "f_params": sum(p.numel() for p in dynamics.parameters()),
        "g_params": sum(p.numel() for p in correction.parameters()),
    }
    cost["ratio"] = cost["g_macs"] / cost["f_macs"]
    text = table(rows, cost, config)
    text += "\nResidual-fitting loss of each HyperEuler correction (first, best of the last 10):"
    text += "".join(f" {s} step(s): {a:.3g} -> {b:.3g};" for s, (a, b) in losses.items())
    text = text.rstrip(";") + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": config.as_dict(),
                "cost": cost,
                "fit_losses": {str(s): v for s, v in losses.items()},
                "rows": [vars(r) for r in rows],
                "args": {k: v for k, v in vars(args).items()},
            },
            indent=2,
        )
        + "\n"
    )
    plot(rows, out / "accuracy_vs_nfe.png")
    print(text)


if __name__ == "__main__":
    main()
