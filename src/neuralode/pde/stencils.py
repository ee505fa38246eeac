"""Finite-difference derivatives on a ``Grid`` as convolution stencils, 2nd and 4th order.

A field is padded with ghost points from the boundary condition of each axis, then convolved
with a central-difference stencil along that axis (``torch.nn.functional.conv1d``):

- periodic: the ghost points wrap around;
- Dirichlet: the first ghost point is the boundary node with the given value ``g``, the
  next ones the odd reflection ``2 g - u`` about it;
- Neumann: the even reflection about the boundary node corrected by the given slope,
  ``u(x0 - k dx) = u(x0 + k dx) - 2 k dx g`` (the centred difference at the boundary is
  ``g``).

The 4th-order stencils reach 4th order on periodic axes; next to a Dirichlet or Neumann
boundary the two outermost rows use the 2nd-order stencil (reflected ghost points are
accurate to O(dx^2) only), so the error there is O(dx^2) and 4th order holds in the
interior; a bounded axis of fewer than 5 nodes uses the 2nd-order stencil throughout. A
Neumann ghost point's error is O(dx^3) times the third derivative at the boundary, so the
Laplacian's boundary row is first order where that derivative does not vanish, and second
order where it does (as in pure diffusion with a constant slope: u_t = D u_xx makes
u_xxx = 0 at the boundary).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from .._args import count, is_int, positive_finite
from .grid import Dirichlet, Grid, Neumann, Periodic

ORDERS = (2, 4)


def check_order(order: int) -> None:
    """A ``ValueError`` unless ``order`` is a stencil's order of accuracy: the integer 2 or 4
    (not a bool or a float)."""
    if not (is_int(order) and order in ORDERS):
        raise ValueError(f"order must be 2 or 4 (the stencils' order of accuracy), got {order!r}")


# Central-difference weights (times dx^-n) for the n-th derivative, by order of accuracy.
_WEIGHTS: dict[tuple[int, int], tuple[float, ...]] = {
    (1, 2): (-1 / 2, 0.0, 1 / 2),
    (1, 4): (1 / 12, -2 / 3, 0.0, 2 / 3, -1 / 12),
    (2, 2): (1.0, -2.0, 1.0),
    (2, 4): (-1 / 12, 4 / 3, -5 / 2, 4 / 3, -1 / 12),
}


def derivative(
    u: torch.Tensor,
    grid: Grid,
    axis: int = 0,
    n: int = 1,
    order: int = 2,
    flux: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The ``n``-th derivative (1 or 2) of ``u`` along grid axis ``axis`` by finite differences,
    or of ``flux(u)`` when a pointwise ``flux`` is given.

    With ``flux``, the ghost points of ``u`` come from the grid's boundary conditions (which
    are ``u``'s) and go through ``flux`` with the nodes, so a conservation law's flux
    derivative, e.g. ``(u^2 / 2)_x``, sees the flux of the boundary data: ``g^2 / 2`` at a
    Dirichlet end, and the slope ``u g`` at a Neumann end.

    Arguments:
        u: a field of shape ``(..., *grid.shape)``.
        grid: the grid, with the boundary conditions that give the ghost points.
        axis: the grid axis (0 or, on a 2-D grid, 1).
        n: the derivative's order, 1 or 2.
        order: the stencil's order of accuracy, 2 or 4.
        flux: a pointwise function of the field (elementwise, shape-preserving), or ``None``
            to differentiate ``u`` itself.

    Returns:
        A tensor of ``u``'s shape.

    Raises:
        ValueError: a field that does not fit the grid, or an axis, n or order not supported.
    """
    grid.check_field(u)
    check_order(order)
    if not (is_int(n) and n in (1, 2)):
        raise ValueError(f"n must be 1 or 2 (the derivative's order), got {n!r}")
    axis = grid.axis_index(axis)
    dim = u.ndim - grid.ndim + axis
    moved = u.movedim(dim, -1)
    size = moved.shape[-1]
    boundary = grid.boundaries[axis]
    dx = grid.spacing[axis]
    if order == 4 and (isinstance(boundary, Periodic) or size >= 5):
        out = _apply(moved, boundary, dx, n, 4, flux)
        if not isinstance(boundary, Periodic):  # the rows next to the boundary: 2nd order
            edge = _apply(moved, boundary, dx, n, 2, flux)
            out = torch.cat([edge[..., :2], out[..., 2:-2], edge[..., -2:]], -1)
    else:
        out = _apply(moved, boundary, dx, n, 2, flux)
    return out.movedim(-1, dim)


def gradient(u: torch.Tensor, grid: Grid, order: int = 2) -> torch.Tensor:
    """The gradient of ``u``: shape ``(..., grid.ndim, *grid.shape)``, component a = du/dx_a.

    Arguments:
        u: a field of shape ``(..., *grid.shape)``.
        grid: the grid.
        order: the stencils' order of accuracy, 2 or 4.

    Returns:
        The derivatives along every axis, stacked before the grid dimensions.

    Raises:
        ValueError: see ``derivative``.
    """
    parts = [derivative(u, grid, a, 1, order) for a in range(grid.ndim)]
    return torch.stack(parts, u.ndim - grid.ndim)


def divergence(v: torch.Tensor, grid: Grid, order: int = 2) -> torch.Tensor:
    """The divergence sum_a dv_a/dx_a of a vector field ``v`` of shape
    ``(..., grid.ndim, *grid.shape)``. The ghost points of every component follow ``grid``'s
    boundary conditions: pass a grid whose Dirichlet/Neumann data are the flux's.

    Arguments:
        v: the vector field, components before the grid dimensions.
        grid: the grid.
        order: the stencils' order of accuracy, 2 or 4.

    Returns:
        A field of shape ``(..., *grid.shape)``.

    Raises:
        ValueError: a ``v`` without the component dimension of size ``grid.ndim``.
    """
    component_dim = v.ndim - grid.ndim - 1
    if component_dim < 0 or v.shape[component_dim] != grid.ndim:
        raise ValueError(
            f"divergence needs v of shape (..., {grid.ndim}, {', '.join(map(str, grid.shape))}), "
            f"got {tuple(v.shape)}"
        )
    parts = v.unbind(component_dim)
    return sum(derivative(p, grid, a, 1, order) for a, p in enumerate(parts))  # type: ignore[return-value]


def laplacian(u: torch.Tensor, grid: Grid, order: int = 2) -> torch.Tensor:
    """The Laplacian sum_a d^2u/dx_a^2 of ``u`` (shape ``(..., *grid.shape)``).

    Arguments:
        u: a field of shape ``(..., *grid.shape)``.
        grid: the grid.
        order: the stencils' order of accuracy, 2 or 4.

    Returns:
        A tensor of ``u``'s shape.

    Raises:
        ValueError: see ``derivative``.
    """
    return sum(derivative(u, grid, a, 2, order) for a in range(grid.ndim))  # type: ignore[return-value]


def pad(
    u: torch.Tensor, boundary: Periodic | Dirichlet | Neumann, dx: float, width: int
) -> torch.Tensor:
    """``u`` (last dimension: one grid axis) with ``width`` ghost points at each end.

    Arguments:
        u: the field, the padded axis last.
        boundary: the axis' boundary condition.
        dx: the node spacing.
        width: ghost points per end.

    Returns:
        A tensor with ``2 width`` more entries along the last dimension.

    Raises:
        ValueError: a ``dx`` that is not positive and finite, a ``width`` that is not an
            integer >= 1, or an axis too short for the ghost points: fewer than ``width + 1``
            nodes with Neumann data, ``width - 1`` with Dirichlet data, or no node at all.
    """
    positive_finite("dx", dx)
    count("width", width)
    return _pad(u, boundary, dx, width)


def _pad(
    u: torch.Tensor, boundary: Periodic | Dirichlet | Neumann, dx: float, width: int
) -> torch.Tensor:
    """``pad`` without the checks of ``dx`` and ``width``, for the stencils, whose spacing
    the ``Grid`` checked and whose widths are their own."""
    size = u.shape[-1]
    least = width + 1 if isinstance(boundary, Neumann) else 1
    if isinstance(boundary, Dirichlet):  # ghost point k mirrors node k - 2
        least = max(1, width - 1)
    if size < least:
        raise ValueError(f"an axis with {boundary!r} needs at least {least} nodes, got {size}")
    if isinstance(boundary, Periodic):
        if size < width:  # the ghost points wrap around more than once
            index = torch.arange(-width, size + width, device=u.device) % size
            return u[..., index]
        return torch.cat([u[..., size - width :], u, u[..., :width]], -1)
    left, right = [], []
    for k in range(width, 0, -1):  # ghost points from the outside in
        if isinstance(boundary, Dirichlet):
            left.append(_dirichlet_ghost(u, k, k - 2, boundary.left))
            right.insert(0, _dirichlet_ghost(u, k, size + 1 - k, boundary.right))
        else:
            left.append(u[..., k] - 2 * k * dx * boundary.left)
            right.insert(0, u[..., size - 1 - k] + 2 * k * dx * boundary.right)
    return torch.cat([torch.stack(left, -1), u, torch.stack(right, -1)], -1)


def _dirichlet_ghost(u: torch.Tensor, k: int, mirror: int, value: float) -> torch.Tensor:
    """Ghost point ``k`` (1: the boundary node itself, holding ``value``) of a Dirichlet axis;
    from k = 2 the odd reflection ``2 value - u[mirror]`` about the boundary node."""
    if k == 1:
        return torch.full_like(u[..., 0], value)
    return 2 * value - u[..., mirror]


def _apply(
    u: torch.Tensor,
    boundary: Periodic | Dirichlet | Neumann,
    dx: float,
    n: int,
    order: int,
    flux: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    weights = _WEIGHTS[(n, order)]
    width = len(weights) // 2
    padded = _pad(u, boundary, dx, width)
    if flux is not None:  # the flux of the ghost points too: the boundary data are u's
        padded = flux(padded)
    lead = padded.shape[:-1]
    kernel = torch.tensor(weights, dtype=torch.float64).to(dtype=u.dtype, device=u.device)
    kernel = kernel.reshape(1, 1, -1) / dx**n
    flat = padded.reshape(-1, 1, padded.shape[-1])
    if flat.is_complex():
        out = torch.complex(F.conv1d(flat.real, kernel.real), F.conv1d(flat.imag, kernel.real))
    else:
        out = F.conv1d(flat, kernel)
    return out.reshape(*lead, u.shape[-1])
