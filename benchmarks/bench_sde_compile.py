"""SDE solves eager against ``compile="step"`` (each step attempt one torch.compile graph).

(a) The neural SDE of ``bench_sde.py`` (diagonal noise, batch 512, state 8), dt 1e-2 on
[0, 1] (100 steps), float32, forward under ``no_grad`` through ``no.solve(SDETerm(...),
solver=SDESolver(method), controller=FixedGrid(step_size=1e-2))`` on a ``BrownianInterval``:
euler and srk.
(b) ``bench_sde_per_sample.py``'s mixed-stiffness OU (srk with step doubling, rtol 1e-3,
atol 1e-4, batch 64, ``per_sample=True`` on a ``VirtualBrownianTree``).

Eager and compiled alternate, the median of the repeats after one warm-up round (which
compiles); a compiled solve draws the Brownian motion eagerly before each attempt.

    flock /tmp/neuralode-timing.lock taskset -c 1 env OMP_NUM_THREADS=1 \\
        python benchmarks/bench_sde_compile.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_sde_per_sample import OU

import neuralode as no
from neuralode._cli_types import positive_int
from neuralode.bench.sde import BATCH, STATE, NeuralSDE
from neuralode.sde import BrownianInterval, SDESolver, SDETerm, VirtualBrownianTree

F64 = torch.float64
DT = 1e-2  # (only our solves here: their host-float times land on t1 at any dt)


def _time(solve, repeats: int) -> tuple[dict, dict]:
    times: dict = {False: [], "step": []}
    sols = {}
    with torch.no_grad():
        for r in range(repeats + 1):  # the first round warms up (and compiles)
            for mode in times:
                start = time.perf_counter()
                sols[mode] = solve(mode)
                if r:
                    times[mode].append(time.perf_counter() - start)
    return {mode: statistics.median(t) for mode, t in times.items()}, sols


def neural(method: str, repeats: int) -> str:
    torch.manual_seed(0)
    sde, y0 = NeuralSDE(), torch.randn(BATCH, STATE)
    ts = torch.tensor([0.0, 1.0])
    levy = "space-time" if method == "srk" else "none"

    def solve(mode):
        bm = BrownianInterval(0.0, 1.0, size=(BATCH, STATE), entropy=1234,
                              levy_area_approximation=levy)  # fmt: skip
        return no.solve(SDETerm(sde, bm), y0, ts, solver=SDESolver(method),
                        controller=no.FixedGrid(step_size=DT), compile=mode)  # fmt: skip

    t, sols = _time(solve, repeats)
    diff = (sols[False].ys - sols["step"].ys).abs().max().item()
    return (
        f"| neural SDE, {method} | {1e3 * t[False]:.1f} | {1e3 * t['step']:.1f} | "
        f"{t[False] / t['step']:.2f}x | {sols['step'].stats.n_steps} | {diff:.1e} |"
    )


def per_sample(batch: int, repeats: int) -> str:
    theta = torch.logspace(0, 2, batch, dtype=F64)[:, None]
    bm = VirtualBrownianTree(0.0, 1.0, size=(batch, 1), dtype=F64, entropy=0,
                             levy_area_approximation="space-time")  # fmt: skip
    y0, ts = torch.zeros(batch, 1, dtype=F64), torch.linspace(0, 1, 11, dtype=F64)

    def solve(mode):
        return no.solve(SDETerm(OU(theta), bm), y0, ts, solver=SDESolver("srk", step_doubling=True),
                        controller=no.PIController(rtol=1e-3, atol=1e-4), per_sample=True,
                        compile=mode)  # fmt: skip

    t, sols = _time(solve, repeats)
    steps = {m: int(s.stats.sample_steps.sum()) for m, s in sols.items()}
    return (
        f"| OU per sample, srk | {1e3 * t[False]:.1f} | {1e3 * t['step']:.1f} | "
        f"{t[False] / t['step']:.2f}x | {steps[False]} / {steps['step']} | "
        f"{(sols[False].ys - sols['step'].ys).abs().max().item():.1e} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per case")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads 1\n")
    print("| problem | eager (ms) | compile='step' (ms) | speed-up | steps (eager / compiled) "
          "| max abs diff |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for method in ("euler", "srk"):
        print(neural(method, args.repeats))
    print(per_sample(64, args.repeats))


if __name__ == "__main__":
    main()
