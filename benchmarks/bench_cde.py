"""Neural CDE against torchcde (see ``neuralode.bench.cde``): the same model, weights and data,
forward, and forward + backward by backpropagation and by the adjoint (also with the
seminorm), the libraries alternated; the smaller case also on the Hermite cubic with backward
differences, both libraries' steps ending at its knots (jump_t).

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_cde.py
    python benchmarks/bench_cde.py --repeats 1      # a smoke run
"""

from __future__ import annotations

import argparse
import importlib.util

import torch

from neuralode._cli_types import positive_int
from neuralode.bench import cde, environment


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per case")
    args = parser.parse_args(argv)
    if importlib.util.find_spec("torchcde") is None:
        parser.error("torchcde is not installed: pip install 'neuralode[bench]'")
    torch.set_num_threads(1)
    print(environment())
    print(cde.table(cde.run(args.repeats)))


if __name__ == "__main__":
    main()
