"""Stiff benchmark: neuralode's adaptive ``radau`` and ``kvaerno3`` vs SciPy's Radau and BDF,
and vs dopri5.

Two classic stiff problems (Hairer & Wanner, Solving ODEs II), float64, one state:

(a) Robertson's chemical kinetics, y0 = (1, 0, 0), t in [0, 1e5] (stiffness ~1e4 growing);
(b) van der Pol, x'' = mu (1 - x^2) x' - x, mu = 1000 (period ~1614), y0 = (2, 0), t in [0, 3000].

Each solver runs at the same rtol/atol and is checked at the output times against SciPy's
Radau at rtol 1e-10 (analytic Jacobian); the error is the largest |y - ref| / (atol + rtol
|ref|) (tolerance units). Reported: accepted and rejected steps, evaluations of f (NFE),
Jacobian evaluations (neuralode: autograd, one f call and n vector-Jacobian products each,
included in NFE; SciPy: finite differences, n calls each, NOT included in its nfev, so their
sum is also shown), LU factorisations, and the median wall time of a few repeats.
SciPy gets the vector field as NumPy code (its natural use); neuralode the torch one.
dopri5 runs with ``max_steps`` (it cannot finish: the table says how far it got).

With ``--diffrax-python PATH`` (an interpreter with jax and diffrax; also found as in
``neuralode bench``) each table gets a row for diffrax's ``Kvaerno3``, the method of
neuralode's ``kvaerno3``: run in its own process (``stiff_diffrax_worker.py``) on the same
core with one-threaded XLA, jitted, its compile time reported apart.

    python benchmarks/bench_stiff.py            # full run
    python benchmarks/bench_stiff.py --quick    # one repeat, one tolerance
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy
import torch
from scipy.integrate import solve_ivp

import neuralode as no
from neuralode._cli_types import positive_int
from neuralode.bench import diffrax_peer

WORKER = Path(__file__).with_name("stiff_diffrax_worker.py")

MU = 1000.0


def robertson_torch(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    fast, slow = 1e4 * y[1] * y[2], 3e7 * y[1] ** 2
    return torch.stack([-0.04 * y[0] + fast, 0.04 * y[0] - fast - slow, slow])


def robertson_numpy(t: float, y: np.ndarray) -> np.ndarray:
    fast, slow = 1e4 * y[1] * y[2], 3e7 * y[1] ** 2
    return np.array([-0.04 * y[0] + fast, 0.04 * y[0] - fast - slow, slow])


def robertson_jacobian(t: float, y: np.ndarray) -> np.ndarray:
    return np.array(
        [
            [-0.04, 1e4 * y[2], 1e4 * y[1]],
            [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
            [0.0, 6e7 * y[1], 0.0],
        ]
    )


def vdp_torch(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_numpy(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def vdp_jacobian(t: float, y: np.ndarray) -> np.ndarray:
    return np.array([[0.0, 1.0], [-2 * MU * y[0] * y[1] - 1, MU * (1 - y[0] ** 2)]])


@dataclass
class Problem:
    name: str
    f_torch: Callable
    f_numpy: Callable
    jacobian: Callable
    y0: tuple[float, ...]
    ts: tuple[float, ...]
    atol: float


PROBLEMS = (
    Problem(
        "robertson",
        robertson_torch,
        robertson_numpy,
        robertson_jacobian,
        (1.0, 0.0, 0.0),
        (0.0, 1e-2, 1.0, 1e2, 1e4, 1e5),
        1e-10,
    ),
    Problem(
        "vdp1000",
        vdp_torch,
        vdp_numpy,
        vdp_jacobian,
        (2.0, 0.0),
        (0.0, 400.0, 1000.0, 3000.0),
        1e-8,
    ),
)


@dataclass
class Row:
    solver: str
    steps: str
    nfe: int | str
    jacobians: int | str
    lu: int | str
    seconds: float
    error: float | str


def reference(problem: Problem) -> np.ndarray:
    result = solve_ivp(
        problem.f_numpy,
        (problem.ts[0], problem.ts[-1]),
        np.array(problem.y0),
        method="Radau",
        rtol=1e-10,
        atol=problem.atol * 1e-4,
        t_eval=np.array(problem.ts),
        jac=problem.jacobian,
    )
    assert result.success, result.message
    return result.y.T


def tolerance_units(ys: np.ndarray, ref: np.ndarray, rtol: float, atol: float) -> float:
    return float(np.max(np.abs(ys - ref) / (atol + rtol * np.abs(ref))))


def timed(run: Callable[[], object], repeats: int) -> tuple[object, float]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def run_implicit(problem: Problem, method: str, rtol: float, ref: np.ndarray, repeats: int) -> Row:
    ts = torch.tensor(problem.ts, dtype=torch.float64)
    y0 = torch.tensor(problem.y0, dtype=torch.float64)

    def run():
        solver = no.solvers.METHODS[method]()
        controller = no.PIController(rtol=rtol, atol=problem.atol)
        with torch.no_grad():
            sol = no.solve(problem.f_torch, y0, ts, solver=solver, controller=controller)
        return sol, solver

    (sol, solver), seconds = timed(run, repeats)
    stats = sol.stats
    return Row(
        f"neuralode {method}",
        f"{stats.n_accepted} + {stats.n_rejected}",
        stats.nfe,
        solver.counters["jacobians"],
        solver.counters["factorisations"],
        seconds,
        tolerance_units(sol.ys.numpy(), ref, rtol, problem.atol),
    )


def run_scipy(problem: Problem, method: str, rtol: float, ref: np.ndarray, repeats: int) -> Row:
    def run():
        return solve_ivp(
            problem.f_numpy,
            (problem.ts[0], problem.ts[-1]),
            np.array(problem.y0),
            method=method,
            rtol=rtol,
            atol=problem.atol,
            t_eval=np.array(problem.ts),
        )

    result, seconds = timed(run, repeats)
    n = len(problem.y0)
    steps_result = solve_ivp(
        problem.f_numpy,
        (problem.ts[0], problem.ts[-1]),
        np.array(problem.y0),
        method=method,
        rtol=rtol,
        atol=problem.atol,
    )
    return Row(
        f"SciPy {method}",
        f"{len(steps_result.t) - 1} accepted",
        f"{result.nfev} + {n * result.njev}",  # type: ignore[arg-type]
        result.njev,
        result.nlu,
        seconds,
        tolerance_units(result.y.T, ref, rtol, problem.atol),
    )


def run_dopri5(problem: Problem, rtol: float, max_steps: int) -> Row:
    ts = torch.tensor(problem.ts, dtype=torch.float64)
    y0 = torch.tensor(problem.y0, dtype=torch.float64)
    calls = [0]
    last_t = [0.0]

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        last_t[0] = float(t)
        return problem.f_torch(t, y)

    start = time.perf_counter()
    outcome: float | str
    try:
        with torch.no_grad():
            no.solve(
                f,
                y0,
                ts,
                controller=no.PIController(rtol=rtol, atol=problem.atol),
                max_steps=max_steps,
            )
        outcome = "finished"
    except no.MaxStepsError:
        outcome = f"MaxStepsError at t={last_t[0]:.3g} of {problem.ts[-1]:g}"
    seconds = time.perf_counter() - start
    return Row("neuralode dopri5", f"{max_steps} (max)", calls[0], 0, 0, seconds, outcome)


def run_diffrax(
    python: str, cases: list[tuple[Problem, float]], refs: dict[str, np.ndarray], repeats: int
) -> dict[tuple[str, float], Row]:
    """diffrax's Kvaerno3 on every (problem, rtol), in one process of its own under
    ``python`` (this process's cores, one-threaded XLA), keyed by (problem name, rtol)."""
    spec = {
        "repeats": repeats,
        "cases": [
            {"problem": p.name, "rtol": rtol, "atol": p.atol, "y0": p.y0, "ts": p.ts}
            for p, rtol in cases
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "XLA_FLAGS": diffrax_peer.XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
        done = subprocess.run(
            [python, "-I", str(WORKER), str(spec_path)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
    if done.returncode != 0:
        raise SystemExit(f"the diffrax worker failed:\n{done.stderr[-2000:]}")
    rows = {}
    for (problem, rtol), line in zip(cases, done.stdout.strip().splitlines(), strict=True):
        answer = json.loads(line)
        ys = np.array(answer["ys"])
        rows[problem.name, rtol] = Row(
            f"diffrax Kvaerno3 (jitted; compile {answer['compile_seconds']:.1f} s apart)",
            f"{answer['accepted']} + {answer['rejected']}",
            "-",
            "-",
            "-",
            answer["seconds"],
            tolerance_units(ys, refs[problem.name], rtol, problem.atol),
        )
    return rows


def table(problem: Problem, rtol: float, rows: list[Row]) -> str:
    lines = [
        f"### {problem.name}, rtol={rtol:g}, atol={problem.atol:g}",
        "",
        "| solver | steps (accepted + rejected) | NFE | Jacobians | LU | time (s) "
        "| error (tol units) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        error = r.error if isinstance(r.error, str) else f"{r.error:.2g}"
        lines.append(
            f"| {r.solver} | {r.steps} | {r.nfe} | {r.jacobians} | {r.lu} | "
            f"{r.seconds:.3f} | {error} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, rtol 1e-6 only")
    parser.add_argument("--max-steps", type=positive_int, default=5000, help="dopri5's step budget")
    parser.add_argument(
        "--diffrax-python",
        default=None,
        help="an interpreter with jax and diffrax: adds diffrax's Kvaerno3 to each table",
    )
    args = parser.parse_args(argv)
    python = None
    if args.diffrax_python is not None:
        try:
            python, versions = diffrax_peer.find_python(args.diffrax_python)
        except ValueError as error:
            parser.error(str(error))
    repeats = 1 if args.quick else 3
    rtols = (1e-6,) if args.quick else (1e-4, 1e-6)
    torch.set_num_threads(1)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"scipy {scipy.__version__}, one thread\n"
    )
    refs = {problem.name: reference(problem) for problem in PROBLEMS}
    peer: dict[tuple[str, float], Row] = {}
    if python is not None:
        print(f"diffrax: {versions}\n")
        peer = run_diffrax(python, [(p, r) for p in PROBLEMS for r in rtols], refs, repeats)
    for problem in PROBLEMS:
        ref = refs[problem.name]
        for rtol in rtols:
            rows = [run_implicit(problem, m, rtol, ref, repeats) for m in ("radau", "kvaerno3")]
            if (problem.name, rtol) in peer:
                rows.append(peer[problem.name, rtol])
            rows += [run_scipy(problem, m, rtol, ref, repeats) for m in ("Radau", "BDF")]
            if rtol == rtols[-1]:
                rows.append(run_dopri5(problem, rtol, args.max_steps))
            print(table(problem, rtol, rows), "\n", flush=True)


if __name__ == "__main__":
    main()
