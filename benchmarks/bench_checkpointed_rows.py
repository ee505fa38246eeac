"""Checkpointed() against Direct() per sample: the peak memory and time of one forward +
backward.

A neural ODE MLP 8-256-256-8 (tanh) with one time scale per sample (0.5 to 5 across the
batch, so the samples take different steps), float32, one torch thread, dopri5 at rtol 1e-6,
atol 1e-8 on [0, 3] with 5 outputs, ``per_sample=True``; the loss the sum of squares of the
outputs. Each case runs in a fresh process after a warm-up solve: the peak resident set
(``VmHWM``) above the resident set before the solve, with glibc's malloc taking every block
from mmap and returning freed memory at once, so that the resident set follows the live
memory. The strategies alternate from round to round; the table gives each one's range.

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_checkpointed_rows.py
    python benchmarks/bench_checkpointed_rows.py --rounds 1 --batch 16    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

import neuralode as no
from neuralode._cli_types import positive_int

STRATEGIES = {"Direct": no.Direct, "Checkpointed": no.Checkpointed}


class ScaledMLP(torch.nn.Module):
    def __init__(self, batch: int):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 256),
            torch.nn.Tanh(),
            torch.nn.Linear(256, 256),
            torch.nn.Tanh(),
            torch.nn.Linear(256, 8),
        )
        self.scale = torch.linspace(0.5, 5.0, batch)[:, None]

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scale * self.net(y)


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not found in /proc/self/status")


def case(strategy: str, batch: int) -> dict:
    """One forward + backward in this process, after a warm-up solve."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    field = ScaledMLP(batch)
    y0 = torch.randn(batch, 8, requires_grad=True)
    ts = torch.linspace(0.0, 3.0, 5)

    def run() -> no.Solution:
        return no.solve(
            field,
            y0,
            ts,
            controller=no.PIController(1e-6, 1e-8),
            gradient=STRATEGIES[strategy](),
            per_sample=True,
        )

    run().ys.square().sum().backward()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM from the resident set now
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    sol = run()
    sol.ys.square().sum().backward()
    seconds = time.perf_counter() - start
    return {
        "peak_mib": (_status_kib("VmHWM") - before) / 1024,
        "seconds": seconds,
        "sample_steps": int(sol.stats.n_steps),
        "nfe": sol.stats.nfe,
        "nfe_backward": sol.stats.nfe_backward,
    }


def run_case(strategy: str, batch: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--case", strategy, "--batch", str(batch)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: dict[str, list[dict]]) -> str:
    lines = [
        "| gradient | sample steps | NFE forward / backward | peak memory rise (MiB) "
        "| forward + backward (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for strategy, runs in results.items():
        peaks = [r["peak_mib"] for r in runs]
        seconds = [r["seconds"] for r in runs]
        first = runs[0]
        lines.append(
            f"| {strategy}() | {first['sample_steps']:,} | {first['nfe']} / "
            f"{first['nfe_backward']} | {min(peaks):.1f}-{max(peaks):.1f} "
            f"| {min(seconds):.2f}-{max(seconds):.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=positive_int, default=3, help="runs per strategy")
    parser.add_argument("--batch", type=positive_int, default=256, help="samples")
    parser.add_argument("--case", choices=tuple(STRATEGIES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(case(args.case, args.batch)))
        return
    results: dict[str, list[dict]] = {name: [] for name in STRATEGIES}
    names = list(STRATEGIES)
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(run_case(name, args.batch))
            print(f"round {r + 1}: {name} {results[name][-1]}", flush=True)
    print()
    print(table(results))


if __name__ == "__main__":
    main()
