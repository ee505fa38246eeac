"""The ``neuralode`` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ._cli_types import thread_count

# `neuralode experiment NAME`: each module exposes `add_arguments(parser)` and `run(args) -> int`.
EXPERIMENTS: dict[str, str] = {
    "table1": "neuralode.experiments.table1",
    "spirals": "neuralode.experiments.spirals",
    "toy2d": "neuralode.experiments.toy2d",
    "density-matching": "neuralode.experiments.density_matching",
    "cnf-mnist": "neuralode.experiments.cnf_mnist",
    "implicit": "neuralode.experiments.implicit",
    "pde": "neuralode.experiments.pde",
    "latent-sde": "neuralode.experiments.latent_sde",
    "sde-gan": "neuralode.experiments.sde_gan",
    "cde": "neuralode.experiments.cde",
    "hnn": "neuralode.experiments.hnn",
}

# the options that name a file or directory: a leading ~ is the home directory, as in a shell
PATH_OPTIONS = ("out", "data_dir", "cache_dir", "diffrax_python")


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .experiments.demo import format_table, run_demo
    from .training.rundir import open_run_directory, remove_run_outputs, run_outputs
    from .viz.plots import require_matplotlib

    require_matplotlib()  # the plots are part of the demo's result: refuse before any work
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    lock = open_run_directory(out, resume=False, overwrite=args.overwrite, resumable=False)
    found = set(run_outputs(out))  # (--overwrite removed an earlier run's)
    try:
        print(f"neuralode demo: solving 3 problems with 6 methods, writing to {out}/")
        rows = run_demo(out, quick=args.quick)
    except BaseException:
        # an unfinished demo (Ctrl-C, an error) leaves nothing that refuses a plain rerun
        remove_run_outputs(out, keep=found)
        raise
    finally:
        lock.release()
    print()
    print(format_table(rows))
    print(f"\nwrote {out / 'demo.json'}, {out / 'trajectories.png'}, {out / 'work_precision.png'}")
    return 0


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from .bench.suite import add_arguments

    add_arguments(parser)


def _bench(args: argparse.Namespace) -> int:
    from .bench.suite import run

    return run(args)


def _train(args: argparse.Namespace) -> int:
    from ._errors import SolverError
    from .training import TrainConfig, train
    from .training.config import ignored_options

    if args.out is None:
        args.out = f"out/train-{args.model}"
    config = TrainConfig.from_namespace(args)
    ignored = ignored_options(config)
    if ignored and os.environ.get("RANK", "0") == "0":  # (under torchrun: once)
        warnings.warn(f"{args.model} on {args.data} ignores {', '.join(ignored)}", stacklevel=1)
    try:
        result = train(config)
    except SolverError as error:
        _error("train", f"the ODE solve failed ({error}); {_solve_advice(error, args)}")
        return 2
    if result.status == 0 and result.history and result.is_main:
        last = result.history[-1]
        nfe = ""
        if last["nfe_forward"] is not None:
            nfe = f", NFE forward {last['nfe_forward']:.1f} backward {last['nfe_backward']:.1f}"
        plots = ",*.png" if args.plots else ""
        wrote = f"wrote {result.out}/{{metrics.jsonl,checkpoint.pt{plots}}}"
        if not result.trained:  # --resume of a complete run
            wrote = f"the finished run in {result.out}/"
        print(
            f"{args.model} on {args.data}: test accuracy {100 * last['test_accuracy']:.2f}% "
            f"(error {100 * last['test_error']:.2f}%){nfe}; {wrote}"
        )
    return result.status


def _solve_advice(error: Exception, args: argparse.Namespace) -> str:
    """What to change after the ODE solve of a training step failed: a fixed grid with more
    steps than the solver allows needs a larger --step-size; any other failure most likely
    comes from diverging weights."""
    from . import METHODS
    from ._errors import MaxStepsError

    fixed = args.model == "rknet" or (
        args.method in METHODS and not METHODS[args.method]().adaptive
    )
    if isinstance(error, MaxStepsError) and fixed:
        return f"use a larger --step-size (now {args.step_size:g})"
    return "the training may have diverged: try a lower --lr, or looser --rtol/--atol"


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block), as every error of the CLI."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    """What ``neuralode --version`` prints: this package's version and torch's."""
    import torch

    from . import __version__

    return f"neuralode {__version__} (torch {torch.__version__}, Python {sys.version.split()[0]})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="neuralode", description="Neural differential equations in PyTorch.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="solve problems with known solutions: error, NFE, time and plots"
    )
    demo.add_argument(
        "--out", default="out/solver-demo", help="output directory (default out/solver-demo)"
    )
    demo.add_argument("--quick", action="store_true", help="fewer tolerances, for a smoke run")
    demo.add_argument(
        "--threads",
        type=thread_count,
        default=0,
        help="torch CPU threads, 0 = torch default (default %(default)s)",
    )
    demo.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out (without it, such an --out is refused)",
    )
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench",
        help="benchmarks vs torchdiffeq, torchode, torchsde, SciPy and diffrax: tables, plots",
    )
    _add_bench_arguments(bench)
    bench.set_defaults(run=_bench)

    from .training import add_train_arguments

    train = commands.add_parser(
        "train",
        help="train ODE-Net, ResNet, RK-Net or DEQ on mnist5k/digits/MNIST (works under torchrun)",
    )
    add_train_arguments(train)
    train.set_defaults(run=_train)
    if EXPERIMENTS:
        experiment = commands.add_parser("experiment", help="reproduce an experiment of the field")
        names = experiment.add_subparsers(dest="experiment", required=True, metavar="NAME")
        for name, module_name in EXPERIMENTS.items():
            module = importlib.import_module(module_name)
            sub = names.add_parser(name, help=(module.__doc__ or name).strip().splitlines()[0])
            module.add_arguments(sub)
            sub.set_defaults(run=module.run)
    return parser


def _error(command: str, message: str) -> None:
    """Prints ``message`` as one line on stderr (``command`` may be empty)."""
    line = " ".join(message.split())
    prefix = f"neuralode {command}" if command else "neuralode"
    print(f"{prefix}: error: {line}", file=sys.stderr)


def _run(args: argparse.Namespace, command: str) -> int:
    """Runs the command with its warnings printed as one line each (the previous
    ``warnings.showwarning`` is restored afterwards)."""
    from .training.runtime import one_line_warnings

    with warnings.catch_warnings():
        warnings.showwarning = one_line_warnings(command)
        return args.run(args)


def _command_named(argv: Sequence[str]) -> str:
    """The command that unparsed arguments name, as in error messages: ``train`` or
    ``experiment spirals`` (empty when they name none)."""
    words = [word for word in argv if not word.startswith("-")][:2]
    return " ".join(words if words[:1] == ["experiment"] else words[:1])


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; errors print one line (set NEURALODE_TRACEBACK=1 to see the
    traceback of an unexpected one) and return a non-zero status; warnings print one line
    each.

    Arguments:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0 on success, 1 for an unexpected error, 2 for bad input, 130
        when interrupted.
    """
    try:  # Ctrl-C while the modules load or the arguments parse
        from .data import DatasetNotFoundError
        from .training import (
            INTERRUPTED,
            CheckpointError,
            RunComplete,
            TrainingDiverged,
            TrainingInterrupted,
        )

        parser = build_parser()
        args, unknown = parser.parse_known_args(argv)
        command = args.command if args.command != "experiment" else f"experiment {args.experiment}"
        if unknown:  # named by the command they were given to, as its other errors are
            _Parser(prog=f"neuralode {command}").error(
                f"unrecognized arguments: {' '.join(unknown)}"
            )
        if getattr(args, "out", None) == "":  # Path("") is the current directory
            _Parser(prog=f"neuralode {command}").error(
                "argument --out: must name a directory, got '' (an unset shell variable?)"
            )
        for name in PATH_OPTIONS:  # "--out=~/runs" reaches us unexpanded (so do quoted ~)
            value = getattr(args, name, None)
            if isinstance(value, str) and value.startswith("~"):
                setattr(args, name, os.path.expanduser(value))
    except KeyboardInterrupt:
        _error(_command_named(sys.argv[1:] if argv is None else argv), "interrupted")
        return 130
    try:
        return _run(args, command)
    except (DatasetNotFoundError, CheckpointError, ValueError, TrainingDiverged) as error:
        # bad input or a refused run directory (RunDirectoryError is a ValueError), from any
        # command that trains: the message says what to do
        if os.environ.get("NEURALODE_TRACEBACK"):
            raise
        _error(command, str(error))
        return 2
    except TrainingInterrupted:  # the checkpoints are saved and the message printed
        return INTERRUPTED
    except RunComplete as complete:  # --resume of a finished experiment: nothing to do
        print(f"neuralode {command}: {' '.join(str(complete).split())}", file=sys.stderr)
        return 0
    except KeyboardInterrupt:
        _error(command, "interrupted")
        return 130
    except Exception as error:
        if os.environ.get("NEURALODE_TRACEBACK"):
            raise
        detail = str(error) or "(no message)"
        _error(
            command,
            f"{type(error).__name__}: {detail} (set NEURALODE_TRACEBACK=1 for the traceback)",
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
