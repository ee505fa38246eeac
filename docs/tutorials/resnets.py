"""ResNets as Euler discretisations: a ResNet and an ODE-Net on the same data, their
trajectories, and what changes with depth and with the solver.

Run: python docs/tutorials/resnets.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from neuralode import RK4, Dopri5, Euler, FixedGrid, PIController, solve  # noqa: E402


def circles(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two nested rings: class 0 inside radius 1, class 1 on radii 2 to 3."""
    label = torch.randint(0, 2, (n,), generator=generator)
    radius = torch.where(
        label == 0, torch.rand(n, generator=generator), 2 + torch.rand(n, generator=generator)
    )
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], 1), label


def mlp(dim_in: int, dim_out: int, hidden: int = 32) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.Tanh(), nn.Linear(hidden, dim_out))


class ResNet(nn.Module):
    """x_{k+1} = x_k + f_k(x_k): K blocks with their own weights, then a linear read-out."""

    def __init__(self, blocks: int, dim: int = 2):
        super().__init__()
        self.blocks = nn.ModuleList(mlp(dim, dim) for _ in range(blocks))
        self.readout = nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor, keep: list | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
            if keep is not None:
                keep.append(x.detach())
        return self.readout(x)


class Field(nn.Module):
    """dx/dt = f(t, x): one set of weights for all depths t in [0, 1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = mlp(dim + 1, dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, t.expand(len(x), 1)], 1))


class ODENet(nn.Module):
    """The ODE block x(1) = x(0) + int_0^1 f(t, x) dt (with ``extra`` zero dimensions added
    to x(0): the augmented ODE-Net), then a linear read-out."""

    def __init__(self, extra: int = 0):
        super().__init__()
        self.extra = extra
        self.field = Field(2 + extra)
        self.readout = nn.Linear(2 + extra, 2)
        self.solver, self.controller = Dopri5(), PIController(rtol=1e-4, atol=1e-4)
        self.nfe = 0

    def flow(self, x: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, x.new_zeros(len(x), self.extra)], 1)
        sol = solve(self.field, x, ts, solver=self.solver, controller=self.controller)
        self.nfe = sol.stats.nfe
        return sol.ys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.flow(x, torch.tensor([0.0, 1.0]))[-1])


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, iterations: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(iterations):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return accuracy(model, x, y)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="fewer points and iterations")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    n, iterations = (64, 8) if args.small else (256, 150)
    x, y = circles(n, generator)
    x_test, y_test = circles(n, generator)

    models = {"ResNet (4 blocks)": ResNet(4), "ODE-Net": ODENet(), "augmented ODE-Net": ODENet(1)}
    print("model                 train acc  test acc  parameters  NFE")
    for name, model in models.items():
        train_acc = fit(model, x, y, iterations)
        nfe = getattr(model, "nfe", "-")
        params = sum(p.numel() for p in model.parameters())
        test_acc = accuracy(model, x_test, y_test)
        print(f"{name:<21} {train_acc:9.3f} {test_acc:9.3f} {params:11d}  {nfe}")

    # Trajectories: the ODE-Net's are continuous and never cross; the ResNet's layers jump
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
    count = 16 if args.small else 120  # trajectories drawn: two lines each per panel
    shown = x_test[:count]
    colors = ["C0" if label == 0 else "C3" for label in y_test[:count]]
    keep: list[torch.Tensor] = []
    with torch.no_grad():
        models["ResNet (4 blocks)"](shown, keep)
        resnet_path = torch.stack([shown, *keep])
        ts = torch.linspace(0, 1, 21)
        ode_path = models["ODE-Net"].flow(shown, ts)
        augmented_path = models["augmented ODE-Net"].flow(shown, ts)
    for ax, path, title in (
        (axes[0], resnet_path, "ResNet: activations after each block"),
        (axes[1], ode_path, "ODE-Net: x(t), t in [0, 1]"),
        (axes[2], augmented_path[..., [0, 2]], "augmented ODE-Net: (x1, extra)(t)"),
    ):
        for i, color in enumerate(colors):
            ax.plot(path[:, i, 0], path[:, i, 1], "-", color=color, lw=0.6, alpha=0.6)
            ax.plot(path[-1, i, 0], path[-1, i, 1], "o", color=color, ms=2.5)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "resnets_trajectories.png", dpi=80)
    plt.close(fig)

    # Depth and solver: the trained ODE-Net evaluated with K fixed steps. Euler with K steps
    # is a ResNet of K blocks sharing the weights of f (scaled by h = 1/K).
    ode = models["augmented ODE-Net"]
    with torch.no_grad():
        ode.controller = PIController(rtol=1e-8, atol=1e-8)
        reference = ode.flow(x_test, torch.tensor([0.0, 1.0]))[-1]
        print("steps K   euler: acc  |x(1) - dopri5|   rk4: acc  |x(1) - dopri5|")
        rows = []
        for k in [1, 4, 16] if args.small else [1, 2, 3, 4, 6, 8, 12, 16, 32, 64]:
            row = [k]
            for solver in (Euler(), RK4()):
                ode.solver, ode.controller = solver, FixedGrid(step_size=1 / k)
                end = ode.flow(x_test, torch.tensor([0.0, 1.0]))[-1]
                acc = float((ode.readout(end).argmax(1) == y_test).float().mean())
                row += [acc, float((end - reference).norm(dim=1).mean())]
            rows.append(row)
            print(f"{k:7d} {row[1]:11.3f} {row[2]:16.2e} {row[3]:10.3f} {row[4]:16.2e}")
        ode.solver, ode.controller = Dopri5(), PIController(rtol=1e-4, atol=1e-4)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ks = [r[0] for r in rows]
    axes[0].semilogx(ks, [r[1] for r in rows], "o-", label="euler (tied ResNet)")
    axes[0].semilogx(ks, [r[3] for r in rows], "s-", label="rk4")
    axes[0].axhline(accuracy(ode, x_test, y_test), color="k", ls="--", lw=1, label="dopri5")
    axes[0].set_xlabel("steps K (depth)")
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8)
    axes[1].loglog(ks, [r[2] for r in rows], "o-", label="euler: ~1/K")
    axes[1].loglog(ks, [r[4] for r in rows], "s-", label="rk4: ~1/K^4")
    axes[1].set_xlabel("steps K (depth)")
    axes[1].set_ylabel("mean |x(1) - x_dopri5(1)|")
    axes[1].legend(fontsize=8)
    fig.suptitle("The trained augmented ODE-Net evaluated with K fixed steps")
    fig.tight_layout()
    fig.savefig(out / "resnets_depth.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
