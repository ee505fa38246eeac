"""The ``neuralode`` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

# `neuralode experiment NAME`: each module exposes `add_arguments(parser)` and `run(args) -> int`.
EXPERIMENTS: dict[str, str] = {
    "table1": "neuralode.experiments.table1",
    "spirals": "neuralode.experiments.spirals",
    "toy2d": "neuralode.experiments.toy2d",
    "density-matching": "neuralode.experiments.density_matching",
    "cnf-mnist": "neuralode.experiments.cnf_mnist",
    "pde": "neuralode.experiments.pde",
}


def _demo(args: argparse.Namespace) -> int:
    from .experiments.demo import format_table, run_demo

    out = Path(args.out)
    print(f"neuralode demo: solving 3 problems with 6 methods, writing to {out}/")
    rows = run_demo(out, quick=args.quick)
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
    from .data import DatasetNotFoundError
    from .training import CheckpointError, TrainConfig, train

    if args.out is None:
        args.out = f"out/train-{args.model}"
    try:
        result = train(TrainConfig.from_namespace(args))
    except (DatasetNotFoundError, CheckpointError, ValueError) as error:
        print(f"neuralode train: error: {error}", file=sys.stderr)
        return 2
    if result.status == 0 and result.history and result.is_main:
        last = result.history[-1]
        nfe = ""
        if last["nfe_forward"] is not None:
            nfe = f", NFE forward {last['nfe_forward']:.1f} backward {last['nfe_backward']:.1f}"
        print(
            f"{args.model} on {args.data}: test accuracy {100 * last['test_accuracy']:.2f}% "
            f"(error {100 * last['test_error']:.2f}%){nfe}; wrote {result.out}/"
            "{metrics.jsonl,checkpoint.pt,*.png}"
        )
    return result.status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuralode", description="Neural differential equations in PyTorch."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo", help="solve problems with known solutions: error, NFE, time and plots"
    )
    demo.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    demo.add_argument("--quick", action="store_true", help="fewer tolerances, for a smoke run")
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench", help="benchmarks vs torchdiffeq, torchode and SciPy: tables and a plot"
    )
    _add_bench_arguments(bench)
    bench.set_defaults(run=_bench)

    from .training import add_train_arguments

    train = commands.add_parser(
        "train",
        help="train ODE-Net, ResNet or RK-Net on mnist5k/digits/MNIST (works under torchrun)",
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
