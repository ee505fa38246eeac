"""f under ``torch.autocast``: f in the autocast's lower precision, the solver in the state's."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_map


class AutocastField:
    """f under ``torch.autocast``: f computes in the autocast's lower precision (its linear
    layers and convolutions), wherever it is evaluated (the solve, a backward pass that
    recomputes steps), and its outputs are cast to the state's dtype, as torchdiffeq's stage
    sums promote them. The solver's own arithmetic (stage combinations, error estimates,
    interpolation, the adjoint) runs with autocast off (``full_precision``), in the state's
    dtype. Equal for equal f and settings (a compiled solve's cache key)."""

    __slots__ = ("func", "kind", "lower", "dtype")

    def __init__(self, func: Callable[[torch.Tensor, Any], Any], kind: str, lower, dtype):
        self.func, self.kind, self.lower, self.dtype = func, kind, lower, dtype

    def __call__(self, t: torch.Tensor, y: Any) -> Any:
        with torch.autocast(self.kind, dtype=self.lower):
            out = self.func(t, y)
        if isinstance(out, torch.Tensor):
            return out.to(self.dtype) if out.dtype == self.lower else out
        return tree_map(lambda x: x.to(self.dtype) if _lowered(x, self.lower) else x, out)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, AutocastField)
            and other.func is self.func
            and (other.kind, other.lower, other.dtype) == (self.kind, self.lower, self.dtype)
        )

    def __hash__(self) -> int:
        return hash((id(self.func), self.kind, self.lower, self.dtype))


def autocast_active() -> bool:
    """Whether ``torch.autocast`` is on for the CPU or CUDA."""
    return torch.is_autocast_enabled("cpu") or torch.is_autocast_enabled("cuda")


def full_precision() -> contextlib.ExitStack:
    """A context with ``torch.autocast`` off on the CPU and CUDA: the solver's arithmetic in
    its tensors' own dtypes (autocast would run its matrix products in 16 bits)."""
    stack = contextlib.ExitStack()
    for kind in ("cpu", "cuda"):
        if torch.is_autocast_enabled(kind):
            stack.enter_context(torch.autocast(kind, enabled=False))
    return stack


def _lowered(x: Any, lower: torch.dtype) -> bool:
    return isinstance(x, torch.Tensor) and x.dtype == lower


def autocast_dtype(like: torch.Tensor) -> torch.dtype | None:
    """The lower precision ``torch.autocast`` computes f in, where it is enabled on the
    state's device and that dtype is narrower than the state's (a real floating-point one).

    Arguments:
        like: the state (its dtype and device).

    Returns:
        The autocast's dtype, or ``None`` where f's outputs keep the state's dtype.
    """
    kind = like.device.type
    if not like.is_floating_point() or not torch.is_autocast_enabled(kind):
        return None
    lower = torch.get_autocast_dtype(kind)
    return lower if torch.finfo(lower).bits < torch.finfo(like.dtype).bits else None
