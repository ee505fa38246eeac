"""Direct (LU) solves with the Newton matrix I - h (A kron J) of an implicit Runge-Kutta step.

Where the implicit block A diagonalises, A = T diag(d) T^-1 (Radau IIA, Gauss-Legendre), the
system of m stages of n entries each falls apart into m systems of n entries,
(I - h d_i J) w_i = (T^-1 r)_i, x = T w (Hairer & Wanner, Solving ODEs II, IV.8, as RADAU5 and
SciPy's Radau solve it): m LU factorisations of n x n instead of one of m n x m n, about
m^2 / 2 times fewer operations for radau's real and complex pair. A complex eigenvalue's
system is solved in complex arithmetic; for a real state its conjugate partner's solution is
the conjugate, so a pair costs one solve. Where A is lower triangular (SDIRK and ESDIRK
methods, whose one repeated eigenvalue does not diagonalise), the stages are solved one after
another, x_i = (I - h a_ii J)^-1 (r_i + h J sum_{j<i} a_ij x_j): one n x n LU per distinct
diagonal entry (one for an SDIRK method). Otherwise the whole m n x m n matrix is factorised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ._newton import (
    BatchLayout,
    SingularMatrixError,
    factor_dtype,
    from_blocks,
    newton_matrix,
    to_blocks,
)


@dataclass(frozen=True)
class Eigenbasis:
    """A = T diag(values) T^-1, with conjugate eigenvalues' eigenvectors conjugate.

    ``partner[i]`` is the index of the eigenvalue whose conjugate ``values[i]`` is, where
    that one comes first, else ``None`` (``values[i]`` is solved for itself)."""

    values: tuple[complex, ...]
    t: np.ndarray  # (m, m) complex
    t_inv: np.ndarray  # (m, m) complex
    partner: tuple[int | None, ...]

    def transposed(self) -> Eigenbasis:
        """The eigenbasis of A^T = T^-T diag(values) T^T: the same eigenvalues and partners
        (the rows of T^-1 of conjugate eigenvalues are conjugate, as T's columns are)."""
        return Eigenbasis(self.values, self.t_inv.T.copy(), self.t.T.copy(), self.partner)


def eigenbasis(a: np.ndarray) -> Eigenbasis | None:
    """The eigenbasis of the implicit block ``a``, or ``None`` where its eigenvalues are not
    distinct or its eigenvectors are nearly dependent (the transformed solves would lose
    accuracy): then the whole Newton matrix is factorised."""
    values, vectors = np.linalg.eig(np.asarray(a, dtype=np.float64))
    m = len(values)
    scale = float(np.abs(values).max())
    if any(abs(values[i] - values[j]) <= 1e-8 * scale for i in range(m) for j in range(i)):
        return None
    values = values.astype(np.complex128)
    vectors = vectors.astype(np.complex128)
    partner: list[int | None] = [None] * m
    for i in range(m):
        if abs(values[i].imag) <= 1e-14 * scale:
            values[i] = values[i].real
            vectors[:, i] = vectors[:, i].real
        elif values[i].imag > 0:
            j = min(
                (k for k in range(m) if k != i and values[k].imag < 0),
                key=lambda k: abs(values[k] - values[i].conjugate()),
            )
            values[j], vectors[:, j] = values[i].conjugate(), vectors[:, i].conj()
            partner[j] = i
    if np.linalg.cond(vectors) > 1e6:
        return None
    inverse = np.linalg.inv(vectors)
    return Eigenbasis(tuple(complex(v) for v in values), vectors, inverse, tuple(partner))


@dataclass(frozen=True)
class Triangular:
    """A lower-triangular implicit block: the stages are solved one after another."""

    a: np.ndarray  # (m, m) float64


def stage_structure(a: np.ndarray) -> Eigenbasis | Triangular | None:
    """How the stage systems of the implicit block ``a`` split: lower triangular (one stage
    after another, real arithmetic), else through its eigenbasis, else not at all."""
    a = np.asarray(a, dtype=np.float64)
    if not np.triu(a, 1).any():
        return Triangular(a)
    return eigenbasis(a)


class TriangularSplit:
    """The stage system of a lower-triangular A, forward substitution:
    x_i = (I - h a_ii J)^-1 (r_i + h J sum_{j<i} a_ij x_j), one product with J per stage."""

    def __init__(self, structure: Triangular, h: float):
        self.a, self.h = structure.a, h
        # the coefficients d of the systems (I - h d J) solved: the distinct diagonal entries
        self.coefficients = [complex(d) for d in sorted({float(d) for d in np.diag(structure.a)})]

    def __call__(
        self,
        rhs: torch.Tensor,
        solve_one: Callable[[complex, torch.Tensor], torch.Tensor],
        jv: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """x for r given as (m, N); ``solve_one(d, w)`` solves (I - h d J) x = w and
        ``jv(v)`` is J v, on (N,)."""
        xs: list[torch.Tensor] = []
        for i, row in enumerate(self.a):
            r = rhs[i]
            coupled = [(float(row[j]), xs[j]) for j in range(i) if row[j] != 0]
            if coupled:
                r = r + self.h * jv(sum(coefficient * x for coefficient, x in coupled))
            xs.append(solve_one(complex(row[i]), r))
        return torch.stack(xs)


def complex_dtype(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype of a real dtype's precision (a complex dtype itself)."""
    if dtype.is_complex:
        return dtype
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class EigenSplit:
    """The stage system through A's eigenbasis: w = T^-1 r, one system (I - h d_i J) per
    eigenvalue d_i, x = T w; for a real state a conjugate partner's solution is the conjugate
    of its partner's, and a real eigenvalue's system is real."""

    def __init__(self, eigen: Eigenbasis, dtype: torch.dtype, device: torch.device):
        self.eigen = eigen
        cdtype = complex_dtype(dtype)
        self.t = torch.from_numpy(eigen.t).to(dtype=cdtype, device=device)
        self.t_inv = torch.from_numpy(eigen.t_inv).to(dtype=cdtype, device=device)
        real = not dtype.is_complex
        self.solved = [i for i, p in enumerate(eigen.partner) if not (real and p is not None)]
        # the coefficients d of the systems (I - h d J) solved
        self.coefficients = [eigen.values[i] for i in self.solved]

    def __call__(
        self,
        rhs: torch.Tensor,
        solve_one: Callable[[complex, torch.Tensor], torch.Tensor],
        jv: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x for r given as (m, N); ``solve_one(d, w)`` solves (I - h d J) x = w, (N,)
        (``jv``, J v, is not needed: the systems are uncoupled)."""
        real = not rhs.is_complex()
        w = self.t_inv @ rhs.to(self.t.dtype)
        x = torch.empty_like(w)
        for i in self.solved:
            d = self.eigen.values[i]
            x[i] = solve_one(d, w[i].real if real and d.imag == 0 else w[i])
        for j, i in enumerate(self.eigen.partner):
            if j not in self.solved:
                x[j] = x[i].conj()
        out = self.t @ x
        return out.real.to(rhs.dtype) if real else out


def stage_split(
    structure: Eigenbasis | Triangular | None, h: float, dtype: torch.dtype, device: torch.device
) -> EigenSplit | TriangularSplit | None:
    """The split of the stage systems that ``structure`` (``stage_structure``) allows, for a
    state of ``dtype`` on ``device``, or ``None`` (the whole matrix)."""
    if structure is None:
        return None
    if isinstance(structure, Triangular):
        return TriangularSplit(structure, h)
    return EigenSplit(structure, dtype, device)


class DenseSolve:
    """Solves (I - h (a kron J)) x = r per sample, r given as (m, N): split as ``structure``
    says (``stage_structure``: stage after stage, or through the eigenbasis, one n x n LU
    per distinct coefficient), else with the whole matrix. ``shifted`` solves (I - h d J) x = r
    for one coefficient d (an error estimate's), with the stages' factorisation where d is
    one of their coefficients.

    Raises:
        SingularMatrixError: a Newton matrix is singular.
    """

    def __init__(
        self,
        h: float,
        a: torch.Tensor,
        jacobians: torch.Tensor,
        layout: BatchLayout,
        structure: Eigenbasis | Triangular | None,
    ):
        # (a 16-bit state's matrices are factorised in float32: ``factor_dtype``)
        jacobians = jacobians.to(factor_dtype(jacobians.dtype))
        self.h, self.a, self.jacobians, self.layout = h, a, jacobians, layout
        self.m = a.shape[0]
        self.factorisations = 0
        self._shifted: dict[complex, tuple[torch.Tensor, torch.Tensor]] = {}
        self._split = stage_split(structure, h, jacobians.dtype, jacobians.device)
        if self._split is None:
            self._whole = self._factorise(newton_matrix(h, a, jacobians))
        else:
            for d in self._split.coefficients:
                self._shift(d)

    def _factorise(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.factorisations += 1
        lu, pivots, info = torch.linalg.lu_factor_ex(matrix)
        if bool((info != 0).any()):
            raise SingularMatrixError("singular Newton matrix")
        return lu, pivots

    def _shift(self, d: complex) -> tuple[torch.Tensor, torch.Tensor]:
        """The factorisation of I - h d J (real where d and J are)."""
        # an error estimate's coefficient is an eigenvalue written another way: up to rounding
        key = next((k for k in self._shifted if abs(k - d) <= 1e-12 * abs(d)), d)
        factors = self._shifted.get(key)
        if factors is None:
            jacobians = self.jacobians
            coefficient = self.h * (d.real if d.imag == 0 else d)
            if d.imag != 0:
                jacobians = jacobians.to(complex_dtype(jacobians.dtype))
            eye = torch.eye(jacobians.shape[-1], dtype=jacobians.dtype, device=jacobians.device)
            factors = self._shifted[d] = self._factorise(eye - coefficient * jacobians)
        return factors

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        dtype = rhs.dtype
        rhs = rhs.to(factor_dtype(dtype))
        return self._solve(rhs).to(dtype)

    def _solve(self, rhs: torch.Tensor) -> torch.Tensor:
        layout = self.layout
        if self._split is None:
            lu, pivots = self._whole
            blocks = to_blocks(rhs, layout)[..., None]
            out = torch.linalg.lu_solve(lu, pivots, blocks)[..., 0]
            return from_blocks(out, layout, self.m)

        def solve_one(d: complex, w: torch.Tensor) -> torch.Tensor:
            return layout.scatter(self._solve_shifted(d, layout.gather(w)))

        def jv(v: torch.Tensor) -> torch.Tensor:
            blocks = layout.gather(v.to(self.jacobians.dtype))
            return layout.scatter((self.jacobians @ blocks[..., None])[..., 0]).to(v.dtype)

        return self._split(rhs, solve_one, jv)

    def _solve_shifted(self, d: complex, blocks: torch.Tensor) -> torch.Tensor:
        """(I - h d J)^-1 per sample, on (B, n) blocks."""
        lu, pivots = self._shift(d)
        if not lu.is_complex():
            blocks = blocks.real if blocks.is_complex() else blocks
        elif not blocks.is_complex():
            blocks = blocks.to(lu.dtype)
        return torch.linalg.lu_solve(lu, pivots, blocks[..., None])[..., 0]

    def shifted(self, d: float, rhs: torch.Tensor) -> torch.Tensor:
        """(I - h d J)^-1 r for r given as (k, N)."""
        out = self._solve_shifted(complex(d), self.layout.gather(rhs.to(factor_dtype(rhs.dtype))))
        out = self.layout.scatter(out)
        return out.to(rhs.dtype) if rhs.is_complex() or not out.is_complex() else out
