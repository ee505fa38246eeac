"""PNG plots of a training run: curves, NFE per epoch, ODE-block trajectories, and test error
against NFE when the test-time tolerance is varied."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .plots import figure


def save_curves(out: Path, history: Sequence[dict[str, Any]]) -> list[Path]:
    """``curves.png`` (loss and accuracy, train and test) and, for ODE models, ``nfe.png``."""
    epochs = [r["epoch"] for r in history]
    fig = figure(figsize=(10, 4))
    (left, right) = fig.subplots(1, 2)
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    left.plot(epochs, [r["test_loss"] for r in history], "o-", label="test")
    left.set_yscale("log")
    left.set_ylabel("cross-entropy loss")
    right.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    right.plot(epochs, [100 * r["test_accuracy"] for r in history], "o-", label="test")
    right.set_ylabel("accuracy (%)")
    for ax in (left, right):
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.tight_layout()
    paths = [out / "curves.png"]
    fig.savefig(paths[0], dpi=100)
    if history and history[-1].get("nfe_forward") is not None:
        fig = figure(figsize=(6, 4))
        ax = fig.subplots()
        ax.plot(epochs, [r["nfe_forward"] for r in history], "o-", label="forward")
        ax.plot(epochs, [r["nfe_backward"] for r in history], "o-", label="backward")
        ax.set_xlabel("epoch")
        ax.set_ylabel("function evaluations per batch")
        ax.set_title("NFE of the ODE block while training")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        paths.append(out / "nfe.png")
        fig.savefig(paths[-1], dpi=100)
    return paths


@torch.no_grad()
def block_trajectories(model: nn.Module, images: torch.Tensor, points: int = 25) -> torch.Tensor:
    """The ODE block's state along t in [t0, t1] for each image, (points, images, features)."""
    block = model.ode
    features = model.features(images)
    ts = torch.linspace(block.t0, block.t1, points, device=images.device)
    return block(features, ts).flatten(2)


def pca_2d(states: torch.Tensor) -> torch.Tensor:
    """Projects (points, images, features) onto the first two principal components."""
    flat = states.reshape(-1, states.shape[-1]).double()
    centred = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ v[:2].T).reshape(*states.shape[:2], 2).float()


def save_trajectories(
    out: Path, model: nn.Module, images: torch.Tensor, labels: torch.Tensor
) -> Path:
    """``trajectories.png``: each test image's ODE-block state from t0 (circle) to t1 (star),
    projected on two principal components (trajectories of an ODE never cross in the full
    state space; crossings in the picture come from the projection)."""
    projected = pca_2d(block_trajectories(model, images)).cpu()
    fig = figure(figsize=(6, 5))
    ax = fig.subplots()
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    for i in range(projected.shape[1]):
        path = projected[:, i]
        colour = colours(int(labels[i]) % 10)
        ax.plot(path[:, 0], path[:, 1], "-", color=colour, lw=1.2)
        ax.plot(*path[0], "o", color=colour, ms=5)
        ax.plot(*path[-1], "*", color=colour, ms=10, label=f"digit {int(labels[i])}")
    handles, names = ax.get_legend_handles_labels()
    unique = dict(zip(names, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=7)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("ODE-block state along t (o: t0, *: t1), PCA projection")
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=100)
    return out / "trajectories.png"


@torch.no_grad()
def tolerance_sweep(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    tolerances: Sequence[float],
    batch: int = 250,
) -> list[dict[str, float]]:
    """Test error and mean NFE per batch at each test-time tolerance (rtol = atol)."""
    block = model.ode
    saved = block.rtol, block.atol
    rows = []
    try:
        model.eval()
        for tol in tolerances:
            block.rtol = block.atol = tol
            correct, nfe, batches = 0, 0, 0
            for i in range(0, len(y), batch):
                correct += (model(x[i : i + batch]).argmax(1) == y[i : i + batch]).sum().item()
                nfe += block.nfe_forward
                batches += 1
            rows.append({"tol": tol, "test_error": 1 - correct / len(y), "nfe": nfe / batches})
    finally:
        block.rtol, block.atol = saved
        model.train()
    return rows


def save_tolerance_sweep(out: Path, rows: Sequence[dict[str, float]], train_tol: float) -> Path:
    """``tolerance.png``: test error against NFE, one point per test-time tolerance."""
    fig = figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot([r["nfe"] for r in rows], [100 * r["test_error"] for r in rows], "o-")
    for r in rows:
        ax.annotate(f"tol {r['tol']:.0e}", (r["nfe"], 100 * r["test_error"]), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("NFE of the forward pass (per batch)")
    ax.set_ylabel("test error (%)")
    ax.set_title(f"test-time tolerance vs error (trained at tol {train_tol:g})")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "tolerance.png", dpi=100)
    return out / "tolerance.png"


def save_model_plots(
    out: Path, model: nn.Module, data: Any, config: Any, device: Any
) -> list[Path]:
    """The end-of-training plots of a model with an ODE block: trajectories (8 test images)
    and, for adaptive solvers, the tolerance sweep (also written as ``tolerance.json``); of a
    model with an equilibrium layer (``deq``): the fixed-point solvers' residuals on the test
    images (``residuals.png``, ``residuals.json``)."""
    if getattr(model, "deq", None) is not None:
        return [save_deq_residuals(out, model, data.test_x[: config.sweep_images or None], device)]
    block = getattr(model, "ode", None)
    if block is None:
        return []
    paths = [save_trajectories(out, model, data.test_x[:8].to(device), data.test_y[:8])]
    from ..solvers import METHODS

    if METHODS[block.method]().adaptive and config.sweep_tolerances:
        n = config.sweep_images or len(data.test_y)
        x, y = data.test_x[:n].to(device), data.test_y[:n].to(device)
        rows = tolerance_sweep(model, x, y, config.sweep_tolerances)
        (out / "tolerance.json").write_text(json.dumps(rows, indent=2) + "\n")
        paths.append(save_tolerance_sweep(out, rows, block.rtol))
    return paths


@torch.no_grad()
def save_deq_residuals(out: Path, model: nn.Module, images: torch.Tensor, device: Any) -> Path:
    """``residuals.png`` and ``residuals.json``: each fixed-point method's residual history on
    the equilibrium layer of ``model`` (its ``features`` then ``deq``) for ``images``."""
    from .implicit import residual_histories, save_residual_plot

    was_training = model.training
    model.eval()
    try:
        histories = residual_histories(model.deq, model.features(images.to(device)))
    finally:
        model.train(was_training)
    (out / "residuals.json").write_text(json.dumps(histories, indent=2) + "\n")
    return save_residual_plot(out, histories, model.deq.tol)
