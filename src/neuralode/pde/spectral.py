"""Spectral derivatives by FFT on periodic axes: exact for band-limited fields."""

from __future__ import annotations

import math

import torch

from .._args import count
from .grid import Grid, Periodic


def wavenumbers(grid: Grid, axis: int, like: torch.Tensor) -> torch.Tensor:
    """The angular wavenumbers 2 pi k / L of an FFT along ``axis`` (real dtype of ``like``).

    Arguments:
        grid: the grid; ``axis`` must be periodic.
        axis: the grid axis.
        like: a tensor giving the dtype and device.

    Returns:
        A 1-D tensor of ``grid.shape[axis]`` wavenumbers in ``torch.fft.fftfreq`` order.

    Raises:
        ValueError: an axis that is not one of the grid's, or a non-periodic one.
    """
    axis = grid.axis_index(axis)
    if not isinstance(grid.boundaries[axis], Periodic):
        raise ValueError(
            f"spectral derivatives need a periodic axis; axis {axis} has "
            f"{grid.boundaries[axis]!r} (use the finite-difference stencils instead)"
        )
    real = like.real if like.is_complex() else like
    size, length = grid.shape[axis], grid.lengths[axis]  # type: ignore[index]
    freq = torch.fft.fftfreq(size, d=length / size, dtype=real.dtype, device=like.device)
    return 2 * math.pi * freq


def spectral_derivative(u: torch.Tensor, grid: Grid, axis: int = 0, n: int = 1) -> torch.Tensor:
    """The ``n``-th derivative of ``u`` along periodic grid axis ``axis`` by FFT.

    For odd ``n`` on an even number of nodes the Nyquist mode is set to zero (its derivative
    is not representable on the grid), so real fields stay real.

    Arguments:
        u: a field of shape ``(..., *grid.shape)``, real or complex.
        grid: the grid; the axis must be periodic.
        axis: the grid axis.
        n: the derivative's order, a positive integer.

    Returns:
        A tensor of ``u``'s shape and dtype.

    Raises:
        ValueError: an axis that is not one of the grid's or not periodic, a field that does
            not fit, or a bad ``n``.
    """
    grid.check_field(u)
    n = count("n", n)
    k = wavenumbers(grid, axis, u)
    dim = u.ndim - grid.ndim + axis
    size = k.shape[0]
    factor = (1j * k) ** n
    if n % 2 == 1 and size % 2 == 0:
        factor[size // 2] = 0
    shape = [1] * u.ndim
    if u.is_complex():
        shape[dim] = size
        return torch.fft.ifft(torch.fft.fft(u, dim=dim) * factor.reshape(shape), dim=dim)
    half = size // 2 + 1
    shape[dim] = half
    spectrum = torch.fft.rfft(u, dim=dim) * factor[:half].reshape(shape)
    return torch.fft.irfft(spectrum, n=size, dim=dim)


def spectral_laplacian(u: torch.Tensor, grid: Grid) -> torch.Tensor:
    """The Laplacian of ``u`` by FFT along every (periodic) axis.

    Arguments:
        u: a field of shape ``(..., *grid.shape)``.
        grid: a grid periodic along every axis.

    Returns:
        A tensor of ``u``'s shape.

    Raises:
        ValueError: see ``spectral_derivative``.
    """
    return sum(spectral_derivative(u, grid, a, 2) for a in range(grid.ndim))  # type: ignore[return-value]
