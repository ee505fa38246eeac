"""PNG plots of solutions and of work against precision."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch


def require_matplotlib(alternative: str = "") -> None:
    """Checks that matplotlib is installed, before a command that writes plots does any work.

    Arguments:
        alternative: what else the user may do (such as ``"pass --no-plots"``), appended to
            the install command in the message.

    Raises:
        ValueError: matplotlib is not installed (the message names the install command).
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        other = f", or {alternative}" if alternative else ""
        raise ValueError(
            "the plots need matplotlib, which is not installed: pip install "
            f"'neuralode[plots]' (or pip install matplotlib){other}"
        ) from error


def figure(**kwargs: Any) -> Any:
    """A matplotlib ``Figure`` made outside pyplot: the caller's backend stays as it was, and
    a plot that fails leaves no figure open (nothing holds it but the caller).

    Arguments:
        kwargs: ``matplotlib.figure.Figure``'s arguments (``figsize``, ...).

    Returns:
        The figure; ``fig.subplots(...)`` makes its axes, ``fig.savefig(path)`` writes it.

    Raises:
        ImportError: matplotlib is not installed (the message names the install command).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plots need matplotlib: pip install 'neuralode[plots]'") from error
    return Figure(**kwargs)


def numbers(values: Any) -> np.ndarray:
    """``values`` (a tensor on any device, recording gradients or not, an array or a
    sequence of numbers) as a NumPy array for matplotlib."""
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def _target(path: Path | str) -> Path:
    """The PNG's path, its directory made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _refuse_empty(panels: Sequence[Any]) -> None:
    if len(panels) == 0:
        raise ValueError("panels is empty: give one dict per panel to draw")


def save_phase_portraits(path: Path, panels: Sequence[dict[str, Any]]) -> Path:
    """A PNG of phase portraits, one panel per problem: the exact trajectory as a line,
    each method's outputs as marks.

    Arguments:
        path: the PNG file to write (its directory is made).
        panels: one dict per panel: ``{"title": str, "exact": (x, y), "methods": {name:
            (x, y)}}``, each ``x``, ``y`` a sequence of numbers (a 1-D array or tensor), and
            optionally ``"xlabel"`` and ``"ylabel"`` (default ``"y[0]"``, ``"y[1]"``).

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is not installed (the message names the install command).
        ValueError: ``panels`` is empty.
    """
    _refuse_empty(panels)
    fig = figure(figsize=(4.5 * len(panels), 4.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.plot(*map(numbers, panel["exact"]), color="black", lw=1.5, label="exact")
        for name, (x, y) in panel["methods"].items():
            ax.plot(numbers(x), numbers(y), ".", ms=4, label=name)
        ax.set_title(panel["title"])
        ax.set_xlabel(panel.get("xlabel", "y[0]"))
        ax.set_ylabel(panel.get("ylabel", "y[1]"))
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = _target(path)
    fig.savefig(path, dpi=110)
    return path


def save_work_precision(path: Path, rows: Sequence[dict[str, Any]], title: str) -> Path:
    """A PNG of work against precision: the error against the function evaluations
    (log-log), one line per method through its runs (e.g. one per tolerance).

    Arguments:
        path: the PNG file to write (its directory is made).
        rows: one dict per run: ``{"method": str, "nfe": int, "error": float}`` (an error
            of 0 is drawn at 1e-17).
        title: the plot's title.

    Returns:
        ``path``.

    Raises:
        ImportError: matplotlib is not installed (the message names the install command).
    """
    fig = figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted(
            (float(numbers(r["nfe"])), float(numbers(r["error"])))
            for r in rows
            if r["method"] == method
        )
        ax.loglog([p[0] for p in points], [max(p[1], 1e-17) for p in points], "o-", label=method)
    ax.set_xlabel("function evaluations (NFE)")
    ax.set_ylabel("max error against the exact solution")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = _target(path)
    fig.savefig(path, dpi=110)
    return path
