"""Tutorial: a neural delay differential equation fits a 1-D oscillation no neural ODE can.

A 1-D series from the delay equation y' = -1.5 y(t - 1), y = 1 for t <= 0 (a damped
oscillation), is fitted by a 1-D neural ODE y' = f(y) and by a 1-D neural DDE
y' = f(y(t), y(t - tau)) with a learnable delay tau, both by Adam on the mean squared error
at the observations. A 1-D autonomous ODE's solutions are monotone, so the ODE can at best
follow the first descent; the DDE, whose state is a whole history, oscillates.

Run ``python docs/tutorials/delay.py``; ``--small`` runs fewer steps on a shorter series.
Figures go to docs/tutorials/figures/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import neuralode as no
from neuralode.dde import solve_dde

TRUE_DELAY = 1.0


def data(t1: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ts, ys (n, 1)): y' = -1.5 y(t - 1), y = 1 before 0, solved at rtol 1e-10."""
    ts = torch.linspace(0, t1, n, dtype=torch.float64)
    ys = solve_dde(
        lambda t, y, d: -1.5 * d[0],
        torch.ones(1, dtype=torch.float64),
        ts,
        TRUE_DELAY,
        controller=no.PIController(rtol=1e-10, atol=1e-12),
    ).ys
    return ts.float(), ys.float()


def mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, 1))


class NeuralODE(nn.Module):
    """y' = f(y), 1-D."""

    def __init__(self, hidden: int):
        super().__init__()
        self.f = mlp(1, hidden)

    def forward(self, ts: torch.Tensor, y0: torch.Tensor, step: float) -> torch.Tensor:
        return no.solve(
            lambda t, y: self.f(y),
            y0,
            ts,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=step),
        ).ys


class NeuralDDE(nn.Module):
    """y' = f(y(t), y(t - tau)), 1-D, with a learnable delay tau (kept positive as
    softplus of a parameter) and the constant history y(t) = y0 for t <= 0."""

    def __init__(self, hidden: int, delay: float):
        super().__init__()
        self.f = mlp(2, hidden)
        self.raw_delay = nn.Parameter(torch.tensor(delay).expm1().log())  # softplus^-1

    @property
    def delay(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw_delay)

    def forward(self, ts: torch.Tensor, y0: torch.Tensor, step: float) -> torch.Tensor:
        return solve_dde(
            lambda t, y, d: self.f(torch.cat([y, d[0]], -1)),
            y0,
            ts,
            self.delay,
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=step),
        ).ys


def train(
    model: nn.Module, ts: torch.Tensor, ys: torch.Tensor, steps: int, step: float
) -> list[float]:
    optimiser = torch.optim.Adam(model.parameters(), lr=0.03)
    losses = []
    for _ in range(steps):
        optimiser.zero_grad()
        loss = (model(ts, ys[0], step) - ys).pow(2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a run of seconds (for tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t1, n, steps = (5.0, 21, 10) if args.small else (10.0, 41, 150)
    hidden, step, initial_delay = 32, 0.2, 0.6

    ts, ys = data(t1, n)
    print(f"data: y' = -1.5 y(t - 1), y = 1 for t <= 0, {n} observations on [0, {t1:g}]")
    print(f"models: MLP width {hidden}, rk4 with step {step}, {steps} Adam steps (lr 0.03)")
    fits = {}
    for name in ("neural ODE", "neural DDE"):
        torch.manual_seed(0)
        model = NeuralODE(hidden) if name == "neural ODE" else NeuralDDE(hidden, initial_delay)
        start = time.perf_counter()
        losses = train(model, ts, ys, steps, step)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            fits[name] = model(ts, ys[0], step)
        mse = (fits[name] - ys).pow(2).mean().item()
        extra = f", learned delay {model.delay.item():.3f}" if name == "neural DDE" else ""
        print(f"  {name:10s}  MSE {losses[0]:.2e} -> {mse:.2e}{extra}  ({seconds:.0f} s)")
    plot(ts, ys, fits, out)


def plot(ts: torch.Tensor, ys: torch.Tensor, fits: dict[str, torch.Tensor], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(ts, ys[:, 0], "k.", label="data: y' = -1.5 y(t - 1)")
    for (name, fit), color in zip(fits.items(), ("C0", "C3")):
        ax.plot(ts, fit[:, 0], color=color, label=name)
    ax.set_xlabel("t")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "delay.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
