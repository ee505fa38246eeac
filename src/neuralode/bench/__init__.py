"""Benchmarks against torchdiffeq, torchode and SciPy (needs the ``bench`` extra installed).

``neuralode bench`` runs them; ``benchmarks/*.py`` are thin scripts around the same code.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform

import torch


def environment() -> str:
    """The machine and the versions of everything timed, for the reports."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f"GPU: {torch.cuda.get_device_name()}; " if torch.cuda.is_available() else ""
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("neuralode", "torchdiffeq", "torchode", "torchsde", "scipy")
    )
    return (
        f"{gpu}CPU: {cpu}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, {versions}"
    )


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
