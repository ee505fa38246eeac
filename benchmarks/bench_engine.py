"""The engine issue's problems: time and steps of neuralode's execution modes, and diffrax's.

MLP 2-64-64-2 (tanh, float32, fixed seed) dopri5 rtol 1e-6 atol 1e-8, t in [0, 1], batch
1 / 16 / 256 / 1024, solved as one system; at batch 16 also forward + ``Backsolve()`` backward
(d sum(y(1)) / d parameters); Van der Pol (float64) with mu from 1 to 25 across a batch of
256, t in [0, 10], as one system and per sample. One thread; the minimum (and median) of
``--repeats`` runs after warm-up runs (compilation excluded, its time reported apart). With
``--base DIR`` (a directory holding an older copy of the package renamed ``neuralode_base``)
every timing of the older version is interleaved with this one's in the same process, so
their ratio holds on a noisy machine; modes a version lacks are skipped. With ``--diffrax
PYTHON`` (an interpreter with jax and diffrax) ``bench_engine_diffrax.py`` then runs the same
problems in its own process on the same core, and ``compile=True``'s time over diffrax's is
printed per problem.

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_engine.py
--diffrax /work/venv-jax/bin/python``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import neuralode as no
from neuralode._cli_types import positive_int, widths

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


def dump(directory: str, batches) -> None:
    """The MLP weights and initial states as .npz files (``bench_engine_diffrax.py``)."""
    import numpy as np

    for b in batches:
        f, y0, _ = mlp(b)
        linears = [m for m in f.__closure__[0].cell_contents if isinstance(m, torch.nn.Linear)]
        arrays = {f"y0_{b}": y0.numpy()}
        for i, layer in enumerate(linears):
            arrays[f"W{i}"] = layer.weight.detach().numpy().T
            arrays[f"b{i}"] = layer.bias.detach().numpy()
        np.savez(f"{directory}/mlp_{b}.npz", **arrays)


class Field(torch.nn.Module):
    """The MLP's f(t, y) = net(y) as a module: ``Backsolve`` differentiates its parameters
    (and a compiled backward solve substitutes them through ``torch.func``)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def gradient_run(lib, field, y0, ts, kwargs: dict):
    """Forward + ``Backsolve()`` backward: d sum(y(1)) / d parameters."""
    step = "compile_step" in kwargs or kwargs.get("compile") == "step"
    sol = lib.solve(
        field, y0, ts, solver=lib.Dopri5(), controller=lib.PIController(RTOL, ATOL),
        gradient=lib.Backsolve(compile_step=step), **kwargs,
    )  # fmt: skip
    torch.autograd.grad(sol.ys[-1].sum(), list(field.parameters()))
    return sol


def modes(lib=no) -> dict[str, dict]:
    """The execution modes a version of neuralode has, as ``solve`` keywords."""
    params = inspect.signature(lib.solve).parameters
    out = {"eager": {}}
    if "compile_step" in params or "compile" in params:
        out["compile_step"] = {"compile": "step"} if "compile" in params else {"compile_step": True}
    if "compile" in params:
        out["compile (whole solve)"] = {"compile": True}
    return out


def run(lib, f, y0, ts, per_sample: bool, kwargs: dict):
    if per_sample is None:  # the gradient problem
        return gradient_run(lib, f, y0, ts, kwargs)
    with torch.no_grad():
        return lib.solve(
            f, y0, ts, solver=lib.Dopri5(), controller=lib.PIController(RTOL, ATOL),
            per_sample=per_sample, **kwargs,
        )  # fmt: skip


def measure(runs: dict, f, y0, ts, per_sample, repeats):
    """Interleaved timings of ``runs`` (label -> (lib, solve keywords)) on one problem."""
    first, sols, times = {}, {}, {label: [] for label in runs}
    for label, (lib, kwargs) in runs.items():
        t0 = time.perf_counter()
        sols[label] = run(lib, f, y0, ts, per_sample, kwargs)
        first[label] = time.perf_counter() - t0
        for _ in range(2):
            run(lib, f, y0, ts, per_sample, kwargs)
    for _ in range(repeats):
        for label, (lib, kwargs) in runs.items():
            t0 = time.perf_counter()
            run(lib, f, y0, ts, per_sample, kwargs)
            times[label].append(time.perf_counter() - t0)
    out = {}
    for label, sol in sols.items():
        s = sol.stats
        out[label] = {
            "best_ms": 1e3 * min(times[label]),
            "median_ms": 1e3 * statistics.median(times[label]),
            "first_s": first[label],
            "steps": int(s.sample_steps.max()) if per_sample else s.n_steps,
            "accepted": int(s.sample_accepted.max()) if per_sample else s.n_accepted,
            "backward": s.n_steps_backward,
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=positive_int, default=11)
    parser.add_argument(
        "--batches", type=widths, default="1,16,256,1024", help="comma-separated batch sizes"
    )
    parser.add_argument("--base", default="", help="directory with neuralode_base (older)")
    parser.add_argument("--dump", default="", help="write the MLP problems for diffrax here")
    parser.add_argument(
        "--diffrax", default="", help="a Python with jax and diffrax: run them afterwards"
    )
    args = parser.parse_args(argv)
    if args.diffrax:  # (a named interpreter that cannot run fails here, at once)
        from neuralode.bench.diffrax_peer import check_python

        try:
            check_python(args.diffrax, "--diffrax")
        except ValueError as error:
            parser.error(str(error))
    if args.dump:
        dump(args.dump, map(int, args.batches.split(",")))
        return
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    problems = [(f"MLP batch {b}", *mlp(b), False) for b in batches]
    if 16 in batches:
        f, y0, ts = mlp(16)
        field = Field(f.__closure__[0].cell_contents)
        problems.append(("MLP batch 16 forward + Backsolve backward", field, y0, ts, None))
    problems += [("VdP 256 one system", *vdp(), False), ("VdP 256 per sample", *vdp(), True)]
    runs = {f"{mode}": (no, kwargs) for mode, kwargs in modes().items()}
    if args.base:
        sys.path.insert(0, args.base)
        import neuralode_base

        base = {f"before: {m}": (neuralode_base, k) for m, k in modes(neuralode_base).items()}
        runs = {**base, **runs}
    print(f"torch {torch.__version__}, neuralode from {no.__file__}")
    print("| problem | version: mode | best ms | median ms | first call s | steps (accepted) |")
    print("|---|---|---:|---:|---:|---|")
    whole = {}
    for name, f, y0, ts, per_sample in problems:
        results = measure(runs, f, y0, ts, per_sample, args.repeats)
        for label, r in results.items():
            print(
                f"| {name} | {label} | {r['best_ms']:.3f} | {r['median_ms']:.3f} | "
                f"{r['first_s']:.2f} | {r['steps']} ({r['accepted']}) |",
                flush=True,
            )
        whole[name] = results.get("compile (whole solve)")
    if args.diffrax:
        compare(args.diffrax, batches, whole)


def compare(python: str, batches: list[int], ours: dict) -> None:
    """diffrax on the same problems right after (``bench_engine_diffrax.py`` in its own
    process, on the cores this one runs on), and ``compile=True``'s time over diffrax's."""
    with tempfile.TemporaryDirectory() as directory:
        dump(directory, batches)
        env = {**os.environ, "BATCHES": ",".join(map(str, batches))}
        script = Path(__file__).with_name("bench_engine_diffrax.py")
        out = subprocess.run(
            [python, str(script), directory], env=env, capture_output=True, text=True, check=True
        ).stdout
    print("\n| problem | `compile=True` ms | diffrax ms | ratio | steps ours (diffrax) |")
    print("|---|---:|---:|---:|---|")
    for line in out.splitlines()[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        name, theirs, steps = cells[0], float(cells[1]), cells[4]
        r = ours.get(name)
        if r is not None:
            print(
                f"| {name} | {r['best_ms']:.3f} | {theirs:.3f} | {r['best_ms'] / theirs:.2f}x | "
                f"{r['steps']} ({steps}) |",
                flush=True,
            )


if __name__ == "__main__":
    main()
