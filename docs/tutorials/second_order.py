"""Tutorial: second-order neural ODEs (SONODEs) against first-order and augmented ones in 1-D.

Two small data sets of 1-D trajectories x(t) that no first-order autonomous ODE in x can
follow: x(t) = sin(t) from x0 = 0 (it turns back; trajectories of x' = f(x) are monotone) and
x(t) = cos(t), -cos(t) from x0 = 1, -1 (they cross; trajectories of x' = f(x) cannot). Each is
fitted by a first-order neural ODE in x, an augmented neural ODE (ANODE: x' = f(x, a) on the
state (x, a), a0 = 0, one extra dimension) and a SONODE (x'' = a(x, x'), v0 = v(x0) from a
network), all autonomous, trained on the same points; the fitted MSE and parameters of each are
printed (Norcliffe et al. 2020).

Run ``python docs/tutorials/second_order.py`` (three seeds); ``--small`` runs one seed at fewer
steps. Figures go to docs/tutorials/figures/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import neuralode as no
from neuralode.models import AccelerationMLP, MLPDynamics, SecondOrderDynamics

STEP = 0.1  # rk4's step on every model: one solver, so only the models differ
# outputs between grid points by cubic Hermite interpolation (odeint's default is linear,
# torchdiffeq's, whose error at steps of 0.1, about 1e-3, would floor the fits' MSE)
OPTIONS = dict(step_size=STEP, interp="cubic")


def datasets() -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """name -> (ts, x0 (batch, 1), targets (len(ts), batch, 1))."""
    ts = torch.linspace(0, math.pi, 30)
    turning = (ts, torch.zeros(1, 1), torch.sin(ts)[:, None, None])
    starts = torch.tensor([[1.0], [-1.0]])
    crossing = (ts, starts, torch.cos(ts)[:, None, None] * starts)
    return {"turning back: sin(t)": turning, "crossing: +-cos(t)": crossing}


class FirstOrder(nn.Module):
    """x' = f(x) on x itself."""

    def __init__(self, hidden: int):
        super().__init__()
        self.field = MLPDynamics(1, hidden, autonomous=True)

    def forward(self, ts: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        return no.odeint(self.field, x0, ts, method="rk4", options=OPTIONS)


class Augmented(nn.Module):
    """x' = f(x, a), a' = g(x, a) from (x0, 0) (Dupont et al. 2019); x is read off."""

    def __init__(self, hidden: int, extra: int = 1):
        super().__init__()
        self.extra = extra
        self.field = MLPDynamics(1 + extra, hidden, autonomous=True)

    def forward(self, ts: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        y0 = torch.cat([x0, x0.new_zeros(x0.shape[0], self.extra)], dim=-1)
        ys = no.odeint(self.field, y0, ts, method="rk4", options=OPTIONS)
        return ys[..., :1]


class SecondOrder(nn.Module):
    """x'' = a(x, x') from (x0, v(x0)); x is read off."""

    def __init__(self, hidden: int):
        super().__init__()
        velocity = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.field = SecondOrderDynamics(
            AccelerationMLP(1, hidden, autonomous=True), initial_velocity=velocity
        )

    def forward(self, ts: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        xs, _ = no.odeint(
            self.field, self.field.initial_state(x0), ts, method="rk4", options=OPTIONS
        )
        return xs


MODELS = {"first-order": FirstOrder, "ANODE": Augmented, "SONODE": SecondOrder}


def fit(kind: str, data: tuple, hidden: int, steps: int, seed: int) -> tuple[float, int, Any]:
    """Train one model with Adam on the full data; its last MSE, parameters and fitted x(t)."""
    torch.manual_seed(seed)
    ts, x0, target = data
    model = MODELS[kind](hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = torch.mean((model(ts, x0) - target) ** 2)
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        xs = model(ts, x0)
        mse = torch.mean((xs - target) ** 2).item()
    return mse, sum(p.numel() for p in model.parameters()), xs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a run of seconds (for tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds, steps, hidden = ((0,), 6, 16) if args.small else ((0, 1, 2), 500, 16)

    fitted = {}
    print(f"rk4 step {STEP}, width {hidden}, {steps} Adam steps (lr 0.01), seeds {seeds}:")
    print("data                   model        params   fitted MSE per seed")
    for name, data in datasets().items():
        for kind in MODELS:
            start = time.perf_counter()
            results = [fit(kind, data, hidden, steps, seed) for seed in seeds]
            seconds = time.perf_counter() - start
            mses = "  ".join(f"{mse:.2e}" for mse, _, _ in results)
            print(f"{name:22s} {kind:12s} {results[0][1]:6d}   {mses}  ({seconds:.0f} s)")
            fitted[name, kind] = results[0][2]
    plot(datasets(), fitted, out)


def plot(data: dict, fitted: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(11, 3.8))
    for ax, (name, (ts, _, target)) in zip(axes, data.items()):
        for i in range(target.shape[1]):
            ax.plot(ts, target[:, i, 0], "k.", ms=4, label="data" if i == 0 else None)
        for kind, color in zip(MODELS, ("C3", "C0", "C2")):
            xs = fitted[name, kind]
            for i in range(xs.shape[1]):
                ax.plot(ts, xs[:, i, 0], color=color, lw=1.2, label=kind if i == 0 else None)
        ax.set_title(name)
        ax.set_xlabel("t")
        ax.set_ylabel("x(t)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "second_order_fits.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
