"""The engine issue's problems: time and steps of neuralode's execution modes.

MLP 2-64-64-2 (tanh, float32, fixed seed) dopri5 rtol 1e-6 atol 1e-8, t in [0, 1], batch
1 / 16 / 256 / 1024, solved as one system; Van der Pol (float64) with mu from 1 to 25 across a
batch of 256, t in [0, 10], as one system and per sample. One thread; the minimum (and
median) of ``--repeats`` runs after warm-up runs (compilation excluded, its time reported
apart). Modes that a version of neuralode lacks are skipped, so one script measures before
and after a change (run it with each version first on ``PYTHONPATH``).

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_engine.py``.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import torch

import neuralode as no

RTOL, ATOL = 1e-6, 1e-8


def mlp(batch: int):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64), torch.nn.Tanh(),
        torch.nn.Linear(64, 2),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(batch, 2, generator=gen)

    def f(t, y):
        return net(y)

    return f, y0, torch.tensor([0.0, 1.0])


def vdp(batch: int = 256):
    mu = torch.linspace(1.0, 25.0, batch, dtype=torch.float64)

    def f(t, y):
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(batch, 1)
    return f, y0, torch.tensor([0.0, 10.0], dtype=torch.float64)


def modes() -> dict[str, dict]:
    """The execution modes this version of neuralode has, as ``solve`` keywords."""
    params = inspect.signature(no.solve).parameters
    out = {"eager": {}}
    if "compile_step" in params or "compile" in params:
        out["compile_step"] = {"compile": "step"} if "compile" in params else {"compile_step": True}
    if "compile" in params:
        out["compile (whole solve)"] = {"compile": True}
    return out


def run(f, y0, ts, per_sample: bool, kwargs: dict):
    with torch.no_grad():
        return no.solve(
            f, y0, ts, solver=no.Dopri5(), controller=no.PIController(RTOL, ATOL),
            per_sample=per_sample, **kwargs,
        )  # fmt: skip


def measure(name, f, y0, ts, per_sample, kwargs, repeats):
    t0 = time.perf_counter()
    sol = run(f, y0, ts, per_sample, kwargs)
    first = time.perf_counter() - t0
    for _ in range(2):
        run(f, y0, ts, per_sample, kwargs)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run(f, y0, ts, per_sample, kwargs)
        times.append(time.perf_counter() - t0)
    s = sol.stats
    steps = int(s.sample_steps.max()) if per_sample else s.n_steps
    return {
        "problem": name,
        "best_ms": 1e3 * min(times),
        "median_ms": 1e3 * statistics.median(times),
        "first_s": first,
        "steps": steps,
        "accepted": int(s.sample_accepted.max()) if per_sample else s.n_accepted,
        "y_end": sol.ys[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--only", default="", help="comma-separated mode names")
    parser.add_argument("--batches", default="1,16,256,1024")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = [(f"MLP batch {b}", *mlp(b), False) for b in map(int, args.batches.split(","))]
    problems += [("VdP 256 one system", *vdp(), False), ("VdP 256 per sample", *vdp(), True)]
    wanted = [m for m in args.only.split(",") if m]
    print(f"torch {torch.__version__}, neuralode from {no.__file__}")
    print("| problem | mode | best ms | median ms | first call s | steps (accepted) |")
    print("|---|---|---:|---:|---:|---|")
    for mode, kwargs in modes().items():
        if wanted and mode not in wanted:
            continue
        for name, f, y0, ts, per_sample in problems:
            r = measure(name, f, y0, ts, per_sample, kwargs, args.repeats)
            print(
                f"| {name} | {mode} | {r['best_ms']:.3f} | {r['median_ms']:.3f} | "
                f"{r['first_s']:.2f} | {r['steps']} ({r['accepted']}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
