"""The stage equations of an implicit Runge-Kutta step and their solution (``ImplicitRK``'s
base).

The stage increments Z_i = Y_i - y0 solve Z = h (A kron I) F(y0 + Z) (plus h a_i1 f(t0, y0)
for an explicit first stage). They are found by simplified Newton iterations with a
Jacobian from autograd (at (t0, y0), or an earlier step's under error control, see
``ImplicitRK._stages``), per sample of a batch (block-diagonal Jacobian, see
``batch_size``), the Newton matrix I - h (A kron J) factorised once per step
(``_dense_solve``), or applied by Jacobian-vector products inside GMRES
(``linear_solver="krylov"``, for large states). The
converged stages get their derivative from the implicit function theorem
(``_implicit_gradient``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from .._autocast import AutocastField
from .._host import plain_factories
from .._term import ODETerm
from ._dense_solve import DenseSolve, Eigenbasis, Triangular, stage_structure
from ._implicit_gradient import tie_adjoint, transposed_solve
from ._krylov_solve import KrylovSolve, Preconditioner, transposed_preconditioner
from ._newton import (
    NEWTON_BYTES,
    BatchLayout,
    JacobianVectorProduct,
    SingularMatrixError,
    batch_layout,
    block_jacobian,
    check_newton_size,
    newton_bytes,
)
from .base import Solver
from .tableau import ImplicitTableau

# batch x n^2 from which the direct solves split the stage systems (measured on CPU)
_SPLIT_FROM = 1024


@dataclass
class _Coefficients:
    a: torch.Tensor  # implicit block of A: (m, m)
    a_first: torch.Tensor | None  # column of A for the explicit first stage: (m,)
    inverse: torch.Tensor  # inverse of the implicit block
    d: torch.Tensor  # y1 = y0 + h b_1 f0 + d . (Z - h a_first f0): (m,)
    b_first: float
    structure: Eigenbasis | Triangular | None  # how the implicit block's stage systems split
    # the embedded error h b_error . K = error_z . Z + h error_first f0 (``None``: no weights)
    error_z: torch.Tensor | None
    error_first: float


@dataclass
class _Linearisation:
    """The Jacobian at (t0, y0): blocks (B, n, n), or a Jacobian-vector product."""

    f0: torch.Tensor
    jacobians: torch.Tensor | None
    jvp: JacobianVectorProduct | None


class StageEquations(NamedTuple):
    """The stage equations of one step, Z = h (A kron I) F(y0 + Z) + h a_first f(t0, y0):
    f, the step size, the coefficients, each implicit stage's (time, perturbation) and the
    batch layout of the state."""

    term: ODETerm
    h: float
    co: _Coefficients
    times: list[tuple[float, float]]
    layout: BatchLayout

    def values(self, y0: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """F(y0 + Z): f at every implicit stage, (m, n)."""
        return torch.stack([self.term(t, y0 + z[i], p) for i, (t, p) in enumerate(self.times)])

    def explicit_part(self, k_first: torch.Tensor) -> torch.Tensor:
        """h a_first f(t0, y0): the explicit first stage's part of Z."""
        return self.h * self.co.a_first[:, None] * k_first


class ImplicitStages(Solver):
    """Solves the stage equations of ``ImplicitRK`` (its base), with the options and
    bookkeeping ``ImplicitRK.__init__`` sets: ``newton_tol``, ``linear_solver``,
    ``krylov_tol``, ``krylov_dim``, ``counters``, the controller's tolerances (``None`` on
    fixed steps) and the caches of coefficients and batch layouts."""

    tableau: ClassVar[ImplicitTableau]
    default_max_iters: ClassVar[int]
    adaptive_max_iters: ClassVar[int]
    max_iters: int | None
    newton_tol: float | None
    linear_solver: str
    krylov_tol: float
    krylov_dim: int
    preconditioner: Preconditioner | None
    counters: Counter[str]
    _tolerances: tuple[float | torch.Tensor, float | torch.Tensor] | None
    _smallest_rtol: float
    _cache: dict[tuple[torch.dtype, torch.device], _Coefficients]
    _layouts: dict[tuple[int, torch.device], BatchLayout]

    @property
    def _iteration_cap(self) -> int:
        if self.max_iters is not None:
            return self.max_iters
        return self.default_max_iters if self._tolerances is None else self.adaptive_max_iters

    def _coefficients(self, like: torch.Tensor) -> _Coefficients:
        key = (like.dtype, like.device)
        co = self._cache.get(key)
        if co is None:
            with plain_factories():  # (cached: never a transform's tensor)
                co = self._cache[key] = self._build(like)
        return co

    def _build(self, like: torch.Tensor) -> _Coefficients:
        tab = self.tableau
        first = 1 if tab.explicit_first_stage else 0
        a_full = np.array(tab.a, dtype=np.float64)
        a = a_full[first:, first:]
        inverse = np.linalg.inv(a)
        b = np.array(tab.b[first:])
        d = inverse.T @ b
        if tab.stiffly_accurate:  # exactly the last stage, without rounding from the inverse
            d = np.eye(len(b))[-1]
        error_z, error_first = None, 0.0
        if tab.b_error is not None:
            # in stage increments, where the stages' own rounding cancels (h K = A^-1 Z)
            b_error = np.array(tab.b_error, dtype=np.float64)
            error_z = inverse.T @ b_error[first:]
            if first:
                error_first = float(b_error[0] - error_z @ a_full[first:, 0])

        def t(x: Any) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.float64).to(dtype=like.dtype, device=like.device)

        return _Coefficients(
            a=t(a),
            a_first=t(a_full[first:, 0]) if first else None,
            inverse=t(inverse),
            d=t(d),
            b_first=float(tab.b[0]) if first else 0.0,
            structure=stage_structure(a),
            error_z=None if error_z is None else t(error_z),
            error_first=error_first,
        )

    def _layout(self, term: ODETerm) -> BatchLayout:
        key = (id(term.spec), term.device)
        layout = self._layouts.get(key)
        if layout is None or layout.index.numel() != term.spec.numel:
            layout = batch_layout(term.spec, self.batch_size, term.device)
            self._layouts = {key: layout}
        return layout

    def _linearise(
        self, term: ODETerm, t: float, y: torch.Tensor, perturb: float, layout: BatchLayout
    ) -> _Linearisation:
        self.counters["jacobians"] += 1
        if self._krylov(layout, y.dtype):
            jvp = JacobianVectorProduct(term, t, y, perturb)
            return _Linearisation(jvp.f, None, jvp)
        check_newton_size(self.name, 1, layout, y.dtype)  # the Jacobians themselves
        jacobians, f0 = block_jacobian(term, t, y, perturb, layout)
        return _Linearisation(f0, jacobians, None)

    def _krylov(self, layout: BatchLayout, dtype: torch.dtype) -> bool:
        """Whether the linear systems are solved by GMRES: ``linear_solver="krylov"``, or
        ``"auto"`` where the direct solve's Newton matrices would exceed ``NEWTON_BYTES``."""
        if self.linear_solver != "auto":
            return self.linear_solver == "krylov"
        return newton_bytes(len(self.tableau.a), layout, dtype) > NEWTON_BYTES

    def _linear_solve(
        self, term: ODETerm, h: float, co: _Coefficients, lin: _Linearisation, layout: BatchLayout
    ) -> DenseSolve | KrylovSolve:
        """A solver for (I - h (A kron J)) x = r, r given as (m, N), and for
        (I - h d J) x = r (its ``shifted``).

        Raises:
            SingularMatrixError: a Newton matrix is singular (direct solves).
            ValueError: a preconditioner with a nested state.
        """
        if lin.jacobians is not None:
            # the m systems of n entries beat one of m n from about n = 32 on one problem (or
            # 16 samples of 8): below that, their extra operations cost more than they save
            small = layout.batch * layout.n**2 < _SPLIT_FROM
            structure = None if small else co.structure
            stages = 1 if structure is not None else co.a.shape[0]
            check_newton_size(self.name, stages, layout, lin.jacobians.dtype)
            return DenseSolve(h, co.a, lin.jacobians, layout, structure)
        tol, dim = self.krylov_tol, self.krylov_dim
        preconditioner = self.preconditioner
        if preconditioner is None:
            return KrylovSolve(h, co.a, lin.jvp, tol, dim, co.structure)
        if not term.spec.is_leaf:
            raise ValueError(
                f"{self.name}: a preconditioner takes the state as one tensor, but this state "
                f"is nested ({term.spec.structure!r}); solve with a single-tensor state or "
                "without preconditioner"
            )
        shape = tuple(term.spec.shapes[0])
        return KrylovSolve(h, co.a, lin.jvp, tol, dim, co.structure, preconditioner, shape)

    def _scale(self, y0: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Per-component scale of the Newton updates and the tolerance on them."""
        eps = torch.finfo(y0.real.dtype if y0.is_complex() else y0.dtype).eps
        if self._tolerances is None:  # fixed steps: to rounding, relative to 1 + |y0|
            return 1 + y0.abs(), 4 * eps if self.newton_tol is None else self.newton_tol
        rtol, atol = self._tolerances
        tol = self.newton_tol
        if tol is None:
            # Hairer and Wanner's bound for the tightest rtol asked: Newton's error a small
            # fraction of the tolerance (min(0.03, sqrt(rtol))), not below rounding
            # (10 eps / rtol); an rtol under 100 eps (0: a pure atol) counts as 100 eps, so
            # the bound is never looser than 0.1
            relative = max(self._smallest_rtol, 100 * eps)
            tol = max(10 * eps / relative, min(0.03, relative**0.5))
        magnitude = y0.abs()
        if isinstance(rtol, torch.Tensor):
            rtol = rtol.to(device=magnitude.device, dtype=magnitude.dtype)
        if isinstance(atol, torch.Tensor):
            atol = atol.to(device=magnitude.device, dtype=magnitude.dtype)
        return atol + rtol * magnitude, tol

    def _newton(
        self,
        eq: StageEquations,
        y0: torch.Tensor,
        start: torch.Tensor | None,
        k_first: torch.Tensor | None,
        solve: DenseSolve | KrylovSolve,
    ) -> tuple[torch.Tensor | None, str, bool]:
        """Simplified Newton from ``start`` (else Z = 0: an explicit predictor is far off
        on stiff components); (Z, "", slow) when converged, else (None, why, True). ``slow``:
        more than two iterations at a contraction rate above 1e-3, when SciPy's Radau
        evaluates the Jacobian afresh for the next step."""
        z = y0.new_zeros((len(eq.times), y0.numel())) if start is None else start.clone()
        base = 0.0 if k_first is None else eq.explicit_part(k_first)
        scale, tol = self._scale(y0)
        eps = torch.finfo(scale.dtype).eps
        # f computing in 16 bits under torch.autocast rounds h f, and so the stage
        # increments z, at its own eps: updates below that are rounding too
        field = getattr(eq.term, "func", None)
        field_eps = torch.finfo(field.lower).eps if isinstance(field, AutocastField) else 0.0
        cap = self._iteration_cap
        previous = None
        for iteration in range(cap):
            self.counters["newton_iterations"] += 1
            residual = base + eq.h * (eq.co.a @ eq.values(y0, z)) - z
            if not bool(torch.isfinite(residual).all()):
                return None, f"non-finite f at the stages after {iteration} iterations", True
            try:
                dz = solve(residual)
            except SingularMatrixError as error:  # (GMRES with a singular preconditioner)
                return None, str(error), True
            z = z + dz
            size = float(torch.linalg.vector_norm(dz / scale) / dz.numel() ** 0.5)
            if not size == size or size == float("inf"):
                return None, "non-finite Newton update", True
            rounding = 16 * eps * float(((y0.abs() + z.abs()) / scale).max())
            if field_eps:
                rounding += 16 * field_eps * float((z.abs() / scale).max())
            if size <= rounding:
                return z, "", False  # at rounding level
            if previous is not None:
                rate = size / previous
                if rate >= 1:
                    return None, f"diverging, contraction rate {rate:.3g}", True
                if rate / (1 - rate) * size <= tol:
                    return z, "", iteration >= 2 and rate > 1e-3
                left = cap - iteration - 1
                adaptive = self._tolerances is not None  # else no smaller step to retry with
                # the last update is about rate**left times this one and passes the test
                # above when rate / (1 - rate) times it is within tol (SciPy Radau's rule)
                if adaptive and left and rate ** (left + 1) / (1 - rate) * size > tol:
                    return None, f"too slow, contraction rate {rate:.3g}", True
            previous = size
        return None, f"not converged in max_iters={cap} iterations", True

    def _attach_gradient(
        self, eq: StageEquations, y0: torch.Tensor, k_first: torch.Tensor | None, z: torch.Tensor
    ) -> torch.Tensor:
        """Z in value, with the implicit function theorem's derivative (``_implicit_gradient``)."""
        values = eq.values(y0, z)
        z_graph = eq.h * (eq.co.a @ values)
        if k_first is not None:
            z_graph = z_graph + eq.explicit_part(k_first)
        if not z_graph.requires_grad:
            return z
        stages = y0.detach() + z
        use_krylov = self._krylov(eq.layout, stages.dtype)
        krylov = (self.krylov_tol, self.krylov_dim) if use_krylov else None

        def solve(grad: torch.Tensor) -> torch.Tensor:
            precondition = None
            if krylov is not None and eq.term.spec.is_leaf:  # (a preconditioner's state)
                shape = tuple(eq.term.spec.shapes[0])
                precondition = transposed_preconditioner(
                    self.preconditioner, eq.h, eq.co.a, eq.co.structure, shape
                )
            return transposed_solve(
                eq.term, eq.h, eq.co.a, stages, eq.times, eq.layout, grad, krylov, precondition
            )

        return tie_adjoint(z, z_graph, values, solve, self.name)
