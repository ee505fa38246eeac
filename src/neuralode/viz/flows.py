"""PNG plots of 2-D densities, samples and flow trajectories."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .plots import _refuse_empty, _target, figure, numbers


def save_flow_panels(path: Path, panels: Sequence[dict[str, Any]], title: str = "") -> Path:
    """One row of square panels. Each panel dict has ``title`` and one of: ``density``
    (2-D array over ``extent``), ``points`` ((n, 2) array), ``paths`` ((times, n, 2) array);
    arrays or tensors. The PNG's directory is made."""
    _refuse_empty(panels)
    fig = figure(figsize=(3.2 * len(panels), 3.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        lim = panel.get("extent", (-4, 4, -4, 4))
        if "density" in panel:
            ax.imshow(
                numbers(panel["density"]).T, origin="lower", extent=lim, cmap="inferno",
                aspect="equal",
            )  # fmt: skip
        if "points" in panel:
            pts = numbers(panel["points"])
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color=panel.get("color", "C0"))
        if "paths" in panel:
            paths = numbers(panel["paths"])
            ax.plot(paths[:, :, 0], paths[:, :, 1], lw=0.5, alpha=0.5, color="0.4")
            ax.scatter(paths[0, :, 0], paths[0, :, 1], s=3, color="C0", label="base")
            ax.scatter(paths[-1, :, 0], paths[-1, :, 1], s=3, color="C3", label="data")
            ax.legend(loc="upper right", fontsize=6, markerscale=2)
        ax.set_xlim(lim[0], lim[1])
        ax.set_ylim(lim[2], lim[3])
        ax.set_title(panel.get("title", ""), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = _target(path)
    fig.savefig(path, dpi=110)
    return path


def save_density_grid(
    path: Path, rows: Sequence[Sequence[dict[str, Any]]], row_labels: Sequence[str] = ()
) -> Path:
    """A grid of density images: ``rows`` of panel dicts with ``density``, ``extent``, ``title``."""
    _refuse_empty([panel for row in rows for panel in row])
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig = figure(figsize=(2.2 * n_cols, 2.2 * n_rows))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(row):
                ax.axis("off")
                continue
            panel = row[j]
            ax.imshow(
                numbers(panel["density"]).T, origin="lower", extent=panel["extent"],
                cmap="inferno", aspect="equal",
            )  # fmt: skip
            ax.set_title(panel.get("title", ""), fontsize=7)
        if i < len(row_labels):
            axes[i][0].set_ylabel(row_labels[i], fontsize=8)
    fig.tight_layout()
    path = _target(path)
    fig.savefig(path, dpi=100)
    return path
