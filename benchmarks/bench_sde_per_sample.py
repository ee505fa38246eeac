"""Per-sample SDE solves against one system, and the cost of a Brownian query.

(a) Ornstein-Uhlenbeck dY = -theta_i (Y - sin t) dt + 0.5 dW with theta_i from 1 to 100
across the batch (float64, srk with step doubling, rtol 1e-3, atol 1e-4, t in [0, 1], 11
outputs, both on the same VirtualBrownianTree): steps of every row summed, and wall time of
``per_sample=True`` against one system, the two alternated, median of the repeats.
(b) One query ``bm(ta, tb, return_U=True)`` of a batch of 256 rows (one channel): a
``BrownianInterval`` queried along a solve (consecutive intervals of 1/1000), and a
``VirtualBrownianTree`` with the same scalar intervals and with one interval per row.

    flock /tmp/neuralode-timing.lock taskset -c 1 env OMP_NUM_THREADS=1 \\
        python benchmarks/bench_sde_per_sample.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import neuralode as no
from neuralode._cli_types import positive_int
from neuralode.sde import BrownianInterval, SDESolver, SDETerm, VirtualBrownianTree

F64 = torch.float64


class OU(torch.nn.Module):
    noise_type, sde_type = "additive", "ito"

    def __init__(self, theta: torch.Tensor):
        super().__init__()
        self.theta = theta

    def f(self, t, y):
        t = t[:, None] if t.ndim else t
        return -self.theta * (y - torch.sin(t))

    def g(self, t, y):
        return 0.5 * torch.eye(y.shape[-1], dtype=y.dtype).expand(y.shape[0], -1, -1)


def mixed_stiffness(batch: int, repeats: int) -> dict:
    theta = torch.logspace(0, 2, batch, dtype=F64)[:, None]
    bm = VirtualBrownianTree(
        0.0, 1.0, size=(batch, 1), dtype=F64, entropy=0, levy_area_approximation="space-time"
    )
    y0, ts = torch.zeros(batch, 1, dtype=F64), torch.linspace(0, 1, 11, dtype=F64)
    kwargs = dict(
        solver=SDESolver("srk", step_doubling=True),
        controller=no.PIController(rtol=1e-3, atol=1e-4),
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    sols = {}
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first round warms up
            for per_sample in (True, False):
                start = time.perf_counter()
                sols[per_sample] = no.solve(
                    SDETerm(OU(theta), bm), y0, ts, per_sample=per_sample, **kwargs
                )
                times[per_sample].append(time.perf_counter() - start)
    apart, system = sols[True], sols[False]
    return {
        "batch": batch,
        "row_steps_apart": int(apart.stats.sample_steps.sum()),
        "row_steps_system": batch * system.stats.n_steps,
        "steps_system": system.stats.n_steps,
        "steps_range": (int(apart.stats.sample_steps.min()), int(apart.stats.sample_steps.max())),
        "time_apart": statistics.median(times[True][1:]),
        "time_system": statistics.median(times[False][1:]),
        "difference": (apart.ys[-1] - system.ys[-1]).abs().max().item(),
    }


def query_cost(batch: int, n: int, repeats: int) -> dict:
    kwargs = dict(size=(batch, 1), dtype=F64, entropy=0, levy_area_approximation="space-time")
    ta = torch.rand(batch, dtype=F64, generator=torch.Generator().manual_seed(0)) * 0.9
    tb = ta + 0.01
    out: dict[str, list[float]] = {"interval": [], "virtual": [], "virtual rows": []}
    for _ in range(repeats):
        interval = BrownianInterval(0.0, 1.0, **kwargs)
        virtual = VirtualBrownianTree(0.0, 1.0, **kwargs)
        start = time.perf_counter()
        for k in range(n):
            interval(k / n, (k + 1) / n, return_U=True)
        out["interval"].append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        for k in range(n):
            virtual(k / n, (k + 1) / n, return_U=True)
        out["virtual"].append((time.perf_counter() - start) / n)
        start = time.perf_counter()
        for _ in range(n):
            virtual(ta, tb, return_U=True)
        out["virtual rows"].append((time.perf_counter() - start) / n)
    return {name: statistics.median(values) for name, values in out.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed repeats per case")
    parser.add_argument("--batch", type=positive_int, default=64, help="rows of the OU batch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, threads 1")
    r = mixed_stiffness(args.batch, args.repeats)
    print(
        "\n(a) mixed-stiffness OU, srk + step doubling\n\n"
        "| mode | steps (rows x steps) | steps per row | time (ms) |\n"
        "| --- | ---: | ---: | ---: |\n"
        f"| per_sample=True | {r['row_steps_apart']} | {r['steps_range'][0]}-"
        f"{r['steps_range'][1]} | {1e3 * r['time_apart']:.1f} |\n"
        f"| one system | {r['row_steps_system']} | {r['steps_system']} | "
        f"{1e3 * r['time_system']:.1f} |\n\n"
        f"row-steps ratio (system / per sample) {r['row_steps_system'] / r['row_steps_apart']:.2f}"
        f", time ratio {r['time_system'] / r['time_apart']:.2f}, "
        f"max |difference| of the final states {r['difference']:.1e}"
    )
    q = query_cost(256, 1000, args.repeats)
    print(
        "\n(b) one query bm(ta, tb, return_U=True), batch 256\n\n"
        "| Brownian motion | query (us) |\n| --- | ---: |\n"
        f"| BrownianInterval, consecutive intervals | {1e6 * q['interval']:.0f} |\n"
        f"| VirtualBrownianTree, the same intervals | {1e6 * q['virtual']:.0f} |\n"
        f"| VirtualBrownianTree, one interval per row | {1e6 * q['virtual rows']:.0f} |"
    )


if __name__ == "__main__":
    main()
