"""Core benchmark (neuralode vs torchdiffeq vs torchode); the code lives in
``neuralode.bench.core`` so that ``neuralode bench`` can run it too.

    python benchmarks/bench_core.py            # full run
    python benchmarks/bench_core.py --quick    # fewer repeats, smaller batches
    python benchmarks/bench_core.py --out BENCH.md
"""

from neuralode.bench.core import main

if __name__ == "__main__":
    main()
