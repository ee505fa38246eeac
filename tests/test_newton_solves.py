"""The linear algebra of the implicit solvers' Newton iterations and the Jacobians they keep:
the eigenbasis solves against the whole Newton matrix, Jacobians kept across radau's steps
(SciPy's Radau rule), and checkpointed replays that take the forward pass's stages."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode._term import ODETerm
from neuralode._tree import tree_spec
from neuralode.solvers import (
    GL4,
    METHODS,
    ImplicitRK,
    NewtonError,
    Radau,
    _dense_solve,
    _implicit_stages,
)
from neuralode.solvers._newton import BatchLayout, gmres

IMPLICIT = [name for name, cls in METHODS.items() if issubclass(cls, ImplicitRK)]


def _implicit_block(name: str) -> np.ndarray:
    tab = METHODS[name].tableau
    first = 1 if tab.explicit_first_stage else 0
    return np.array([row[first:] for row in tab.a[first:]], dtype=np.float64)


@pytest.mark.parametrize("name", IMPLICIT)
def test_eigenbasis_diagonalises_the_implicit_block(name: str) -> None:
    """A = T diag(d) T^-1 with conjugate pairs' vectors conjugate; SDIRK blocks (one
    repeated eigenvalue) have none and keep the whole Newton matrix."""
    a = _implicit_block(name)
    eigen = _dense_solve.eigenbasis(a)
    sdirk = len(a) > 1 and np.allclose(np.triu(a, 1), 0) and np.allclose(np.diag(a), a[0, 0])
    if sdirk:
        assert eigen is None
        return
    assert eigen is not None
    rebuilt = eigen.t @ np.diag(eigen.values) @ eigen.t_inv
    np.testing.assert_allclose(rebuilt, a, atol=1e-13)
    for j, i in enumerate(eigen.partner):
        if i is not None:
            assert eigen.values[j] == eigen.values[i].conjugate()
            np.testing.assert_array_equal(eigen.t[:, j], eigen.t[:, i].conj())


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128, torch.float32])
@pytest.mark.parametrize("name", ["radau", "gl6", "radauIIA3", "gl4", "implicit_euler"])
def test_eigenbasis_solves_equal_the_whole_newton_matrix(name: str, dtype: torch.dtype) -> None:
    """(I - h (A kron J)) x = r per sample, through the eigenvalues and with the whole matrix,
    and the shifted solve of the real eigenvalue, agree to rounding, for real and complex
    states; the solution solves the system."""
    generator = torch.Generator().manual_seed(0)
    batch, n = 3, 5
    a = torch.tensor(_implicit_block(name), dtype=torch.float64)
    jacobians = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
    rhs = torch.randn(len(a), batch * n, dtype=torch.float64, generator=generator)
    if dtype.is_complex:
        jacobians = jacobians + 1j * torch.randn(batch, n, n, dtype=torch.float64)
        rhs = rhs + 1j * torch.randn(len(a), batch * n, dtype=torch.float64)
    jacobians, rhs, a = jacobians.to(dtype), rhs.to(dtype), a.to(dtype)
    layout = BatchLayout(torch.arange(batch * n).reshape(batch, n))
    eigen = _dense_solve.eigenbasis(a.real.double().numpy())
    h = 0.7
    through_eigen = _dense_solve.DenseSolve(h, a, jacobians, layout, eigen)
    whole = _dense_solve.DenseSolve(h, a, jacobians, layout, None)
    x = through_eigen(rhs)
    tol = 1e-4 if dtype == torch.float32 else 1e-11
    assert x.dtype == dtype
    torch.testing.assert_close(x, whole(rhs), rtol=tol, atol=tol)
    # the system itself: x - h (A kron J) x = r, per sample
    blocks = x.reshape(len(a), batch, n)
    jx = torch.einsum("bpq,ibq->ibp", jacobians, blocks)
    residual = blocks - h * torch.einsum("ij,jbp->ibp", a, jx) - rhs.reshape(len(a), batch, n)
    assert float(residual.abs().max()) < tol
    real = [d for d in eigen.values if d.imag == 0]
    if real:  # a real eigenvalue's own factorisation, as radau's error estimate uses it
        d = real[0].real
        shifted = through_eigen.shifted(d, rhs[:1])
        expected = torch.linalg.solve(
            torch.eye(n, dtype=dtype) - h * d * jacobians, rhs[0].reshape(batch, n)
        )
        torch.testing.assert_close(shifted, expected.reshape(1, -1), rtol=tol, atol=tol)
        assert through_eigen.factorisations == len(through_eigen._split.solved)  # none added


@pytest.mark.parametrize("name", IMPLICIT)
def test_lower_triangular_blocks_are_solved_stage_after_stage(name: str) -> None:
    """SDIRK and one-stage blocks split stage after stage (one LU per distinct diagonal
    entry), the others through their eigenbasis; both agree with the whole Newton matrix
    for real, complex and float32 states, and the forward substitution couples the stages
    (sdirk2's second stage reads the first)."""
    a_np = _implicit_block(name)
    structure = _dense_solve.stage_structure(a_np)
    triangular = not np.triu(a_np, 1).any()
    assert isinstance(structure, _dense_solve.Triangular) == triangular
    if not triangular:
        assert isinstance(structure, _dense_solve.Eigenbasis)
        return
    generator = torch.Generator().manual_seed(1)
    batch, n = 2, 6
    layout = BatchLayout(torch.arange(batch * n).reshape(batch, n))
    for dtype in (torch.float64, torch.complex128, torch.float32):
        jacobians = torch.randn(batch, n, n, dtype=torch.float64, generator=generator)
        rhs = torch.randn(len(a_np), batch * n, dtype=torch.float64, generator=generator)
        if dtype.is_complex:
            jacobians = jacobians + 1j * torch.randn(batch, n, n, dtype=torch.float64)
            rhs = rhs + 1j * torch.randn(len(a_np), batch * n, dtype=torch.float64)
        jacobians, rhs = jacobians.to(dtype), rhs.to(dtype)
        a = torch.tensor(a_np).to(dtype)
        split = _dense_solve.DenseSolve(0.3, a, jacobians, layout, structure)
        whole = _dense_solve.DenseSolve(0.3, a, jacobians, layout, None)
        tol = 1e-4 if dtype == torch.float32 else 1e-11
        torch.testing.assert_close(split(rhs), whole(rhs), rtol=tol, atol=tol)
        assert split.factorisations == len(set(np.diag(a_np).tolist()))


def _stiff(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A stiff nonlinear system of 40 entries (the eigenbasis path): rates 1 .. 1e4."""
    rates = torch.logspace(0, 4, y.shape[-1], dtype=y.dtype)
    return -rates * (y - torch.cos(t)) - 0.5 * y**3


def test_radau_through_the_eigenbasis_equals_the_whole_matrix(monkeypatch) -> None:
    """radau's solve with the eigenbasis (40 entries, above the size where it is used) and
    with the whole matrix take the same steps to the same states, to rounding."""
    y0 = torch.linspace(-1, 1, 40, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    controller = no.PIController(rtol=1e-7, atol=1e-9)
    eigen_solver = Radau()
    eigen = no.solve(_stiff, y0, ts, solver=eigen_solver, controller=controller)
    monkeypatch.setattr(_implicit_stages, "_SPLIT_FROM", 10**9)
    whole_solver = Radau()
    whole = no.solve(_stiff, y0, ts, solver=whole_solver, controller=controller)
    assert eigen.stats.n_steps == whole.stats.n_steps
    torch.testing.assert_close(eigen.ys, whole.ys, rtol=1e-10, atol=1e-12)
    # two factorisations per step (a real and a complex n x n) against the stages' 3n x 3n
    # and the error estimate's n x n
    steps = eigen.stats.n_steps
    assert eigen_solver.counters["factorisations"] == 2 * steps
    assert whole_solver.counters["factorisations"] == 2 * steps


def test_a_newton_failure_with_a_kept_jacobian_retries_with_a_fresh_one() -> None:
    """A step started with a Jacobian that is far off (kept from an earlier step) whose
    Newton iteration diverges is tried again with the Jacobian at its start before it is
    given up: it converges, and the fresh Jacobian is what a retry would keep."""
    solver = Radau()
    solver.set_tolerances(1e-6, 1e-8)
    y0 = torch.linspace(-1, 1, 4, dtype=torch.float64)
    term = ODETerm(_stiff, tree_spec(y0)[0], y0)
    state = solver.init(term, 0.0, y0, None)
    first = solver.step(term, 0.0, 1e-3, y0, state, False)
    assert solver.counters["jacobians"] == 1
    wrong = first.extra["linearisation"]
    wrong = type(wrong)(wrong.f0, -wrong.jacobians, None)  # the opposite Jacobian
    state = solver.accept(term, first, False)
    state["jacobian"] = (wrong, None)
    retried = solver.step(term, first.t1, first.t1 + 1e-2, first.y1, state, False)
    assert solver.counters["jacobians"] == 2  # the fresh one
    assert solver.counters["newton_failures"] == 0
    assert bool(torch.isfinite(retried.error).all())
    assert retried.extra["jacobian_at"] == 0.0  # evaluated at the step's start
    at_start = torch.func.jacrev(lambda y: _stiff(torch.tensor(first.t1), y))(first.y1)
    torch.testing.assert_close(retried.extra["linearisation"].jacobians, at_start[None])


def test_checkpointed_replays_take_the_forward_stages() -> None:
    """Checkpointed gradients recompute each radau step from the stages it converged to:
    no Jacobian and no Newton iteration in the backward pass, and the gradient equals
    Direct's exactly."""
    y0 = torch.linspace(-1, 1, 6, dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 2.0], dtype=torch.float64)
    grads = []
    for gradient in (no.Direct(), no.Checkpointed(params=())):
        solver = Radau()
        sol = no.solve(
            _stiff, y0, ts, solver=solver, controller=no.PIController(1e-5, 1e-7), gradient=gradient
        )
        before = dict(solver.counters)
        (grad,) = torch.autograd.grad(sol.ys.square().sum(), y0)
        assert solver.counters["jacobians"] == before["jacobians"]
        assert solver.counters["newton_iterations"] == before["newton_iterations"]
        grads.append(grad)
    assert torch.equal(grads[0], grads[1])


def _heat_matrix(n: int) -> torch.Tensor:
    """The second-difference matrix of u_t = u_xx on n interior nodes of [0, 1], Dirichlet."""
    dx = 1 / (n + 1)
    main = torch.full((n,), -2.0, dtype=torch.float64)
    off = torch.ones(n - 1, dtype=torch.float64)
    return (torch.diag(main) + torch.diag(off, 1) + torch.diag(off, -1)) / dx**2


class _Exact:
    """(I - c A)^-1 r for the linear f(t, y) = A y (batch, n): an exact preconditioner,
    recording the coefficients and shapes it is called with."""

    def __init__(self, matrix: torch.Tensor):
        self.matrix = matrix
        self.calls: list[tuple[complex, tuple[int, ...], torch.dtype]] = []

    def __call__(self, c: complex, r: torch.Tensor) -> torch.Tensor:
        self.calls.append((c, tuple(r.shape), r.dtype))
        m = self.matrix.to(r.dtype)
        system = torch.eye(len(m), dtype=r.dtype) - c * m
        return torch.linalg.solve(system, r.reshape(-1, len(m)).T).T.reshape(r.shape)


@pytest.mark.parametrize("method", ["radau", "sdirk2", "gl4"])
def test_a_preconditioner_saves_gmres_iterations_not_accuracy(method: str) -> None:
    """With the exact inverse as preconditioner GMRES converges at once: far fewer
    Jacobian-vector products, the same solution to the tolerances (right preconditioning);
    complex coefficients reach it for the complex eigenvalue pairs, with complex r."""
    matrix = _heat_matrix(24)
    x = torch.linspace(0, 1, 26, dtype=torch.float64)[1:-1]
    y0 = torch.stack([torch.sin(torch.pi * x), torch.exp(-50 * (x - 0.3) ** 2)])
    ts = torch.tensor([0.0, 0.02], dtype=torch.float64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ matrix.T

    exact = torch.linalg.matrix_exp(0.02 * matrix) @ y0.T
    results = {}
    for name, preconditioner in (("plain", None), ("preconditioned", _Exact(matrix))):
        solver = METHODS[method](linear_solver="krylov", preconditioner=preconditioner)
        if method == "radau":
            options = {"controller": no.PIController(1e-5, 1e-8)}
        else:
            options = {"controller": no.FixedGrid(step_size=0.005)}
        before = _jvp_count()
        sol = no.solve(f, y0, ts, solver=solver, **options)
        results[name] = (sol.ys[-1], _jvp_count() - before)
    (plain, plain_products), (pre, pre_products) = results["plain"], results["preconditioned"]
    assert pre_products < plain_products / 3, (pre_products, plain_products)
    torch.testing.assert_close(pre, plain, rtol=1e-6, atol=1e-8)
    if method == "radau":
        assert float((pre - exact.T).abs().max()) < 1e-4
    calls = preconditioner.calls
    assert {shape for _, shape, _ in calls} == {tuple(y0.shape)}
    if method != "sdirk2":  # the complex eigenvalue pair of radau's and gl4's A
        assert any(isinstance(c, complex) and c.imag != 0 for c, _, _ in calls)
        assert torch.complex128 in {dtype for _, _, dtype in calls}


_PRODUCTS = [0]


def _jvp_count() -> int:
    return _PRODUCTS[0]


@pytest.fixture(autouse=True)
def _count_products(monkeypatch):
    from neuralode.solvers import _newton

    original = _newton.JacobianVectorProduct.__call__

    def counted(self, v):
        _PRODUCTS[0] += 1
        return original(self, v)

    monkeypatch.setattr(_newton.JacobianVectorProduct, "__call__", counted)


def test_preconditioner_options_are_checked() -> None:
    with pytest.raises(ValueError, match="preconditioner must be callable"):
        Radau(linear_solver="krylov", preconditioner="fft")
    with pytest.raises(ValueError, match="a preconditioner serves GMRES"):
        Radau(linear_solver="direct", preconditioner=lambda c, r: r)
    solver = Radau(linear_solver="krylov", preconditioner=lambda c, r: r)
    state = (torch.ones(3, dtype=torch.float64), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="a preconditioner takes the state as one tensor"):
        no.solve(lambda t, y: (-y[0], -y[1]), state, torch.tensor([0.0, 1.0]), solver=solver)


def test_backsolve_solves_the_adjoint_system_without_the_preconditioner() -> None:
    """The preconditioner serves the forward state; Backsolve's backward solves (state
    [y, adjoint, parameter gradients]) run GMRES without it, and the gradients agree with
    Direct's."""
    matrix = _heat_matrix(8)
    scale = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    y0 = torch.linspace(0, 1, 10, dtype=torch.float64)[1:-1].sin()[None].requires_grad_(True)
    ts = torch.tensor([0.0, 0.02, 0.05], dtype=torch.float64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return scale * (y @ matrix.T)

    grads = []
    for gradient in (no.Direct(), no.Backsolve(params=(scale,))):
        preconditioner = _Exact(0.5 * matrix)
        solver = Radau(linear_solver="krylov", krylov_tol=1e-12, preconditioner=preconditioner)
        sol = no.solve(
            f, y0, ts, solver=solver, controller=no.PIController(1e-6, 1e-8), gradient=gradient
        )
        calls = len(preconditioner.calls)
        grads.append(torch.autograd.grad(sol.ys.square().sum(), (y0, scale)))
        assert len(preconditioner.calls) == calls  # not in the backward pass
    for direct, backsolve in zip(*grads):
        torch.testing.assert_close(backsolve, direct, rtol=1e-6, atol=1e-9)


def _heat_problem(n: int = 16):
    """u_t = u_xx - u^3 / 2 on n interior nodes, two samples, and its exact preconditioner."""
    matrix = _heat_matrix(n)
    y0 = torch.linspace(0, 1, n + 2, dtype=torch.float64)[1:-1].sin()[None].repeat(2, 1)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ matrix.T - 0.5 * y**3

    return f, y0, _Exact(matrix)


@pytest.mark.parametrize(
    ("wrong", "match"),
    [
        (lambda x: x[0], r"must return x of r's shape and dtype \(\(2, 16\)"),
        (lambda x: x.reshape(-1), "got a tensor of shape \\(32,\\)"),
        (lambda x: x.real if x.is_complex() else x + 0j, "dtype"),
        (lambda x: x.to(torch.complex64 if x.is_complex() else torch.float32), "dtype"),
        (lambda x: torch.full_like(x, float("nan")), "returned non-finite values"),
        (lambda x: None, "got NoneType"),
    ],
)
def test_a_preconditioner_returning_a_wrong_x_is_named(wrong, match: str) -> None:
    """x of another shape or dtype, a NaN, or no tensor: a ValueError naming the
    preconditioner (a real x for radau's complex pair only made Newton fail, blamed on
    GMRES; a NaN reached LAPACK's least squares as an internal error; a shape as a reshape
    error)."""
    f, y0, exact = _heat_problem()
    solver = Radau(linear_solver="krylov", preconditioner=lambda c, r: wrong(exact(c, r)))
    with pytest.raises(ValueError, match=match):
        no.solve(f, y0, torch.tensor([0.0, 0.05], dtype=torch.float64), solver=solver)


@pytest.mark.parametrize("method", ["gl4", "sdirk2", "radau"])
def test_a_singular_preconditioner_fails_the_step(method: str) -> None:
    """A preconditioner returning zeros leaves GMRES's residual where it was and its update
    0, which passed Newton's convergence test: the stages stayed at their start (radau: an
    error of 0.45 at rtol 1e-6, gl4 a step of y' = 0). Now its Krylov space closing with the
    residual unreduced fails the step, naming the preconditioner."""
    f, y0, _ = _heat_problem()
    solver = METHODS[method](linear_solver="krylov", preconditioner=lambda c, r: 0 * r)
    ts = torch.tensor([0.0, 0.05], dtype=torch.float64)
    if method == "radau":  # rejected until the step underflows
        with pytest.raises(RuntimeError, match="preconditioner.* is singular"):
            no.solve(f, y0, ts, solver=solver, controller=no.PIController(1e-6, 1e-9))
        return
    with pytest.raises(NewtonError, match="GMRES stalled with the preconditioner"):
        no.solve(f, y0, ts, solver=solver, controller=no.FixedGrid(step_size=0.01))


def test_gmres_with_a_non_finite_product_gives_a_failed_newton_step() -> None:
    """J v infinite (f = -sqrt|y| at y = 0): GMRES returns NaN, and Newton reports a
    non-finite update, as the direct solve does (LAPACK's least squares raised an internal
    error)."""

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -torch.sqrt(y.abs()) - y

    y0 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    with pytest.raises(NewtonError, match="non-finite Newton update"):
        no.solve(
            f, y0, torch.tensor([0.0, 0.1], dtype=torch.float64), solver=GL4(linear_solver="krylov")
        )
    x = gmres(lambda v: v * float("inf"), torch.ones(4, dtype=torch.float64), 1e-10, 10)
    assert bool(x.isnan().all())


@pytest.mark.parametrize("dtype", [torch.complex128, torch.float64])
def test_gmres_solves_complex_systems(dtype: torch.dtype) -> None:
    """GMRES (Arnoldi with vdot) equals torch.linalg.solve on a complex shifted system
    I - c J, c complex, as radau's complex eigenvalue pair gives it."""
    generator = torch.Generator().manual_seed(3)
    n = 30
    jacobian = torch.randn(n, n, dtype=torch.float64, generator=generator) - 20 * torch.eye(n)
    c = 0.05 * complex(0.16, 0.18) if dtype.is_complex else 0.05
    matrix = torch.eye(n, dtype=dtype) - c * jacobian.to(dtype)
    rhs = torch.randn(n, dtype=dtype, generator=generator)
    x = gmres(lambda v: matrix @ v, rhs, 1e-12, 50)
    torch.testing.assert_close(x, torch.linalg.solve(matrix, rhs), rtol=1e-10, atol=1e-12)


def test_a_singular_preconditioner_in_radaus_error_estimate_fails_the_step() -> None:
    """A preconditioner singular for the real coefficient only (radau's error estimate
    solves with it) fails the step like a Newton failure: the solve stalls with a step-size
    underflow naming the preconditioner, not a bare SingularMatrixError from the estimate."""

    def singular_when_real(c: complex, r: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(r) if isinstance(c, float) else r.clone()

    y0 = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    solver = Radau(linear_solver="krylov", preconditioner=singular_when_real)
    with pytest.raises(no.StepSizeUnderflowError, match="GMRES stalled with the preconditioner"):
        no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), solver=solver)


def test_krylov_newton_under_torch_func_transforms() -> None:
    """Newton-Krylov inside vmap (the Jacobian-vector products by torch.func, where
    requires_grad_ is refused) equals solving each problem alone, and its gradients under
    grad(vmap(...)) and vmap(grad(...)) (the transposed solve by torch.func's
    vector-Jacobian products, or by the dense solve where the gradient is batched) equal
    the direct linear solver's."""
    y0s = torch.linspace(0.2, 1.4, 12, dtype=torch.float64).reshape(3, 4)
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    rates = torch.arange(1.0, 5.0, dtype=torch.float64)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rates * y - y**3

    def last(y: torch.Tensor, linear_solver: str) -> torch.Tensor:
        # a few adaptive steps (7): each runs Newton-Krylov and its transposed solve
        solver = Radau(linear_solver=linear_solver, krylov_tol=1e-12)
        controller = no.PIController(1e-4, 1e-6)
        return no.solve(f, y, ts, solver=solver, controller=controller).ys[-1]

    vmapped = torch.func.vmap(lambda y: last(y, "krylov"))(y0s)
    alone = torch.stack([last(y, "krylov") for y in y0s])
    torch.testing.assert_close(vmapped, alone, rtol=1e-12, atol=1e-14)

    def total(ys: torch.Tensor, linear_solver: str) -> torch.Tensor:
        return torch.func.vmap(lambda y: last(y, linear_solver))(ys).sum()

    direct = torch.func.grad(lambda ys: total(ys, "direct"))(y0s)
    outside = torch.func.grad(lambda ys: total(ys, "krylov"))(y0s)
    inside = torch.func.vmap(torch.func.grad(lambda y: last(y, "krylov").sum()))(y0s)
    torch.testing.assert_close(outside, direct, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(inside, direct, rtol=1e-9, atol=1e-12)
