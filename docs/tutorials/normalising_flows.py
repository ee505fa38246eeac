"""Normalising flows: the change of variables, a planar flow, then a continuous flow (exact
trace and Hutchinson's estimator), with their densities.

Run: python docs/tutorials/normalising_flows.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neuralode.experiments.density_matching import (  # noqa: E402
    ENERGIES,
    fit,
    kl_estimate,
    log_normaliser,
    model_density,
)
from neuralode.models import CNF, GatedPlanarDynamics, PlanarFlow  # noqa: E402


def change_of_variables(n: int) -> float:
    """x = exp(z) with z ~ N(0, 1): p_x(x) = p_z(log x) |d log x / dx| = N(log x) / x.
    Returns the largest gap between that formula and a histogram of n samples."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(0))
    x = z.exp()
    edges = torch.linspace(0.05, 4, 40)
    counts = torch.histogram(x, bins=edges).hist
    width = edges[1] - edges[0]
    histogram = counts / (n * width)
    mid = (edges[1:] + edges[:-1]) / 2
    formula = torch.exp(-0.5 * mid.log() ** 2) / math.sqrt(2 * math.pi) / mid
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.bar(mid, histogram, width=float(width), color="0.8", label=f"histogram of {n} samples")
    ax.plot(mid, formula, "C3", label="p_z(log x) / x")
    ax.set_xlabel("x = exp(z)")
    ax.set_title("Change of variables")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return float((histogram - formula).abs().max()), fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="fewer steps and samples")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    gap, fig = change_of_variables(2_000 if args.small else 200_000)
    fig.savefig(out / "flows_change_of_variables.png", dpi=80)
    plt.close(fig)
    print(f"change of variables: largest gap histogram vs formula {gap:.3f}")

    # Fit q to the unnormalised target p ~ exp(-U2) by minimising KL(q || p)
    target, energy = "U2", ENERGIES["U2"]
    log_z = log_normaliser(energy)
    settings = argparse.Namespace(
        iters=4 if args.small else 300, batch=64 if args.small else 256, lr=1e-2
    )
    n_eval, points = (50, 12) if args.small else (2000, 60)
    models = {
        "planar flow, K = 16": PlanarFlow(2, 16),
        "CNF, exact trace, M = 16": CNF(
            GatedPlanarDynamics(2, 16), rtol=1e-3, atol=1e-3, event_shape=(2,)
        ),
        "CNF, Hutchinson, M = 16": CNF(
            GatedPlanarDynamics(2, 16), trace="hutchinson", rtol=1e-3, atol=1e-3, event_shape=(2,)
        ),
    }
    densities = {}
    print("model                      parameters  KL(q||p)          train s")
    for name, model in models.items():
        torch.manual_seed(0)
        start = time.process_time()
        fit(model, energy, settings)
        seconds = time.process_time() - start
        kl, stderr = kl_estimate(model, energy, log_z, n_eval)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<26} {params:10d}  {kl:.3f} +- {stderr:.3f}  {seconds:7.1f}")
        if isinstance(model, CNF):
            model.trace = "exact"  # densities on the grid with the exact trace
        densities[name] = model_density(model, points)

    # Hutchinson's estimator: unbiased, with a variance the exact trace does not have
    cnf = models["CNF, exact trace, M = 16"]
    x = torch.randn(32 if args.small else 2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        exact = cnf.log_prob(x)
        nfe_exact = cnf.nfe_forward
        cnf.trace = "hutchinson"
        n_draws = 2 if args.small else 16
        draws = torch.stack([cnf.log_prob(x) for _ in range(n_draws)])
        nfe_hutchinson = cnf.nfe_forward
        cnf.trace = "exact"
    gap = float((draws.mean(0) - exact).abs().mean())
    spread = float(draws.std(0).mean())
    # an unbiased mean of n draws errs by N(0, std^2 / n): E|error| = sqrt(2 / pi) std / sqrt(n)
    expected_gap = math.sqrt(2 / math.pi) * spread / n_draws**0.5
    print(
        f"log q(x), Hutchinson minus exact: one draw's std {spread:.3f}; the mean of "
        f"{n_draws} draws is off by {gap:.3f} on average (unbiased: about sqrt(2 / pi) std / "
        f"sqrt(draws) = {expected_gap:.3f}); NFE exact {nfe_exact}, Hutchinson {nfe_hutchinson}"
    )

    grid = torch.linspace(-4, 4, points)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    flat = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1).double()
    panels = {f"target exp(-{target}) / Z": (-energy(flat) - log_z).exp().reshape(points, points)}
    panels.update(densities)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.3))
    for ax, (title, density) in zip(axes, panels.items()):
        ax.imshow(density.T, origin="lower", extent=(-4, 4, -4, 4), cmap="viridis")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "flows_densities.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
