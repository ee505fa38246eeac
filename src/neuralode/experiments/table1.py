"""The Neural ODE paper's Table 1: ODE-Net vs ResNet vs RK-Net on MNIST, same budget.

Each model trains in ``OUT/<model>`` (the rules of ``neuralode train``). ``OUT/table1.md``
and ``OUT/table1.json`` hold a row for every model run in ``OUT``: a later run with other
``--models`` adds their rows, and rerunning a model (``--overwrite`` or ``--resume``) replaces
only its row. All rows share the options (those that change what is computed or timed): a run
with others is refused, unless ``--overwrite``, which then starts a new table.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.functional import cross_entropy

from .._cli_types import open_unit, positive_float, positive_int
from ..data import ImageDataset, load_dataset
from ..training import TrainConfig, add_train_arguments, autograd_memory_mb, train
from ..training.loop import solver_block
from ..training.rundir import RunDirectoryError, RunLock, ensure_directory, run_outputs
from ..training.runtime import machine
from ..training.state import CheckpointError, check_compatible
from ..training.trainer import saved_config

# Chen et al. (2018), Table 1 (full MNIST): test error, parameters, memory, time.
PAPER = {
    "resnet": ("0.41%", "0.60M", "O(L)", "O(L)"),
    "rknet": ("0.47%", "0.22M", "O(L~)", "O(L~)"),
    "odenet": ("0.42%", "0.22M", "O(1)", "O(L~)"),
}
NAMES = {"resnet": "ResNet", "rknet": "RK-Net", "odenet": "ODE-Net"}
# options that change neither the numbers of a row nor its timing: the rows of one table may
# differ in these
UNSHARED = (
    "model", "out", "resume", "overwrite", "device", "data_dir", "download", "cache_dir",
    "plots", "tensorboard", "sweep_tolerances", "sweep_images", "test_batch_size",
)  # fmt: skip


# The recipe of the 10-minute budget on 2 CPU cores (BENCHMARKS.md, Table 1): short one-cycle
# style training with a high peak learning rate, light crops, label smoothing, a loose training
# tolerance and direct backpropagation (cheaper than the adjoint at this size; the memory study
# below still measures the adjoint), one thread per process. The errors are those of an
# exponential moving average of the weights (within 0.1 points of the trained weights' at the
# end of the cosine schedule in our runs, and steadier over the last epochs).
RECIPE = dict(
    epochs=14, batch_size=64, lr=6e-3, crop_padding=2, rtol=1e-2, atol=1e-2, gradient="direct",
    threads=1, label_smoothing=0.1, ema=0.995,
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_train_arguments(parser, model_positional=False)
    parser.set_defaults(**RECIPE, out="out/table1")
    parser.add_argument("--models", nargs="+", choices=tuple(NAMES), default=list(NAMES),
                        help="models to train into OUT/MODEL; the table keeps the rows of "
                        "models run earlier in OUT with the same options")  # fmt: skip
    parser.add_argument("--memory-batch", type=positive_int, default=32,
                        help="batch of the one-step memory measurement "
                        "(default %(default)s)")  # fmt: skip
    parser.add_argument("--memory-tolerances", type=open_unit, nargs="+",
                        default=[1e-1, 1e-2, 1e-3, 1e-4],
                        help="ODE-Net tolerances of the memory-vs-NFE study "
                        "(default 0.1 0.01 0.001 0.0001)")  # fmt: skip
    parser.add_argument("--memory-step-sizes", type=positive_float, nargs="+",
                        default=[0.5, 0.25, 0.125, 0.0625],
                        help="RK-Net step sizes of the memory-vs-NFE study "
                        "(default 0.5 0.25 0.125 0.0625)")  # fmt: skip


def result_row(name: str, result: Any) -> dict[str, Any]:
    """One model's line of the table from its training result (the last epoch's metrics)."""
    last = result.history[-1]
    return {
        "model": name,
        "test_error": last["test_error"],
        "test_error_raw": last.get("test_error_raw"),  # trained weights, with --ema
        "params": sum(p.numel() for p in result.model.parameters()),
        "time_per_epoch_s": sum(r["time_s"] for r in result.history) / len(result.history),
        "cpu_time_per_epoch_s": sum(r["cpu_time_s"] for r in result.history) / len(result.history),
        "cpu_time_s": sum(r["cpu_time_s"] for r in result.history),
        "nfe_forward": last["nfe_forward"],
        "nfe_backward": last["nfe_backward"],
        "epochs": len(result.history),
    }


def step_memory(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Autograd memory (MB) and NFE of one training step of ``model`` on ``(x, y)``."""
    model.zero_grad(set_to_none=True)
    memory = autograd_memory_mb(lambda: cross_entropy(model(x), y))
    block = solver_block(model)
    model.zero_grad(set_to_none=True)
    return {
        "memory_mb": memory,
        "nfe_forward": block.nfe_forward if block is not None else None,
        "nfe_backward": block.nfe_backward if block is not None else None,
    }


def memory_study(
    models: dict[str, torch.nn.Module], x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """One training step's memory as the number of solver steps grows: the ODE-Net with the
    adjoint (tighter tolerances) against RK-Net (smaller steps, backpropagated)."""
    rows = []
    if "odenet" in models:
        block = models["odenet"].ode
        saved = block.rtol, block.atol, block.gradient
        block.gradient = "adjoint"  # whatever the training used: the O(1)-memory claim
        for tol in args.memory_tolerances:
            block.rtol = block.atol = tol
            rows.append(
                {
                    "model": "odenet",
                    "setting": f"rtol=atol={tol:g}, adjoint",
                    **step_memory(models["odenet"], x, y),
                }
            )
        block.rtol, block.atol, block.gradient = saved
    if "rknet" in models:
        block = models["rknet"].ode
        saved_step = block.step_size
        for step in args.memory_step_sizes:
            block.step_size = step
            rows.append(
                {
                    "model": "rknet",
                    "setting": f"step={step:g}",
                    **step_memory(models["rknet"], x, y),
                }
            )
        block.step_size = saved_step
    return rows


def format_table(rows: list[dict[str, Any]], study: list[dict[str, Any]], header: str) -> str:
    lines = [
        "# Table 1: ODE-Net vs ResNet vs RK-Net", "", header, "",
        "| model | test error | params | memory of a step (MB) | time/epoch (s) | CPU s/epoch "
        "| NFE fwd / bwd | paper: error | paper: params | paper: memory | paper: time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in rows:
        paper = PAPER[r["model"]]
        nfe = (
            "-" if r["nfe_forward"] is None else f"{r['nfe_forward']:.1f} / {r['nfe_backward']:.1f}"
        )
        lines.append(
            f"| {NAMES[r['model']]} | {100 * r['test_error']:.2f}% | {r['params'] / 1e6:.3f}M "
            f"| {r['memory_mb']:.1f} | {r['time_per_epoch_s']:.1f} "
            f"| {r['cpu_time_per_epoch_s']:.1f} | {nfe} "
            f"| {paper[0]} | {paper[1]} | {paper[2]} | {paper[3]} |"
        )
    lines += [
        "", "Memory: megabytes of tensors autograd keeps for the backward pass of one training "
        "step (parameters excluded). NFE: mean per training batch in the last epoch. Time: wall "
        "clock of the training batches; CPU s: process CPU time of the same (all threads; "
        "steadier than wall time on a shared machine).", "",
        "## Memory of one training step as the number of solver steps grows", "",
        "| model | setting | NFE fwd | NFE bwd | memory (MB) |", "|---|---|---|---|---|",
    ]  # fmt: skip
    for r in study:
        lines.append(
            f"| {NAMES[r['model']]} | {r['setting']} | {r['nfe_forward']} | {r['nfe_backward']} "
            f"| {r['memory_mb']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def save_memory_plot(
    out: Path, curves: dict[str, list[tuple[float, float]]], xlabel: str, title: str
) -> Path:
    """``memory.png``: one training step's autograd memory (MB) against solver work, one line
    per ``curves`` label of (work, memory) points."""
    from ..viz.plots import figure

    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    for label, points in curves.items():
        ax.plot(*zip(*points), "o-", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("autograd memory of one training step (MB)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "memory.png", dpi=100)
    return out / "memory.png"


def regularisation(config: TrainConfig) -> str:
    """The regularisers of the ODE blocks, for the table's header ("" without)."""
    parts = [f"{r!r}" for r in config.regularisers()]
    return f", ODE-Net and RK-Net regularised by {' + '.join(parts)}" if parts else ""


def averaging(config: TrainConfig) -> str:
    """Label smoothing and the evaluated weight average, for the table's header."""
    parts = []
    if config.label_smoothing > 0:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    if config.ema > 0:
        parts.append(f"errors of the weight average (EMA decay {config.ema:g})")
    return ", " + ", ".join(parts) if parts else ""


def keeps_threads(run: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """``run`` with torch's CPU thread count restored afterwards (``--threads`` changes it)."""

    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        threads = torch.get_num_threads()
        try:
            return run(args)
        finally:
            torch.set_num_threads(threads)

    return wrapper


def regularisation_overrides(model: str) -> dict[str, float]:
    """The regularisation weights a model cannot take, set to zero: a ResNet has no block to
    regularise, a DEQ only its Jacobian at the fixed point."""
    if model == "resnet":
        return {"kinetic": 0.0, "jacobian": 0.0, "derivative": 0.0}
    if model == "deq":
        return {"kinetic": 0.0, "derivative": 0.0}
    return {}


@dataclass
class Trained:
    """Models trained side by side, their table rows (with the memory of one training step)
    and the test batch that memory was measured on; ``complete``: every model's run was
    already complete (``--resume`` of a finished run trained nothing)."""

    rows: list[dict[str, Any]]
    models: dict[str, torch.nn.Module]
    data: ImageDataset
    x: torch.Tensor
    y: torch.Tensor
    complete: bool = False


def train_side_by_side(
    base: TrainConfig,
    names: Sequence[str],
    out: Path,
    memory_batch: int,
    labels: dict[str, str],
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Trained | int:
    """Train each model of ``names`` with ``base``'s recipe (plus its ``overrides``) into
    ``out/NAME``, then measure one training step's memory on ``memory_batch`` test images.
    With ``base.resume`` a model with a checkpoint continues from it, with the options it
    was trained with (the rows share one recipe), and one without (not begun when the run
    stopped, or stopped before its first checkpoint) starts afresh.

    Returns:
        The trained models and their rows, or the first failing training's exit status.

    Raises:
        CheckpointError: ``base.resume`` where ``out`` holds no model's run, or where a
            model's run was trained with other options.
        RunDirectoryError: neither ``base.resume`` nor ``base.overwrite`` where ``out``
            holds a run of one of ``names``.
    """
    if base.resume and not any((out / name).is_dir() for name in labels):
        raise CheckpointError(
            f"--resume: no run in {out} (no model's directory: {', '.join(labels)}); start "
            "without --resume or point --out at the run to continue"
        )
    earlier = [name for name in names if (out / name).is_dir() and run_outputs(out / name)]
    if earlier and not (base.resume or base.overwrite):
        raise RunDirectoryError(
            f"--out {out} holds an earlier run of {', '.join(labels[n] for n in earlier)} "
            f"({', '.join(earlier)}); continue it with --resume, replace it with --overwrite, "
            "or choose another --out"
        )
    configs = {}
    for name in names:
        options = {**regularisation_overrides(name), **(overrides or {}).get(name, {})}
        if base.resume and not (out / name / "checkpoint.pt").is_file():
            # nothing of it to continue: its directory, if any, holds no more than a start
            options.update(resume=False, overwrite=(out / name).exists())
        configs[name] = replace(base, model=name, out=str(out / name), **options)
        if configs[name].resume:
            refuse_other_recipe(out / name, configs[name], labels[name])
    if base.threads > 0:
        torch.set_num_threads(base.threads)  # also for the studies after training
    # (first: data that cannot load fails before any heading or training)
    data = load_dataset(base.data, base.data_dir, base.download, base.cache_dir)
    rows, trained, complete = [], {}, True
    for name in names:
        print(f"\n== {labels[name]} ==", file=sys.stderr)
        result = train(configs[name])
        if result.status != 0:
            return result.status
        trained[name] = result.model
        complete = complete and not result.trained
        rows.append(result_row(name, result))
    device = next(next(iter(trained.values())).parameters()).device
    x, y = data.test_x[:memory_batch].to(device), data.test_y[:memory_batch].to(device)
    for row in rows:
        row["memory_mb"] = step_memory(trained[row["model"]], x, y)["memory_mb"]
    return Trained(rows, trained, data, x, y, complete)


def refuse_other_recipe(run: Path, config: TrainConfig, label: str) -> None:
    """A ``CheckpointError`` unless the options that every row shares (all but
    ``UNSHARED``) are those ``run``'s config.json records: a row trained partly with one
    learning rate and partly with another would carry one of them in the table.

    Arguments:
        run: a model's run directory, resumed.
        config: the options it is resumed with.
        label: the model's name in the table.

    Raises:
        CheckpointError: an option differs (or the config.json cannot be read).
    """
    saved = saved_config(run / "config.json")
    now = json.loads(json.dumps(config.as_dict()))
    try:
        check_compatible(saved, now, tuple(k for k in now if k not in UNSHARED and k in saved))
    except CheckpointError as error:
        raise CheckpointError(
            f"--resume: {label} in {run.parent}: {error} (the table's rows share one recipe)"
        ) from None


def already_complete(runs: Trained, earlier: set[str], names: Sequence[str], table: Path) -> bool:
    """Whether a ``--resume`` found the whole run complete: every model of ``names`` had
    nothing left to train and ``table`` already holds its row (``earlier``: the models of
    the table there). The run's files are then left as they are and ``table`` is printed.

    Arguments:
        runs: the models of this run.
        earlier: the models with a row in the table already written.
        names: the models of this run.
        table: the table written by the run (its Markdown file).

    Returns:
        Whether nothing is left to do (the table was printed, with a line on stderr).
    """
    if not (runs.complete and set(names) <= earlier and table.is_file()):
        return False
    print(table.read_text(), end="")
    print(
        f"the run in {table.parent} is already complete; its files are left as they are",
        file=sys.stderr,
    )
    return True


def table_settings(base: TrainConfig, args: argparse.Namespace) -> dict[str, Any]:
    """The options every row of one table shares: the recipe and the memory study's.

    Arguments:
        base: the training configuration of the run.
        args: the parsed options (``memory_batch``, ``memory_tolerances``,
            ``memory_step_sizes``).

    Returns:
        The options as JSON values.
    """
    settings = {k: v for k, v in base.as_dict().items() if k not in UNSHARED}
    settings["memory_batch"] = args.memory_batch
    settings["memory_tolerances"] = list(args.memory_tolerances)
    settings["memory_step_sizes"] = list(args.memory_step_sizes)
    return json.loads(json.dumps(settings))


def earlier_results(
    path: Path, settings: dict[str, Any], overwrite: bool, what: str
) -> dict[str, Any]:
    """The results an earlier run left in ``path`` (``table1.json``, ``metrics.json``) that
    this run adds to: a run of other models with the same options keeps their rows.

    Arguments:
        path: the earlier run's results file, a JSON object with its options under
            ``"settings"``.
        settings: this run's options that every row shares.
        overwrite: whether results of other options (or unreadable ones) are dropped.
        what: what the results are, for messages (e.g. "a Table 1").

    Returns:
        The earlier results, empty without them (or when they are dropped).

    Raises:
        RunDirectoryError: the earlier results have other options or cannot be read,
            without ``overwrite``.
    """
    if not path.is_file():
        return {}
    replace_it = "start a new table with --overwrite, or choose another --out"
    try:
        saved = json.loads(path.read_text())
        if not isinstance(saved, dict):
            raise TypeError(f"a JSON {type(saved).__name__}, not an object")
    except (OSError, ValueError, TypeError) as error:
        if overwrite:
            return {}
        raise RunDirectoryError(f"{path} cannot be read ({error}); {replace_it}") from error
    before = saved.get("settings", settings)  # (results written without them: not checked)
    different = [
        f"--{key.replace('_', '-')} was {before.get(key)!r}, now {value!r}"
        for key, value in settings.items()
        if before.get(key) != value
    ]
    if different and not overwrite:
        raise RunDirectoryError(
            f"--out {path.parent} holds {what} made with other options "
            f"({'; '.join(different)}); use the same options to add or rerun models, "
            f"{replace_it}"
        )
    return {} if different else saved


def earlier_table(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any]:
    """The rows and memory study of the Table 1 already in ``out`` that this run adds to.

    Arguments:
        out: the run directory.
        settings: this run's ``table_settings``.
        overwrite: whether a table of other options (or an unreadable one) is dropped.

    Returns:
        ``{"rows": [...], "memory": [...]}``, empty without an earlier table (or when it is
        dropped).

    Raises:
        RunDirectoryError: the earlier table has other options or cannot be read, without
            ``overwrite``.
    """
    saved = earlier_results(out / "table1.json", settings, overwrite, "a Table 1")
    return {"rows": list(saved.get("rows", [])), "memory": list(saved.get("memory", []))}


@keeps_threads
def run(args: argparse.Namespace) -> int:
    """Trains ``args.models`` into ``OUT/<model>`` and writes the table of every model run in
    ``OUT`` (see the module's docstring); ``OUT`` is locked meanwhile.

    Arguments:
        args: the parsed options of ``neuralode experiment table1``.

    Returns:
        The exit status (that of the first failing training, else 0).

    Raises:
        RunDirectoryError: ``--out`` is a file, is in use, or holds a table of other options.
    """
    return run_locked(Path(args.out or "out/table1"), lambda out: _run(args, out))


def run_locked(out: Path, body: Callable[[Path], int]) -> int:
    """``body(out)`` with ``out`` created and locked (``RunLock``) while it runs.

    Arguments:
        out: the run directory.
        body: the run, given ``out``; returns the exit status.

    Returns:
        ``body``'s exit status.

    Raises:
        RunDirectoryError: ``out`` is a file, cannot be created, or another run holds it.
    """
    created = not out.exists()
    ensure_directory(out)
    lock = RunLock(out).acquire()
    try:
        return body(out)
    finally:
        lock.release()
        if created:  # a run that wrote nothing (refused at once) leaves no empty --out
            with contextlib.suppress(OSError):  # (rmdir refuses a directory with files)
                out.rmdir()


def _run(args: argparse.Namespace, out: Path) -> int:
    base = TrainConfig.from_namespace(argparse.Namespace(**{**vars(args), "out": str(out)}))
    settings = table_settings(base, args)
    earlier = earlier_table(out, settings, bool(args.overwrite))
    runs = train_side_by_side(base, args.models, out, args.memory_batch, NAMES)
    if isinstance(runs, int):
        return runs
    done = {row["model"] for row in earlier["rows"]}
    if already_complete(runs, done, args.models, out / "table1.md"):
        return 0
    order = list(NAMES)
    kept = [r for r in earlier["rows"] if r["model"] not in args.models]
    rows = sorted(kept + runs.rows, key=lambda r: order.index(r["model"]))
    study = memory_study(runs.models, runs.x, runs.y, args)
    study = [r for r in earlier["memory"] if r["model"] not in args.models] + study
    study.sort(key=lambda r: r["model"] != "odenet")  # ODE-Net's first, each in its order
    header = (
        f"`{' '.join(sys.argv[1:]) or 'neuralode experiment table1'}`: {base.data}, "
        f"{base.epochs} epochs, batch {base.batch_size}, {base.optimizer} lr {base.lr} "
        f"{base.schedule}, ODE-Net {base.method} rtol {base.rtol} atol {base.atol} "
        f"({base.gradient}), RK-Net rk4 step {base.step_size}{regularisation(base)}"
        f"{averaging(base)}; {machine(base.threads)}, {base.pool} pooling."
    )
    if kept:
        names = ", ".join(NAMES[r["model"]] for r in kept)
        header += f" {names}: from an earlier run in this directory with the same options."
    text = format_table(rows, study, header)
    (out / "table1.md").write_text(text)
    table = {"settings": settings, "rows": rows, "memory": study}
    (out / "table1.json").write_text(json.dumps(table, indent=2) + "\n")
    if base.plots and study:
        curves = {
            NAMES[model] + (" (adjoint)" if model == "odenet" else ""): [
                (r["nfe_forward"], r["memory_mb"]) for r in study if r["model"] == model
            ]
            for model in dict.fromkeys(r["model"] for r in study)
        }
        save_memory_plot(out, curves, "NFE of the forward pass", "memory against solver work")
    print(text)
    return 0
