"""Norms used to measure local error estimates: RMS, max, per-leaf mixed and seminorm."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from ._host import plain_factories

if TYPE_CHECKING:
    from ._tree import TreeSpec

Norm = Callable[[torch.Tensor], torch.Tensor]


# 16-bit floats: error norms are computed in float32 for them (``error_dtype``)
LOW_PRECISION = (torch.float16, torch.bfloat16)


def error_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype error norms are computed in for a state of ``dtype``: float32 for the
    16-bit floats (whose range overflows in the scaled error and whose resolution is too
    coarse for the tolerances), else the state's real dtype."""
    real = dtype.to_real() if dtype.is_complex else dtype
    return torch.float32 if real in LOW_PRECISION else real


def tolerance_tensor(tol: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tol`` as a tensor of ``like``'s error dtype (``error_dtype``) on its device.

    For a 16-bit state a scalar becomes shape (1,), not 0-dim: a 0-dim float32 tensor would
    not promote a 16-bit tensor in arithmetic, a 1-dim one does, so the scaled error
    ``error / (atol + rtol * |y|)`` is computed in float32 without extra casts.
    """
    dtype = error_dtype(like.dtype)
    tensor = torch.as_tensor(tol, dtype=dtype, device=like.device)
    if dtype != like.real.dtype and tensor.ndim == 0:
        tensor = tensor.reshape(1)
    elif 1 < tensor.numel() == like.numel() and tensor.shape != like.shape:
        tensor = tensor.reshape(like.shape)  # per element, flat: the rows of per-sample mode
    return tensor


def lay_out_tolerances(controller: Any, spec: TreeSpec) -> Any:
    """The controller with per-element tolerances in the flat state's layout
    (``flat_tolerance``); scalar tolerances leave it as it is.

    Raises:
        ValueError: a tolerance that neither broadcasts against the state nor has its size.
    """
    tolerances = {}
    for name in ("rtol", "atol"):
        tol = getattr(controller, name, None)
        if isinstance(tol, torch.Tensor) and tol.numel() > 1:
            tolerances[name] = flat_tolerance(name, tol, spec)
    if not tolerances:
        return controller
    laid_out = copy.copy(controller)
    for name, tol in tolerances.items():
        setattr(laid_out, name, tol)
    return laid_out


def flat_tolerance(name: str, tol: torch.Tensor, spec: TreeSpec) -> torch.Tensor:
    """A per-element tolerance as a 1-D tensor that lines up with the flat state in every
    mode: broadcast against the state (a bare tensor), or already of the flat state's size
    (``spec.numel``: a nested state's leaves flattened and concatenated in order).

    Raises:
        ValueError: ``tol`` neither broadcasts against the state nor has its size.
    """
    if spec.is_leaf and tol.numel() != spec.numel:
        try:
            tol = torch.broadcast_to(tol, spec.shapes[0])
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(tol.shape)} does not broadcast against the state of "
                f"shape {tuple(spec.shapes[0])}; give a number or a tensor that does"
            ) from None
    if tol.numel() != spec.numel:
        raise ValueError(
            f"{name} has {tol.numel()} entries but the state has {spec.numel}: for a nested "
            "state give a number or one entry per element of the flattened state (its "
            "tensors flattened and concatenated in order)"
        )
    return tol.reshape(-1)


# Scalar tolerances as tensors, made once per (value, dtype, device): a solve needs them for
# every step's error scale, and making them costs more than a step's addcmul.
_TOLERANCES: dict[tuple[float, torch.dtype, torch.device], torch.Tensor] = {}


def cached_tolerance(tol: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``tolerance_tensor(tol, like)``, made once per scalar value, dtype and device (never
    written to; a plain tensor, also when first made under a ``torch.func`` transform)."""
    if isinstance(tol, torch.Tensor):
        return tolerance_tensor(tol, like)
    key = (float(tol), like.dtype, like.device)
    cached = _TOLERANCES.get(key)
    if cached is None:
        if len(_TOLERANCES) >= 64:
            _TOLERANCES.clear()
        with plain_factories():
            cached = _TOLERANCES[key] = tolerance_tensor(float(tol), like)
    return cached


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """Root mean square of all entries (absolute values for complex tensors).

    Arguments:
        x: the (flat) scaled error.

    Returns:
        A 0-dim tensor.
    """
    return torch.linalg.vector_norm(x) / (x.numel() ** 0.5)


def row_rms(x: torch.Tensor) -> torch.Tensor:
    """RMS of each row of a (batch, n) tensor, in float64: the error norm of each sample
    (per-sample mode; one problem is a batch of one)."""
    return (torch.linalg.vector_norm(x, dim=1) / (x.shape[1] ** 0.5)).to(torch.float64)


class RowMixedNorm:
    """``MixedNorm`` / ``Seminorm`` on each row of a (batch, n) tensor: the max of the RMS
    of each measured part (``parts``: the sizes of the leading parts), in float64."""

    def __init__(self, parts: Sequence[int]):
        self.parts = tuple(int(n) for n in parts)
        self._filled = _filled(self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        pieces = torch.split(x[:, : sum(self.parts)], self.parts, dim=1)
        if not self._filled:
            return x.new_zeros(x.shape[0], dtype=torch.float64)
        return torch.stack([row_rms(pieces[i]) for i in self._filled]).amax(0)


def _filled(parts: tuple[int, ...]) -> tuple[int, ...]:
    """The indices of the parts with entries: an empty tensor of a nested state has no
    error to measure (its RMS would be 0 / 0)."""
    return tuple(i for i, n in enumerate(parts) if n)


def row_norm(norm: Norm) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The row version of one of the library's norms (``None``: no row version): the RMS,
    the mixed norm and the seminorm."""
    if norm is rms_norm:
        return row_rms
    if isinstance(norm, Seminorm):
        return RowMixedNorm(norm.measured)
    if isinstance(norm, MixedNorm):
        return RowMixedNorm(norm.numels)
    return None


def norm_value(x: torch.Tensor, norm: Norm) -> float:
    """``float(norm(x))``, with the RMS norm's division by sqrt(n) done on the host (one
    tensor operation fewer in the step loop)."""
    if norm is rms_norm:
        return float(torch.linalg.vector_norm(x)) / math.sqrt(x.numel())
    return float(norm(x))


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of all entries (not divided by the size: grows with the state)."""
    return torch.linalg.vector_norm(x)


def max_norm(x: torch.Tensor) -> torch.Tensor:
    """Largest absolute entry.

    Arguments:
        x: the (flat) scaled error.

    Returns:
        A 0-dim tensor.
    """
    return torch.linalg.vector_norm(x, ord=float("inf"))


class MixedNorm:
    """Max over the leaves of a flattened state of each leaf's RMS (torchdiffeq's tuple norm).

    A class rather than a closure: torch.compile guards on its ``numels``, so a compiled step
    is reused by every solve of the same structure (a new closure would recompile)."""

    def __init__(self, numels: Sequence[int]):
        self.numels = tuple(int(n) for n in numels)
        self._filled = _filled(self.numels)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self._filled:
            return x.new_zeros((), dtype=x.real.dtype)
        parts = torch.split(x, self.numels)
        return torch.stack([rms_norm(parts[i]) for i in self._filled]).max()

    # equal mixed norms are one setting: the compiled whole solve's copies and plans are keyed
    # by the norm, and the adjoint makes a new one for each backward solve
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.numels == self.numels  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.numels))


def mixed_norm(numels: Sequence[int]) -> Norm:
    """Max over the leaves of a flattened state of each leaf's RMS (torchdiffeq's tuple norm).

    Arguments:
        numels: the number of entries of each leaf, in the flat order.

    Returns:
        The norm, a callable on the flat scaled error.
    """
    return MixedNorm(numels)


class Seminorm:
    """Mixed norm over the first ``n_measured`` leaves only; the others are left out.

    Used by the adjoint (the parameter-gradient channels need not be integrated accurately,
    Kidger et al., 2021, "Hey, that's not an ODE") and for auxiliary channels such as
    integrated regularisers. ``size`` is the number of leading flat entries measured; the
    adjoint's backward solve measures the same entries of the state and of its adjoint.
    """

    def __init__(self, numels: Sequence[int], n_measured: int):
        numels = tuple(numels)
        if (
            isinstance(n_measured, bool)
            or not isinstance(n_measured, numbers.Integral)
            or not 1 <= n_measured <= len(numels)
        ):
            raise ValueError(
                f"seminorm's n_measured counts leading leaves of the state (tensors, not "
                f"entries): an integer from 1 to {len(numels)} for numels {list(numels)}, "
                f"got {n_measured!r}"
            )
        self.measured = numels[:n_measured]
        self.size = sum(self.measured)
        self._inner = mixed_norm(self.measured)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._inner(x[: self.size])

    # equal seminorms are one setting: the compiled whole solve's copies and plans are keyed
    # by the norm, and the adjoint makes a new one for each backward solve
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.measured == self.measured  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.measured))


def seminorm(numels: Sequence[int], n_measured: int) -> Norm:
    """Mixed norm over the first ``n_measured`` leaves only; the others are left out.

    Used by the adjoint (the parameter-gradient channels need not be integrated accurately,
    Kidger et al., 2021, "Hey, that's not an ODE") and for auxiliary channels such as
    integrated regularisers.

    Arguments:
        numels: the number of entries of each leaf, in the flat order.
        n_measured: how many leading leaves the norm measures, from 1 to ``len(numels)``.

    Returns:
        The norm, a callable on the flat scaled error.

    Raises:
        ValueError: ``n_measured`` is not an integer from 1 to ``len(numels)``.
    """
    return Seminorm(numels, n_measured)
