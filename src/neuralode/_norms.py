"""Norms used to measure local error estimates: RMS, max, per-leaf mixed and seminorm."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

Norm = Callable[[torch.Tensor], torch.Tensor]


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries (absolute values for complex tensors)."""
    return torch.linalg.vector_norm(x) / (x.numel() ** 0.5)


def norm_value(x: torch.Tensor, norm: Norm) -> float:
    """``float(norm(x))``, with the RMS norm's division by sqrt(n) done on the host (one
    tensor operation fewer in the step loop)."""
    if norm is rms_norm:
        return float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())
    return float(norm(x))


def max_norm(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute entry."""
    return torch.linalg.vector_norm(x, ord=float("inf"))


class MixedNorm:
    """Max over the leaves of a flattened state of each leaf's RMS (torchdiffeq's tuple norm).

    A class rather than a closure: torch.compile guards on its ``numels``, so a compiled step
    is reused by every solve of the same structure (a new closure would recompile)."""

    def __init__(self, numels: Sequence[int]):
        self.numels = tuple(int(n) for n in numels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([rms_norm(part) for part in torch.split(x, self.numels)]).max()


def mixed_norm(numels: Sequence[int]) -> Norm:
    """Max over the leaves of a flattened state of each leaf's RMS (see ``MixedNorm``)."""
    return MixedNorm(numels)


class Seminorm:
    """Mixed norm over the first ``n_measured`` leaves only; the others are left out.

    Used by the adjoint (the parameter-gradient channels need not be integrated accurately,
    Kidger et al., 2021, "Hey, that's not an ODE") and for auxiliary channels such as
    integrated regularisers. ``size`` is the number of leading flat entries measured; the
    adjoint's backward solve measures the same entries of the state and of its adjoint.
    """

    def __init__(self, numels: Sequence[int], n_measured: int):
        self.measured = tuple(numels[:n_measured])
        self.size = sum(self.measured)
        self._inner = mixed_norm(self.measured)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._inner(x[: self.size])


def seminorm(numels: Sequence[int], n_measured: int) -> Norm:
    """Mixed norm over the first ``n_measured`` leaves only (see ``Seminorm``)."""
    return Seminorm(numels, n_measured)
