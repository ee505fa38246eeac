"""PDEs by the method of lines: grids, boundary conditions, finite-difference stencils,
spectral derivatives, known and learned right-hand sides, and reference equations.

A discretised PDE is an ordinary ``f(t, u)`` on a tensor ``(batch, channels, *grid.shape)``,
so every solver and gradient strategy of ``neuralode.solve`` applies to it; on fine grids
the implicit solvers with ``linear_solver="krylov"`` (Jacobian-free Newton-Krylov) keep
diffusion-dominated problems from being step-limited, and ``DiffusionPreconditioner``
(``model.preconditioner()``) inverts the diffusion exactly for their GMRES.
"""

from .equations import Burgers, FitzHughNagumo, Heat, random_fourier_field, reference_solve
from .grid import Boundary, Dirichlet, Grid, Neumann, Periodic
from .models import Advection, ConvNet, Diffusion, NeuralPDE, PointwiseMLP
from .preconditioner import DiffusionPreconditioner
from .spectral import spectral_derivative, spectral_laplacian, wavenumbers
from .stencils import derivative, divergence, gradient, laplacian, pad

__all__ = [
    "Advection",
    "Boundary",
    "Burgers",
    "ConvNet",
    "Diffusion",
    "DiffusionPreconditioner",
    "Dirichlet",
    "FitzHughNagumo",
    "Grid",
    "Heat",
    "NeuralPDE",
    "Neumann",
    "Periodic",
    "PointwiseMLP",
    "derivative",
    "divergence",
    "gradient",
    "laplacian",
    "pad",
    "random_fourier_field",
    "reference_solve",
    "spectral_derivative",
    "spectral_laplacian",
    "wavenumbers",
]
