"""The demo: several methods on problems with exact solutions; error, NFE, time and plots."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import neuralode as no

F64 = torch.float64


@dataclass
class Problem:
    name: str
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    y0: torch.Tensor
    t1: float
    exact: Callable[[torch.Tensor], torch.Tensor]  # (n,) times -> (n, dim) states


def _linear() -> Problem:
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=F64)
    y0 = torch.tensor([2.0, 0.0], dtype=F64)
    return Problem(
        "damped rotation",
        lambda t, y: a @ y,
        y0,
        10.0,
        lambda ts: torch.stack([torch.linalg.matrix_exp(a * t) @ y0 for t in ts]),
    )


def _kepler(eccentricity: float = 0.5) -> Problem:
    """Two-body orbit: position and velocity from Kepler's equation solved by Newton."""
    e = eccentricity
    y0 = torch.tensor([1 - e, 0.0, 0.0, math.sqrt((1 + e) / (1 - e))], dtype=F64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
        return torch.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])

    def exact(ts: torch.Tensor) -> torch.Tensor:
        rows = []
        for t in ts.tolist():
            anomaly = t
            for _ in range(50):
                anomaly -= (anomaly - e * math.sin(anomaly) - t) / (1 - e * math.cos(anomaly))
            c, s = math.cos(anomaly), math.sin(anomaly)
            rate = 1 / (1 - e * c)
            root = math.sqrt(1 - e * e)
            rows.append([c - e, root * s, -s * rate, root * c * rate])
        return torch.tensor(rows, dtype=F64)

    return Problem("Kepler orbit (e=0.5)", f, y0, 2 * math.pi, exact)


def _logistic() -> Problem:
    """y' = y (1 - y) with a time-dependent forcing-free exact solution."""
    y0 = torch.tensor([0.05], dtype=F64)
    return Problem(
        "logistic growth",
        lambda t, y: y * (1 - y),
        y0,
        10.0,
        lambda ts: (1 / (1 + (1 / 0.05 - 1) * torch.exp(-ts)))[:, None],
    )


ADAPTIVE = ["dopri5", "tsit5", "bosh3", "dopri8"]
FIXED = {"rk4": [0.1, 0.02], "euler": [0.01, 0.001]}


def run_demo(out: Path, quick: bool = False, log: Callable[[str], None] = print) -> list[dict]:
    """Solve every problem with every method; write demo.json and two PNGs into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    tolerances = [1e-4, 1e-8] if quick else [1e-3, 1e-5, 1e-7, 1e-9, 1e-11]
    problems = [_linear(), _kepler(), _logistic()]
    rows, panels = [], []
    for problem in problems:
        ts = torch.linspace(0, problem.t1, 201, dtype=F64)
        exact = problem.exact(ts)
        runs: list[tuple[str, float, no.Solver, no.controllers.StepSizeController]] = []
        for name in ADAPTIVE:
            for tol in tolerances:
                runs.append((name, tol, no.METHODS[name](), no.PIController(tol, tol * 1e-2)))
        for name, steps in FIXED.items():
            for dt in steps[:1] if quick else steps:
                runs.append((name, dt, no.METHODS[name](), no.FixedGrid(step_size=dt)))
        shown: dict[str, torch.Tensor] = {}  # the loosest setting of each method
        for method, setting, solver, controller in runs:
            start = time.perf_counter()
            with torch.no_grad():
                sol = no.solve(problem.func, problem.y0, ts, solver=solver, controller=controller)
            elapsed = time.perf_counter() - start
            error = float((sol.ys - exact).abs().max())
            row = {
                "problem": problem.name,
                "method": method,
                "setting": ("rtol=" if solver.adaptive else "dt=") + f"{setting:g}",
                "error": error,
                "nfe": sol.stats.nfe,
                "steps": sol.stats.n_accepted,
                "rejected": sol.stats.n_rejected,
                "time_ms": 1e3 * elapsed,
            }
            rows.append(row)
            log(
                f"  {problem.name:<20} {method:<8} {row['setting']:<12} error {error:9.2e}  "
                f"NFE {sol.stats.nfe:6d}  {row['time_ms']:8.1f} ms"
            )
            shown.setdefault(method, sol.ys)
        panels.append(
            {
                "title": problem.name,
                "exact": (exact[:, 0], exact[:, 1] if exact.shape[1] > 1 else ts),
                "methods": {
                    m: (ys[::8, 0], ys[::8, 1] if ys.shape[1] > 1 else ts[::8])
                    for m, ys in shown.items()
                    if m in ("dopri5", "rk4", "euler")
                },
                **({} if exact.shape[1] > 1 else {"xlabel": "y", "ylabel": "t"}),
            }
        )
    (out / "demo.json").write_text(json.dumps(rows, indent=1))
    from ..viz import save_phase_portraits, save_work_precision

    save_phase_portraits(out / "trajectories.png", panels)
    kepler = [r for r in rows if r["problem"] == problems[1].name]
    save_work_precision(out / "work_precision.png", kepler, "Kepler orbit: error vs NFE")
    return rows


def format_table(rows: list[dict]) -> str:
    """The results as a markdown table."""
    lines = [
        "| problem | method | setting | max error | NFE | steps | rejected | time (ms) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['problem']} | {r['method']} | {r['setting']} | {r['error']:.2e} | {r['nfe']} "
            f"| {r['steps']} | {r['rejected']} | {r['time_ms']:.1f} |"
        )
    return "\n".join(lines)
