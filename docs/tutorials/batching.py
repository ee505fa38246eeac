"""Batching: a batch of independent ODEs solved as one "giant" ODE against per-sample solving,
with the steps each sample takes.

Run: python docs/tutorials/batching.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neuralode import Dopri5, PIController, solve  # noqa: E402


class Oscillators(torch.nn.Module):
    """y'' = -omega_i^2 y per sample: fast oscillators need small steps, slow ones do not.
    ``calls`` counts the sample rows f is evaluated on."""

    def __init__(self, omega: torch.Tensor):
        super().__init__()
        self.omega = omega
        self.rows = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.rows += len(y)
        return torch.stack([y[:, 1], -(self.omega[: len(y)] ** 2) * y[:, 0]], 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="a smaller batch")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)

    batch, fastest = (8, 0.5) if args.small else (64, 1.5)
    omega = torch.logspace(-1, fastest, batch)  # 0.1 to 31.6 rad per unit time (3.2 small)
    y0 = torch.stack([torch.ones(batch), torch.zeros(batch)], 1)
    ts = torch.tensor([0.0, 5.0])
    exact = torch.cos(omega * ts[-1])
    controller = PIController(rtol=1e-6, atol=1e-8)

    # 1. The giant ODE: every sample is a block of one state of size 2 x batch; one step
    #    size for all, chosen by the error norm over the whole batch
    giant = Oscillators(omega)
    sol = solve(giant, y0, ts, solver=Dopri5(), controller=controller)
    giant_error = (sol.ys[-1][:, 0] - exact).abs()
    print(
        f"giant ODE:  {sol.stats.n_accepted} steps for every sample, NFE {sol.stats.nfe}, "
        f"f evaluated on {giant.rows} sample rows, worst error {giant_error.max():.1e}"
    )

    # 2. Per-sample solving: each sample has its own step size and accept/reject decisions
    per = Oscillators(omega)
    per_sol = solve(per, y0, ts, solver=Dopri5(), controller=controller, per_sample=True)
    stats = per_sol.stats
    per_error = (per_sol.ys[-1][:, 0] - exact).abs()
    print(
        f"per sample: {int(stats.sample_accepted.min())} to {int(stats.sample_accepted.max())} "
        f"steps per sample, NFE {stats.nfe} (batched calls), f evaluated on {per.rows} sample "
        f"rows, worst error {per_error.max():.1e}"
    )

    # 3. skip_finished: finished samples leave the batch, so f is evaluated on fewer rows.
    #    f then sees only the running rows, so omega travels in the state (omega' = 0)
    rows = []

    def carried(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rows.append(len(y))
        return torch.stack([y[:, 1], -(y[:, 2] ** 2) * y[:, 0], torch.zeros_like(y[:, 2])], 1)

    y0_carried = torch.cat([y0, omega[:, None]], 1)
    skip_sol = solve(
        carried,
        y0_carried,
        ts,
        solver=Dopri5(),
        controller=controller,
        per_sample=True,
        skip_finished=True,
    )
    print(
        f"per sample with skip_finished: f evaluated on {sum(rows)} sample rows "
        f"({skip_sol.stats.rows_evaluated} by the solver's count) instead of {per.rows}"
    )

    # 4. torch.func.vmap: write the solve for ONE problem and let vmap batch it; each
    #    vmapped problem takes its own steps (per-sample mode underneath). f may capture
    #    tensors batched by the same vmap: here each problem's frequency w
    def final_state(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def one_problem(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # y: (2,)
            return torch.stack([y[1], -(w**2) * y[0]])

        return solve(one_problem, y, ts, solver=Dopri5(), controller=controller).ys[-1]

    vmapped = torch.func.vmap(final_state)(y0, omega)
    print(
        f"torch.func.vmap: max difference from per-sample mode "
        f"{(vmapped - per_sol.ys[-1]).abs().max():.1e}"
    )

    # ... and it composes with torch.func.jacrev outside it: dy(5)/domega = -5 sin(5 omega)
    def final_positions(w: torch.Tensor) -> torch.Tensor:
        return torch.func.vmap(final_state)(y0, w)[:, 0]

    jacobian = torch.func.jacrev(final_positions)(omega)  # (batch, batch), diagonal
    exact_derivative = -ts[-1] * torch.sin(omega * ts[-1])
    print(
        f"jacrev of the vmapped solve: worst error of dy(5)/domega "
        f"{(jacobian.diagonal() - exact_derivative).abs().max():.1e}, off-diagonal "
        f"{(jacobian - torch.diag(jacobian.diagonal())).abs().max():.1e}"
    )

    # each sample alone, for reference: the steps per-sample mode must reproduce
    alone = []
    for i in range(batch):
        single = Oscillators(omega[i : i + 1])
        s = solve(single, y0[i : i + 1], ts, solver=Dopri5(), controller=controller)
        alone.append(s.stats.n_accepted)
    same = sum(int(a) == int(b) for a, b in zip(alone, stats.sample_accepted))
    print(f"per-sample steps equal to solving each sample alone: {same}/{batch} samples")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].semilogx(omega, stats.sample_accepted, "o", ms=4, label="per sample")
    axes[0].semilogx(omega, alone, "k+", ms=6, label="each sample alone")
    axes[0].axhline(sol.stats.n_accepted, color="C3", label="giant ODE (all samples)")
    axes[0].set_xlabel("omega (frequency of the sample)")
    axes[0].set_ylabel("accepted steps")
    axes[0].set_title("Steps per sample")
    axes[0].legend(fontsize=8)
    axes[1].loglog(omega, giant_error, "C3.", label="giant ODE")
    axes[1].loglog(omega, per_error, "C0.", label="per sample")
    axes[1].set_xlabel("omega")
    axes[1].set_ylabel("|y(5) - cos(5 omega)|")
    axes[1].set_title("Errors at rtol 1e-6")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "batching.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
