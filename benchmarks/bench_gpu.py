"""GPU benchmark (neuralode's loops with and without CUDA graphs vs torchdiffeq and torchode);
the code lives in ``neuralode.bench.gpu`` so that ``neuralode bench --parts gpu`` runs it too.

    python benchmarks/bench_gpu.py                        # CUDA if available
    python benchmarks/bench_gpu.py --batches 1024 --compile
    python benchmarks/bench_gpu.py --device cpu --quick
"""

from neuralode.bench.gpu import main

if __name__ == "__main__":
    main()
