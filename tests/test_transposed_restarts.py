"""The gradient's transposed GMRES solve restarts until it meets ``krylov_tol``: gradients
equal to the direct (LU) solver's where GMRES needs more than ``krylov_dim`` vectors, an
error naming the fixes where restarts cannot get there, and ``restarted_gmres`` itself
(true residuals, stagnation, no extra product when the first cycle converges)."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode import pde
from neuralode.pde import Dirichlet, Grid
from neuralode.solvers import METHODS, _implicit_gradient
from neuralode.solvers._implicit_gradient import TransposedSolveError
from neuralode.solvers._newton import gmres, restarted_gmres

F64 = torch.float64


class _ForwardOnly:
    """A preconditioner without ``transposed``: the forward Newton solves are
    preconditioned (one GMRES vector suffices), the gradient's transposed solve is not."""

    def __init__(self, preconditioner):
        self.preconditioner = preconditioner

    def __call__(self, c: complex, r: torch.Tensor) -> torch.Tensor:
        return self.preconditioner(c, r)


def _heat1d(n: int = 40):
    grid = Grid((n,), boundary=Dirichlet())
    (x,) = grid.coordinates()
    model = pde.Heat(grid, 1.0)
    y0 = (torch.sin(math.pi * x) + torch.exp(-100 * (x - 0.3) ** 2))[None, None]
    return model, y0.to(F64)


def _gradient(model, y0: torch.Tensor, solver, step: float, steps: int) -> torch.Tensor:
    """d(sum of squares of the final state)/d(y0)."""
    y0 = y0.clone().requires_grad_(True)
    ts = torch.tensor([0.0, step * steps], dtype=F64)
    sol = no.solve(model, y0, ts, solver=solver, controller=no.FixedGrid(step_size=step))
    (grad,) = torch.autograd.grad(sol.ys[-1].square().sum(), [y0])
    return grad


@pytest.fixture
def matvecs(monkeypatch) -> list[int]:
    """The products with the transposed Newton matrix the gradient's GMRES solves take."""
    counted = [0]
    original = _implicit_gradient.restarted_preconditioned_gmres

    def counting(matvec, *args, **kwargs):
        def product(v: torch.Tensor) -> torch.Tensor:
            counted[0] += 1
            return matvec(v)

        return original(product, *args, **kwargs)

    monkeypatch.setattr(_implicit_gradient, "restarted_preconditioned_gmres", counting)
    return counted


@pytest.mark.parametrize("method", ["radau", "sdirk2"])
def test_gradients_equal_the_direct_solvers_past_krylov_dim(method: str, matvecs) -> None:
    """krylov_dim=5 on 40 heat nodes: the unpreconditioned transposed solve needs several
    cycles of 5 vectors (one GMRES of 5 left relative errors of 1e-4 in the gradient)."""
    model, y0 = _heat1d()
    cls = METHODS[method]
    direct = _gradient(model, y0, cls(linear_solver="direct"), step=0.002, steps=3)
    solver = cls(
        linear_solver="krylov",
        krylov_dim=5,
        krylov_tol=1e-12,
        preconditioner=_ForwardOnly(model.preconditioner()),
    )
    krylov = _gradient(model, y0, solver, step=0.002, steps=3)
    assert matvecs[0] > 3 * 2 * 5  # more than two cycles per step: restarts happened
    torch.testing.assert_close(krylov, direct, rtol=1e-8, atol=1e-10)


def test_an_unconverged_transposed_solve_raises_from_backward() -> None:
    """krylov_dim=1 (GMRES(1)) on stiff heat steps stagnates far above krylov_tol: an error
    naming the method, the residual and the fixes, not a wrong gradient."""
    model, y0 = _heat1d()
    solver = METHODS["radau"](
        linear_solver="krylov", krylov_dim=1, preconditioner=_ForwardOnly(model.preconditioner())
    )
    with pytest.raises(TransposedSolveError) as caught:
        _gradient(model, y0, solver, step=0.01, steps=2)
    message = str(caught.value)
    assert message.startswith("radau: the gradient's transposed GMRES solve")
    residual = float(message.split("relative residual ")[1].split(" ")[0])
    assert residual > 1e-10
    for fix in ("Raise krylov_dim", "loosen krylov_tol", "transposed(c, r)", '"direct"'):
        assert fix in message
    assert isinstance(caught.value, no.SolverError)


def test_restarted_gmres_reaches_the_tolerance_with_a_small_dimension() -> None:
    """A non-normal, well-conditioned system that GMRES(4) solves in several cycles: the
    residual it reports is the true one."""
    generator = torch.Generator().manual_seed(0)
    n = 30
    a = torch.eye(n, dtype=F64) + 0.3 * torch.randn(n, n, generator=generator, dtype=F64) / n**0.5
    a = a + torch.triu(torch.randn(n, n, generator=generator, dtype=F64), 1) * 0.1
    b = torch.randn(n, generator=generator, dtype=F64)
    result = restarted_gmres(lambda v: a @ v, b, 1e-12, 4)
    true = float(torch.linalg.vector_norm(b - a @ result.x) / torch.linalg.vector_norm(b))
    assert true <= 1e-12 and result.residual == pytest.approx(true, rel=1e-6)
    assert result.matvecs > 4 and not result.stagnated
    once = gmres(lambda v: a @ v, b, 1e-12, 4)
    assert float(torch.linalg.vector_norm(b - a @ once) / torch.linalg.vector_norm(b)) > 1e-3


def test_restarted_gmres_stops_when_a_cycle_stagnates() -> None:
    """GMRES(1) on a rotation makes no progress (A r is orthogonal to r): one cycle, flagged."""
    a = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    b = torch.tensor([1.0, 0.0], dtype=F64)
    result = restarted_gmres(lambda v: a @ v, b, 1e-10, 1)
    assert result.stagnated and result.residual == pytest.approx(1.0)
    assert result.matvecs == 2  # the cycle's vector and the measured residual


def test_a_first_cycle_that_converges_costs_what_gmres_costs() -> None:
    generator = torch.Generator().manual_seed(1)
    a = torch.eye(8, dtype=F64) + 0.1 * torch.randn(8, 8, generator=generator, dtype=F64)
    b = torch.randn(8, generator=generator, dtype=F64)
    counts = [0, 0]

    def counted(i: int):
        def product(v: torch.Tensor) -> torch.Tensor:
            counts[i] += 1
            return a @ v

        return product

    x = gmres(counted(0), b, 1e-12, 50)
    result = restarted_gmres(counted(1), b, 1e-12, 50)
    assert counts[0] == counts[1] == result.matvecs
    torch.testing.assert_close(result.x, x, rtol=1e-12, atol=1e-14)
    assert result.residual <= 1e-12
