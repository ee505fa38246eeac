"""An explicit Runge-Kutta tableau's numbers as tensors, and the arithmetic on them that
every mode shares: the stage combination (``stage_sum``) and the dense output's weights
B_i(theta) (``theta_weights``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._host import plain_factories
from .tableau import ButcherTableau


@dataclass
class Coefficients:
    """A tableau's coefficients as tensors of one dtype on one device."""

    a: list[torch.Tensor]
    b: torch.Tensor
    b_error: torch.Tensor | None
    dense: torch.Tensor | None
    extra_a: list[torch.Tensor]
    extra_is_f1: list[bool]
    # Plain-Python facts read on every step (tableau properties recompute them each time).
    stages: int
    c: tuple[float, ...]
    fsal: bool
    first_a: float  # a[1][0]: stage 1 is one fused add, no stack or matrix product


# One set of coefficient tensors per (method, dtype, device), shared by all instances: a
# solver built per call (``solve(..., solver=Dopri5())``) must not rebuild them every time.
_SHARED: dict[tuple[type, torch.dtype, torch.device], Coefficients] = {}


def shared_coefficients(method: type, tableau: ButcherTableau, like: torch.Tensor) -> Coefficients:
    """The coefficients of ``method`` (its ``tableau``) for ``like``'s dtype and device, made
    once per (method, dtype, device)."""
    key = (method, like.dtype, like.device)
    co = _SHARED.get(key)
    if co is None:
        with plain_factories():  # (cached: never a transform's tensor)
            co = _SHARED[key] = _build(tableau, like.dtype, like.device)
    return co


def _build(tab: ButcherTableau, dtype: torch.dtype, device: torch.device) -> Coefficients:
    """The tableau's numbers in ``dtype`` on ``device``."""

    def t(values: Any) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)

    dense = tab.dense
    b_padded = list(tab.b)
    extra_is_f1 = []
    for m, (c, row) in enumerate(zip(dense.extra_c, dense.extra_a) if dense else ()):
        pad = b_padded + [0.0] * m
        extra_is_f1.append(c == 1 and all(abs(x - y) < 1e-15 for x, y in zip(row, pad)))
    return Coefficients(
        a=[t(row) for row in tab.a],
        b=t(tab.b),
        b_error=None if tab.b_error is None else t(tab.b_error),
        dense=None if dense is None else t(dense.coefficients),
        extra_a=[t(row) for row in dense.extra_a] if dense else [],
        extra_is_f1=extra_is_f1,
        stages=tab.stages,
        c=tuple(tab.c),
        fsal=tab.fsal,
        first_a=tab.a[1][0] if tab.stages > 1 else 0.0,
    )


def theta_weights(co: Coefficients, theta: torch.Tensor, derivative: bool) -> torch.Tensor:
    """B_i(theta) (with ``derivative``: B_i'(theta)) of the own extension, (stages, m); a
    Python float ``theta`` is one point (m = 1), its powers made as floats."""
    if isinstance(theta, float):
        ps = range(1, co.dense.shape[1] + 1)
        monomials = [p * theta ** (p - 1) for p in ps] if derivative else [theta**p for p in ps]
        column = torch.tensor(monomials, dtype=co.dense.dtype, device=co.dense.device)
        return co.dense @ column[:, None]
    powers = torch.arange(1, co.dense.shape[1] + 1, dtype=torch.float64, device=theta.device)
    if derivative:  # d/dtheta theta^p = p theta^(p-1)
        theta_powers = theta[None, :] ** (powers[:, None] - 1) * powers[:, None]
    else:
        theta_powers = theta[None, :] ** powers[:, None]  # (P, m)
    return co.dense @ theta_powers.to(dtype=co.dense.dtype, device=co.dense.device)


def combine(
    y: torch.Tensor | None, ks: Sequence[torch.Tensor], coefficients: Sequence[float], alpha: Any
) -> torch.Tensor:
    """``y + alpha * sum_j c_j k_j`` (``y`` None: without it) as pointwise arithmetic with the
    tableau's numbers as constants, for a compiled step: the compiler fuses it into the
    kernels around it, where a matrix-vector product (``addmv``) stays a separate call on a
    stacked copy of the stages (a compiled dopri5 step ran ~10 % faster this way). ``alpha``
    (the step size, symbolic under torch.compile) multiplies: ``alpha=`` would specialise it,
    one recompilation per step size."""
    total = None
    for c, k in zip(coefficients, ks):
        if c:
            total = k * c if total is None else total + k * c
    total = total * alpha
    return total if y is None else y + total


def stage_sum(
    y: torch.Tensor | None,
    h: Any,
    coefficients: torch.Tensor,
    numbers: Sequence[float],
    ks: Sequence[torch.Tensor],
    columns: torch.Tensor | None,
    compiling: bool,
) -> torch.Tensor:
    """``y + h * sum_j c_j k_j`` (without ``y`` when it is ``None``): the one stage
    combination of every mode. Pointwise under torch.compile (``combine``); with ``columns``
    (the transposed stage rows of a buffer) one matrix-vector product; otherwise on the
    stacked stages. A float ``h`` (one problem) is folded into the product (``addmv``'s
    ``alpha``); a tensor ``h`` (per sample) multiplies it (``addcmul``)."""
    if columns is None:  # (a buffer's columns: graph-free, never compiling)
        if compiling:
            return combine(y, ks, numbers, h)
        # (``numbers`` are the coefficients as floats: ``len`` of a tensor costs ~0.7 us)
        stacked = torch.stack(ks[: len(numbers)])
        columns = (stacked if stacked.ndim == 2 else stacked.flatten(1)).T
    if isinstance(h, float):  # one problem: a flat state, no reshaping
        if y is None:  # with beta=0, addmv ignores its first argument
            return torch.addmv(ks[0], columns, coefficients, beta=0, alpha=h)
        return torch.addmv(y, columns, coefficients, alpha=h)
    total = torch.mv(columns, coefficients).view_as(ks[0])  # (view(Size) parses ~1.5 us slower)
    return h * total if y is None else torch.addcmul(y, h, total)
