"""How a trained equilibrium layer's fixed-point solvers converge: residual histories and the
``residuals.png`` plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..implicit import fixed_point
from ..implicit.fixed_point import NORM_FLOOR
from .plots import figure


@torch.no_grad()
def residual_histories(
    layer: torch.nn.Module,
    x: torch.Tensor,
    methods: Sequence[str] = ("picard", "anderson", "broyden"),
    iterations: int = 60,
) -> dict[str, list[float]]:
    """The largest relative residual over the batch after each evaluation of f, for each
    method solving the ``DEQ`` ``layer``'s fixed point z = f(z, x) from zero (no tolerance: all
    ``iterations`` are run)."""
    return {
        method: fixed_point(
            lambda z: layer.f(z, x), torch.zeros_like(x), method, tol=0.0, max_iter=iterations
        ).history
        for method in methods
    }


@torch.no_grad()
def iterations_to_residuals(
    layer: torch.nn.Module,
    x: torch.Tensor,
    residuals: Sequence[float],
    methods: Sequence[str] = ("picard", "anderson", "broyden"),
    iterations: int = 100,
) -> dict[str, dict[str, dict[str, float | None]]]:
    """For each method and target residual: the evaluations of f until every sample of the
    batch reaches it (``batch``; None: not within ``iterations``) and the mean over samples of
    the evaluations each needs on its own (``sample_mean``; None unless every sample reaches
    it)."""
    table: dict[str, dict[str, dict[str, float | None]]] = {}
    for method in methods:
        table[method] = {}
        for target in residuals:
            result = fixed_point(
                lambda z: layer.f(z, x), torch.zeros_like(x), method, target, iterations
            )
            reached = result.sample_iterations >= 0
            table[method][f"{target:g}"] = {
                "batch": result.iterations if result.converged else None,
                "sample_mean": float(result.sample_iterations.double().mean())
                if bool(reached.all())
                else None,
            }
    return table


def iterations_to(history: Sequence[float], residual: float) -> int | None:
    """The evaluations of f after which ``history`` first reaches ``residual`` (None: never)."""
    for k, value in enumerate(history, start=1):
        if value <= residual:
            return k
    return None


def save_residual_plot(out: Path, histories: dict[str, Sequence[float]], tol: float) -> Path:
    """``residuals.png``: relative residual against iteration for each method, and the
    training tolerance as a line."""
    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    for method, history in histories.items():
        reached = iterations_to(history, tol)
        label = f"{method} ({reached} to tol)" if reached else f"{method} (never reaches tol)"
        ax.semilogy(range(1, len(history) + 1), history, label=label)
    ax.axhline(tol, color="grey", ls="--", lw=1, label=f"training tol {tol:g}")
    ax.set_xlabel("iteration (evaluations of f)")
    # the solvers' criterion (``implicit.fixed_point.relative_residual``)
    ax.set_ylabel(f"largest relative residual ||f(z) - z|| / max(||f(z)||, {NORM_FLOOR:g})")
    ax.set_title("fixed-point solvers on the trained equilibrium layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "residuals.png", dpi=100)
    return out / "residuals.png"
