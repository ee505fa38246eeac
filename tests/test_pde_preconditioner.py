"""DiffusionPreconditioner: the exact inverse of I - c D Laplacian_h, checked against the dense
Jacobian of the diffusion models (torch.func.jacrev), for every boundary condition, stencil
order and the spectral Laplacian, real and complex shifts, per-channel diffusivities."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode import pde
from neuralode.pde import Dirichlet, Grid, Neumann, Periodic

F64 = torch.float64
SHIFTS = [0.05, 3.0, complex(0.2, 0.15), complex(1.5, -0.7)]

# (grid, order or "spectral"); bounded axes carry nonzero data, which the Jacobian excludes
CASES = [
    (Grid((9,), lengths=(2.0,)), 2),
    (Grid((9,), lengths=(2.0,)), 4),
    (Grid((9,), lengths=(2.0,)), "spectral"),
    (Grid((8,), lengths=(2 * math.pi,)), "spectral"),
    # FFT-built matrices symmetric to ~1e-14 with repeated eigenvalues (+-k) from n ~ 30 on
    (Grid((32,), lengths=(2 * math.pi,)), "spectral"),
    (Grid((31,), lengths=(2 * math.pi,)), "spectral"),
    (Grid((64,), lengths=(7.3,)), "spectral"),
    (Grid((32, 12), lengths=(1.0, 2.0)), "spectral"),
    (Grid((7,), boundary=Dirichlet(1.0, -2.0)), 2),
    (Grid((7,), boundary=Dirichlet(1.0, -2.0)), 4),
    (Grid((4,), boundary=Dirichlet(0.5, 0.0)), 4),  # short: the 2nd-order stencil throughout
    (Grid((7,), lengths=(3.0,), boundary=Neumann(0.5, 1.5)), 2),
    (Grid((7,), lengths=(3.0,), boundary=Neumann(0.5, 1.5)), 4),
    (Grid((2,), boundary=Neumann(-1.0, 1.0)), 2),
    (Grid((6, 5), lengths=(1.0, 2.0)), 2),
    (Grid((6, 5), lengths=(1.0, 2.0)), 4),
    (Grid((6, 5), lengths=(1.0, 2.0)), "spectral"),
    (Grid((6, 5), boundary=(Periodic(), Dirichlet(1.0, 2.0))), 4),
    (Grid((6, 5), boundary=(Neumann(0.3, -0.2), Dirichlet(-1.0, 0.5))), 2),
    (Grid((5, 6), lengths=(0.5, 1.0), boundary=(Dirichlet(2.0, 0.0), Neumann(1.0, 0.0))), 4),
    (Grid((6, 7), boundary=(Neumann(1.0, 2.0), Periodic())), 4),
]


def case_id(case: tuple[Grid, int | str]) -> str:
    grid, order = case
    kinds = "-".join(type(b).__name__ for b in grid.boundaries)
    return f"{'x'.join(map(str, grid.shape))}-{kinds}-{order}"


def diffusion(grid: Grid, diffusivity: float | tuple[float, ...], order: int | str):
    if order == "spectral":
        return pde.Diffusion(grid, diffusivity, spectral=True)
    return pde.Diffusion(grid, diffusivity, order=order)


def dense_jacobian(func, u: torch.Tensor) -> torch.Tensor:
    """The Jacobian of ``func(0, u)`` as an (N, N) matrix, N = u.numel()."""
    jac = torch.func.jacrev(lambda v: func(torch.zeros((), dtype=F64), v))(u)
    return jac.reshape(u.numel(), u.numel())


def residual(jac: torch.Tensor, c: float | complex, x: torch.Tensor, r: torch.Tensor) -> float:
    """max |(I - c J) x - r|, in complex arithmetic."""
    x, r = x.reshape(-1).to(torch.complex128), r.reshape(-1).to(torch.complex128)
    return float((x - c * (jac.to(torch.complex128) @ x) - r).abs().max())


def random_rhs(shape: tuple[int, ...], c: float | complex, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    r = torch.randn(shape, generator=generator, dtype=F64)
    if isinstance(c, complex):  # the solver's complex stage systems: complex residuals
        r = torch.complex(r, torch.randn(shape, generator=generator, dtype=F64))
    return r


@pytest.mark.parametrize("c", SHIFTS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_solves_the_shifted_system_of_the_dense_jacobian(
    case: tuple[Grid, int | str], c: float | complex
) -> None:
    grid, order = case
    model = diffusion(grid, 0.7, order)
    shape = (2, 1, *grid.shape)
    jac = dense_jacobian(model, torch.rand(shape, dtype=F64))
    r = random_rhs(shape, c, seed=1)
    x = model.preconditioner()(c, r)
    assert x.shape == r.shape and x.dtype == r.dtype
    assert residual(jac, c, x, r) < 1e-10
    exact = torch.linalg.solve(torch.eye(jac.shape[0], dtype=F64) - c * jac, r.reshape(-1))
    torch.testing.assert_close(x.reshape(-1), exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("c", SHIFTS)
@pytest.mark.parametrize("case", CASES[::3], ids=case_id)
def test_one_diffusivity_per_channel(case: tuple[Grid, int | str], c: float | complex) -> None:
    grid, order = case
    model = diffusion(grid, (0.3, 1.7, 0.0), order)
    shape = (2, 3, *grid.shape)
    jac = dense_jacobian(model, torch.rand(shape, dtype=F64))
    r = random_rhs(shape, c, seed=2)
    x = model.preconditioner()(c, r)
    assert residual(jac, c, x, r) < 1e-10
    torch.testing.assert_close(x[:, 2], r[:, 2], rtol=0, atol=1e-13)  # D = 0: the identity


@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize(
    "boundary", [(Periodic(), Periodic()), (Neumann(1.0, 2.0), Dirichlet(1.0, -1.0))]
)
def test_stiff_grid_through_the_model(order: int, boundary: tuple) -> None:
    # 48 x 40 nodes, c D / dx^2 up to ~5e3: (I - c J) x = x - c (f(x) - f(0)), f affine
    grid = Grid((48, 40), boundary=boundary)
    model = pde.Diffusion(grid, (0.5, 2.0), order=order)
    t = torch.zeros((), dtype=F64)
    for c in (1.0, complex(0.5, 0.3)):
        r = random_rhs((2, 2, 48, 40), c, seed=8)
        x = model.preconditioner()(c, r)
        linear = model(t, x) - model(t, torch.zeros_like(x))
        assert float((x - c * linear - r).abs().max()) < 1e-10


@pytest.mark.parametrize("spectral", [False, True])
def test_fitzhugh_nagumo_inverts_its_diffusion_with_a_and_b(spectral: bool) -> None:
    grid = Grid((6, 8), lengths=(2.0, 2.0))
    model = pde.FitzHughNagumo(grid, a=0.25, b=1.0, order=4, spectral=spectral)
    shape = (1, 2, *grid.shape)
    jac = dense_jacobian(model.diffusion, torch.rand(shape, dtype=F64))
    precondition = model.preconditioner()
    assert precondition.diffusivity.tolist() == [0.25, 1.0]
    for c in (0.4, complex(0.1, 0.3)):
        r = random_rhs(shape, c, seed=3)
        assert residual(jac, c, precondition(c, r), r) < 1e-10


def test_heat_burgers_and_neural_pde_delegate() -> None:
    grid = Grid((9,), boundary=Dirichlet(1.0, 0.0))
    r = random_rhs((2, 1, 9), 0.5, seed=4)
    expected = pde.Diffusion(grid, 0.2, order=4).preconditioner()(0.5, r)
    models = [
        pde.Heat(grid, 0.2, order=4),
        pde.Burgers(grid, 0.2, order=4),
        pde.NeuralPDE(pde.Diffusion(grid, 0.2, order=4), pde.PointwiseMLP(grid, 1)),
    ]
    for model in models:
        torch.testing.assert_close(model.preconditioner()(0.5, r), expected, rtol=0, atol=0)


def test_eigenvalues_are_the_analytic_ones() -> None:
    # 2nd-order Dirichlet: -4 / dx^2 sin^2(k pi / (2 (n + 1))), k = 1..n
    n, length = 11, 2.0
    dx = length / (n + 1)
    k = torch.arange(1, n + 1, dtype=F64)
    exact = -4 / dx**2 * torch.sin(k * math.pi / (2 * (n + 1))) ** 2
    lap = pde.DiffusionPreconditioner(Grid((n,), (length,), Dirichlet(3.0, 1.0)), 1.0)
    torch.testing.assert_close(lap.eigenvalues.sort().values, exact.sort().values)
    # spectral, periodic 2-D: -(2 pi k0 / L0)^2 - (2 pi k1 / L1)^2
    grid = Grid((4, 6), lengths=(1.0, 3.0))
    k0 = 2 * math.pi * torch.fft.fftfreq(4, 1 / 4, dtype=F64) / 1.0
    k1 = 2 * math.pi * torch.fft.fftfreq(6, 1 / 6, dtype=F64) / 3.0
    exact = -(k0[:, None] ** 2) - k1[None, :] ** 2
    spectral = pde.DiffusionPreconditioner(grid, 1.0, spectral=True)
    got = spectral.eigenvalues.flatten().sort().values
    torch.testing.assert_close(got, exact.flatten().sort().values)


def test_boundary_data_do_not_enter() -> None:
    r = random_rhs((1, 1, 8, 6), 0.0, seed=5)
    data = Grid((8, 6), boundary=(Dirichlet(4.0, -1.0), Neumann(2.0, 3.0)))
    zero = Grid((8, 6), boundary=(Dirichlet(), Neumann()))
    for order in (2, 4):
        a = pde.DiffusionPreconditioner(data, 0.5, order)(0.3, r)
        b = pde.DiffusionPreconditioner(zero, 0.5, order)(0.3, r)
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_dtypes_real_stays_real_complex_shift_gives_complex() -> None:
    grid = Grid((6, 5), boundary=(Neumann(), Periodic()))
    precondition = pde.DiffusionPreconditioner(grid, 0.5, order=4)
    r = random_rhs((2, 1, 6, 5), 0.0, seed=6)
    assert precondition(0.2, r).dtype == F64
    assert precondition(complex(0.2, 0.0), r).dtype == F64  # a real shift given as complex
    assert precondition(complex(0.2, 0.1), r).dtype == torch.complex128
    assert precondition(0.2, r.to(torch.complex128)).dtype == torch.complex128
    # a real shift on a complex field acts on its real and imaginary parts alike
    z = torch.complex(r, 2 * r)
    torch.testing.assert_close(precondition(0.2, z), (1 + 2j) * precondition(0.2, r))
    # float32: the float64 factors rounded once, so float32 accuracy
    single = precondition(0.2, r.float())
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), precondition(0.2, r), rtol=1e-5, atol=1e-5)
    complex64 = precondition(complex(0.2, 0.1), r.float())
    assert complex64.dtype == torch.complex64
    torch.testing.assert_close(
        complex64.to(torch.complex128), precondition(complex(0.2, 0.1), r), rtol=1e-5, atol=1e-5
    )
    # the field's leading dimensions are free with a scalar diffusivity
    assert precondition(0.2, r[0, 0]).shape == (6, 5)
    torch.testing.assert_close(precondition(0.2, r[1, 0]), precondition(0.2, r)[1, 0])


def test_shift_zero_is_the_identity() -> None:
    r = random_rhs((3, 2, 7), 0.0, seed=7)
    precondition = pde.DiffusionPreconditioner(Grid((7,), boundary=Neumann()), (1.0, 2.0), 4)
    torch.testing.assert_close(precondition(0.0, r), r, rtol=0, atol=1e-14)


def test_errors() -> None:
    grid = Grid((6,), boundary=Dirichlet())
    with pytest.raises(ValueError, match="non-negative"):
        pde.DiffusionPreconditioner(grid, -1.0)
    with pytest.raises(ValueError, match="one number per channel"):
        pde.DiffusionPreconditioner(grid, [[1.0]])
    with pytest.raises(ValueError, match="order must be 2 or 4"):
        pde.DiffusionPreconditioner(grid, 1.0, order=3)
    with pytest.raises(ValueError, match="periodic grid"):
        pde.DiffusionPreconditioner(grid, 1.0, spectral=True)
    with pytest.raises(ValueError, match="pde.Grid"):
        pde.DiffusionPreconditioner((6,), 1.0)  # type: ignore[arg-type]
    precondition = pde.DiffusionPreconditioner(grid, (1.0, 2.0))
    r = torch.zeros(1, 2, 6, dtype=F64)
    for c in ("0.1", True, None, math.nan, complex(math.inf, 0), torch.tensor(0.1)):
        with pytest.raises(ValueError, match="c must be"):
            precondition(c, r)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="one channel per diffusivity"):
        precondition(0.1, torch.zeros(1, 3, 6, dtype=F64))
    with pytest.raises(ValueError, match="shape"):
        precondition(0.1, torch.zeros(1, 2, 5, dtype=F64))
    with pytest.raises(ValueError, match="floating point or complex"):
        precondition(0.1, torch.zeros(1, 2, 6, dtype=torch.int64))
    for model in (
        pde.NeuralPDE(None, pde.PointwiseMLP(grid, 1)),
        pde.NeuralPDE(pde.Advection(grid, (1.0,)), None),
        pde.NeuralPDE(lambda t, u: -u, None),
    ):
        with pytest.raises(ValueError, match="DiffusionPreconditioner"):
            model.preconditioner()
