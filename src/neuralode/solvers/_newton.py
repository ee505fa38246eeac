"""Linear algebra for implicit solvers: batch layout, block Jacobians, Newton matrices, GMRES.

The loop works on one flat state. Independent samples of a batch make the Jacobian block
diagonal; ``BatchLayout`` says where each sample's entries are in the flat state, so that
Jacobians are ``(batch, n, n)`` and every Newton matrix is factorised per sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._term import ODETerm
from .._tree import TreeSpec

_LOOP_BELOW = 16  # Jacobian columns computed one by one up to this many, by vmap above


@dataclass(frozen=True)
class BatchLayout:
    """``index[b, k]``: position in the flat state of entry ``k`` of sample ``b``."""

    index: torch.Tensor  # (B, n), long

    @property
    def batch(self) -> int:
        return self.index.shape[0]

    @property
    def n(self) -> int:
        return self.index.shape[1]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(..., N) -> (..., B, n)."""
        return x[..., self.index]

    def scatter(self, blocks: torch.Tensor) -> torch.Tensor:
        """(..., B, n) -> (..., N)."""
        out = blocks.new_empty((*blocks.shape[:-2], self.index.numel()))
        out[..., self.index] = blocks
        return out


def batch_layout(spec: TreeSpec, batch_size: int | None, device: torch.device) -> BatchLayout:
    """Samples along the first dimension of every tensor of the state, if they all have
    ``batch_size`` there; otherwise (or without ``batch_size``) the state is one block.

    The one-block fallback is what the augmented state of the backsolve adjoint needs: its
    parameter-gradient channels are shared by all samples.
    """
    total = spec.numel
    if batch_size is not None and batch_size > 1:
        if all(len(shape) >= 1 and shape[0] == batch_size for shape in spec.shapes):
            pieces, offset = [], 0
            for numel in spec.numels:
                pieces.append(torch.arange(offset, offset + numel).reshape(batch_size, -1))
                offset += numel
            return BatchLayout(torch.cat(pieces, 1).to(device))
    return BatchLayout(torch.arange(total, device=device)[None])


# the largest Newton matrices a direct linear solve builds (per solve, all samples)
NEWTON_BYTES = 2**31


def check_newton_size(name: str, stages: int, layout: BatchLayout, dtype: torch.dtype) -> None:
    """Refuse a direct linear solve whose Newton matrices, (B, s n, s n) for B samples of n
    entries and s stages solved together (1: the Jacobians), would exceed ``NEWTON_BYTES``:
    a clear error, naming the
    fixes, instead of gigabytes of memory and hours of factorising (an image ODE-Net's state
    as one problem is tens of thousands of entries).

    Raises:
        ValueError: the size, and the fixes.
    """
    need = newton_bytes(stages, layout, dtype)
    if need > NEWTON_BYTES:
        size = stages * layout.n
        raise ValueError(
            f"{name} with linear_solver='direct' would build Newton matrices of "
            f"{need / 2**30:.3g} GiB ({layout.batch} x {size} x {size}: {stages} stage(s) of "
            f"{layout.n} entries per problem). Use linear_solver='krylov' (matrix-free GMRES), "
            "batch_size=B when dimension 0 indexes independent samples, or an explicit method"
        )


def newton_bytes(stages: int, layout: BatchLayout, dtype: torch.dtype) -> int:
    """The bytes of the Newton matrices (B, s n, s n) of a direct linear solve."""
    size = stages * layout.n
    return layout.batch * size * size * torch.empty((), dtype=dtype).element_size()


def block_jacobian(
    term: ODETerm, t: float, y: torch.Tensor, perturb: float, layout: BatchLayout
) -> tuple[torch.Tensor, torch.Tensor]:
    """(J, f): the per-sample Jacobians df/dy (B, n, n) at (t, y) and f(t, y), detached.

    One evaluation of f and n batched vector-Jacobian products (column k of every block at
    once: the samples are independent). Where f's output does not depend on y through
    autograd (f detaches, e.g. the backsolve adjoint dynamics), forward differences are used
    instead (n more evaluations).
    """
    y = y.detach()
    if torch._C._functorch.maybe_current_level() is not None:
        # inside a torch.func transform (vmap over solve), where requires_grad_ is refused
        out, vjp = torch.func.vjp(lambda v: term(t, v, perturb), y)
        cotangents = _cotangents(out, layout)
        grads = torch.stack([vjp(v)[0] for v in cotangents])
        return _blocks(grads, layout), out.detach()
    with torch.enable_grad():
        yv = y.requires_grad_(True)
        out = term(t, yv, perturb)
        if out.requires_grad:
            return _vjp_jacobian(out, yv, layout), out.detach()
    return _difference_jacobian(term, t, y, perturb, out.detach(), layout), out.detach()


def _cotangents(out: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """(n, numel): row k selects component k of every sample's output."""
    n = layout.n
    cotangents = out.new_zeros((n, out.numel()))
    rows = torch.arange(n, device=out.device)[:, None].expand(n, layout.batch)
    cotangents[rows, layout.index.T] = 1
    return cotangents


def _blocks(grads: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """The per-sample Jacobians (B, n, n) from the (n, numel) products with ``_cotangents``."""
    # grads[k, index[b, j]] = conj(J_b[k, j]) (PyTorch's convention for complex tensors)
    blocks = layout.gather(grads).permute(1, 0, 2)
    return blocks.conj() if blocks.is_complex() else blocks


def _vjp_jacobian(out: torch.Tensor, y: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    n = layout.n
    cotangents = _cotangents(out, layout)
    grads = None
    if n > _LOOP_BELOW:  # batched by vmap; a loop is faster for a few columns
        try:
            (grads,) = torch.autograd.grad(
                out, y, cotangents, is_grads_batched=True, allow_unused=True
            )
        except RuntimeError:  # an operation vmap cannot batch
            grads = None
    if grads is None:
        columns = []
        for k, v in enumerate(cotangents):
            last = k == n - 1
            (g,) = torch.autograd.grad(out, y, v, retain_graph=not last, allow_unused=True)
            columns.append(torch.zeros_like(y) if g is None else g)
        grads = torch.stack(columns)
    return _blocks(grads, layout)


def _difference_jacobian(
    term: ODETerm,
    t: float,
    y: torch.Tensor,
    perturb: float,
    f0: torch.Tensor,
    layout: BatchLayout,
) -> torch.Tensor:
    real = y.real if y.is_complex() else y
    eps = torch.finfo(real.dtype).eps ** 0.5
    delta = eps * torch.clamp(real.abs(), min=1.0)
    columns = []
    for j in range(layout.n):
        direction = torch.zeros_like(real)
        direction[layout.index[:, j]] = delta[layout.index[:, j]]
        df = term(t, y + direction.to(y.dtype), perturb) - f0
        # df[index[b, k]] / delta[index[b, j]] = J_b[k, j]
        columns.append(layout.gather(df) / layout.gather(delta)[:, j : j + 1])
    return torch.stack(columns, -1)


def factor_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the linear algebra of a state of ``dtype`` runs in: float32 for float16 and
    bfloat16 (PyTorch has no LU factorisation or least squares for them), else ``dtype``."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def newton_matrix(h: float, a: torch.Tensor, jacobians: torch.Tensor) -> torch.Tensor:
    """I - h (a kron J) per sample: (B, m n, m n). ``jacobians`` is (B, n, n), one for all
    stages, or (B, m, n, n), one per stage (column block j uses stage j's)."""
    m = a.shape[0]
    if jacobians.ndim == 3:
        blocks = torch.einsum("ij,bpq->bipjq", a.to(jacobians.dtype), jacobians)
    else:
        blocks = torch.einsum("ij,bjpq->bipjq", a.to(jacobians.dtype), jacobians)
    b, n = jacobians.shape[0], jacobians.shape[-1]
    eye = torch.eye(m * n, dtype=jacobians.dtype, device=jacobians.device)
    return eye - h * blocks.reshape(b, m * n, m * n)


def to_blocks(x: torch.Tensor, layout: BatchLayout) -> torch.Tensor:
    """Stage vectors (m, N) -> per-sample right-hand sides (B, m n)."""
    m = x.shape[0]
    return layout.gather(x).permute(1, 0, 2).reshape(layout.batch, m * layout.n)


def from_blocks(x: torch.Tensor, layout: BatchLayout, m: int) -> torch.Tensor:
    """(B, m n) -> stage vectors (m, N)."""
    return layout.scatter(x.reshape(layout.batch, m, layout.n).permute(1, 0, 2))


class SingularMatrixError(RuntimeError):
    """A Newton matrix is singular (the step is too long for the iteration)."""


class JacobianVectorProduct:
    """v -> J v at one point, from one evaluation of f: by double backward through the
    vector-Jacobian product where f is differentiable, else by a forward difference."""

    def __init__(self, term: ODETerm, t: float, y: torch.Tensor, perturb: float):
        self.term, self.t, self.perturb = term, t, perturb
        self.y = y.detach()
        self._u = self._functorch_jvp = None
        if torch._C._functorch.maybe_current_level() is not None:
            # inside a torch.func transform (vmap over solve), where requires_grad_ is
            # refused: the same double vector-Jacobian product, by torch.func
            out, vjp = torch.func.vjp(lambda v: term(t, v, perturb), self.y)
            self.f = out.detach()
            _, self._functorch_jvp = torch.func.vjp(lambda u: vjp(u)[0], torch.zeros_like(out))
            return
        with torch.enable_grad():
            yv = self.y.clone().requires_grad_(True)
            out = term(t, yv, perturb)
            self.f = out.detach()
            if out.requires_grad:
                u = torch.zeros_like(out, requires_grad=True)
                (vjp,) = torch.autograd.grad(out, yv, u, create_graph=True)
                if vjp.requires_grad:
                    self._u, self._vjp = u, vjp

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if self._functorch_jvp is not None:
            return self._functorch_jvp(v)[0]
        if self._u is not None:
            with torch.enable_grad():
                (jv,) = torch.autograd.grad(self._vjp, self._u, v, retain_graph=True)
            return jv
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0:
            return torch.zeros_like(v)
        real = self.y.real if self.y.is_complex() else self.y
        eps = torch.finfo(real.dtype).eps ** 0.5
        delta = eps * (1 + float(torch.linalg.vector_norm(self.y))) / norm
        return (self.term(self.t, self.y + delta * v, self.perturb) - self.f) / delta


def gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float,
    dim: int,
    *,
    singular: str | None = None,
) -> torch.Tensor:
    """Solve matvec(x) = rhs from x = 0 by GMRES (Arnoldi with modified Gram-Schmidt) until
    the residual is below ``tol`` times |rhs| or ``dim`` Krylov vectors; no restart
    (``restarted_gmres`` restarts).

    A non-finite matvec (e.g. f not differentiable at the point: J v infinite) gives a NaN
    x, for the caller's finiteness checks (a Newton iteration rejects the step), instead of
    a least-squares solve that LAPACK refuses. With ``singular`` (a message), a Krylov space
    that closes with the residual above max(tol, sqrt(eps)) times |rhs| (the operator is
    singular on it: x = 0 for an operator that is 0) raises ``SingularMatrixError(singular)``.
    """
    return _gmres_cycle(matvec, rhs, tol, dim, singular)[0]


@dataclass(frozen=True)
class GMRESResult:
    """``restarted_gmres``'s x, its residual |rhs - matvec(x)| relative to |rhs| (GMRES's
    own estimate where the first cycle converges, else measured by one matvec), the matvecs
    it took, and whether it stopped because a cycle stagnated."""

    x: torch.Tensor
    residual: float
    matvecs: int
    stagnated: bool = False


def restarted_gmres(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float,
    dim: int,
    *,
    cycles: int = 20,
    stagnation: float = 0.9,
    singular: str | None = None,
) -> GMRESResult:
    """Solve matvec(x) = rhs by restarted GMRES(``dim``): cycles of ``gmres`` on the true
    residual r = rhs - matvec(x) (one matvec each), x += d for matvec(d) ≈ r, until the
    residual is below ``tol`` times |rhs|, after at most ``cycles`` cycles, or once a cycle
    reduces the residual by less than the factor ``stagnation`` (restarted GMRES that
    stagnates does not recover). A first cycle that converges costs what ``gmres`` costs.
    The caller judges the residual it returns (a non-finite matvec gives a NaN x and
    residual, as ``gmres``).

    Raises:
        SingularMatrixError: with ``singular``, as ``gmres``.
    """
    count = [0]

    def counted(v: torch.Tensor) -> torch.Tensor:
        count[0] += 1
        return matvec(v)

    beta = float(torch.linalg.vector_norm(rhs))
    x, residual, norm = torch.zeros_like(rhs), rhs, beta
    for cycle in range(cycles):
        if not norm > tol * beta:  # (converged; also rhs = 0)
            break
        d, estimate = _gmres_cycle(counted, residual, min(tol * beta / norm, 1.0), dim, singular)
        if not math.isfinite(estimate):
            return GMRESResult(d, math.nan, count[0])
        x = x + d
        if cycle == 0 and estimate <= tol * beta:  # (GMRES's estimate: no extra matvec)
            return GMRESResult(x, estimate / beta, count[0])
        residual = rhs - counted(x)
        previous, norm = norm, float(torch.linalg.vector_norm(residual))
        if norm > tol * beta and norm > stagnation * previous:
            return GMRESResult(x, norm / beta, count[0], stagnated=True)
    return GMRESResult(x, norm / beta if beta else 0.0, count[0])


def _gmres_cycle(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    tol: float,
    dim: int,
    singular: str | None,
) -> tuple[torch.Tensor, float]:
    """``gmres``'s x and its least-squares residual |rhs - matvec(x)| (exact but for
    rounding; inf for a NaN x)."""
    shape = rhs.shape
    b = rhs.reshape(-1)
    beta = torch.linalg.vector_norm(b)
    if float(beta) == 0:
        return torch.zeros_like(rhs), 0.0
    basis = [b / beta]
    # The Krylov space is exhausted (to round-off) when the new direction is this short.
    real = b.real if b.is_complex() else b
    eps = torch.finfo(real.dtype).eps
    breakdown = 50 * eps * float(beta)
    hessenberg = torch.zeros(dim + 1, dim, dtype=factor_dtype(b.dtype), device=b.device)
    e1 = torch.zeros(dim + 1, dtype=hessenberg.dtype, device=b.device)
    e1[0] = beta
    y = None
    residual = float(beta)
    for k in range(dim):
        w = matvec(basis[k].reshape(shape)).reshape(-1)
        if not bool(torch.isfinite(w).all()):
            return torch.full_like(rhs, float("nan")), float("inf")
        for i, v in enumerate(basis):
            hessenberg[i, k] = torch.vdot(v, w)
            w = w - hessenberg[i, k] * v
        hessenberg[k + 1, k] = torch.linalg.vector_norm(w)
        sub = hessenberg[: k + 2, : k + 1]
        y = torch.linalg.lstsq(sub, e1[: k + 2, None]).solution[:, 0]
        residual = float(torch.linalg.vector_norm(sub @ y - e1[: k + 2]))
        if residual <= tol * float(beta):
            break
        if float(hessenberg[k + 1, k].real) <= breakdown:
            if singular is not None and residual > max(tol, eps**0.5) * float(beta):
                raise SingularMatrixError(singular)
            break
        basis.append(w / hessenberg[k + 1, k])
    x = torch.stack(basis[: y.shape[0]], 1) @ y.to(b.dtype)
    return x.reshape(shape), residual
