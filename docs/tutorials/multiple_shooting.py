"""Tutorial: multiple shooting against single shooting on a long oscillatory trajectory.

A Lotka-Volterra predator-prey trajectory over several periods, observed with noise, is fitted
by an autonomous MLP vector field in two ways at the same number of Adam steps: single
shooting (one solve from the first observation, compared with every observation) and multiple
shooting (the observations cut into short overlapping groups, each solved from a free initial
state, all groups as one per-sample solve, plus a continuity penalty between neighbours;
`neuralode.shooting.MultipleShooting`). Both final models are then judged the same way: one
solve of the whole trajectory from the first observation, its mean squared error against the
noiseless trajectory.

Run ``python docs/tutorials/multiple_shooting.py`` (three seeds); ``--small`` runs one seed on
a shorter trajectory at fewer steps. Figures go to docs/tutorials/figures/ (or ``--out``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import neuralode as no
from neuralode.models import MLPDynamics
from neuralode.shooting import MultipleShooting

NOISE = 0.05  # noise standard deviation, relative to the mean |y| of the trajectory


def lotka_volterra(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, z = y[..., 0], y[..., 1]
    return torch.stack([1.5 * x - x * z, -3.0 * z + x * z], -1)


def data(t1: float, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ts, noisy observations (n, 2), noiseless trajectory (n, 2)) from y0 = (1, 1)."""
    ts = torch.linspace(0, t1, n)
    exact = no.PIController(rtol=1e-8, atol=1e-10)
    clean = no.solve(lotka_volterra, torch.tensor([1.0, 1.0]), ts, controller=exact).ys
    gen = torch.Generator().manual_seed(1000 + seed)
    noisy = clean + NOISE * clean.abs().mean() * torch.randn(clean.shape, generator=gen)
    return ts, noisy, clean


def fit(
    ts: torch.Tensor, ys: torch.Tensor, group_size: int, hidden: int, steps: int, seed: int
) -> MultipleShooting:
    """Train an MLP field with Adam; group_size = len(ts) is single shooting from ys[0]."""
    torch.manual_seed(seed)
    single = group_size == len(ts)
    shooting = MultipleShooting(
        MLPDynamics(2, hidden, autonomous=True),
        ts,
        ys,
        group_size=group_size,
        continuity=1.0,
        free_states=not single,  # single shooting starts from the first observation
        controller=no.PIController(rtol=1e-4, atol=1e-5),
        max_steps=20_000,
    )
    optimiser = torch.optim.Adam(shooting.parameters(), lr=0.01)
    for _ in range(steps):
        optimiser.zero_grad()
        shooting().loss.backward()
        optimiser.step()
    return shooting


def whole_trajectory_mse(
    shooting: MultipleShooting, clean: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """One solve from the first observation; its MSE against the noiseless trajectory."""
    with torch.no_grad():
        try:
            prediction = shooting.predict()
        except no.SolverError:  # a field that blows up between the observations
            return float("inf"), torch.full_like(clean, float("nan"))
    return (prediction - clean).pow(2).mean().item(), prediction


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a run of seconds (for tests)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.small:
        t1, n, group_size, hidden, steps, seeds = 5.0, 26, 6, 16, 15, (0,)
    else:
        t1, n, group_size, hidden, steps, seeds = 20.0, 101, 6, 32, 300, (0, 1, 2)

    print(
        f"Lotka-Volterra on [0, {t1:g}], {n} observations, noise {NOISE:g} x mean |y|; "
        f"MLP width {hidden}, {steps} Adam steps (lr 0.01), dopri5 at rtol 1e-4"
    )
    print(f"multiple shooting: groups of {group_size} observations, continuity weight 1")
    print("whole-trajectory MSE (one solve from the first observation, against the noiseless")
    print("trajectory) per seed:")
    methods = {"single shooting": n, "multiple shooting": group_size}
    fitted: dict[str, MultipleShooting] = {}
    predictions: dict[str, torch.Tensor] = {}
    for name, size in methods.items():
        mses, seconds = [], 0.0
        for seed in seeds:
            ts, ys, clean = data(t1, n, seed)
            start = time.perf_counter()
            shooting = fit(ts, ys, size, hidden, steps, seed)
            seconds += time.perf_counter() - start
            mse, prediction = whole_trajectory_mse(shooting, clean)
            mses.append(mse)
            if seed == seeds[0]:
                fitted[name], predictions[name] = shooting, prediction
        print(f"  {name:18s} " + "  ".join(f"{m:9.3e}" for m in mses) + f"   ({seconds:.0f} s)")
    plot(*data(t1, n, seeds[0]), fitted, predictions, out)


def plot(
    ts: torch.Tensor,
    ys: torch.Tensor,
    clean: torch.Tensor,
    fitted: dict[str, MultipleShooting],
    predictions: dict[str, torch.Tensor],
    out: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    for ax, name in zip(axes[:2], predictions):
        ax.plot(ts, ys[:, 0], "k.", ms=3, label="data (prey)")
        ax.plot(ts, clean[:, 0], color="0.6", lw=1, label="true prey")
        ax.plot(ts, predictions[name][:, 0], color="C3", lw=1.5, label=f"{name}, prey")
        ax.plot(ts, predictions[name][:, 1], color="C0", lw=1.5, label=f"{name}, predator")
        ax.plot(ts, clean[:, 1], color="0.6", lw=1, ls="--", label="true predator")
        ax.set_title(f"trained by {name}: one solve from the first observation")
        ax.legend(fontsize=7, loc="upper right", ncol=3)
    ax = axes[2]
    with torch.no_grad():
        result = fitted["multiple shooting"]()
    ax.plot(ts, ys[:, 0], "k.", ms=3, label="data (prey)")
    for k, group in enumerate(result.groups):
        ax.plot(ts[group], result.predictions[:, k, 0], color="C2", lw=1.5)
        ax.plot(ts[group[0]], result.y0s[k, 0].item(), "o", color="C2", ms=3)
    ax.set_title("multiple shooting after training: each group from its free initial state (dots)")
    ax.set_xlabel("t")
    fig.tight_layout()
    fig.savefig(out / "multiple_shooting.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
