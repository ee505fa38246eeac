"""Reference PDEs for data generated on the fly: heat, viscous Burgers, FitzHugh-Nagumo.

Each right-hand side is an ``nn.Module`` ``f(t, u)`` on states ``(batch, channels,
*grid.shape)``; ``reference_solve`` integrates one to high accuracy, and
``random_fourier_field`` draws smooth periodic initial conditions that can be evaluated on
grids of any resolution (so a reference solve on a fine spectral grid can be sampled at the
nodes of a coarse one).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable

import torch
from torch import nn

from .._args import count, positive_finite, real
from .._solve import solve
from ..controllers.pi import PIController
from ..solvers.imex_rk import LinearPart
from .grid import Grid, Periodic
from .models import Diffusion, _check_state
from .preconditioner import DiffusionPreconditioner
from .spectral import spectral_derivative
from .stencils import derivative


class Heat(Diffusion):
    """The heat equation du/dt = D Laplacian(u) (``Diffusion`` under the equation's name).

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


class Burgers(nn.Module):
    """Viscous Burgers on a 1-D grid: du/dt = nu u_xx - (u^2 / 2)_x (conservative form).

    On a bounded axis the grid's Dirichlet or Neumann data are u's, and the flux u^2 / 2 is
    taken of u's ghost points (``derivative(..., flux=...)``).

    With ``spectral`` the flux u^2 / 2 is formed at the nodes (pseudo-spectral, without
    dealiasing), so its modes above the grid's Nyquist wavenumber alias onto lower ones. On a
    grid that resolves the solution this is below the reference solve's tolerance: for the
    PDE experiment's and tutorial's truth (256 nodes on [0, 2 pi), nu = 0.1, four initial
    fields of ``random_fourier_field`` with 3 modes, t = 2) the final states differ from a
    dealiased solve on 1024 nodes by 5e-9 at most. On an under-resolved grid the error is the
    resolution's, and dealiasing does not remove it: against that reference, exact dealiasing
    (the product on a 3/2-padded grid) lowers the largest error by less than 2x (64 nodes,
    nu = 0.02: 8.0e-2 aliased, 5.0e-2 dealiased; 16 nodes, nu = 0.1: 4.1e-2 and 2.8e-2), and
    the 2/3 rule, which drops the top third of the modes, raises it 2x to 8x. Use a finer grid
    instead.

    Arguments:
        grid: a 1-D grid.
        viscosity: nu.
        order: the stencils' order of accuracy (2 or 4), when not spectral.
        spectral: FFT derivatives (periodic grid), for reference solves.

    Raises:
        ValueError: a grid that is not 1-D, or see ``Diffusion``.
    """

    def __init__(self, grid: Grid, viscosity: float, order: int = 2, spectral: bool = False):
        super().__init__()
        if grid.ndim != 1:
            raise ValueError(f"Burgers needs a 1-D grid, got a {grid.ndim}-D one")
        self.grid, self.order, self.spectral = grid, order, spectral
        self.diffusion = Diffusion(grid, viscosity, order, spectral)

    def advection(self, u: torch.Tensor) -> torch.Tensor:
        """-(u^2 / 2)_x, the nonlinear term: the flux u^2 / 2 differentiated by the stencil of
        ``order`` (the ghost points' flux from the grid's boundary data) or, with
        ``spectral``, by FFT.

        Arguments:
            u: the state, ``(..., n)`` on the grid's ``n`` nodes.

        Returns:
            -(u^2 / 2)_x, of ``u``'s shape.

        Raises:
            ValueError: a state that does not fit the grid.
        """
        if self.spectral:
            return -spectral_derivative(0.5 * u * u, self.grid, 0, 1)
        return -derivative(u, self.grid, 0, 1, self.order, flux=_burgers_flux)

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """du/dt = nu u_xx - (u^2 / 2)_x.

        Arguments:
            t: the time (unused: the equation does not depend on it).
            u: the state, ``(..., n)`` on the grid's ``n`` nodes.

        Returns:
            du/dt, of ``u``'s shape.

        Raises:
            ValueError: a state that does not fit the grid.
        """
        return self.diffusion(t, u) + self.advection(u)

    def preconditioner(self) -> DiffusionPreconditioner:
        """The exact inverse of I - c nu u_xx (the viscous term's Jacobian), for the implicit
        solvers' ``preconditioner=`` option; GMRES resolves the advection.

        Returns:
            The ``DiffusionPreconditioner`` of the viscous term.
        """
        return self.diffusion.preconditioner()

    def linear_part(self) -> LinearPart:
        """The diffusion as the stiff linear part of an IMEX method:
        ``KenCarp4(linear=model.linear_part())`` solves it implicitly, exactly, and the rest
        of f explicitly.

        Returns:
            A [`LinearPart`][neuralode.solvers.LinearPart]: L y = D Laplacian_h y (without
                the boundary data, which stay in the explicit part) and (I - c L)^-1 r by
                the diffusion term's ``DiffusionPreconditioner``.
        """
        return self.diffusion.linear_part()


def _burgers_flux(u: torch.Tensor) -> torch.Tensor:
    return 0.5 * u * u


class FitzHughNagumo(nn.Module):
    """The FitzHugh-Nagumo reaction-diffusion system on a grid, channels (u, v):

    du/dt = a Laplacian(u) + u - u^3 - v + k,   dv/dt = b Laplacian(v) + (u - v) / tau

    (the Turing-pattern parameters of Klaasen & Troy 1984 by default).

    Arguments:
        grid: the grid (2-D in the experiment).
        a: the diffusivity of u.
        b: the diffusivity of v.
        tau: the recovery time of v.
        k: the constant forcing.
        order: the stencils' order of accuracy, when not spectral.
        spectral: FFT Laplacians (periodic grid) instead of stencils.

    Raises:
        ValueError: a ``tau`` that is not positive and finite, a ``k`` that is not finite,
            or see ``Diffusion``; when called, a state that is not ``(batch, 2, *grid.shape)``.
    """

    def __init__(
        self,
        grid: Grid,
        a: float = 2.8e-4,
        b: float = 5e-3,
        tau: float = 0.1,
        k: float = -0.005,
        order: int = 2,
        spectral: bool = False,
    ):
        super().__init__()
        self.tau = positive_finite("tau", tau)
        self.k = real("k", k, "finite", math.isfinite)
        self.diffusion = Diffusion(grid, (a, b), order, spectral)

    def reaction(self, state: torch.Tensor) -> torch.Tensor:
        """The pointwise reaction term of both channels: (u - u^3 - v + k, (u - v) / tau).

        Arguments:
            state: the state, ``(batch, 2, *grid.shape)``: channel 0 is u, channel 1 is v.

        Returns:
            The reaction terms, ``(batch, 2, *grid.shape)``.

        Raises:
            ValueError: a state that is not ``(batch, 2, *grid.shape)``.
        """
        _check_state("FitzHughNagumo", state, self.diffusion.grid, 2, batched=True)
        u, v = state[:, 0], state[:, 1]
        return torch.stack([u - u**3 - v + self.k, (u - v) / self.tau], 1)

    def forward(self, t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """d(u, v)/dt: the diffusion of each channel (diffusivities ``a`` and ``b``) plus
        the reaction term.

        Arguments:
            t: the time (unused: the system does not depend on it).
            state: the state, ``(batch, 2, *grid.shape)``: channel 0 is u, channel 1 is v.

        Returns:
            d(u, v)/dt, ``(batch, 2, *grid.shape)``.

        Raises:
            ValueError: a state that is not ``(batch, 2, *grid.shape)``.
        """
        reaction = self.reaction(state)  # first: it checks the state's shape
        return self.diffusion(t, state) + reaction

    def preconditioner(self) -> DiffusionPreconditioner:
        """The exact inverse of I - c diag(a, b) Laplacian_h (the diffusion's Jacobian, one
        diffusivity per channel), for the implicit solvers' ``preconditioner=`` option
        (``Radau(linear_solver="krylov", preconditioner=model.preconditioner())``); GMRES
        resolves the reaction.

        Returns:
            The ``DiffusionPreconditioner`` of the diffusion term.
        """
        return self.diffusion.preconditioner()

    def linear_part(self) -> LinearPart:
        """The diffusion as the stiff linear part of an IMEX method:
        ``KenCarp4(linear=model.linear_part())`` solves it implicitly, exactly, and the rest
        of f explicitly.

        Returns:
            A [`LinearPart`][neuralode.solvers.LinearPart]: L y = D Laplacian_h y (without
                the boundary data, which stay in the explicit part) and (I - c L)^-1 r by
                the diffusion term's ``DiffusionPreconditioner``.
        """
        return self.diffusion.linear_part()


def random_fourier_field(
    grid: Grid,
    batch: int,
    channels: int = 1,
    modes: int = 3,
    amplitude: float = 1.0,
    offset: float = 0.0,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, Callable[[Grid], torch.Tensor]]:
    """Smooth random periodic fields: sums of sines and cosines of the wave vectors k with
    integer components -``modes``..``modes`` per axis, coefficients ~ N(0, 1) / (1 + |k|^2),
    scaled to peak ``amplitude``. k = 0 is among them: each field has a random mean (and in
    2-D, modes constant along one axis), besides ``offset``.

    Arguments:
        grid: a periodic grid (the coefficients are drawn once for it).
        batch: number of fields.
        channels: channels per field.
        modes: highest wavenumber per axis.
        amplitude: the largest |value| of each field (after removing ``offset``).
        offset: a constant added to every field.
        generator: the random generator.
        dtype: the fields' dtype.

    Returns:
        ``(u0, evaluate)``: the fields on ``grid``, (batch, channels, *grid.shape), and a
        function ``evaluate(other_grid)`` giving the same fields on another grid of the same
        domain (e.g. a finer one for the reference solve).

    Raises:
        ValueError: a non-periodic grid, batch or channels not an integer >= 1, modes not an
            integer >= 0, an amplitude that is not positive and finite, or an offset that is
            not finite.
    """
    if not all(isinstance(b, Periodic) for b in grid.boundaries):
        raise ValueError("random_fourier_field needs a periodic grid")
    batch, channels = count("batch", batch), count("channels", channels)
    modes = count("modes", modes, minimum=0)
    amplitude = positive_finite("amplitude", amplitude)
    offset = real("offset", offset, "finite", math.isfinite)
    ks = torch.arange(-modes, modes + 1, dtype=torch.float64)
    wave = torch.stack(torch.meshgrid(*([ks] * grid.ndim), indexing="ij"), -1).reshape(
        -1, grid.ndim
    )
    decay = 1 / (1 + (wave**2).sum(-1))
    shape = (batch, channels, wave.shape[0])
    cos = torch.randn(shape, generator=generator, dtype=torch.float64) * decay
    sin = torch.randn(shape, generator=generator, dtype=torch.float64) * decay

    def evaluate(target: Grid) -> torch.Tensor:
        coords = target.coordinates(torch.float64)
        phase = sum(
            2
            * math.pi
            * wave[:, a, None]
            * (coords[a].reshape(1, -1) - target.origin[a])
            / target.lengths[a]  # type: ignore[index]
            for a in range(target.ndim)
        )
        field = cos @ torch.cos(phase) + sin @ torch.sin(phase)  # (batch, channels, points)
        return field.reshape(batch, channels, *target.shape)

    base = evaluate(grid)
    scale = amplitude / base.flatten(2).abs().amax(-1).clamp_min(1e-12)[..., None]

    def scaled(target: Grid) -> torch.Tensor:
        fine = evaluate(target) * scale.reshape(batch, channels, *([1] * target.ndim)) + offset
        return fine.to(dtype)

    return scaled(grid), scaled


def reference_solve(
    func: nn.Module, u0: torch.Tensor, ts: torch.Tensor, rtol: float = 1e-8, atol: float = 1e-10
) -> torch.Tensor:
    """Integrate ``func`` from ``u0`` to every time in ``ts`` with dopri5 at tight tolerances
    (no gradients): the "truth" the experiments train and test against.

    The solve runs in double precision whatever the inputs' dtypes, since float32 cannot
    reach the default ``rtol`` of 1e-8: ``u0`` and ``ts`` are cast to float64 (complex128 for
    a complex ``u0``), and a module ``func`` with parameters or buffers of another floating
    dtype (e.g. a float32 model) is integrated as a float64 copy, leaving ``func`` itself
    unchanged.

    Arguments:
        func: the right-hand side.
        u0: the initial state, of any floating or complex dtype.
        ts: output times.
        rtol: the relative tolerance.
        atol: the absolute tolerance.

    Returns:
        The states at ``ts``, (len(ts), *u0.shape), in ``u0``'s dtype (float64 for an
        integer ``u0``): computed in double precision, then rounded once.
    """
    complex_state = u0.is_complex()
    precision = torch.complex128 if complex_state else torch.float64
    out_dtype = u0.dtype if complex_state or u0.is_floating_point() else torch.float64
    if isinstance(func, nn.Module) and any(
        t.is_floating_point() and t.dtype != torch.float64
        for t in itertools.chain(func.parameters(), func.buffers())
    ):
        func = copy.deepcopy(func).double()
    with torch.no_grad():
        sol = solve(
            func,
            u0.to(precision),
            ts.to(torch.float64),
            controller=PIController(rtol=rtol, atol=atol),
        )
    return sol.ys.to(out_dtype)
