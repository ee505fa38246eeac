"""An exact solver for the shifted diffusion operator, a preconditioner for Newton-Krylov.

The implicit solvers with ``linear_solver="krylov"`` solve (I - c J) x = r by GMRES in
every Newton iteration, c a step size times an eigenvalue of the Runge-Kutta matrix (real,
or complex with a positive real part) and J the Jacobian of f(t, u). On a fine grid the
diffusion part D Laplacian of J makes these systems stiff and GMRES slow;
``DiffusionPreconditioner`` solves (I - c D Laplacian_h) x = r exactly instead, so GMRES
only has to resolve the rest of J.

The discrete Laplacian is a sum over the grid's axes of 1-D second-derivative matrices L_a
(Kronecker structure), so one eigendecomposition L_a = V_a diag(lambda_a) V_a^-1 per axis
diagonalises the whole operator ("fast diagonalisation"):

    x = (V_0 (x) V_1) [ (V_0^-1 (x) V_1^-1) r / (1 - c D (lambda_0 (+) lambda_1)) ],

applied axis by axis as small matrix products, O(n^3) per field on an n x n grid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from ..solvers.imex_rk import LinearPart
from .grid import Boundary, Dirichlet, Grid, Neumann, Periodic
from .spectral import spectral_derivative
from .stencils import check_order, derivative

_COMPLEX = {
    torch.float16: torch.complex32,
    torch.float32: torch.complex64,
    torch.float64: torch.complex128,
}


def diffusion_arguments(
    grid: Grid, diffusivity: float | Sequence[float], order: int, spectral: bool
) -> torch.Tensor:
    """The checks of a diffusion term's arguments (``Diffusion``, ``DiffusionPreconditioner``):
    ``diffusivity`` as a detached float64 tensor, 0-dim for a number, 1-D for one value per
    channel; a ``ValueError`` unless every value is finite and non-negative, ``order`` is 2 or
    4 and ``spectral`` has a periodic grid."""
    try:  # a number (Python, NumPy or a 0-dim tensor) or one per channel
        values = torch.as_tensor(diffusivity, dtype=torch.float64).detach()
    except (TypeError, ValueError, RuntimeError):
        values = None
    if values is None or values.ndim > 1:
        raise ValueError(
            "diffusivity must be a number or a sequence with one number per channel, got "
            f"{diffusivity!r}"
        )
    if not values.numel() or not bool(((values >= 0) & (values < math.inf)).all()):
        raise ValueError(f"diffusivity must be finite and non-negative, got {diffusivity!r}")
    check_order(order)
    if spectral and not all(isinstance(b, Periodic) for b in grid.boundaries):
        raise ValueError("spectral=True needs a periodic grid; use the stencils (spectral=False)")
    return values


def _homogeneous(boundary: Boundary) -> Boundary:
    """The boundary condition with zero data: the linear part of the operator it gives."""
    if isinstance(boundary, Dirichlet):
        return Dirichlet()
    if isinstance(boundary, Neumann):
        return Neumann()
    return boundary


def _axis_matrix(grid: Grid, axis: int, order: int = 2, spectral: bool = False) -> torch.Tensor:
    """The matrix of the second derivative along one grid axis, without boundary data.

    Column j is the operator applied to the j-th unit vector on a 1-D grid with the axis'
    nodes, length and boundary condition, its Dirichlet values or Neumann slopes set to
    zero: the derivative is affine in the field, and its Jacobian is this matrix (the data
    enter as a constant offset).

    Arguments:
        grid: the grid.
        axis: the grid axis (0 or, on a 2-D grid, 1).
        order: the stencil's order of accuracy (2 or 4), when not spectral.
        spectral: the FFT second derivative (periodic axis) instead of the stencil.

    Returns:
        A float64 tensor of shape ``(n, n)``, ``n = grid.shape[axis]``.

    Raises:
        ValueError: an axis that is not one of the grid's, an order not 2 or 4, or
            ``spectral`` on a non-periodic axis.
    """
    axis = grid.axis_index(axis)
    line = Grid(
        (grid.shape[axis],),
        lengths=(grid.lengths[axis],),  # type: ignore[index]
        boundary=_homogeneous(grid.boundaries[axis]),
    )
    eye = torch.eye(line.shape[0], dtype=torch.float64)  # row j: the field e_j
    if spectral:
        columns = spectral_derivative(eye, line, 0, 2)
    else:
        columns = derivative(eye, line, 0, 2, order)
    return columns.T.contiguous()


def _eigen(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(lambda, V, V^-1)`` with ``matrix = V diag(lambda) V^-1``: orthogonal V for a
    matrix symmetric up to rounding (a spectral one, built by FFTs, is off by ~1e-14); real
    wherever the eigenvalues are and real eigenvectors reproduce the matrix. (``eig`` gives
    complex eigenvectors for a repeated eigenvalue, such as the +-k pairs of a periodic
    Laplacian; their real parts need not span its eigenspace.)"""
    scale = max(float(np.abs(matrix).max()), 1.0)
    if np.abs(matrix - matrix.T).max() <= 1e-12 * scale:
        values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
        return values, vectors, vectors.T.copy()
    values, vectors = np.linalg.eig(matrix)
    if np.abs(values.imag).max() <= 1e-12 * max(float(np.abs(values).max()), 1.0):
        real_values, real_vectors = values.real, vectors.real
        if np.linalg.cond(real_vectors) < 1e8:
            inverse = np.linalg.inv(real_vectors)
            rebuilt = (real_vectors * real_values) @ inverse
            if np.abs(rebuilt - matrix).max() <= 1e-9 * scale:
                return real_values, real_vectors, inverse
    return values, vectors, np.linalg.inv(vectors)


class DiffusionPreconditioner:
    """Solves (I - c D Laplacian_h) x = r exactly: the preconditioner of a diffusion term.

    ``Laplacian_h`` is the discrete Laplacian that ``Diffusion(grid, diffusivity, order,
    spectral)`` applies, without the boundary data (its Jacobian); ``D`` is the diffusivity,
    one per channel if given so. Called as ``preconditioner(c, r)`` it returns
    x = (I - c D Laplacian_h)^-1 r, the form the implicit solvers' ``preconditioner=``
    option takes (``Radau(linear_solver="krylov", preconditioner=...)``): c is a step size
    times an eigenvalue of the Runge-Kutta matrix, so real or complex, and the inverse
    approximates (I - c J)^-1 for a right-hand side whose Jacobian J is dominated by the
    diffusion.

    The method is fast diagonalisation (see the module docstring): one eigendecomposition of
    each axis' 1-D second-derivative matrix at construction, in float64, then per call two
    small matrix products per axis and a division, O(n^3) for an n x n grid. The factors are
    cached per dtype and device. The diffusivity is read once, at construction: build a new
    preconditioner after changing it.

    Arguments:
        grid: the grid.
        diffusivity: D, a number or a sequence with one value per channel.
        order: the stencil's order of accuracy (2 or 4).
        spectral: the FFT Laplacian (periodic grids only) instead of the stencil.

    Raises:
        ValueError: a negative or non-finite diffusivity, an order not 2 or 4, or
            ``spectral=True`` on a non-periodic grid.
    """

    def __init__(
        self,
        grid: Grid,
        diffusivity: float | Sequence[float],
        order: int = 2,
        spectral: bool = False,
    ):
        if not isinstance(grid, Grid):
            raise ValueError(f"grid must be a pde.Grid, got {type(grid).__name__}")
        values = diffusion_arguments(grid, diffusivity, order, spectral)
        self.grid, self.order, self.spectral = grid, order, bool(spectral)
        self.channels = None if values.ndim == 0 else values.numel()
        self._diffusivity = values
        self._vectors: list[torch.Tensor] = []
        self._inverses: list[torch.Tensor] = []
        eigenvalues = []
        for axis in range(grid.ndim):
            values_a, vectors, inverse = _eigen(_axis_matrix(grid, axis, order, spectral).numpy())
            eigenvalues.append(torch.from_numpy(values_a))
            self._vectors.append(torch.from_numpy(vectors))
            self._inverses.append(torch.from_numpy(inverse))
        # the eigenvalues of the Laplacian at every grid point: lambda_0 (+) lambda_1
        total = eigenvalues[0]
        if grid.ndim == 2:
            total = eigenvalues[0][:, None] + eigenvalues[1][None, :]
        self._eigenvalues = total
        self._cache: dict[tuple[torch.dtype, torch.device], tuple[torch.Tensor, ...]] = {}

    @property
    def diffusivity(self) -> torch.Tensor:
        """D as a float64 tensor: 0-dim, or one value per channel."""
        return self._diffusivity.clone()

    @property
    def eigenvalues(self) -> torch.Tensor:
        """The eigenvalues of the discrete Laplacian (without D), of shape ``grid.shape``:
        entry (i, j) is lambda_0[i] + lambda_1[j], real for every stencil and boundary of the
        package (real or complex float64 in general)."""
        return self._eigenvalues.clone()

    def _factors(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """``(D Lambda, V_0, V_0^-1, ...)`` in ``dtype`` (promoted to complex where the
        eigendecomposition is) on ``device``, D broadcast over the channels."""
        key = (dtype, device)
        if key not in self._cache:
            scaled = self._eigenvalues
            if self.channels is not None:  # (channels, *grid.shape)
                shape = (-1,) + (1,) * self.grid.ndim
                scaled = self._diffusivity.reshape(shape) * scaled
            else:
                scaled = self._diffusivity * scaled
            factors = [scaled]
            for vectors, inverse in zip(self._vectors, self._inverses):
                factors += [vectors, inverse]
            self._cache[key] = tuple(
                f.to(device=device, dtype=_complex(dtype) if f.is_complex() else dtype)
                for f in factors
            )
        return self._cache[key]

    def __call__(self, c: float | complex, r: torch.Tensor) -> torch.Tensor:
        """x = (I - c D Laplacian_h)^-1 r.

        Arguments:
            c: the shift, a real or complex number (for the implicit solvers, a step size
                times an eigenvalue of the Runge-Kutta matrix); any c with 1 - c D lambda
                nonzero for every eigenvalue lambda of the Laplacian, e.g. every c with a
                non-negative real part, since those eigenvalues are real and at most 0.
            r: the right-hand side, ``(..., *grid.shape)``, real or complex floating point;
                with one diffusivity per channel, ``(..., channels, *grid.shape)``.

        Returns:
            x, of ``r``'s shape and dtype; for a complex ``c`` and a real ``r``, of ``r``'s
            complex dtype (the solution is complex then).

        Raises:
            ValueError: a ``c`` that is not a finite number, an ``r`` that does not fit the
                grid, or without one channel per diffusivity (given one per channel).
        """
        return self._solve(c, r, adjoint=False)

    def transposed(self, c: float | complex, r: torch.Tensor) -> torch.Tensor:
        """x = (I - c D Laplacian_h)^-H r = (I - conj(c) D Laplacian_h^H)^-1 r: the adjoint
        of ``self(c, .)`` for the same ``c`` (the transpose for a real ``c``), exact also
        where the Laplacian is not symmetric (Neumann boundaries). The implicit solvers use
        it to precondition their gradients' transposed GMRES solves.

        Arguments:
            c: the shift, as for ``__call__``.
            r: the right-hand side, as for ``__call__``.

        Returns:
            x, of ``r``'s shape and dtype; for a complex ``c`` and a real ``r``, of ``r``'s
            complex dtype.

        Raises:
            ValueError: as ``__call__``.
        """
        return self._solve(c, r, adjoint=True)

    def apply(self, r: torch.Tensor) -> torch.Tensor:
        """D Laplacian_h r: the operator this preconditioner inverts the shifted form of, the
        linear part of the diffusion term without its boundary data, through the same
        eigendecomposition (so ``self(c, r)`` inverts I - c times it exactly, to rounding).

        Arguments:
            r: a field, as for ``__call__``.

        Returns:
            D Laplacian_h r, of ``r``'s shape and dtype.

        Raises:
            ValueError: an ``r`` that does not fit the grid or the channels.
        """
        return self._eigenbasis(r, None, adjoint=False)

    def linear_part(self) -> LinearPart:
        """The diffusion as the stiff linear part of an IMEX method
        (``KenCarp4(linear=...)``): L y = ``apply(y)``, (I - c L)^-1 r = ``self(c, r)``.

        Returns:
            A [`LinearPart`][neuralode.solvers.LinearPart].
        """
        return LinearPart(self.apply, self.__call__)

    def _solve(self, c: float | complex, r: torch.Tensor, adjoint: bool) -> torch.Tensor:
        """(I - c D Laplacian_h)^-1 r, or with ``adjoint`` its adjoint applied to r: with
        Laplacian_h = V diag(lambda) V^-1 (V the Kronecker product of the axes'), the
        adjoint of V diag(s) V^-1 is V^-H diag(conj(s)) V^H."""
        if isinstance(c, (bool, np.bool_)) or not isinstance(c, numbers.Number):
            raise ValueError(f"c must be a real or complex number (a float or complex), got {c!r}")
        if not math.isfinite(abs(complex(c))):  # type: ignore[arg-type]
            raise ValueError(f"c must be finite, got {c!r}")
        real_c = isinstance(c, numbers.Real) or complex(c).imag == 0  # type: ignore[arg-type]
        shift: float | complex = float(complex(c).real) if real_c else complex(c)  # type: ignore[arg-type]
        return self._eigenbasis(r, shift, adjoint)

    def _eigenbasis(
        self, r: torch.Tensor, shift: float | complex | None, adjoint: bool
    ) -> torch.Tensor:
        """r divided by 1 - shift D lambda in the Laplacian's eigenbasis, (I - shift D
        Laplacian_h)^-1 r (or its adjoint applied to r); with ``shift=None`` multiplied by D
        lambda instead, D Laplacian_h r."""
        self.grid.check_field(r)
        ndim = self.grid.ndim
        if self.channels is not None:
            dim = r.ndim - ndim - 1
            if dim < 0 or r.shape[dim] != self.channels:
                raise ValueError(
                    f"DiffusionPreconditioner takes fields of shape (..., {self.channels}, "
                    f"{', '.join(map(str, self.grid.shape))}) (one channel per diffusivity), "
                    f"got {tuple(r.shape)}"
                )
        real_c = shift is None or isinstance(shift, float)
        work_dtype = r.dtype if r.is_complex() or real_c else _complex(r.dtype)
        scaled, *matrices = self._factors(work_dtype, r.device)
        vectors, inverses = matrices[0::2], matrices[1::2]
        into, back = inverses, vectors
        if adjoint:
            into, back = [v.mH for v in vectors], [w.mH for w in inverses]
        x = r.to(work_dtype)
        for axis in range(ndim):  # into the eigenbasis: (V_0^-1 (x) V_1^-1) r, or V^H r
            x = _along(x, into[axis], axis - ndim)
        if shift is None:
            x = x * scaled
        else:
            denominator = 1 - shift * scaled
            x = x / (denominator.conj() if adjoint else denominator)
        for axis in range(ndim):  # back: (V_0 (x) V_1) x, or V^-H x
            x = _along(x, back[axis], axis - ndim)
        # a complex eigenbasis of a real problem: the solution is real up to rounding
        return x.real if x.is_complex() and not work_dtype.is_complex else x


def _complex(dtype: torch.dtype) -> torch.dtype:
    """The complex counterpart of a floating dtype (a complex one: itself), or a
    ``ValueError``."""
    if dtype.is_complex:
        return dtype
    if dtype not in _COMPLEX:
        raise ValueError(
            f"a complex shift c needs a float16, float32 or float64 field, got {dtype}"
        )
    return _COMPLEX[dtype]


def _along(x: torch.Tensor, matrix: torch.Tensor, dim: int) -> torch.Tensor:
    """``matrix`` applied to the vectors of ``x`` along ``dim`` (-1 or -2), in the complex
    dtype if either is complex."""
    if matrix.is_complex() and not x.is_complex():
        x = x.to(matrix.dtype)
    elif x.is_complex() and not matrix.is_complex():
        matrix = matrix.to(x.dtype)
    if dim == -1:
        return x @ matrix.mT
    return matrix @ x
