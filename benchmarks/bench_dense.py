"""Dense solutions: ``Solution.evaluate`` at 1,000 points against the solve and against one
batched pass of the interpolant over every kept step.

Problems: (a) an MLP field 16-128-16 (tanh, float32, seeded) on a batch of 64 states, one
problem, t in [0, 5]; (b) the same field per sample (``per_sample=True``), each of the 64
samples its own steps, evaluated at 1,000 times per sample (64,000 points). Under
``torch.no_grad()``, rtol 1e-6, atol 1e-8. Columns: the solve with ``dense=True`` and
without (ts = the span only); the solve's own outputs at 1,000 times (``ts`` of 1,000
sorted times: the loop interpolates them step by step; one problem only); ``evaluate`` at
1,000 times (per sample: (64, 1,000)); ``one pass``: the method's dense output
(``Solver.dense_weights`` and one product per step) once at every kept step (theta = 0.5,
no search); the last column compares the cost per evaluated point with the cost per kept
step of that pass (1: a point costs what one step's dense output costs). Median of
interleaved repeats.

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_dense.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import neuralode as no
from neuralode._cli_types import positive_int


def _field(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(16, 128), torch.nn.Tanh(), torch.nn.Linear(128, 16))

    class Field(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.net(y) - 0.1 * y

    return Field()


def _one_pass(sol: no.Solution) -> torch.Tensor:
    """The dense output once at the middle of every kept step (all samples): the method's
    weights and one product per step, no search."""
    d = sol.interpolation
    h = d.h.reshape(-1)
    weights = d.solver.dense_weights(torch.full_like(h, 0.5), h, d.rows)  # (steps, 2 + K)
    rows = d.rows.reshape(len(h), d.width, -1)
    return torch.bmm(weights[:, None, :], rows)


def _time(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=15)
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    field = _field()
    torch.manual_seed(1)
    y0 = torch.randn(64, 16)
    span = torch.tensor([0.0, 5.0])
    ctrl = no.PIController(rtol=1e-6, atol=1e-8)
    print(
        "| problem | method | kept steps | solve | solve, dense=True | solve at 1,000 ts "
        "| evaluate 1,000 t | one pass over the steps | evaluate / solve "
        "| evaluate / (solve at 1,000 ts - solve) | evaluate per point / one pass per step |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for per_sample in (False, True):
        for method in ("dopri5", "tsit5", "dopri8"):
            kw = dict(solver=method, controller=ctrl, per_sample=per_sample)
            with torch.no_grad():
                sol = no.solve(field, y0, span, dense=True, **kw)
                shape = (64, 1000) if per_sample else (1000,)
                t = torch.rand(shape) * 5.0
                outputs = torch.cat([span[:1], t.reshape(-1)[:999].sort().values, span[1:]])
                jobs = {
                    "outputs": lambda kw=kw, ts=outputs: no.solve(field, y0, ts, **kw),
                    "plain": lambda kw=kw: no.solve(field, y0, span, **kw),
                    "dense": lambda kw=kw: no.solve(field, y0, span, dense=True, **kw),
                    "evaluate": lambda sol=sol, t=t: sol.evaluate(t),
                    "pass": lambda sol=sol: _one_pass(sol),
                }
                times: dict[str, list[float]] = {name: [] for name in jobs}
                for _ in range(args.repeats):  # interleaved
                    for name, job in jobs.items():
                        times[name] += _time(job, 1)
            med = {name: statistics.median(v) * 1e3 for name, v in times.items()}
            kept = int(sol.interpolation.reach.isfinite().sum())
            label = "per sample, 64 x 1,000 t" if per_sample else "one problem (64, 16)"
            extra = med["outputs"] - med["plain"]
            print(
                f"| {label} | {method} | {kept} | {med['plain']:.1f} ms | {med['dense']:.1f} ms "
                f"| {med['outputs']:.1f} ms | {med['evaluate']:.2f} ms | {med['pass']:.2f} ms "
                f"| {med['evaluate'] / med['plain']:.2f} | {med['evaluate'] / extra:.2f} "
                f"| {(med['evaluate'] / t.numel()) / (med['pass'] / kept):.2f} |"
            )


if __name__ == "__main__":
    main()
