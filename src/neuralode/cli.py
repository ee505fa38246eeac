"""The ``neuralode`` command line: one entry point, a subcommand per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

# `neuralode experiment NAME`: each module exposes `add_arguments(parser)` and `run(args) -> int`.
EXPERIMENTS: dict[str, str] = {
    "toy2d": "neuralode.experiments.toy2d",
    "density-matching": "neuralode.experiments.density_matching",
    "cnf-mnist": "neuralode.experiments.cnf_mnist",
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
