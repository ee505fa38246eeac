"""Dense output that several solvers share: the cubic Hermite interpolant through a step's
ends, and the dense weights of an interpolant over a step's stage derivatives."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # (annotations only)
    from .._term import ODETerm
    from ._step import Step


def hermite_interpolate(
    term: ODETerm, step: Step, thetas: torch.Tensor, f0: torch.Tensor
) -> torch.Tensor:
    """Cubic Hermite interpolation through (y0, f0) and (y1, f1); computes f1 if unknown."""
    if step.f1 is None:
        step.f1 = term(step.t1, step.y1, step.end_perturb)
    th = thetas.to(device=step.y0.device, dtype=term.time_dtype)[:, None]
    return hermite(th, step.y0, step.y1, f0, step.f1, step.dt)


def step_fractions(theta: float | torch.Tensor) -> np.ndarray:
    """``dense_weights``'s step fractions as a float64 array (m,): one point's Python float
    or a (m,) tensor."""
    return np.array([theta]) if isinstance(theta, float) else theta.detach().cpu().numpy()


def stage_dense_weights(
    w: np.ndarray, h: float | torch.Tensor, like: torch.Tensor, derivative: bool
) -> torch.Tensor:
    """``dense_weights`` of an interpolant over stage derivatives, y0 + h sum_j w_j k_j (its
    time derivative sum_j w_j' k_j with ``derivative``): the columns of y0, y1 and the
    stages, (m, 2 + K), from the stage weights ``w`` (m, K) in float64 (at the fractions
    ``step_fractions`` gives); ``h`` (m,) float64, or a Python float for one point."""
    weights = torch.from_numpy(w).to(dtype=like.dtype, device=like.device)
    ends = torch.zeros(w.shape[0], 2, dtype=like.dtype, device=like.device)
    if derivative:
        return torch.cat([ends, weights], 1)
    ends[:, 0] = 1
    size = h if isinstance(h, float) else h.to(like.dtype)[:, None]
    return torch.cat([ends, size * weights], 1)


def hermite(
    theta: torch.Tensor,
    y0: torch.Tensor,
    y1: torch.Tensor,
    f0: torch.Tensor,
    f1: torch.Tensor,
    h: Any,
    derivative: bool = False,
) -> torch.Tensor:
    """The cubic Hermite interpolant through (y0, f0) and (y1, f1) at the step fractions
    ``theta``, for every mode: ``theta`` (m, 1) against one step's (n,) states, or (batch,
    1) against per-sample (batch, n) states with ``h`` (batch, 1). With ``derivative``, its
    time derivative (the basis polynomials' theta-derivatives over ``h``)."""
    h00, h01, h10, h11 = hermite_basis(theta, h, derivative)
    return h00 * y0 + h01 * y1 + (h10 * h) * f0 + (h11 * h) * f1


def hermite_basis(theta: torch.Tensor, h: Any, derivative: bool = False) -> tuple:
    """The cubic Hermite basis at ``theta``: the weights of y0, y1, h f0 and h f1; with
    ``derivative`` their time derivatives (theta-derivatives over ``h``)."""
    if derivative:  # d/dt = (d/dtheta) / h
        h00 = 6 * theta * (theta - 1) / h
        h10 = (3 * theta - 1) * (theta - 1) / h
        return h00, -h00, h10, theta * (3 * theta - 2) / h
    h00 = (1 + 2 * theta) * (1 - theta) ** 2
    h10 = theta * (1 - theta) ** 2
    return h00, theta**2 * (3 - 2 * theta), h10, theta**2 * (theta - 1)
