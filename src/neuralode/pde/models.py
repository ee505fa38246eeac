"""Right-hand sides of (neural) PDEs on a ``Grid``: known operators and learned terms.

A state is a tensor ``(batch, channels, *grid.shape)``; every module here maps it to its
time derivative and is an ordinary ``f(t, u)`` for ``neuralode.solve`` (any solver, any
gradient strategy). ``NeuralPDE(known, learned)`` adds a known part (``Diffusion``,
``Advection``) and a learned part (``PointwiseMLP`` of u and its derivatives, or a small
``ConvNet``): a "universal" PDE; with ``known=None`` the ConvNet is a fully learned
right-hand side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .._args import count
from ..solvers.imex_rk import LinearPart
from .grid import Grid, Periodic
from .preconditioner import DiffusionPreconditioner, diffusion_arguments
from .spectral import spectral_laplacian
from .stencils import check_order, gradient, laplacian

FEATURES = ("u", "gradient", "laplacian")


def _check_state(owner: str, u: torch.Tensor, grid: Grid, channels: int, batched: bool) -> None:
    """A ``ValueError`` unless ``u`` is ``(batch, channels, *grid.shape)`` (with ``batched``)
    or has ``channels`` before the grid dimensions."""
    grid.check_field(u)
    dim = u.ndim - grid.ndim - 1
    if (batched and u.ndim != grid.ndim + 2) or dim < 0 or u.shape[dim] != channels:
        lead = "batch, " if batched else "..., "
        raise ValueError(
            f"{owner} takes states of shape ({lead}{channels}, "
            f"{', '.join(map(str, grid.shape))}) ({channels} channel(s)), got {tuple(u.shape)}"
        )


def _per_channel(value: float | Sequence[float], like: torch.Tensor, ndim: int) -> torch.Tensor:
    """A scalar or one value per channel, shaped to broadcast over (batch, channels, *grid)."""
    t = torch.as_tensor(value, dtype=like.real.dtype if like.is_complex() else like.dtype)
    t = t.to(like.device)
    return t.reshape(-1, *([1] * ndim)) if t.ndim == 1 else t


class Diffusion(nn.Module):
    """``D Laplacian(u)``, ``D`` a scalar or one diffusivity per channel.

    Arguments:
        grid: the grid.
        diffusivity: D, a float or a sequence with one value per channel.
        order: the stencil's order of accuracy (2 or 4).
        spectral: use the FFT Laplacian (periodic grids only) instead of the stencil.

    Raises:
        ValueError: a negative or non-finite diffusivity, an order not 2 or 4, or
            ``spectral=True`` on a non-periodic grid; when called, a state without one channel
            per diffusivity (given one per channel).
    """

    def __init__(
        self,
        grid: Grid,
        diffusivity: float | Sequence[float],
        order: int = 2,
        spectral: bool = False,
    ):
        super().__init__()
        values = diffusion_arguments(grid, diffusivity, order, spectral)
        self.channels = None if values.ndim == 0 else values.numel()
        self.grid, self.diffusivity, self.order, self.spectral = grid, diffusivity, order, spectral

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """du/dt = D Laplacian(u), the Laplacian by the stencils of ``order`` (the grid's
        boundary conditions give the ghost points) or by FFT with ``spectral``.

        Arguments:
            t: the time (unused: the operator does not depend on it).
            u: the state, ``(..., *grid.shape)``; with one diffusivity per channel,
                ``(..., channels, *grid.shape)``. Real or complex floating point.

        Returns:
            D Laplacian(u), of ``u``'s shape.

        Raises:
            ValueError: a state that does not fit the grid, or without one channel per
                diffusivity (given one per channel).
        """
        if self.channels is not None:
            _check_state("Diffusion", u, self.grid, self.channels, batched=False)
        d = _per_channel(self.diffusivity, u, self.grid.ndim)
        lap = (
            spectral_laplacian(u, self.grid)
            if self.spectral
            else laplacian(u, self.grid, self.order)
        )
        return d * lap

    def preconditioner(self) -> DiffusionPreconditioner:
        """The exact inverse of I - c D Laplacian_h for this term, for the implicit solvers'
        ``preconditioner=`` option (``Radau(linear_solver="krylov",
        preconditioner=model.preconditioner())``).

        Returns:
            A ``DiffusionPreconditioner`` on this grid with this diffusivity, order and
            Laplacian (stencil or spectral); it reads the diffusivity now, so ask for a new
            one after changing it.

        Raises:
            ValueError: a diffusivity that is no longer finite and non-negative.
        """
        return DiffusionPreconditioner(self.grid, self.diffusivity, self.order, self.spectral)

    def linear_part(self) -> LinearPart:
        """The diffusion as the stiff linear part of an IMEX method:
        ``KenCarp4(linear=model.linear_part())`` solves it implicitly, exactly, and the rest
        of f explicitly.

        Returns:
            A [`LinearPart`][neuralode.solvers.LinearPart]: L y = D Laplacian_h y (without
                the boundary data, which stay in the explicit part) and (I - c L)^-1 r by
                this term's ``DiffusionPreconditioner``.
        """
        return self.preconditioner().linear_part()


class Advection(nn.Module):
    """``-v . grad(u)`` with a constant velocity ``v`` (one component per grid axis).

    Arguments:
        grid: the grid.
        velocity: one velocity per axis.
        order: the stencils' order of accuracy (2 or 4).

    Raises:
        ValueError: a velocity without one finite component per axis, or an order not 2 or 4.
    """

    def __init__(self, grid: Grid, velocity: Sequence[float], order: int = 2):
        super().__init__()
        try:  # (a string is a sequence of characters, not of components)
            components = () if isinstance(velocity, (str, bytes)) else tuple(map(float, velocity))
        except (TypeError, ValueError):
            components = ()
        if len(components) != grid.ndim:
            raise ValueError(
                f"velocity needs one component per axis ({grid.ndim}), e.g. "
                f"{(1.0,) * grid.ndim!r}; got {velocity!r}"
            )
        if any(not math.isfinite(v) for v in components):
            raise ValueError(f"velocity must be finite, got {velocity!r}")
        check_order(order)
        self.grid, self.velocity, self.order = grid, components, order

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """du/dt = -sum_a v_a du/dx_a, the derivatives by the central stencils of ``order``
        (the grid's boundary conditions give the ghost points).

        Arguments:
            t: the time (unused: the operator does not depend on it).
            u: the state, ``(..., *grid.shape)``; every leading entry is advected alike.

        Returns:
            -v . grad(u), of ``u``'s shape.

        Raises:
            ValueError: a state that does not fit the grid.
        """
        grads = gradient(u, self.grid, self.order).unbind(u.ndim - self.grid.ndim)
        return -sum(v * g for v, g in zip(self.velocity, grads))  # type: ignore[return-value]


class PointwiseMLP(nn.Module):
    """An MLP applied at every grid node to u and its derivatives there (all channels).

    Features per node: ``"u"`` (the channels), ``"gradient"`` (every channel's derivative
    along every axis), ``"laplacian"`` (every channel's); finite differences of ``order``.

    Arguments:
        grid: the grid.
        channels: the state's channels (also the output's).
        hidden: width of the hidden layers.
        layers: number of hidden layers.
        features: which of ``FEATURES`` the MLP sees.
        order: the stencils' order of accuracy (2 or 4).

    Raises:
        ValueError: an unknown feature, an order not 2 or 4, channels or hidden not an
            integer >= 1, or layers not an integer >= 0; when called, a state that is not
            ``(batch, channels, *grid.shape)``.
    """

    def __init__(
        self,
        grid: Grid,
        channels: int,
        hidden: int = 32,
        layers: int = 2,
        features: Sequence[str] = ("u", "gradient"),
        order: int = 2,
    ):
        super().__init__()
        unknown = [f for f in features if f not in FEATURES]
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {FEATURES}, got {features!r}")
        check_order(order)
        channels, hidden = count("channels", channels), count("hidden", hidden)
        layers = count("layers", layers, minimum=0)
        self.grid, self.features, self.order = grid, tuple(features), order
        self.channels = channels
        sizes = {"u": channels, "gradient": channels * grid.ndim, "laplacian": channels}
        width = sum(sizes[f] for f in self.features)
        modules: list[nn.Module] = []
        for _ in range(layers):
            modules += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        modules.append(nn.Linear(width, channels))
        self.net = nn.Sequential(*modules)

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The MLP of the chosen features at every node.

        Arguments:
            t: the time (unused: the MLP does not see it).
            u: the state, ``(batch, channels, *grid.shape)``.

        Returns:
            The MLP's output at every node, ``(batch, channels, *grid.shape)``.

        Raises:
            ValueError: a state that is not ``(batch, channels, *grid.shape)``.
        """
        _check_state("PointwiseMLP", u, self.grid, self.channels, batched=True)
        parts = []
        if "u" in self.features:
            parts.append(u)
        if "gradient" in self.features:
            parts.append(gradient(u, self.grid, self.order).flatten(1, 2))
        if "laplacian" in self.features:
            parts.append(laplacian(u, self.grid, self.order))
        x = torch.cat(parts, 1).movedim(1, -1)
        return self.net(x).movedim(-1, 1)


class _AxisPaddedConv2d(nn.Conv2d):
    """A Conv2d that pads each grid axis in its own mode before a valid convolution: circular
    on a periodic axis, replicate on a bounded one (its parameters are ``nn.Conv2d``'s)."""

    def __init__(self, modes: tuple[str, str], width: int, out: int, kernel_size: int):
        super().__init__(width, out, kernel_size)
        self.modes = modes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.kernel_size[0] // 2
        x = F.pad(x, (0, 0, half, half), mode=self.modes[0])
        x = F.pad(x, (half, half, 0, 0), mode=self.modes[1])
        return super().forward(x)


class ConvNet(nn.Module):
    """A small convolutional network u -> du/dt: ``layers`` hidden convolutions of
    ``kernel_size`` with tanh, then a 1x1 convolution; each grid axis padded circularly if
    periodic and by replication otherwise (shape-preserving, and equivariant to shifts along
    the periodic axes).

    Arguments:
        grid: the grid (its dimension picks Conv1d or Conv2d).
        channels: the state's channels (also the output's).
        hidden: hidden channels.
        layers: number of hidden convolutions.
        kernel_size: an odd kernel size.

    Raises:
        ValueError: a kernel size that is not a positive odd integer, channels or hidden not
            an integer >= 1, or layers not an integer >= 0; when called, a state without
            ``channels`` channels before the grid dimensions.
    """

    def __init__(
        self, grid: Grid, channels: int, hidden: int = 16, layers: int = 2, kernel_size: int = 5
    ):
        super().__init__()
        channels, hidden = count("channels", channels), count("hidden", hidden)
        layers = count("layers", layers, minimum=0)
        if count("kernel_size", kernel_size) % 2 != 1:
            raise ValueError(f"kernel_size must be odd (shape-preserving), got {kernel_size}")
        self.grid, self.channels = grid, channels
        conv = nn.Conv1d if grid.ndim == 1 else nn.Conv2d
        modes = tuple("circular" if isinstance(b, Periodic) else "replicate" for b in grid.boundary)
        modules: list[nn.Module] = []
        width = channels
        for _ in range(layers):
            if len(set(modes)) == 1:  # one mode for every axis: the convolution pads
                hidden_conv = conv(
                    width, hidden, kernel_size, padding=kernel_size // 2, padding_mode=modes[0]
                )
            else:
                hidden_conv = _AxisPaddedConv2d(modes, width, hidden, kernel_size)  # type: ignore[arg-type]
            modules += [hidden_conv, nn.Tanh()]
            width = hidden
        modules.append(conv(width, channels, 1))
        self.net = nn.Sequential(*modules)

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The network's output for the state ``u``.

        Arguments:
            t: the time (unused: the network does not see it).
            u: the state, ``(..., channels, *grid.shape)``: any leading dimensions (none
                for one field, a batch, a batch of batches) are batch dimensions.

        Returns:
            du/dt, of ``u``'s shape.

        Raises:
            ValueError: a state that does not fit the grid or has not ``channels`` channels
                before the grid dimensions.
        """
        _check_state("ConvNet", u, self.grid, self.channels, batched=False)
        fields = u.reshape(-1, self.channels, *self.grid.shape)  # one batch dimension
        return self.net(fields).reshape(u.shape)


class NeuralPDE(nn.Module):
    """du/dt = known(t, u) + learned(t, u): a hybrid ("universal") PDE, or with
    ``known=None`` a fully learned right-hand side.

    Arguments:
        known: the known part, a module or callable ``(t, u) -> du/dt`` (or ``None``).
        learned: the learned part, e.g. ``PointwiseMLP`` or ``ConvNet`` (or ``None``).

    Raises:
        ValueError: both parts ``None``.
    """

    def __init__(self, known: nn.Module | None = None, learned: nn.Module | None = None):
        super().__init__()
        if known is None and learned is None:
            raise ValueError("NeuralPDE needs a known part, a learned part, or both")
        self.known, self.learned = known, learned

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """The sum of the parts that are given, each called as ``part(t, u)``.

        Arguments:
            t: the time, passed to both parts.
            u: the state, passed to both parts (``(batch, channels, *grid.shape)`` for the
                modules of this package).

        Returns:
            ``known(t, u) + learned(t, u)``, or the one part that is not ``None``.
        """
        out = self.known(t, u) if self.known is not None else 0
        if self.learned is not None:
            out = out + self.learned(t, u)
        return out  # type: ignore[return-value]

    def preconditioner(self) -> DiffusionPreconditioner:
        """The known part's preconditioner (``known.preconditioner()``), for the implicit
        solvers' ``preconditioner=`` option: it inverts the known diffusion exactly and
        leaves the learned part to GMRES.

        Returns:
            The ``DiffusionPreconditioner`` of the known part.

        Raises:
            ValueError: no known part, or one without a ``preconditioner()`` method (e.g. a
                plain callable or ``Advection``).
        """
        method = getattr(self.known, "preconditioner", None)
        if not callable(method):
            known = "no known part" if self.known is None else type(self.known).__name__
            raise ValueError(
                f"NeuralPDE.preconditioner needs a known part with a preconditioner() method "
                f"(Diffusion, Heat, Burgers, FitzHughNagumo), got {known}; build one for the "
                "diffusion directly: pde.DiffusionPreconditioner(grid, diffusivity, order, "
                "spectral)"
            )
        return method()

    def linear_part(self) -> LinearPart:
        """The known part's diffusion as the stiff linear part of an IMEX method:
        ``KenCarp4(linear=model.linear_part())`` solves it implicitly, exactly, and the rest
        of f explicitly (the learned part among it).

        Returns:
            A [`LinearPart`][neuralode.solvers.LinearPart]: L y = D Laplacian_h y (without
                the boundary data, which stay in the explicit part) and (I - c L)^-1 r by
                the known part's ``DiffusionPreconditioner``.

        Raises:
            ValueError: as ``preconditioner()``: no known part with a diffusion.
        """
        return self.preconditioner().linear_part()
