"""Plots as PNG files (matplotlib, an optional extra, imported lazily)."""

from .plots import save_phase_portraits, save_work_precision

__all__ = ["save_phase_portraits", "save_work_precision"]
