"""Implicit layers side by side: a deep equilibrium model vs ODE-Net vs ResNet on MNIST.

Each model is trained with the Table 1 recipe (same data, budget and head; comparable parameter
counts: the ResNet has one residual block by default). Then: the autograd memory of one
training step; how that memory grows with the solver's iterations for the DEQ differentiated
implicitly and by backpropagation through the unrolled iterations (a weight-tied ResNet as
deep as the iterations); and the residual against iteration of plain iteration, Anderson and
Broyden on the trained DEQ. Writes table.md, metrics.json, memory.png and residuals.png.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cross_entropy

from .._cli_types import positive_float, positive_int
from ..training import TrainConfig, add_train_arguments, autograd_memory_mb
from ..training.runtime import machine
from ..viz.implicit import iterations_to_residuals, residual_histories, save_residual_plot
from .table1 import (
    RECIPE,
    UNSHARED,
    already_complete,
    averaging,
    earlier_results,
    keeps_threads,
    run_locked,
    save_memory_plot,
    train_side_by_side,
)

NAMES = {"deq": "DEQ", "odenet": "ODE-Net", "resnet": "ResNet"}
# the options of the studies and the DEQ's budget, shared by every row of one table
STUDY_OPTIONS = (
    "deq_epochs", "memory_batch", "memory_iterations", "residual_iterations",
    "residual_targets", "residual_images",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser, model_positional=False)
    parser.set_defaults(**RECIPE, blocks=1, deq_dropout=0.1, out="out/implicit")
    parser.add_argument("--models", nargs="+", choices=tuple(NAMES), default=list(NAMES),
                        help="models to train (default " + " ".join(NAMES) + ")")  # fmt: skip
    parser.add_argument("--deq-epochs", type=positive_int, default=24,
                        help="epochs of the DEQ (default %(default)s: its epochs are cheaper "
                        "than the ODE-Net's, and 24 stay within 10 CPU minutes)")  # fmt: skip
    parser.add_argument("--memory-batch", type=positive_int, default=32,
                        help="batch of the one-step memory measurements "
                        "(default %(default)s)")  # fmt: skip
    parser.add_argument("--memory-iterations", type=positive_int, nargs="+",
                        default=[5, 10, 20, 40],
                        help="DEQ iterations of the memory-vs-iterations study "
                        "(default 5 10 20 40)")  # fmt: skip
    parser.add_argument("--residual-iterations", type=positive_int, default=100,
                        help="most iterations of the residual-vs-iteration study "
                        "(default %(default)s)")  # fmt: skip
    parser.add_argument("--residual-targets", type=positive_float, nargs="+",
                        default=[1e-2, 1e-3, 1e-4],
                        help="residuals of the iterations-to-residual table "
                        "(default 0.01 0.001 0.0001)")  # fmt: skip
    parser.add_argument("--residual-images", type=positive_int, default=250,
                        help="test images of the residual-vs-iteration study "
                        "(default %(default)s)")  # fmt: skip


def memory_study(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, iterations: list[int]
) -> list[dict[str, Any]]:
    """Autograd memory of one training step of the DEQ model as the forward iterations grow
    (no tolerance: exactly that many), with implicit gradients and unrolled backpropagation."""
    layer = model.deq
    saved = layer.gradient, layer.tol, layer.max_iter, layer.on_failure
    rows = []
    try:
        layer.tol, layer.on_failure = 0.0, "ignore"
        for gradient in ("implicit", "unrolled"):
            layer.gradient = gradient
            for k in iterations:
                layer.max_iter = k
                model.zero_grad(set_to_none=True)
                memory = autograd_memory_mb(lambda: cross_entropy(model(x), y))
                rows.append({"gradient": gradient, "iterations": k, "memory_mb": memory})
    finally:
        layer.gradient, layer.tol, layer.max_iter, layer.on_failure = saved
        model.zero_grad(set_to_none=True)
    return rows


def residual_study(
    model: torch.nn.Module, images: torch.Tensor, iterations: int, residuals: list[float]
) -> dict[str, Any]:
    """The three methods on the trained DEQ: residual histories (for the plot) and the
    iterations to each target residual, for the whole batch and per sample; Anderson's saving
    over plain iteration (None where plain iteration does not get there)."""
    model.eval()
    try:
        with torch.no_grad():
            x = model.features(images)
            histories = residual_histories(model.deq, x, iterations=iterations)
            table = iterations_to_residuals(model.deq, x, residuals, iterations=iterations)
    finally:
        model.train()
    speedup = {}
    for target, anderson in table["anderson"].items():
        plain = table["picard"][target]
        speedup[target] = {
            key: plain[key] / anderson[key] if plain[key] and anderson[key] else None
            for key in ("batch", "sample_mean")
        }
    return {
        "tol": model.deq.tol,
        "iterations": iterations,
        "histories": histories,
        "iterations_to_residual": table,
        "anderson_speedup": speedup,
    }


def format_table(
    rows: list[dict[str, Any]], study: list[dict[str, Any]], residuals: dict[str, Any] | None,
    header: str,
) -> str:  # fmt: skip
    lines = [
        "# Implicit layers: DEQ vs ODE-Net vs ResNet", "", header, "",
        "| model | test error | params | memory of a step (MB) | CPU s (training) "
        "| time/epoch (s) | NFE / iterations fwd / bwd |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        nfe = (
            "-" if r["nfe_forward"] is None else f"{r['nfe_forward']:.1f} / {r['nfe_backward']:.1f}"
        )
        lines.append(
            f"| {NAMES[r['model']]} | {100 * r['test_error']:.2f}% | {r['params'] / 1e6:.3f}M "
            f"| {r['memory_mb']:.1f} | {r['cpu_time_s']:.0f} | {r['time_per_epoch_s']:.1f} "
            f"| {nfe} |"
        )
    lines += [
        "", "Memory: megabytes of tensors autograd keeps for the backward pass of one training "
        "step (parameters excluded). NFE: ODE-Net's function evaluations; DEQ: evaluations of f "
        "by the forward solve / vector-Jacobian products of the backward solve; means per "
        "training batch in the last epoch. CPU s: process CPU time of the training batches.",
    ]  # fmt: skip
    if study:
        lines += ["", "## Memory of one DEQ training step against the iterations", "",
                  "| iterations | implicit gradient (MB) | unrolled backprop (MB) |",
                  "|---|---|---|"]  # fmt: skip
        by = {(r["gradient"], r["iterations"]): r["memory_mb"] for r in study}
        for k in sorted({r["iterations"] for r in study}):
            lines.append(f"| {k} | {by[('implicit', k)]:.2f} | {by[('unrolled', k)]:.2f} |")
    if residuals is not None:
        table = residuals["iterations_to_residual"]
        targets = list(next(iter(table.values())))
        lines += ["", "## Fixed-point solvers on the trained DEQ", "",
                  "Evaluations of f until every test image of the batch reaches the relative "
                  "residual (in brackets: the mean over images of the evaluations each needs "
                  f"alone); the training tolerance is {residuals['tol']:g}.", "",
                  "| method | " + " | ".join(f"residual {t}" for t in targets) + " |",
                  "|---" * (len(targets) + 1) + "|"]  # fmt: skip
        for method, row in table.items():
            cells = []
            for t in targets:
                batch, mean = row[t]["batch"], row[t]["sample_mean"]
                cells.append(
                    ("never" if batch is None else str(batch))
                    + ("" if mean is None else f" ({mean:.1f})")
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        ratios = []
        for t, ratio in residuals["anderson_speedup"].items():
            batch, mean = ratio["batch"], ratio["sample_mean"]
            text = "-" if batch is None else f"{batch:.1f}x"
            reached = residuals["iterations_to_residual"]["anderson"][t]["batch"]
            if batch is None and reached:  # plain iteration does not get there
                most = residuals["iterations"]
                text = f"over {most / reached:.1f}x (plain iteration: not in {most})"
            ratios.append(f"{t}: {text}" + ("" if mean is None else f" ({mean:.1f}x per image)"))
        lines += ["", "Anderson's saving over plain iteration: " + ", ".join(ratios) + "."]
    return "\n".join(lines) + "\n"


def implicit_settings(base: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The options every row of one table shares: the recipe, the DEQ's epochs and the
    studies' options.

    Arguments:
        base: the training configuration of the run.
        args: the parsed options of ``neuralode experiment implicit``.

    Returns:
        The options as JSON values.
    """
    settings = {k: v for k, v in base.as_dict().items() if k not in UNSHARED}
    for key in STUDY_OPTIONS:
        settings[key] = getattr(args, key)
    return json.loads(json.dumps(settings))


@keeps_threads
def run(args: argparse.Namespace) -> int:
    """Trains ``args.models`` into ``OUT/<model>``, runs the DEQ's studies when the DEQ is
    among them, and writes the table of every model run in ``OUT`` with these options (rows
    and studies of an earlier run of other models are kept); ``OUT`` is locked meanwhile.

    Arguments:
        args: the parsed options of ``neuralode experiment implicit``.

    Returns:
        The exit status (that of the first failing training, else 0).

    Raises:
        RunDirectoryError: ``--out`` is a file, is in use, or holds a table of other options.
    """
    return run_locked(Path(args.out or "out/implicit"), lambda out: _run(args, out))


def _run(args: argparse.Namespace, out: Path) -> int:
    base = TrainConfig.from_namespace(argparse.Namespace(**{**vars(args), "out": str(out)}))
    settings = implicit_settings(base, args)
    earlier = earlier_results(
        out / "metrics.json", settings, bool(args.overwrite), "an implicit-layers table"
    )
    overrides = {"deq": {"epochs": args.deq_epochs}}
    runs = train_side_by_side(base, args.models, out, args.memory_batch, NAMES, overrides)
    if isinstance(runs, int):
        return runs
    if already_complete(runs, set(earlier) & set(NAMES), args.models, out / "table.md"):
        return 0
    kept = [earlier[name] for name in NAMES if name in earlier and name not in args.models]
    rows = sorted(kept + runs.rows, key=lambda row: list(NAMES).index(row["model"]))
    study, residuals = earlier.get("memory_study", []), earlier.get("residual_study")
    if "deq" in runs.models:
        print("\n== memory and residual studies of the DEQ ==", file=sys.stderr)
        study = memory_study(runs.models["deq"], runs.x, runs.y, args.memory_iterations)
        images = runs.data.test_x[: args.residual_images].to(runs.x.device)
        residuals = residual_study(
            runs.models["deq"], images, args.residual_iterations, args.residual_targets
        )
    header = (
        f"`{' '.join(sys.argv[1:]) or 'neuralode experiment implicit'}`: {base.data}, "
        f"{base.epochs} epochs, batch {base.batch_size}, {base.optimizer} lr {base.lr} "
        f"{base.schedule}{averaging(base)}; DEQ {args.deq_epochs} epochs, "
        f"{base.deq_method} forward / "
        f"{base.deq_backward or base.deq_method} backward, tol {base.deq_tol}, at most "
        f"{base.deq_max_iter} iterations, variational dropout {base.deq_dropout}; "
        f"ODE-Net {base.method} rtol {base.rtol} atol "
        f"{base.atol} ({base.gradient}); ResNet with {base.blocks} block(s); "
        f"{machine(base.threads)}."
    )
    if kept:
        names = ", ".join(NAMES[row["model"]] for row in kept)
        header += f" {names}: from an earlier run in this directory with the same options."
    text = format_table(rows, study, residuals, header)
    (out / "table.md").write_text(text)
    metrics: dict[str, Any] = {"settings": settings, **{row["model"]: row for row in rows}}
    metrics["memory_study"] = study
    if residuals is not None:
        metrics["residual_study"] = residuals
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if base.plots and study:
        labels = {
            "implicit": "DEQ, implicit gradient",
            "unrolled": "DEQ unrolled (weight-tied ResNet), backprop",
        }
        curves = {
            label: [(r["iterations"], r["memory_mb"]) for r in study if r["gradient"] == key]
            for key, label in labels.items()
        }
        save_memory_plot(
            out, curves, "iterations of the forward solve (depth)", "memory against iterations"
        )
    if base.plots and residuals is not None:
        save_residual_plot(out, residuals["histories"], residuals["tol"])
    print(text)
    return 0
