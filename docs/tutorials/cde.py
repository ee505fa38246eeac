"""Neural CDEs: a linear CDE against its exact solution, the three interpolations of a series
with missing values (and which of them are causal), and a neural CDE classifying irregularly
sampled spirals with each interpolation; on long series, the linear model against the
log-ODE method (log-signatures over windows).

Run: python docs/tutorials/cde.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from neuralode import cde  # noqa: E402
from neuralode.experiments.cde import make_data  # noqa: E402
from neuralode.models import NeuralCDE  # noqa: E402

KINDS = {
    "cubic": (cde.natural_cubic_coeffs, cde.CubicSpline),
    "hermite": (cde.hermite_cubic_coefficients_with_backward_differences, cde.CubicSpline),
    "linear": (cde.linear_interpolation_coeffs, cde.LinearInterpolation),
}


def linear_cde_check() -> None:
    """dz = a z dX with a scalar z has z_T = z0 exp(a (X_T - X_0)) for every path X."""
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.4, 1.1, 1.5, 2.7, 3.0], dtype=torch.float64)  # irregular
    x = torch.randn(1, 6, 1, dtype=torch.float64)
    X = cde.LinearInterpolation(cde.linear_interpolation_coeffs(x, t), t)
    a, z0 = 0.8, torch.ones(1, 1, dtype=torch.float64)
    z = cde.cdeint(
        X, lambda t, z: a * z.unsqueeze(-1), z0, X.interval, adjoint=False,
        rtol=1e-10, atol=1e-12, options={"jump_t": X.grid_points},  # no step across a kink
    )  # fmt: skip
    exact = z0 * torch.exp(a * (x[:, -1] - x[:, 0]))
    print(
        f"linear CDE dz = a z dX: z_T {z[0, -1, 0].item():.10f}, exact "
        f"{exact[0, 0].item():.10f}, difference {abs(z[0, -1, 0] - exact[0, 0]).item():.1e}"
    )


def interpolations(out: Path) -> None:
    """The three interpolations of one series with missing values, and their causality:
    does X on the first interval change when the last observation does?"""
    torch.manual_seed(1)
    x, _ = make_data(1, 12, 0.3, 0.05, torch.Generator().manual_seed(3))
    later = x.clone()
    later[0, -1, 1:] += 1.0  # a different last observation
    fine = torch.linspace(0, 11, 221)
    first = torch.linspace(0, 1, 21)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    seen = ~x[0, :, 1].isnan()
    ax.scatter(torch.arange(12)[seen], x[0, seen, 1], color="k", zorder=3, label="observed x")
    changes = []
    for name, (coeffs, Control) in KINDS.items():
        X, X_later = Control(coeffs(x)), Control(coeffs(later))
        ax.plot(fine, X.evaluate(fine)[0, :, 1], label=name)
        change = (X.evaluate(first) - X_later.evaluate(first)).abs().max().item()
        changes.append(f"{name} {change:.1e}")
    print("change of X on [0, 1] after changing the last observation: " + ", ".join(changes))
    ax.set_xlabel("observation index (the CDE's time)")
    ax.set_title("x channel of one spiral: 30% missing, three interpolations")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cde_interpolations.png", dpi=100)
    plt.close(fig)


def classify(small: bool, out: Path) -> None:
    """A neural CDE per interpolation, trained on the same spirals."""
    n_train, n_test, length = (16, 8, 8) if small else (256, 256, 24)
    steps, hidden, width = (2, 4, 8) if small else (150, 8, 32)
    generator = torch.Generator().manual_seed(0)
    train_x, train_y = make_data(n_train, length, 0.3, 0.3, generator)
    test_x, test_y = make_data(n_test, length, 0.3, 0.3, generator)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name in KINDS:
        torch.manual_seed(0)
        model = NeuralCDE(
            3, hidden, 1, width, interpolation=name, adjoint=False, rtol=1e-3, atol=1e-5
        )
        train_coeffs, test_coeffs = model.coefficients(train_x), model.coefficients(test_x)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        losses, nfe, start = [], 0, time.perf_counter()
        for _ in range(steps):
            index = torch.randperm(n_train)[:32]
            logits = model(train_coeffs[index]).squeeze(-1)
            loss = F.binary_cross_entropy_with_logits(logits, train_y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            nfe += model.nfe_forward
        seconds = time.perf_counter() - start
        with torch.no_grad():
            accuracy = ((model(test_coeffs).squeeze(-1) > 0).float() == test_y).float().mean()
        print(
            f"{name:8s} test accuracy {100 * accuracy.item():5.1f}%, final loss "
            f"{losses[-1]:.4f}, NFE per forward {nfe / steps:.0f}, {seconds:.1f} s"
        )
        axes[0].plot(losses, label=name, lw=1)
        if name == "hermite":
            with torch.no_grad():
                predicted = model(test_coeffs).squeeze(-1) > 0
            for i in range(min(4, n_test)):
                points = test_x[i, ~test_x[i, :, 1:].isnan().any(-1), 1:]
                colour = "tab:blue" if predicted[i] else "tab:orange"
                axes[1].plot(points[:, 0], points[:, 1], ".-", color=colour, lw=0.8)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title("training loss")
    axes[0].legend(fontsize=8)
    axes[1].set_aspect("equal")
    axes[1].set_title("test spirals, Hermite model: blue anticlockwise")
    fig.tight_layout()
    fig.savefig(out / "cde_training.png", dpi=100)
    plt.close(fig)


def train(model: NeuralCDE, coeffs: torch.Tensor, labels: torch.Tensor, steps: int) -> dict:
    """Adam on batches of 32 (lr 1e-2, cosine schedule); the losses, the mean forward NFE
    and the time of each step."""
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    losses, seconds, nfe = [], [], 0
    for _ in range(steps):
        start = time.perf_counter()
        index = torch.randperm(len(labels))[:32]
        loss = F.binary_cross_entropy_with_logits(model(coeffs[index]).squeeze(-1), labels[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
        nfe += model.nfe_forward
    return {"losses": losses, "seconds": seconds, "nfe": nfe / steps}


def long_series(small: bool, out: Path) -> None:
    """Spirals of many observations: the linear neural CDE (a knot per observation) against
    the log-ODE method, depth 1 (the windows' increments only), 2 and 3, windows of 10 and
    50 observations."""
    n_train, n_test, length, steps = (8, 8, 41, 1) if small else (256, 256, 1000, 80)
    windows = (10, 20) if small else (10, 50)
    generator = torch.Generator().manual_seed(4)
    train_x, train_y = make_data(n_train, length, 0.3, 0.3, generator)
    test_x, test_y = make_data(n_test, length, 0.3, 0.3, generator)
    print(f"spirals of {length} observations, 30% missing: {n_train} training, {n_test} test")
    print("model                       channels  params  NFE/forward  s/step  test accuracy")
    runs = [("linear", None)]
    runs += [(f"log-ode depth {d}, window {w}", (d, w)) for d in (1, 2, 3) for w in windows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for name, log_ode in runs:
        torch.manual_seed(0)
        model = NeuralCDE(
            3, 8, 1, 32, interpolation="linear", adjoint=False, rtol=1e-3, atol=1e-5,
            log_ode=log_ode,
        )  # fmt: skip
        train_coeffs, test_coeffs = model.coefficients(train_x), model.coefficients(test_x)
        result = train(model, train_coeffs, train_y, steps)
        with torch.no_grad():
            accuracy = ((model(test_coeffs).squeeze(-1) > 0).float() == test_y).float().mean()
        per_step = sum(result["seconds"]) / steps
        size = sum(p.numel() for p in model.parameters())
        print(
            f"{name:27s} {model.field.input_channels:8d} {size:7d} {result['nfe']:12.0f} "
            f"{per_step:7.2f} {100 * accuracy.item():13.1f}%"
        )
        elapsed = torch.tensor(result["seconds"]).cumsum(0)
        axes[0].plot(range(1, steps + 1), result["losses"], lw=1, label=name)
        axes[1].plot(elapsed, result["losses"], lw=1, label=name)
    for ax, xlabel in zip(axes, ("step", "training time (s, one thread)")):
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(f"training loss, spirals of {length} observations")
    axes[1].set_xscale("log")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "cde_long_series.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="a few steps on a few series")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    linear_cde_check()
    interpolations(out)
    classify(args.small, out)
    long_series(args.small, out)


if __name__ == "__main__":
    main()
