"""Planar normalising flows (Rezende & Mohamed 2015): the discrete baseline for CNFs.

One layer maps z to z + u_hat tanh(w . z + b). It is invertible when w . u_hat >= -1, which
the parametrisation u_hat = u + (m(w . u) - w . u) w / ||w||^2 with m(a) = -1 + softplus(a)
guarantees; its log-determinant is log|1 + u_hat . psi(z)| with psi(z) = tanh'(w . z + b) w.
The inverse has no closed form but reduces to a monotone scalar equation along w, solved by
bisection, so ``log_prob`` of arbitrary points is available too, differentiable in the points
and the parameters (the implicit function theorem on that equation), so the flow trains by
maximum likelihood on data.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.functional import softplus

from .._args import count, real
from .cnf import FlowDensity


class PlanarLayer(nn.Module):
    """One planar layer z -> z + u_hat tanh(w . z + b) on states (batch, dim).

    Arguments:
        dim: the state's dimension.
        init_scale: the standard deviation of the initial ``w`` and ``u``.

    Raises:
        ValueError: ``dim`` not an integer of at least 1, or ``init_scale`` not a finite
            number >= 0.
    """

    def __init__(self, dim: int, init_scale: float = 0.1):
        super().__init__()
        dim = count("dim", dim)
        rule = "a finite number >= 0"
        init_scale = real("init_scale", init_scale, rule, lambda x: 0 <= x < math.inf)
        self.w = nn.Parameter(torch.randn(dim) * init_scale)
        self.u = nn.Parameter(torch.randn(dim) * init_scale)
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> torch.Tensor:
        """u projected so that w . u_hat = -1 + softplus(w . u) > -1 (invertibility).

        Returns:
            u_hat, (dim,).
        """
        wu = self.w @ self.u
        return self.u + (softplus(wu) - 1 - wu) * self.w / (self.w @ self.w).clamp_min(1e-12)

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply the layer, f(z) = z + u_hat tanh(w . z + b).

        Arguments:
            z: the states, (batch, dim).

        Returns:
            ``(f(z), logdet)``: (batch, dim) and log|det df/dz| per sample, (batch,).
        """
        u = self.u_hat()
        pre = z @ self.w + self.b
        h = torch.tanh(pre)
        dh = 1 - h.pow(2)
        logdet = torch.log((1 + dh * (self.w @ u)).abs() + 1e-12)
        return z + h[:, None] * u, logdet

    def invert(self, x: torch.Tensor, iterations: int = 80) -> torch.Tensor:
        """The z with f(z) = x.

        alpha = w . z solves F(alpha) = alpha + (w . u_hat) tanh(alpha + b) - w . x = 0,
        monotone in alpha, bracketed by w . x -+ |w . u_hat|; bisection to round-off without
        a graph, then one Newton step alpha - F(alpha) / F'(alpha) with one, which changes
        nothing at the root but carries the implicit function theorem's derivative
        d alpha = -dF / F' with respect to x and the parameters.

        Arguments:
            x: the layer's outputs, (batch, dim).
            iterations: the bisection steps.

        Returns:
            z, (batch, dim), differentiable in ``x`` and the parameters.
        """
        u = self.u_hat()
        wu = self.w @ u
        target = x @ self.w
        with torch.no_grad():
            lo, hi = target - wu.abs() - 1e-6, target + wu.abs() + 1e-6
            for _ in range(iterations):
                mid = (lo + hi) / 2
                above = mid + wu * torch.tanh(mid + self.b) > target
                hi = torch.where(above, mid, hi)
                lo = torch.where(above, lo, mid)
            root = (lo + hi) / 2
            slope = 1 + wu * (1 - torch.tanh(root + self.b).pow(2))
        alpha = root - (root + wu * torch.tanh(root + self.b) - target) / slope
        return x - torch.tanh(alpha + self.b)[:, None] * u


class PlanarFlow(FlowDensity):
    """K planar layers with a standard normal base: base -> data is the layers in order.

    ``inverse(z)`` (base -> data) returns (x, log|det dx/dz|); ``forward(x)`` (data -> base)
    inverts the layers by bisection and returns (z, log|det dz/dx|), for ``log_prob`` of
    given points. Both are differentiable in their input and the parameters.

    Arguments:
        dim: the data's dimension.
        layers: the number of planar layers K.

    Raises:
        ValueError: ``dim`` or ``layers`` not an integer of at least 1.
    """

    def __init__(self, dim: int, layers: int):
        super().__init__()
        dim, layers = count("dim", dim), count("layers", layers)
        self.layers = nn.ModuleList(PlanarLayer(dim) for _ in range(layers))
        self.event_shape = (dim,)

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base to data: the layers in order.

        Arguments:
            z: base samples, (batch, dim).

        Returns:
            ``(x, logdet)``: (batch, dim) and log|det dx/dz| per sample, (batch,).

        Raises:
            ValueError: ``z`` not a floating-point tensor of shape (batch, dim).
        """
        self._check_input(z, "z")
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer.transform(z)
            logdet = logdet + ld
        return z, logdet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Data to base: the layers inverted in reverse order (by bisection).

        Arguments:
            x: data, (batch, dim).

        Returns:
            ``(z, logdet)``: (batch, dim) and log|det dz/dx| per sample, (batch,).

        Raises:
            ValueError: ``x`` not a floating-point tensor of shape (batch, dim).
        """
        self._check_input(x, "x")
        logdet = x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            x = layer.invert(x)
            logdet = logdet - layer.transform(x)[1]
        return x, logdet

    def _check_input(self, y: torch.Tensor, name: str) -> None:
        """A ValueError naming the shape or dtype unless ``y`` is floating point (batch, dim):
        the layers' products with w would otherwise fail with a bare size mismatch."""
        dim = self.event_shape[0]
        if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[1] != dim:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            hint = (
                "; add the batch dimension (x[None] for one sample)"
                if (isinstance(y, torch.Tensor) and y.ndim == 1 and y.shape[0] == dim)
                else ""
            )
            raise ValueError(
                f"a PlanarFlow of dimension {dim} maps batches of shape (batch, {dim}), "
                f"got {name} of shape {shape}{hint}"
            )
        if not y.is_floating_point():
            raise ValueError(
                f"a PlanarFlow maps floating-point points, got {name} of dtype {y.dtype} "
                "(convert it, e.g. x.float())"
            )
