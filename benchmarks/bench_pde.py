"""PDE benchmark: implicit Radau (LU and Jacobian-free Newton-Krylov) and IMEX KenCarp4 vs
dopri5 on diffusion-dominated problems by the method of lines (see ``neuralode.bench.pde``).

    python benchmarks/bench_pde.py              # both problems, 3 interleaved repeats
    python benchmarks/bench_pde.py --quick      # one repeat, heat1d only
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from neuralode._cli_types import positive_int
from neuralode.bench import pde


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, heat1d only")
    parser.add_argument("--repeats", type=positive_int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--problems", nargs="+", choices=sorted(pde.PROBLEMS), default=sorted(pde.PROBLEMS)
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    repeats = 1 if args.quick else args.repeats
    names = ["heat1d"] if args.quick else args.problems
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"one thread, 1-min load average {os.getloadavg()[0]:.2f} at start\n"
    )
    for name in names:
        problem = pde.PROBLEMS[name]()
        rows = pde.run_problem(problem, repeats)
        print(pde.table(problem, rows), "\n", flush=True)


if __name__ == "__main__":
    main()
