"""Eager solves of this version against an older copy of the package, alternating in one process.

The issue-21 goal "eager: never slower than before": Van der Pol (batch 256, float64, as one
system and per sample) and the MLP 2-64-64-2 at batch 16 (``bench_engine.py``'s problems,
dopri5 rtol 1e-6 atol 1e-8, ``torch.no_grad()``), a two-step solve of a trivial f (dy/dt = -y
on two elements, rk4 with step 0.5: mostly the per-solve work) and a long solve of the same f
(float64, dopri5 rtol 1e-9 atol 1e-12 from t=0 to 40, 193 steps: mostly the host loop's
per-step work), each timed ``--repeats`` times alternating with the older version. Times are
the thread's CPU time (``time.thread_time``): on a shared core they leave out the time other
processes hold it, which wall-clock times do not; the ratios are this version's over the
older one's (best, and median).

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_eager_base.py
DIR`` with DIR a directory holding the older ``src/neuralode`` copied as ``neuralode_base``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from bench_engine import ATOL, RTOL, mlp, vdp

import neuralode as no
from neuralode._cli_types import positive_int


def _solve(lib, f, y0, ts, per_sample: bool) -> float:
    controller = lib.PIController(rtol=RTOL, atol=ATOL)
    with torch.no_grad():
        start = time.thread_time()
        lib.solve(f, y0, ts, controller=controller, per_sample=per_sample)
        return time.thread_time() - start


def _trivial(lib) -> float:
    y0, ts = torch.ones(2), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        start = time.thread_time()
        lib.solve(lambda t, y: -y, y0, ts, solver=lib.RK4(), controller=lib.FixedGrid(0.5))
        return time.thread_time() - start


def _long(lib) -> float:
    y0 = torch.ones(2, dtype=torch.float64)
    ts = torch.tensor([0.0, 40.0], dtype=torch.float64)
    controller = lib.PIController(rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        start = time.thread_time()
        lib.solve(lambda t, y: -y, y0, ts, controller=controller)
        return time.thread_time() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", help="directory holding the older copy as neuralode_base")
    parser.add_argument("--repeats", type=positive_int, default=25)
    args = parser.parse_args(argv)
    if not (Path(args.base) / "neuralode_base" / "__init__.py").is_file():
        parser.error(f"{args.base} holds no neuralode_base/ (a copy of an older src/neuralode)")
    sys.path.insert(0, args.base)
    import neuralode_base as base

    torch.set_num_threads(1)
    van_der_pol, net = vdp(), mlp(16)  # one problem each, shared by both versions
    cases = [
        ("Van der Pol 256, one system", lambda lib: _solve(lib, *van_der_pol, False), 1),
        ("Van der Pol 256, per sample", lambda lib: _solve(lib, *van_der_pol, True), 1),
        ("MLP batch 16", lambda lib: _solve(lib, *net, False), 8),
        ("trivial f, two rk4 steps", _trivial, 16),
        ("trivial f, 193 dopri5 steps", _long, 1),
    ]
    print(f"neuralode from {no.__file__}, before from {base.__file__}")
    print("| problem | before: best (median) | this: best (median) | best ratio | median ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, run, more in cases:
        for lib in (no, base):
            run(lib)
        ours, theirs = [], []
        for _ in range(args.repeats * more):
            ours.append(run(no))
            theirs.append(run(base))
        unit, scale = ("ms", 1e3) if min(theirs) > 1e-3 else ("us", 1e6)
        print(
            f"| {name} | {min(theirs) * scale:.3g} {unit} ({statistics.median(theirs) * scale:.3g})"
            f" | {min(ours) * scale:.3g} {unit} ({statistics.median(ours) * scale:.3g}) | "
            f"{min(ours) / min(theirs):.3f} | "
            f"{statistics.median(ours) / statistics.median(theirs):.3f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
