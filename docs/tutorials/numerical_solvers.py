"""Numerical ODE solvers: Euler to Runge-Kutta, measured orders, stability regions, and
adaptive step control with its tolerance/NFE trade-off.

Run: python docs/tutorials/numerical_solvers.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from neuralode import RK4, Dopri5, Euler, FixedGrid, Heun3, Midpoint, PIController, solve  # noqa: E402
from neuralode.solvers import ImplicitEuler, Trapezoid  # noqa: E402

torch.set_default_dtype(torch.float64)


def oscillator(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y'' = -y as a first-order system: (y, v)' = (v, -y); exact y = cos t, v = -sin t."""
    return torch.stack([y[1], -y[0]])


def exact(t: float) -> torch.Tensor:
    return torch.tensor([math.cos(t), -math.sin(t)])


def convergence(methods: dict, steps: list[int], t_end: float) -> dict[str, list[float]]:
    """Error at t_end of each fixed-step method for each number of steps."""
    y0, ts = torch.tensor([1.0, 0.0]), torch.tensor([0.0, t_end])
    errors = {}
    for name, solver in methods.items():
        errors[name] = []
        for n in steps:
            sol = solve(
                oscillator, y0, ts, solver=solver, controller=FixedGrid(step_size=t_end / n)
            )
            errors[name].append(float((sol.ys[-1] - exact(t_end)).norm()))
    return errors


def measured_order(steps: list[int], errors: list[float]) -> float:
    """The slope of log(error) against log(step size), by least squares."""
    h = np.log([1.0 / n for n in steps])
    return float(np.polyfit(h, np.log(errors), 1)[0])


def stability_function(tableau, z: np.ndarray) -> np.ndarray:
    """R(z) = 1 + z b^T (I - z A)^(-1) 1: one step of the method on y' = lambda y with
    z = h lambda multiplies y by R(z); the method is stable where |R(z)| <= 1."""
    a = np.zeros((len(tableau.c), len(tableau.c)))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    b, ones = np.array(tableau.b), np.ones(len(tableau.c))
    out = np.empty(z.shape, dtype=complex)
    for index, value in np.ndenumerate(z):
        stages = np.linalg.solve(np.eye(len(b)) - value * a, ones)
        out[index] = 1 + value * b @ stages
    return out


def van_der_pol(t: torch.Tensor, y: torch.Tensor, mu: float = 5.0) -> torch.Tensor:
    return torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])


class StepLog:
    """Callbacks that record every accepted step's start time and size."""

    def __init__(self) -> None:
        self.t: list[float] = []
        self.dt: list[float] = []

    def on_accept(self, t, y, dt) -> None:
        self.t.append(float(t))
        self.dt.append(float(dt))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="fewer points (for the tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Convergence orders on the oscillator over one period
    methods = {
        "euler": Euler(),
        "midpoint": Midpoint(),
        "heun3": Heun3(),
        "rk4": RK4(),
        "dopri5": Dopri5(),
    }
    steps = [32, 64, 128, 256] if args.small else [32, 64, 128, 256, 512, 1024]
    errors = convergence(methods, steps, 2 * math.pi)
    print("method     order (theory)  order (measured)")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, solver in methods.items():
        order = measured_order(steps, errors[name])
        print(f"{name:<10} {solver.order:>14d}  {order:16.2f}")
        ax.loglog(
            [2 * math.pi / n for n in steps], errors[name], "o-", label=f"{name} ({order:.2f})"
        )
    ax.set_xlabel("step size h")
    ax.set_ylabel("error at t = 2 pi")
    ax.set_title("Fixed-step convergence: error ~ h^order")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "solvers_convergence.png", dpi=80)
    plt.close(fig)

    # 2. Stability regions |R(z)| <= 1 of explicit and implicit methods
    n = 40 if args.small else 300
    x, y = np.meshgrid(np.linspace(-5, 3, n), np.linspace(-4, 4, n))
    z = x + 1j * y
    fig, ax = plt.subplots(figsize=(5.5, 5))
    regions = {
        "euler": Euler.tableau,
        "midpoint": Midpoint.tableau,
        "rk4": RK4.tableau,
        "dopri5": Dopri5.tableau,
        "implicit euler": ImplicitEuler.tableau,
        "trapezoid": Trapezoid.tableau,
    }
    for i, (name, tableau) in enumerate(regions.items()):
        stable = np.abs(stability_function(tableau, z)) <= 1
        ax.contour(x, y, stable.astype(float), levels=[0.5], colors=f"C{i}")
        ax.plot([], [], color=f"C{i}", label=name)
        on_axis = stable[n // 2]
        left = x[n // 2][on_axis].min()
        if left <= x.min():
            print(f"{name:<15} stable for every plotted real z < 0 (A-stable)")
        else:
            print(f"{name:<15} stable for real z in [{left:.2f}, 0]")
    ax.axhline(0, color="0.7", lw=0.5)
    ax.axvline(0, color="0.7", lw=0.5)
    ax.set_xlabel("Re(h lambda)")
    ax.set_ylabel("Im(h lambda)")
    ax.set_title("Stability regions: boundaries of |R(z)| <= 1")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "solvers_stability.png", dpi=80)
    plt.close(fig)

    # 3. Adaptive steps: the tolerance/NFE trade-off on Van der Pol (mu = 5)
    y0, ts = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 10.0])
    tight = 1e-10 if args.small else 1e-12  # the reference's rtol = atol
    reference = solve(
        van_der_pol, y0, ts, solver=Dopri5(), controller=PIController(rtol=tight, atol=tight)
    ).ys[-1]
    tolerances = [1e-3, 1e-5, 1e-7] if args.small else [1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8]
    print("rtol       NFE   steps  rejected  error")
    adaptive = []
    for tol in tolerances:
        sol = solve(
            van_der_pol, y0, ts, solver=Dopri5(), controller=PIController(rtol=tol, atol=tol)
        )
        error = float((sol.ys[-1] - reference).norm())
        adaptive.append((sol.stats.nfe, error))
        print(
            f"{tol:<8.0e} {sol.stats.nfe:6d} {sol.stats.n_accepted:6d} "
            f"{sol.stats.n_rejected:8d}  {error:.2e}"
        )
    fixed = []
    for n in [100, 200, 400] if args.small else [100, 200, 400, 800, 1600, 3200]:
        sol = solve(van_der_pol, y0, ts, solver=RK4(), controller=FixedGrid(step_size=10 / n))
        fixed.append((sol.stats.nfe, float((sol.ys[-1] - reference).norm())))
    log = StepLog()
    dense_ts = torch.linspace(0, 10, 400)
    trajectory = solve(
        van_der_pol,
        y0,
        dense_ts,
        solver=Dopri5(),
        controller=PIController(rtol=1e-6, atol=1e-6),
        callbacks=log,
    )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].loglog(*zip(*adaptive), "o-", label="dopri5, adaptive")
    axes[0].loglog(*zip(*fixed), "s-", label="rk4, fixed steps")
    axes[0].set_xlabel("function evaluations (NFE)")
    axes[0].set_ylabel("error at t = 10")
    axes[0].set_title("Work-precision on Van der Pol (mu = 5)")
    axes[0].legend(fontsize=8)
    axes[1].plot(dense_ts, trajectory.ys[:, 0], color="0.5", label="y(t)")
    twin = axes[1].twinx()
    twin.semilogy(log.t, log.dt, "C3.", ms=3, label="accepted step size")
    twin.set_ylabel("step size", color="C3")
    axes[1].set_xlabel("t")
    axes[1].set_title("dopri5 at rtol 1e-6: small steps where y turns fast")
    fig.tight_layout()
    fig.savefig(out / "solvers_adaptive.png", dpi=80)
    plt.close(fig)
    smallest, largest = min(log.dt), max(log.dt)
    print(f"accepted step sizes at rtol 1e-6: {smallest:.2e} to {largest:.2e}")


if __name__ == "__main__":
    main()
