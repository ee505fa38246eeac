"""compile=True on bench_engine.py's MLP with torch's tanh and with inductor's decomposed tanh.

Each setting runs in its own process (``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH`` is read when
inductor generates code), alternated ``--rounds`` times; per batch the minimum of 21 solves
after 3 warm-ups, under ``torch.no_grad()``, one thread.

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_tanh.py``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BATCHES = (1, 16, 256, 1024)


def child() -> None:
    import torch

    import neuralode as no

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_engine import ATOL, RTOL, mlp

    torch.set_num_threads(1)
    controller = no.PIController(rtol=RTOL, atol=ATOL)
    for batch in BATCHES:
        f, y0, ts = mlp(batch)
        with torch.no_grad():
            for _ in range(3):
                no.solve(f, y0, ts, controller=controller, compile=True)
            best = float("inf")
            for _ in range(21):
                start = time.perf_counter()
                no.solve(f, y0, ts, controller=controller, compile=True)
                best = min(best, time.perf_counter() - start)
        print(batch, best * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child()
    best: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):
        for decompose in ("0", "1"):
            env = {**os.environ, "TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH": decompose}
            out = subprocess.run(
                [sys.executable, __file__, "--child"], env=env, capture_output=True, text=True,
                check=True,
            ).stdout  # fmt: skip
            for line in out.splitlines():
                batch, ms = line.split()
                key = (decompose, int(batch))
                best[key] = min(best.get(key, float("inf")), float(ms))
    print("| MLP batch | compile=True (ms) | with decomposed tanh (ms) |")
    print("|---:|---:|---:|")
    for batch in BATCHES:
        print(f"| {batch} | {best[('0', batch)]:.3f} | {best[('1', batch)]:.3f} |")


if __name__ == "__main__":
    main()
