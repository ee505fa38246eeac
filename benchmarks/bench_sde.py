"""Neural SDE against torchsde (see ``neuralode.bench.sde``): euler / milstein / srk, forward
and forward + adjoint backward on the same Brownian motion, and the adjoint's memory at 128 and
1024 steps.

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_sde.py
    python benchmarks/bench_sde.py --repeats 1      # a smoke run
    python benchmarks/bench_sde.py --only-memory --memory-steps 100 1000 3000
"""

from __future__ import annotations

import argparse

import torch

from neuralode._cli_types import positive_int
from neuralode.bench import environment, sde


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per case")
    parser.add_argument(
        "--brownian",
        choices=("theirs", "ours"),
        default="theirs",
        help="whose BrownianInterval both libraries get",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory study")
    parser.add_argument("--only-memory", action="store_true", help="only the memory study")
    parser.add_argument(
        "--memory-steps",
        type=positive_int,
        nargs="+",
        default=[128, 1024],
        help="the numbers of steps of the memory study",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(environment())
    if not args.only_memory:
        print(sde.table(sde.run(args.repeats, args.brownian)))
    if not args.no_memory:
        print()
        print(sde.memory_table(sde.memory(tuple(args.memory_steps))))


if __name__ == "__main__":
    main()
