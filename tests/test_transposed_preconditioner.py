"""The preconditioned transposed GMRES solve of the implicit solvers' gradients: the
diffusion preconditioner's adjoint (``DiffusionPreconditioner.transposed``) against a dense
solve with the adjoint matrix, A^T's eigenbasis, gradients equal to the direct (LU) solver's,
far fewer vector-Jacobian products, and preconditioners without ``transposed`` as before."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_pde_preconditioner import case_id, dense_jacobian, diffusion

import neuralode as no
from neuralode import pde
from neuralode.pde import Dirichlet, Grid, Neumann, Periodic
from neuralode.solvers import METHODS, _dense_solve, _implicit_gradient
from neuralode.solvers._newton import SingularMatrixError

F64 = torch.float64
SHIFTS = [0.05, 3.0, complex(0.2, 0.15), complex(1.5, -0.7)]

# every boundary kind, alone and mixed, both stencil orders and the spectral Laplacian
CASES = [
    (Grid((9,), lengths=(2.0,)), 2),
    (Grid((8,), lengths=(2 * math.pi,)), "spectral"),
    (Grid((7,), boundary=Dirichlet(1.0, -2.0)), 4),
    (Grid((7,), lengths=(3.0,), boundary=Neumann(0.5, 1.5)), 2),
    (Grid((7,), lengths=(3.0,), boundary=Neumann(0.5, 1.5)), 4),
    (Grid((6, 5), lengths=(1.0, 2.0)), "spectral"),
    (Grid((6, 5), boundary=(Neumann(0.3, -0.2), Dirichlet(-1.0, 0.5))), 2),
    (Grid((5, 6), lengths=(0.5, 1.0), boundary=(Dirichlet(2.0, 0.0), Neumann(1.0, 0.0))), 4),
    (Grid((6, 7), boundary=(Neumann(1.0, 2.0), Periodic())), 4),
]


def random_rhs(shape: tuple[int, ...], complex_: bool, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=generator, dtype=F64)
    if complex_:
        r = torch.complex(r, torch.randn(shape, generator=generator, dtype=F64))
    return r


@pytest.mark.parametrize("c", SHIFTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("diffusivity", [0.7, (0.3, 1.7)], ids=["one", "per-channel"])
def test_transposed_solves_the_adjoint_system_of_the_dense_jacobian(
    case: tuple[Grid, int | str], c: float | complex, diffusivity: float | tuple[float, ...]
) -> None:
    grid, order = case
    model = diffusion(grid, diffusivity, order)
    channels = 1 if isinstance(diffusivity, float) else len(diffusivity)
    shape = (2, channels, *grid.shape)
    jac = dense_jacobian(model, torch.rand(shape, dtype=F64)).to(torch.complex128)
    system = torch.eye(jac.shape[0], dtype=torch.complex128) - c * jac
    for complex_r in (False, True) if isinstance(c, float) else (True,):
        r = random_rhs(shape, complex_r, seed=5)
        x = model.preconditioner().transposed(c, r)
        assert x.shape == r.shape and x.dtype == r.dtype
        exact = torch.linalg.solve(system.mH, r.reshape(-1).to(torch.complex128))
        got = x.reshape(-1).to(torch.complex128)
        torch.testing.assert_close(got, exact, rtol=1e-10, atol=1e-12)


def test_neumann_laplacian_is_not_symmetric_so_the_transpose_differs() -> None:
    grid = Grid((7,), lengths=(3.0,), boundary=Neumann(0.0, 0.0))
    preconditioner = pde.Diffusion(grid, 0.7, order=2).preconditioner()
    r = random_rhs((1, 1, 7), False, seed=6)
    assert float((preconditioner(2.0, r) - preconditioner.transposed(2.0, r)).abs().max()) > 1e-3


@pytest.mark.parametrize("name", ["radau", "gl4"])
def test_transposed_eigenbasis_diagonalises_the_transposed_block(name: str) -> None:
    tableau = METHODS[name].tableau
    a = np.array(tableau.a, dtype=np.float64)
    a = a[1:, 1:] if tableau.explicit_first_stage else a
    eigen = _dense_solve.eigenbasis(a).transposed()
    np.testing.assert_allclose(eigen.t @ np.diag(eigen.values) @ eigen.t_inv, a.T, atol=1e-12)
    np.testing.assert_allclose(eigen.t @ eigen.t_inv, np.eye(len(a)), atol=1e-12)
    for j, i in enumerate(eigen.partner):  # conjugate pairs' eigenvectors still conjugate
        if i is not None:
            np.testing.assert_allclose(eigen.t[:, j], eigen.t[:, i].conj(), atol=1e-14)


_PULLBACKS = [0]


@pytest.fixture(autouse=True)
def _count_pullbacks(monkeypatch):
    """Counts the vector-Jacobian products of the transposed GMRES solves (m per matvec)."""
    original = _implicit_gradient._stage_pullbacks

    def counted(*args, **kwargs):
        pullbacks = original(*args, **kwargs)
        if pullbacks is None:
            return None

        def wrap(pull):
            def pull_counted(w: torch.Tensor) -> torch.Tensor:
                _PULLBACKS[0] += 1
                return pull(w)

            return pull_counted

        return [wrap(pull) for pull in pullbacks]

    monkeypatch.setattr(_implicit_gradient, "_stage_pullbacks", counted)


class _WithoutTranspose:
    """A preconditioner that only solves forward (no ``transposed``)."""

    def __init__(self, preconditioner):
        self.preconditioner = preconditioner

    def __call__(self, c: complex, r: torch.Tensor) -> torch.Tensor:
        return self.preconditioner(c, r)


def _gradients(model, y0, ts, solver, steps: int) -> tuple[list[torch.Tensor], int]:
    """d(sum of squares of the final state)/d(y0, parameters) and the pullbacks it took."""
    y0 = y0.clone().requires_grad_(True)
    params = list(model.parameters())
    before = _PULLBACKS[0]
    step = float(ts[-1] - ts[0]) / steps
    sol = no.solve(model, y0, ts, solver=solver, controller=no.FixedGrid(step_size=step))
    grads = torch.autograd.grad(sol.ys[-1].square().sum(), [y0, *params])
    return list(grads), _PULLBACKS[0] - before


def _fitzhugh_nagumo():
    grid = Grid((16,), lengths=(2.0,), boundary=Neumann(0.0, 0.0))
    (x,) = grid.coordinates()
    model = pde.FitzHughNagumo(grid, a=0.05, b=0.5)
    y0 = torch.stack([torch.cos(math.pi * x), 0.3 * torch.sin(2 * math.pi * x)])[None]
    return model, y0.to(F64), torch.tensor([0.0, 0.2], dtype=F64)


def _neural_heat():
    grid = Grid((20,), boundary=Dirichlet(0.0, 0.0))
    (x,) = grid.coordinates()
    torch.manual_seed(0)
    learned = pde.PointwiseMLP(grid, 1, hidden=8).to(F64)
    model = pde.NeuralPDE(pde.Heat(grid, 1.0), learned)
    y0 = (torch.sin(math.pi * x) + torch.exp(-50 * (x - 0.3) ** 2))[None, None]
    return model, y0.to(F64), torch.tensor([0.0, 0.05], dtype=F64)


@pytest.mark.parametrize("problem", [_fitzhugh_nagumo, _neural_heat], ids=["fhn", "neural"])
@pytest.mark.parametrize("method", ["radau", "sdirk2", "trbdf2"])
def test_preconditioned_gradients_equal_the_direct_solvers(problem, method: str) -> None:
    model, y0, ts = problem()
    cls = METHODS[method]
    direct, _ = _gradients(model, y0, ts, cls(linear_solver="direct"), steps=4)
    krylov = cls(linear_solver="krylov", krylov_tol=1e-13, preconditioner=model.preconditioner())
    preconditioned, _ = _gradients(model, y0, ts, krylov, steps=4)
    for got, want in zip(preconditioned, direct):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def _heat1d(n: int = 127):
    grid = Grid((n,), boundary=Dirichlet())
    (x,) = grid.coordinates()
    model = pde.Heat(grid, 1.0)
    y0 = (torch.sin(math.pi * x) + torch.exp(-100 * (x - 0.3) ** 2))[None, None]
    return model, y0.to(F64), torch.tensor([0.0, 0.05], dtype=F64)


def _heat1d_small():
    return _heat1d(47)


@pytest.mark.parametrize("problem", [_heat1d_small, _fitzhugh_nagumo], ids=["heat1d", "fhn"])
@pytest.mark.parametrize("method", ["radau", "sdirk2"])
def test_transposed_preconditioning_cuts_the_backward_products(problem, method: str) -> None:
    """The same gradients, with and without ``transposed``, the transposed GMRES taking
    fewer than half the vector-Jacobian products with it."""
    model, y0, ts = problem()
    cls = METHODS[method]
    preconditioner = model.preconditioner()
    results = {}
    for name, given in (("plain", _WithoutTranspose(preconditioner)), ("with", preconditioner)):
        solver = cls(linear_solver="krylov", krylov_tol=1e-12, krylov_dim=200, preconditioner=given)
        results[name] = _gradients(model, y0, ts, solver, steps=3)
    (plain, plain_products), (pre, pre_products) = results["plain"], results["with"]
    assert pre_products < plain_products / 2, (pre_products, plain_products)
    torch.testing.assert_close(pre[0], plain[0], rtol=1e-8, atol=1e-10)


def test_gradcheck_through_the_preconditioned_transposed_solve() -> None:
    grid = Grid((5,), lengths=(1.0,), boundary=Neumann(0.0, 0.0))
    model = pde.FitzHughNagumo(grid, a=0.2, b=1.0)
    ts = torch.tensor([0.0, 0.1], dtype=F64)
    solver = METHODS["radau"](
        linear_solver="krylov", krylov_tol=1e-13, preconditioner=model.preconditioner()
    )

    def final(y0: torch.Tensor) -> torch.Tensor:
        sol = no.solve(model, y0, ts, solver=solver, controller=no.FixedGrid(step_size=0.05))
        return sol.ys[-1]

    y0 = torch.rand(1, 2, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    before = _PULLBACKS[0]
    # (repeated backward passes agree to rounding, not bitwise, with or without preconditioner)
    assert torch.autograd.gradcheck(
        final, (y0.requires_grad_(True),), nondet_tol=1e-12, fast_mode=True
    )
    assert _PULLBACKS[0] > before  # the backward went through the transposed GMRES


def test_a_wrong_transposed_result_is_named() -> None:
    model, y0, ts = _heat1d(15)

    class Wrong(_WithoutTranspose):
        def transposed(self, c: complex, r: torch.Tensor) -> torch.Tensor:
            return r[..., 1:]

    solver = METHODS["radau"](linear_solver="krylov", preconditioner=Wrong(model.preconditioner()))
    with pytest.raises(ValueError, match=r"preconditioner\.transposed\(c, r\) must return"):
        _gradients(model, y0, ts, solver, steps=2)


def test_a_singular_transposed_preconditioner_raises_in_the_backward_pass() -> None:
    """GMRES stalls on the zero operator: an error, not a gradient short of krylov_tol."""
    model, y0, ts = _heat1d(15)

    class Singular(_WithoutTranspose):
        def transposed(self, c: complex, r: torch.Tensor) -> torch.Tensor:
            return 0 * r

    solver = METHODS["sdirk2"](
        linear_solver="krylov", preconditioner=Singular(model.preconditioner())
    )
    with pytest.raises(SingularMatrixError, match="GMRES stalled with the preconditioner"):
        _gradients(model, y0, ts, solver, steps=2)
