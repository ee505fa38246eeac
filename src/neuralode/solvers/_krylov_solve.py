"""Matrix-free solves with the Newton matrix I - h (A kron J): GMRES with Jacobian-vector
products (for large states, e.g. neural network vector fields or fine PDE grids).

Where the implicit block A diagonalises (``_dense_solve.Eigenbasis``), the stage system falls
apart into one system (I - h d_i J) w_i = (T^-1 r)_i of the state's size per eigenvalue (a
complex pair once, in complex arithmetic: J v costs two products for a complex v), each solved
by its own GMRES. A ``preconditioner(c, r)`` ≈ (I - c J)^-1 r (e.g. a PDE's diffusion part
inverted, ``neuralode.pde``) is applied on the right, so the residual GMRES controls is the
true one: a rough preconditioner costs iterations, not accuracy (a singular one, whose
GMRES stalls, fails the step; an x not of r's shape and dtype, or non-finite, is a
ValueError). Where A is lower triangular (SDIRK and ESDIRK methods) the stages are solved
one after another, one GMRES each; with neither structure one GMRES solves all stages,
preconditioned stage by stage with A's diagonal.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._dense_solve import Eigenbasis, Triangular, stage_split
from ._newton import JacobianVectorProduct, gmres

#: preconditioner(c, r) ≈ (I - c J)^-1 r, r shaped like the state
Preconditioner = Callable[[complex, torch.Tensor], torch.Tensor]

_SINGULAR = (
    "GMRES stalled with the preconditioner: (I - c J) preconditioner(c, .) is singular, "
    "e.g. a preconditioner returning zeros (it must approximate (I - c J)^-1, invertibly)"
)


class KrylovSolve:
    """Solves (I - h (a kron J)) x = r, r given as (m, N), by GMRES; ``shifted`` solves
    (I - h d J) x = r for one coefficient d (an error estimate's). ``preconditioner`` takes
    and returns tensors of ``shape`` (the state's)."""

    def __init__(
        self,
        h: float,
        a: torch.Tensor,
        jvp: JacobianVectorProduct,
        tol: float,
        dim: int,
        structure: Eigenbasis | Triangular | None = None,
        preconditioner: Preconditioner | None = None,
        shape: tuple[int, ...] | None = None,
    ):
        self.h, self.a, self.jvp, self.tol, self.dim = h, a, jvp, tol, dim
        self.preconditioner, self.shape = preconditioner, shape
        self._split = stage_split(structure, h, jvp.y.dtype, jvp.y.device)

    def _jv(self, v: torch.Tensor) -> torch.Tensor:
        """J v; for a complex v of a real state, J v.real + i J v.imag."""
        if v.is_complex() and not self.jvp.y.is_complex():
            return torch.complex(self.jvp(v.real.contiguous()), self.jvp(v.imag.contiguous()))
        return self.jvp(v)

    def _precondition(self, c: complex) -> Callable[[torch.Tensor], torch.Tensor] | None:
        user = self.preconditioner
        if user is None:
            return None

        def apply(v: torch.Tensor) -> torch.Tensor:
            r = v.reshape(self.shape)
            x = user(c, r)
            # a wrong x would otherwise surface as a reshape error, a real x for a complex r
            # as Newton failures blamed on GMRES, a NaN as LAPACK's error
            if not isinstance(x, torch.Tensor) or x.shape != r.shape or x.dtype != r.dtype:
                got = (
                    f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
                    if isinstance(x, torch.Tensor)
                    else type(x).__name__
                )
                raise ValueError(
                    f"preconditioner(c, r) must return x of r's shape and dtype "
                    f"({tuple(r.shape)}, {r.dtype}), got {got} (c={c!r})"
                )
            if not bool(torch.isfinite(x).all()):
                raise ValueError(
                    f"preconditioner(c, r) returned non-finite values for a finite r (c={c!r})"
                )
            return x.reshape(v.shape)

        return apply

    def _gmres(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        rhs: torch.Tensor,
        precondition: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> torch.Tensor:
        """GMRES for matvec(x) = rhs, right-preconditioned by ``precondition`` when given."""
        if precondition is None:
            return gmres(matvec, rhs, self.tol, self.dim)
        # a singular preconditioner (e.g. one returning zeros) leaves part of the residual
        # out of GMRES's reach, and a Newton update without that part would pass the
        # convergence test: the step fails instead
        x = gmres(lambda v: matvec(precondition(v)), rhs, self.tol, self.dim, singular=_SINGULAR)
        return precondition(x)

    def _solve_shift(self, c: complex, r: torch.Tensor) -> torch.Tensor:
        """(I - c J)^-1 r, right-preconditioned."""

        def matvec(x: torch.Tensor) -> torch.Tensor:
            return x - c * self._jv(x)

        return self._gmres(matvec, r, self._precondition(c))

    def __call__(self, rhs: torch.Tensor) -> torch.Tensor:
        if self._split is None:
            return self._whole(rhs)
        # (w real: d is real, and so is its system)
        return self._split(
            rhs,
            lambda d, w: self._solve_shift(self.h * (d if w.is_complex() else d.real), w),
            self._jv,
        )

    def _whole(self, rhs: torch.Tensor) -> torch.Tensor:
        """One GMRES for all stages, preconditioned stage by stage with h a_ii."""
        a = self.a.to(rhs.dtype)

        def matvec(x: torch.Tensor) -> torch.Tensor:
            jx = torch.stack([self._jv(row) for row in x])
            return x - self.h * (a @ jx)

        if self.preconditioner is None:
            return self._gmres(matvec, rhs, None)
        blocks = [self._precondition(self.h * float(a[i, i].real)) for i in range(len(a))]

        def precondition(v: torch.Tensor) -> torch.Tensor:
            return torch.stack([block(row) for block, row in zip(blocks, v)])

        return self._gmres(matvec, rhs, precondition)

    def shifted(self, d: float, rhs: torch.Tensor) -> torch.Tensor:
        """(I - h d J)^-1 r for r given as (k, N), row by row."""
        return torch.stack([self._solve_shift(self.h * d, row) for row in rhs])
