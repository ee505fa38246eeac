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

The gradient of a step solves the transposed system (I - h (A kron J(Y_i)))^H u = g over all
stages at once (``_implicit_gradient.transposed_solve``), by GMRES restarted until it meets
the tolerance (a gradient has no Newton iteration to absorb an inexact solve), else an
error. A preconditioner with a method
``transposed(c, r)`` ≈ (I - c J)^-H r = (I - conj(c) J^H)^-1 r, the adjoint of
``preconditioner(c, .)`` for the same c, preconditions it on the right too
(``transposed_preconditioner``): through A^T's eigenbasis (A's eigenvalues), else stage by
stage with A's diagonal, with one J standing for every stage's J(Y_i), so it is approximate
there and changes the iterations only. A preconditioner without ``transposed`` leaves that
GMRES unpreconditioned.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._dense_solve import Eigenbasis, Triangular, stage_split
from ._newton import GMRESResult, JacobianVectorProduct, gmres, restarted_gmres

#: preconditioner(c, r) ≈ (I - c J)^-1 r, r shaped like the state; optionally with a method
#: transposed(c, r) ≈ (I - c J)^-H r for the gradient's transposed solves (module docstring)
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
        """J v; for a complex v of a real state, J v.real + i J v.imag (a 16-bit state's
        in its dtype: its eigenbasis split runs in complex64)."""
        y = self.jvp.y
        if v.is_complex() and not y.is_complex():
            real, imaginary = (part.to(y.dtype).contiguous() for part in (v.real, v.imag))
            return torch.complex(
                self.jvp(real).to(v.real.dtype), self.jvp(imaginary).to(v.real.dtype)
            )
        return self.jvp(v.to(y.dtype)).to(v.dtype)

    def _precondition(self, c: complex) -> Callable[[torch.Tensor], torch.Tensor] | None:
        if self.preconditioner is None:
            return None
        return _checked(self.preconditioner, c, self.shape, "preconditioner")

    def _solve_shift(self, c: complex, r: torch.Tensor) -> torch.Tensor:
        """(I - c J)^-1 r, right-preconditioned."""

        def matvec(x: torch.Tensor) -> torch.Tensor:
            return x - c * self._jv(x)

        return preconditioned_gmres(matvec, r, self.tol, self.dim, self._precondition(c))

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
            return preconditioned_gmres(matvec, rhs, self.tol, self.dim, None)
        blocks = [self._precondition(self.h * float(a[i, i].real)) for i in range(len(a))]

        def precondition(v: torch.Tensor) -> torch.Tensor:
            return torch.stack([block(row) for block, row in zip(blocks, v)])

        return preconditioned_gmres(matvec, rhs, self.tol, self.dim, precondition)

    def shifted(self, d: float, rhs: torch.Tensor) -> torch.Tensor:
        """(I - h d J)^-1 r for r given as (k, N), row by row."""
        return torch.stack([self._solve_shift(self.h * d, row) for row in rhs])


def preconditioned_gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float,
    dim: int,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    """GMRES for matvec(x) = rhs, right-preconditioned by ``precondition`` when given.

    Raises:
        SingularMatrixError: GMRES stalls on the preconditioned operator (a singular
            preconditioner).
    """
    if precondition is None:
        return gmres(matvec, rhs, tol, dim)
    # a singular preconditioner (e.g. one returning zeros) leaves part of the residual out
    # of GMRES's reach, and a Newton update without that part would pass the convergence
    # test: the solve fails instead
    x = gmres(lambda v: matvec(precondition(v)), rhs, tol, dim, singular=_SINGULAR)
    return precondition(x)


def restarted_preconditioned_gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float,
    dim: int,
    precondition: Callable[[torch.Tensor], torch.Tensor] | None,
) -> GMRESResult:
    """``preconditioned_gmres`` restarted (``_newton.restarted_gmres``): its x is the
    solution (the preconditioner applied), its residual the true one, which the caller
    judges.

    Raises:
        SingularMatrixError: GMRES stalls on the preconditioned operator (a singular
            preconditioner).
    """
    if precondition is None:
        return restarted_gmres(matvec, rhs, tol, dim)
    result = restarted_gmres(lambda v: matvec(precondition(v)), rhs, tol, dim, singular=_SINGULAR)
    return GMRESResult(precondition(result.x), result.residual, result.matvecs, result.stagnated)


def transposed_preconditioner(
    preconditioner: Preconditioner | None,
    h: float,
    a: torch.Tensor,
    structure: Eigenbasis | Triangular | None,
    shape: tuple[int, ...],
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """v -> ≈ (I - h (A^T kron J^H))^-1 v for v given as (m, N), from
    ``preconditioner.transposed`` (``None`` without one): the right preconditioner of the
    gradient's transposed solve. Through A^T's eigenbasis where A diagonalises, the
    system (I - h d J^H) of an eigenvalue d being ``transposed(conj(h d), .)``; else stage
    by stage with A's diagonal. ``a``: A, in the state's dtype, on its device."""
    transposed = getattr(preconditioner, "transposed", None)
    if transposed is None:
        return None
    eigen = structure.transposed() if isinstance(structure, Eigenbasis) else None
    split = stage_split(eigen, h, a.dtype, a.device)
    if split is not None:

        def solve_one(d: complex, w: torch.Tensor) -> torch.Tensor:
            c = h * (d if w.is_complex() else d.real)
            return _checked(transposed, c.conjugate(), shape, "preconditioner.transposed")(w)

        return lambda v: split(v, solve_one)
    blocks = [
        _checked(transposed, h * float(a[i, i].real), shape, "preconditioner.transposed")
        for i in range(len(a))
    ]
    return lambda v: torch.stack([block(row) for block, row in zip(blocks, v)])


def _checked(
    user: Callable[[complex, torch.Tensor], torch.Tensor],
    c: complex,
    shape: tuple[int, ...] | None,
    name: str,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> user(c, v) on v reshaped to ``shape``, checked: x of r's shape and dtype, and
    finite (``name`` names ``user`` in the errors).

    Raises:
        ValueError: an x not of r's shape and dtype, or non-finite.
    """

    def apply(v: torch.Tensor) -> torch.Tensor:
        r = v.reshape(shape)
        x = user(c, r)
        # a wrong x would otherwise surface as a reshape error, a real x for a complex r as
        # Newton failures blamed on GMRES, a NaN as LAPACK's error
        if not isinstance(x, torch.Tensor) or x.shape != r.shape or x.dtype != r.dtype:
            got = (
                f"a tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
                if isinstance(x, torch.Tensor)
                else type(x).__name__
            )
            raise ValueError(
                f"{name}(c, r) must return x of r's shape and dtype "
                f"({tuple(r.shape)}, {r.dtype}), got {got} (c={c!r})"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}(c, r) returned non-finite values for a finite r (c={c!r})")
        return x.reshape(v.shape)

    return apply
