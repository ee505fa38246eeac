"""Work-precision: final-state error vs wall time and vs NFE over a tolerance sweep.

Problem: Van der Pol, x'' = mu (1 - x^2) x' - x, a batch of 16 with mu in [1, 5], float64,
t in [0, 5], solved as one system. Reference: SciPy DOP853 at rtol=1e-12, atol=1e-14.
Methods: neuralode dopri5 / tsit5 / dopri8, torchdiffeq dopri5 / dopri8, SciPy RK45 / DOP853
(numpy vector field), each at rtol in the sweep and atol = rtol / 100; time is the minimum
over the repeats (interleaved across methods), after one untimed warm-up call of every method
(so that no first call's one-off costs are timed, even with one repeat).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import neuralode

BATCH, T1 = 16, 5.0
MU = np.linspace(1.0, 5.0, BATCH)


def f_torch(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mu = torch.as_tensor(MU, dtype=y.dtype)
    x, v = y[:, 0], y[:, 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], 1)


def f_numpy(t: float, y: np.ndarray) -> np.ndarray:
    x, v = y[0::2], y[1::2]
    out = np.empty_like(y)
    out[0::2], out[1::2] = v, MU * (1 - x * x) * v - x
    return out


def initial_state() -> torch.Tensor:
    x0 = torch.linspace(0.5, 2.0, BATCH, dtype=torch.float64)
    return torch.stack([x0, torch.zeros_like(x0)], 1)


def reference() -> np.ndarray:
    import scipy.integrate

    y0 = initial_state().numpy().reshape(-1)
    sol = scipy.integrate.solve_ivp(f_numpy, (0, T1), y0, method="DOP853", rtol=1e-12, atol=1e-14)
    return sol.y[:, -1].reshape(BATCH, 2)


@dataclass
class Point:
    library: str
    method: str
    rtol: float
    seconds: float
    nfe: int
    error: float


class _Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def _runners():
    import scipy.integrate
    import torchdiffeq

    def nd(method):
        solver_cls = neuralode.METHODS[method]

        def run(rtol):
            f = _Counted(f_torch)
            ts = torch.tensor([0.0, T1], dtype=torch.float64)
            sol = neuralode.solve(
                f,
                initial_state(),
                ts,
                solver=solver_cls(),
                controller=neuralode.PIController(rtol, rtol / 100),
            )
            return sol.ys[-1].numpy(), f.calls

        return run

    def td(method):
        def run(rtol):
            f = _Counted(f_torch)
            ts = torch.tensor([0.0, T1], dtype=torch.float64)
            ys = torchdiffeq.odeint(
                f, initial_state(), ts, rtol=rtol, atol=rtol / 100, method=method
            )
            return ys[-1].numpy(), f.calls

        return run

    def sp(method):
        def run(rtol):
            y0 = initial_state().numpy().reshape(-1)
            sol = scipy.integrate.solve_ivp(
                f_numpy, (0, T1), y0, method=method, rtol=rtol, atol=rtol / 100
            )
            return sol.y[:, -1].reshape(BATCH, 2), int(sol.nfev)

        return run

    return {
        ("neuralode", "dopri5"): nd("dopri5"),
        ("neuralode", "tsit5"): nd("tsit5"),
        ("neuralode", "dopri8"): nd("dopri8"),
        ("torchdiffeq", "dopri5"): td("dopri5"),
        ("torchdiffeq", "dopri8"): td("dopri8"),
        ("scipy", "RK45"): sp("RK45"),
        ("scipy", "DOP853"): sp("DOP853"),
    }


def run(rtols: tuple[float, ...] = (1e-4, 1e-6, 1e-8), repeats: int = 3) -> list[Point]:
    """Every method at every tolerance, timed after a warm-up call of each.

    Arguments:
        rtols: the tolerance sweep (atol = rtol / 100).
        repeats: timed calls per method and tolerance (the minimum is kept).

    Returns:
        One point per method and tolerance: time, NFE and the max abs error of y(t1).
    """
    ref = reference()
    runners = _runners()
    points = []
    with torch.no_grad():
        for run_once in runners.values():  # warm-up, untimed
            run_once(rtols[0])
        for rtol in rtols:
            best = {key: float("inf") for key in runners}
            results = {}
            for r in range(repeats):
                keys = list(runners) if r % 2 == 0 else list(runners)[::-1]
                for key in keys:
                    start = time.perf_counter()
                    results[key] = runners[key](rtol)
                    best[key] = min(best[key], time.perf_counter() - start)
            for key, (y1, nfe) in results.items():
                error = float(np.abs(y1 - ref).max())
                points.append(Point(key[0], key[1], rtol, best[key], nfe, error))
            print(f"  work-precision rtol={rtol:g} done", flush=True)
    return points


def table(points: list[Point]) -> str:
    lines = [
        "| library | method | rtol | time (ms) | NFE | max abs error |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for p in sorted(points, key=lambda p: (p.library, p.method, -p.rtol)):
        lines.append(
            f"| {p.library} | {p.method} | {p.rtol:.0e} | {p.seconds * 1e3:.2f} | {p.nfe} "
            f"| {p.error:.2e} |"
        )
    return "\n".join(lines)


def plot(points: list[Point], path: Path) -> None:
    from ..viz.plots import figure

    fig = figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2)
    styles = {"neuralode": "-", "torchdiffeq": "--", "scipy": ":"}
    keys = sorted({(p.library, p.method) for p in points})
    for library, method in keys:
        pts = sorted(
            (p for p in points if (p.library, p.method) == (library, method)), key=lambda p: p.rtol
        )
        label = f"{library} {method}"
        errors = [max(p.error, 1e-16) for p in pts]
        axes[0].loglog(
            [p.seconds * 1e3 for p in pts], errors, styles[library], marker="o", label=label
        )
        axes[1].loglog([p.nfe for p in pts], errors, styles[library], marker="o", label=label)
    axes[0].set_xlabel("wall time (ms)")
    axes[1].set_xlabel("evaluations of f (NFE)")
    for ax in axes:
        ax.set_ylabel("max abs error of y(t1)")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(f"Work-precision, Van der Pol batch {BATCH} (mu in [1, 5]), float64, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
