"""Tutorial: Hamiltonian neural networks on the pendulum, and solvers that conserve energy.

Part 1 solves the true pendulum for a long time with a symplectic solver (leapfrog) and with
rk4 and dopri5, and measures how far each lets the energy drift. Part 2 learns the pendulum
from noisy samples of its states and time derivatives (Greydanus et al. 2019): an MLP vector
field, a Hamiltonian neural network (an MLP energy H(q, p) whose symplectic gradient is the
field), a separable one (T(p) + V(q)) and a Lagrangian neural network (Cranmer et al. 2020: an
MLP L(q, qdot) whose Euler-Lagrange equation gives the acceleration; with mass 1, p = qdot, so
it learns from the same data); then rolls each out from held-out states.

Run ``python docs/tutorials/hamiltonian.py`` (about 2 min on one CPU thread); ``--small``
runs in seconds. Figures go to docs/tutorials/figures/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import neuralode as no
from neuralode.models import (
    EnergyMLP,
    HamiltonianDynamics,
    LagrangianAcceleration,
    MLPDynamics,
    SecondOrderDynamics,
    SeparableHamiltonian,
)
from neuralode.solvers import PARTITIONED_METHODS, method_class

G = 3.0  # the pendulum H = 3 (1 - cos q) + p^2 / 2 (mass 1, length 1, g = 3), as the paper


class Kinetic(nn.Module):
    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return (p**2 / 2).sum(-1)


class Potential(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return (G * (1 - torch.cos(q))).sum(-1)


class KineticPrior(nn.Module):
    """L(q, qdot) = qdot^2 / 2 + MLP(q, qdot): a learned Lagrangian whose mass matrix
    d2L/dqdot2 starts at 1 (the MLP learns the rest), so that it does not pass through 0,
    where the Euler-Lagrange acceleration is undefined, as a bare MLP's does in training."""

    def __init__(self, hidden: int):
        super().__init__()
        self.net = EnergyMLP(2, hidden, layers=2)

    def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        return (qdot**2 / 2).sum(-1) + self.net(q, qdot)


def energy(y: torch.Tensor) -> torch.Tensor:
    """The true energy of flat states (..., 2)."""
    q, p = y[..., 0], y[..., 1]
    return G * (1 - torch.cos(q)) + p**2 / 2


def rollout(field: nn.Module, method: str, y0: torch.Tensor, ts: torch.Tensor, dt: float):
    """States (len(ts), batch, 2) and the number of evaluations of ``field``; a symplectic
    method solves the pair (q, p), calling only the half of a ``SeparableHamiltonian`` each
    kick or drift needs (each half counts as one evaluation), the others the flat state
    (batch, 2)."""
    pair = method in PARTITIONED_METHODS
    state = tuple(y0.chunk(2, dim=-1)) if pair else y0
    if method == "dopri5":
        options = {"controller": no.PIController(rtol=1e-6, atol=1e-8)}
    else:
        options = {"solver": method_class(method)(), "controller": no.FixedGrid(step_size=dt)}
    with torch.no_grad():
        sol = no.solve(field, state, ts, max_steps=None, **options)
    ys = sol.ys
    return (torch.cat(ys, dim=-1) if pair else ys), sol.stats.nfe


def initial_states(count: int, generator: torch.Generator) -> torch.Tensor:
    """Random directions of the (q, p) plane at radii in [1.3, 2.3] (random energies)."""
    direction = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1
    radius = 1.3 + torch.rand(count, 1, generator=generator, dtype=torch.float64)
    return direction / direction.norm(dim=-1, keepdim=True) * radius


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a run of seconds (for tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    truth = SeparableHamiltonian(Kinetic(), Potential())  # the true pendulum as a field

    # 1. The true pendulum for a long time: leapfrog, rk4 (fixed steps) and dopri5.
    # One budget of evaluations: leapfrog evaluates f twice a step (one half of the field
    # each: dp/dt for a kick, dq/dt for a drift), rk4 four times (whole).
    horizon = 20.0 if args.small else 2000.0
    solver_ts = torch.linspace(0, horizon, 501, dtype=torch.float64)
    y0 = torch.tensor([[2.0, 0.0]], dtype=torch.float64)  # amplitude 2 rad
    drifts = {}
    print(f"true pendulum from q = 2, p = 0 to t = {horizon:g}:")
    print("solver     step        NFE   |H(T) - H(0)|   max |H(t) - H(0)|")
    for method, dt in (("leapfrog", 0.05), ("rk4", 0.1), ("dopri5", None)):
        ys, nfe = rollout(truth, method, y0, solver_ts, dt)
        drift = (energy(ys[:, 0]) - energy(y0[0])).abs()
        drifts[method] = drift
        step = "rtol 1e-6" if dt is None else f"{dt:g}"
        print(f"{method:9s}  {step:9s} {nfe:6d}   {drift[-1]:.2e}        {drift.max():.2e}")

    # 2. Data: noisy states and their true derivatives along 25 trajectories of t in [0, 5].
    n_train, steps, hidden = (3, 30, 16) if args.small else (25, 1500, 64)
    points = torch.linspace(0, 5, 75, dtype=torch.float64)
    with torch.no_grad():  # targets: no graph to keep (the field keeps one in grad mode)
        clean = no.solve(truth, initial_states(2 * n_train, generator), points).ys
        clean = clean.transpose(0, 1).reshape(2, n_train, -1, 2)  # (train/test, trajectory, t)
        derivative = torch.cat(truth(None, tuple(clean.chunk(2, dim=-1))), dim=-1)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    x, dx = noisy[0].reshape(-1, 2).float(), derivative[0].reshape(-1, 2).float()
    x_test, dx_test = noisy[1].reshape(-1, 2).float(), derivative[1].reshape(-1, 2).float()

    # 3. Four models of one width, trained on the derivatives (full batch, Adam). The LNN's
    # state is (q, qdot), which is (q, p) for the pendulum's mass 1: its field (qdot, qddot)
    # regresses the same targets.
    models = {
        "baseline": MLPDynamics(2, hidden, layers=2, autonomous=True),
        "hnn": HamiltonianDynamics(EnergyMLP(2, hidden, layers=2)),
        "separable": SeparableHamiltonian(EnergyMLP(1, hidden, 2), EnergyMLP(1, hidden, 2)),
        "lnn": SecondOrderDynamics(LagrangianAcceleration(KineticPrior(hidden))),
    }
    print(f"\ntraining on {x.shape[0]} noisy samples, {steps} Adam steps, width {hidden}:")
    for name, model in models.items():
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
        start = time.perf_counter()
        for _ in range(steps):
            optimiser.zero_grad()
            loss = torch.mean((model(None, x) - dx) ** 2)
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            test = torch.mean((model(None, x_test) - dx_test) ** 2)
        seconds = time.perf_counter() - start
        print(
            f"{name:9s} train MSE {loss.item():.4f}  test MSE {test.item():.4f}  ({seconds:.1f} s)"
        )

    # 4. Rollouts from 4 held-out states for 100 time units, against the truth.
    horizon = 2.0 if args.small else 100.0
    ts = torch.arange(round(horizon / 0.1) + 1, dtype=torch.float64) * 0.1
    y0 = initial_states(4, generator)
    with torch.no_grad():
        exact = no.solve(truth, y0, ts, controller=no.PIController(rtol=1e-10, atol=1e-12)).ys
    plans = [
        ("baseline", "rk4"),
        ("hnn", "rk4"),
        ("separable", "rk4"),
        ("separable", "leapfrog"),
        ("lnn", "rk4"),
    ]
    print(f"\nrollouts of 4 held-out states to t = {horizon:g}, steps of 0.05:")
    print("model, solver         NFE   trajectory MSE   mean |H(x(t)) - H(x(0))|")
    paths = {}
    for name, method in plans:
        ys, nfe = rollout(models[name], method, y0.float(), ts, 0.05)
        ys = ys.double()
        error = torch.mean((ys - exact) ** 2)
        drift = (energy(ys) - energy(y0)).abs()
        paths[f"{name}, {method}"] = ys
        print(f"{name + ', ' + method:20s} {nfe:6d}   {error:.4f}           {drift.mean():.4f}")

    plot(solver_ts, drifts, ts, exact, paths, out)


def plot(solver_ts, drifts, ts, exact, paths, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for method, drift in drifts.items():  # from the first saved time: the drift at 0 is 0
        ax.plot(solver_ts[1:], drift[1:], lw=1, label=method)
    ax.set_yscale("log")
    ax.set_title("the true pendulum, amplitude 2 rad")
    ax.set_xlabel("t")
    ax.set_ylabel("|H(x(t)) - H(x(0))|")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "hamiltonian_solvers.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(exact[:, 0, 0], exact[:, 0, 1], color="k", lw=2, label="truth")
    for label, ys in paths.items():
        axes[0].plot(ys[:, 0, 0], ys[:, 0, 1], lw=0.7, label=label)
    axes[0].set_xlabel("q")
    axes[0].set_ylabel("p")
    axes[0].legend(fontsize=8)
    axes[1].plot(ts, energy(exact[:, 0]), color="k", lw=2, label="truth")
    for label, ys in paths.items():
        axes[1].plot(ts, energy(ys[:, 0]), lw=1, label=label)
    axes[1].set_xlabel("t")
    axes[1].set_ylabel("true energy H(x(t))")
    fig.tight_layout()
    fig.savefig(out / "hamiltonian_rollouts.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
