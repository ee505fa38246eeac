"""PDEs by the method of lines: stencil orders, spectral exactness, convergence to the heat
equation's analytic solution, gradients against finite differences, boundary conditions."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode import pde
from neuralode.pde import Dirichlet, Grid, Neumann, Periodic

F64 = torch.float64


def observed_orders(errors: list[float]) -> list[float]:
    """log2 of successive error ratios under grid halving."""
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


@pytest.mark.parametrize("order", [2, 4])
@pytest.mark.parametrize("n", [1, 2])
def test_periodic_stencil_orders_1d(order: int, n: int) -> None:
    errors = []
    for size in (32, 64, 128):
        grid = Grid((size,), lengths=(2 * math.pi,))
        (x,) = grid.coordinates()
        u = torch.exp(torch.sin(x))
        exact = torch.cos(x) * u if n == 1 else (torch.cos(x) ** 2 - torch.sin(x)) * u
        errors.append(float((pde.derivative(u, grid, 0, n, order) - exact).abs().max()))
    assert all(abs(p - order) < 0.15 for p in observed_orders(errors)), errors


@pytest.mark.parametrize("order", [2, 4])
def test_periodic_laplacian_gradient_divergence_orders_2d(order: int) -> None:
    errors = {"laplacian": [], "gradient": [], "divergence": []}
    for size in (12, 24, 48):
        grid = Grid((size, 2 * size), lengths=(2 * math.pi, 4 * math.pi))
        x, y = grid.coordinates()
        u = torch.sin(x) * torch.cos(0.5 * y)
        grad = torch.stack(
            [torch.cos(x) * torch.cos(0.5 * y), -0.5 * torch.sin(x) * torch.sin(0.5 * y)]
        )
        lap = -1.25 * u
        errors["laplacian"].append(float((pde.laplacian(u, grid, order) - lap).abs().max()))
        errors["gradient"].append(float((pde.gradient(u, grid, order) - grad).abs().max()))
        errors["divergence"].append(float((pde.divergence(grad, grid, order) - lap).abs().max()))
    for name, errs in errors.items():
        assert all(abs(p - order) < 0.15 for p in observed_orders(errs)), (name, errs)


@pytest.mark.parametrize("kind", ["dirichlet", "neumann"])
@pytest.mark.parametrize("order", [2, 4])
def test_bounded_axes_order_in_interior_and_second_order_at_the_boundary(
    kind: str, order: int
) -> None:
    # u = exp(x) cos(2x) on [0, 1], with its own boundary values / zero-free slopes
    full, interior = [], []
    for size in (16, 32, 64):
        if kind == "dirichlet":
            boundary = Dirichlet(1.0, math.e * math.cos(2))
        else:  # slopes chosen so that the field has zero slope at both ends: cos(pi x)
            boundary = Neumann(0.0, 0.0)
        grid = Grid((size,), boundary=boundary)
        (x,) = grid.coordinates()
        if kind == "dirichlet":
            u = torch.exp(x) * torch.cos(2 * x)
            exact = torch.exp(x) * (-3 * torch.cos(2 * x) - 4 * torch.sin(2 * x))
        else:
            u = torch.cos(math.pi * x) + 0.3 * torch.cos(2 * math.pi * x)
            exact = -(math.pi**2) * (torch.cos(math.pi * x) + 1.2 * torch.cos(2 * math.pi * x))
        error = (pde.laplacian(u, grid, order) - exact).abs()
        full.append(float(error.max()))
        interior.append(float(error[size // 4 : -size // 4].max()))
    assert all(abs(p - 2) < 0.2 for p in observed_orders(full)), full
    assert all(abs(p - order) < 0.3 for p in observed_orders(interior)), interior


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
def test_spectral_derivatives_exact_on_band_limited_fields(dtype: torch.dtype) -> None:
    grid = Grid((16, 10), lengths=(2 * math.pi, 1.0))
    x, y = grid.coordinates()
    ky = 2 * math.pi * 3  # mode 3 of 10 nodes: below Nyquist
    u = torch.sin(3 * x) * torch.cos(ky * y) + torch.cos(7 * x)
    u = (u + 0.5j * u).to(dtype) if dtype.is_complex else u.to(dtype)
    d_x = 3 * torch.cos(3 * x) * torch.cos(ky * y) - 7 * torch.sin(7 * x)
    d3_x = -27 * torch.cos(3 * x) * torch.cos(ky * y) + 343 * torch.sin(7 * x)
    d_yy = -(ky**2) * torch.sin(3 * x) * torch.cos(ky * y)
    lap = -9 * torch.sin(3 * x) * torch.cos(ky * y) - 49 * torch.cos(7 * x) + d_yy
    scale = 1 + 0.5j if dtype.is_complex else 1.0
    checks = [
        (pde.spectral_derivative(u, grid, 0, 1), d_x),
        (pde.spectral_derivative(u, grid, 0, 3), d3_x),
        (pde.spectral_derivative(u, grid, 1, 2), d_yy),
        (pde.spectral_laplacian(u, grid), lap),
    ]
    for got, exact in checks:
        assert got.dtype == dtype
        assert float((got - scale * exact).abs().max()) < 1e-9 * float(exact.abs().max())


def test_spectral_needs_a_periodic_axis() -> None:
    grid = Grid((8,), boundary=Dirichlet())
    with pytest.raises(ValueError, match="periodic axis"):
        pde.spectral_derivative(torch.zeros(8), grid)


@pytest.mark.parametrize("axis", [-1, 1])
def test_spectral_axis_outside_the_grid_is_an_error(axis: int) -> None:
    # axis -1 of a 1-D grid would otherwise differentiate along the batch dimension
    grid = Grid((8,))
    with pytest.raises(ValueError, match=r"axis must be in \[0, 1\) for a 1-D grid"):
        pde.spectral_derivative(torch.randn(8, 8), grid, axis)
    with pytest.raises(ValueError, match="axis must be in"):
        pde.wavenumbers(grid, axis, torch.zeros(8))


def test_an_axis_may_be_any_integer_but_not_a_bool_or_a_float() -> None:
    grid = Grid((8, 6), lengths=(2 * math.pi, 2 * math.pi))
    u = torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for derivative in (pde.spectral_derivative, pde.derivative):
        torch.testing.assert_close(derivative(u, grid, np.int64(1)), derivative(u, grid, 1))
        for bad in (True, 1.0):
            with pytest.raises(ValueError, match="axis must be in"):
                derivative(u, grid, bad)


@pytest.mark.parametrize("order", [2, 4])
def test_method_of_lines_converges_to_the_heat_equations_solution(order: int) -> None:
    # u_t = D u_xx on [0, 1], u = 0 at both ends: u = exp(-D pi^2 t) sin(pi x) + a mode-3 part.
    # Periodic in 2-D for order 4 (the bounded rows are 2nd order): u = exp(-2 D t) sin x sin y.
    diffusivity, t1 = 0.5, 0.2
    errors = []
    for size in (8, 16, 32) if order == 2 else (16, 32, 64):
        if order == 2:
            grid = Grid((size,), boundary=Dirichlet())
            (x,) = grid.coordinates()
            rates = (diffusivity * math.pi**2, diffusivity * 9 * math.pi**2)
            u0 = torch.sin(math.pi * x) + 0.5 * torch.sin(3 * math.pi * x)
            exact = math.exp(-rates[0] * t1) * torch.sin(math.pi * x) + 0.5 * math.exp(
                -rates[1] * t1
            ) * torch.sin(3 * math.pi * x)
        else:
            grid = Grid((size, size), lengths=(2 * math.pi, 2 * math.pi))
            x, y = grid.coordinates()
            u0 = torch.sin(x) * torch.sin(y) + torch.cos(2 * x)
            exact = math.exp(-2 * diffusivity * t1) * torch.sin(x) * torch.sin(y) + math.exp(
                -4 * diffusivity * t1
            ) * torch.cos(2 * x)
        heat = pde.Heat(grid, diffusivity, order)
        sol = no.solve(
            heat,
            u0[None, None],
            torch.tensor([0.0, t1], dtype=F64),
            controller=no.PIController(rtol=1e-11, atol=1e-13),
        )
        errors.append(float((sol.ys[-1, 0, 0] - exact).abs().max()))
    assert all(abs(p - order) < 0.2 for p in observed_orders(errors)), errors


def _burgers_steady(x: torch.Tensor, nu: float, a: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The steady viscous Burgers profile u = -a tanh(a x / (2 nu)) and its slope."""
    u = -a * torch.tanh(a * x / (2 * nu))
    return u, -(a**2) / (2 * nu) / torch.cosh(a * x / (2 * nu)) ** 2


@pytest.mark.parametrize("kind", ["dirichlet", "neumann"])
@pytest.mark.parametrize("order", [2, 4])
def test_burgers_flux_uses_the_boundary_data_of_u(kind: str, order: int) -> None:
    # -(u^2/2)_x = -u u_x converges at 2nd order up to the ends of [-1, 1]: the ghost points
    # carry the flux of u's boundary data (g^2/2 at a Dirichlet end), not the data itself
    nu, a = 0.5, 1.5
    ends = torch.tensor([-1.0, 1.0], dtype=F64)
    values, slopes = _burgers_steady(ends, nu, a)
    data = values if kind == "dirichlet" else slopes
    boundary = (Dirichlet if kind == "dirichlet" else Neumann)(float(data[0]), float(data[1]))
    errors = []
    for size in (32, 64, 128):
        grid = Grid((size,), lengths=(2.0,), origin=(-1.0,), boundary=boundary)
        u, u_x = _burgers_steady(grid.coordinates()[0], nu, a)
        advection = pde.Burgers(grid, nu, order).advection(u[None, None])[0, 0]
        errors.append(float((advection + u * u_x).abs().max()))
    assert all(abs(p - 2) < 0.2 for p in observed_orders(errors)), errors


def test_burgers_steady_shock_with_dirichlet_ends_by_an_implicit_solve() -> None:
    # from a straight line between the boundary values to the steady profile -a tanh(a x/2nu)
    nu, a = 0.5, 1.5
    values, _ = _burgers_steady(torch.tensor([-1.0, 1.0], dtype=F64), nu, a)
    boundary = Dirichlet(float(values[0]), float(values[1]))
    errors = []
    for size in (15, 31, 63):
        grid = Grid((size,), lengths=(2.0,), origin=(-1.0,), boundary=boundary)
        (x,) = grid.coordinates()
        u0 = (values[0] + (values[1] - values[0]) * (x + 1) / 2)[None, None]
        sol = no.solve(
            pde.Burgers(grid, nu),
            u0,
            torch.tensor([0.0, 20.0], dtype=F64),
            solver=no.solvers.Radau(),
            controller=no.PIController(rtol=1e-7, atol=1e-9),
        )
        errors.append(float((sol.ys[-1, 0, 0] - _burgers_steady(x, nu, a)[0]).abs().max()))
    assert all(abs(p - 2) < 0.25 for p in observed_orders(errors)), errors


def test_spectral_heat_equation_is_exact_to_the_solver_tolerance() -> None:
    grid = Grid((16,), lengths=(2 * math.pi,))
    (x,) = grid.coordinates()
    u0 = torch.sin(x) + torch.cos(5 * x)
    heat = pde.Heat(grid, 0.1, spectral=True)
    sol = no.solve(
        heat,
        u0,
        torch.tensor([0.0, 1.0], dtype=F64),
        controller=no.PIController(rtol=1e-10, atol=1e-12),
    )
    exact = math.exp(-0.1) * torch.sin(x) + math.exp(-2.5) * torch.cos(5 * x)
    assert float((sol.ys[-1] - exact).abs().max()) < 1e-8


def test_implicit_krylov_solve_matches_dopri5_on_a_stiff_2d_reaction_diffusion() -> None:
    grid = Grid((12, 12), lengths=(2.0, 2.0))
    generator = torch.Generator().manual_seed(0)
    u0, _ = pde.random_fourier_field(grid, 1, 2, amplitude=0.5, generator=generator)
    model = pde.FitzHughNagumo(grid, a=0.25, b=1.0)  # diffusion-dominated: stiff on this grid
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    reference = pde.reference_solve(model, u0, ts)
    solver = no.solvers.Radau(linear_solver="krylov", krylov_tol=1e-2)
    with torch.no_grad():
        sol = no.solve(
            model, u0, ts, solver=solver, controller=no.PIController(rtol=1e-3, atol=1e-5)
        )
    assert float((sol.ys[-1] - reference[-1]).abs().max()) < 1e-4
    with torch.no_grad():
        explicit = no.solve(model, u0, ts, controller=no.PIController(rtol=1e-3, atol=1e-5))
    # dopri5's steps are bounded by stability on the stiff diffusion, Radau's are not
    assert 3 * sol.stats.n_accepted < explicit.stats.n_accepted


def test_reference_solve_of_a_float32_model_runs_in_float64_and_returns_float32() -> None:
    grid = Grid((16,), lengths=(2 * math.pi,))
    torch.manual_seed(0)
    learned = pde.PointwiseMLP(grid, 1, hidden=4, layers=1, features=("u", "gradient"))
    model = pde.NeuralPDE(pde.Diffusion(grid, 0.1), learned)  # float32 parameters
    u0, _ = pde.random_fourier_field(grid, 2, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([0.0, 0.5], dtype=torch.float32)
    ys = pde.reference_solve(model, u0.float(), ts)
    assert ys.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float32  # the model itself is unchanged
    # the float64 solve of the same model (and initial state), rounded once to float32
    double = pde.reference_solve(copy.deepcopy(model).double(), u0.float().double(), ts)
    assert double.dtype == F64
    assert torch.equal(ys, double.float())


def _hybrid(grid: Grid) -> pde.NeuralPDE:
    torch.manual_seed(0)
    learned = pde.PointwiseMLP(grid, 1, hidden=4, layers=1, features=("u", "gradient", "laplacian"))
    return pde.NeuralPDE(pde.Diffusion(grid, 0.1), learned).double()


@pytest.mark.parametrize(
    "boundary",
    [Periodic(), Dirichlet(0.5, -0.2), Neumann(0.3, 0.1)],
    ids=["periodic", "dirichlet", "neumann"],
)
@pytest.mark.parametrize("order", [2, 4])
def test_operators_gradcheck(boundary, order: int) -> None:
    grid = Grid((7,), boundary=boundary)
    u = torch.randn(2, 7, dtype=F64, requires_grad=True)
    v = torch.randn(2, 1, 7, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: pde.laplacian(u, grid, order), (u,))
    assert torch.autograd.gradcheck(lambda u: pde.gradient(u, grid, order), (u,))
    assert torch.autograd.gradcheck(lambda v: pde.divergence(v, grid, order), (v,))
    flux = pde.Burgers(grid, 0.1, order).advection
    assert torch.autograd.gradcheck(flux, (v,))


def test_spectral_gradcheck() -> None:
    grid = Grid((6, 5))
    u = torch.randn(2, 6, 5, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: pde.spectral_derivative(u, grid, 1, 1), (u,))
    assert torch.autograd.gradcheck(lambda u: pde.spectral_laplacian(u, grid), (u,))


@pytest.mark.parametrize("solver", ["rk4", "trbdf2"])
def test_solve_of_a_hybrid_pde_gradcheck(solver: str) -> None:
    grid = Grid((6,), boundary=Dirichlet(0.2, -0.1))
    model = _hybrid(grid)
    weight = model.learned.net[2].weight
    ts = torch.tensor([0.0, 0.05, 0.1], dtype=F64)

    def forecast(u0: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        def f(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"learned.net.2.weight": w}, (t, u))

        step = no.FixedGrid(step_size=0.05)
        return no.solve(f, u0, ts, solver=no.METHODS[solver](), controller=step).ys

    u0 = torch.randn(1, 1, 6, dtype=F64, requires_grad=True)
    w = weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(forecast, (u0, w))


def test_adjoint_gradients_match_direct_on_a_hybrid_pde() -> None:
    grid = Grid((8,))
    model = _hybrid(grid)
    u0 = torch.sin(grid.coordinates()[0] * 2 * math.pi)[None, None]
    ts = torch.tensor([0.0, 0.25], dtype=F64)
    grads = []
    for gradient in (no.Direct(), no.Checkpointed(), no.Backsolve()):
        model.zero_grad()
        controller = no.PIController(rtol=1e-7, atol=1e-9)
        sol = no.solve(model, u0, ts, gradient=gradient, controller=controller)
        (sol.ys[-1] ** 2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.learned.parameters()]))
    direct, checkpointed, backsolve = grads
    assert torch.allclose(direct, checkpointed, rtol=1e-10, atol=1e-12)  # the same discrete solve
    # the continuous adjoint agrees to about the tolerance (~1e-6 of the largest gradient)
    assert float((direct - backsolve).abs().max()) < 1e-4 * float(direct.abs().max())


def test_dirichlet_boundary_values_are_held() -> None:
    # ghost points: the boundary node holds the value; the steady state is the linear profile
    grid = Grid((9,), boundary=Dirichlet(1.0, 3.0))
    u = torch.randn(2, 9, dtype=F64)
    padded = pde.pad(u, Dirichlet(1.0, 3.0), grid.spacing[0], 2)
    assert torch.equal(padded[:, 1], torch.full((2,), 1.0, dtype=F64))
    assert torch.equal(padded[:, -2], torch.full((2,), 3.0, dtype=F64))
    assert torch.allclose(padded[:, 0], 2.0 - u[:, 0]) and torch.allclose(
        padded[:, -1], 6.0 - u[:, -1]
    )
    sol = no.solve(
        pde.Heat(grid, 1.0),
        u,
        torch.tensor([0.0, 5.0], dtype=F64),
        solver=no.solvers.Radau(batch_size=2),
        controller=no.PIController(rtol=1e-6, atol=1e-8),
    )
    (x,) = grid.coordinates()
    assert torch.allclose(sol.ys[-1], (1.0 + 2.0 * x).expand(2, 9), atol=1e-8)


def test_neumann_slopes_are_held_and_no_flux_conserves_mass() -> None:
    grid = Grid((11,), boundary=Neumann(0.4, -0.7))
    u = torch.randn(3, 11, dtype=F64)
    dx = grid.spacing[0]
    padded = pde.pad(u, grid.boundaries[0], dx, 2)
    # centred differences at the boundary nodes equal the given slopes
    assert torch.allclose(
        (padded[:, 3] - padded[:, 1]) / (2 * dx), torch.full((3,), 0.4, dtype=F64)
    )
    assert torch.allclose(
        (padded[:, -2] - padded[:, -4]) / (2 * dx), torch.full((3,), -0.7, dtype=F64)
    )
    closed = Grid((11,), boundary=Neumann())
    sol = no.solve(
        pde.Heat(closed, 1.0),
        u,
        torch.tensor([0.0, 0.05, 3.0], dtype=F64),
        controller=no.PIController(rtol=1e-10, atol=1e-12),
    )
    weights = torch.ones(11, dtype=F64)
    weights[[0, -1]] = 0.5  # trapezoid rule: the mass the 2nd-order scheme conserves
    mass = sol.ys @ weights
    assert torch.allclose(mass, mass[0].expand_as(mass), rtol=1e-9, atol=1e-9)
    assert torch.allclose(sol.ys[-1], (mass[0] / 10)[:, None].expand(3, 11), atol=1e-6)


@pytest.mark.parametrize("order", [2, 4])
def test_operators_work_on_the_smallest_grids_a_grid_accepts(order: int) -> None:
    # one interior Dirichlet node: (g0 - 2 u + g1) / dx^2 is exact for u = x^2 (u'' = 2)
    grid = Grid((1,), boundary=Dirichlet(0.0, 1.0))
    u = grid.coordinates()[0] ** 2
    assert torch.allclose(pde.laplacian(u, grid, order), torch.tensor([2.0], dtype=F64))
    assert torch.allclose(pde.derivative(u, grid, 0, 1, order), torch.tensor([1.0], dtype=F64))
    # one or two periodic nodes: the stencil wraps around more than once; constants and the
    # Nyquist mode (-1)^i, whose Laplacian is -4/dx^2 (2nd order) or -16/3/dx^2 (4th order)
    constant = torch.ones(3, 1, dtype=F64)
    assert torch.allclose(pde.laplacian(constant, Grid((1,)), order), 0 * constant, atol=1e-12)
    grid = Grid((2,), lengths=(2.0,))
    nyquist = torch.tensor([1.0, -1.0], dtype=F64)
    factor = -4.0 if order == 2 else -16 / 3
    assert torch.allclose(pde.laplacian(nyquist, grid, order), factor * nyquist)


def test_bad_input_errors() -> None:
    grid = Grid((8,))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 8\)"):
        pde.laplacian(torch.zeros(3, 7), grid)
    with pytest.raises(ValueError, match="order must be 2 or 4"):
        pde.laplacian(torch.zeros(8), grid, order=3)
    with pytest.raises(ValueError, match="1 or 2 axes"):
        Grid((4, 4, 4))
    with pytest.raises(ValueError, match="one entry per axis"):
        Grid((4, 4), lengths=(1.0,))
    with pytest.raises(ValueError, match="Periodic"):
        Grid((4,), boundary="periodic")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="spectral=True needs a periodic grid"):
        pde.Diffusion(Grid((8,), boundary=Neumann()), 1.0, spectral=True)
    with pytest.raises(ValueError, match="divergence needs v"):
        pde.divergence(torch.zeros(2, 8), Grid((2, 8)))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Grid(64), r"tuple of whole node counts, one per axis, e\.g\. \(64,\)"),
        (lambda: Grid((6.5,)), "tuple of whole node counts"),
        (lambda: Grid((8,), lengths=2.0), r"lengths needs one entry per axis \(1\), got 2\.0"),
        (lambda: Grid((8,), lengths=(math.inf,)), "lengths must be a finite real constant"),
        (lambda: Grid((8,), origin=(math.nan,)), "origin must be a finite real constant"),
        (lambda: Dirichlet(math.nan), "Dirichlet left must be a finite real constant"),
        (lambda: Neumann(0.0, "1"), "Neumann right must be a finite real constant"),
        (
            lambda: Dirichlet(torch.tensor(1.0, requires_grad=True)),
            "Dirichlet left must be a finite real constant",
        ),
    ],
)
def test_grid_and_boundary_values_are_validated(make, match: str) -> None:
    # a truncated node count, an infinite spacing or NaN boundary data would give NaN fields
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "call, match",
    [
        # one diffusivity per channel: a 1-channel state was broadcast to 2 channels
        (
            lambda: pde.Diffusion(Grid((8,)), (0.1, 0.2))(None, torch.zeros(3, 1, 8)),
            r"Diffusion takes states of shape \(\.\.\., 2, 8\)",
        ),
        (lambda: pde.Diffusion(Grid((8,)), math.nan), "finite and non-negative"),
        (lambda: pde.Diffusion(Grid((8,)), 1.0, order=3), "order must be 2 or 4"),
        (lambda: pde.Burgers(Grid((8,)), 0.1, order=6), "order must be 2 or 4"),
        (lambda: pde.Advection(Grid((8,)), 1.0), r"one component per axis \(1\), e\.g\."),
        (
            lambda: pde.FitzHughNagumo(Grid((4, 4)))(None, torch.zeros(2, 1, 4, 4)),
            r"FitzHughNagumo takes states of shape \(batch, 2, 4, 4\)",
        ),
        (
            lambda: pde.PointwiseMLP(Grid((8,)), 2)(None, torch.zeros(2, 1, 8)),
            r"PointwiseMLP takes states of shape \(batch, 2, 8\)",
        ),
        (
            lambda: pde.PointwiseMLP(Grid((8,)), 1)(None, torch.zeros(1, 8)),
            r"PointwiseMLP takes states of shape \(batch, 1, 8\)",
        ),
        (
            lambda: pde.ConvNet(Grid((8,)), 2)(None, torch.zeros(3, 1, 8)),
            r"ConvNet takes states of shape \(\.\.\., 2, 8\)",
        ),
        (lambda: pde.laplacian(torch.arange(8), Grid((8,))), "floating point or complex"),
    ],
)
def test_models_name_the_state_shape_they_take(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        # a string's characters would be the components: "12" as velocity (1.0, 2.0)
        (lambda: pde.Advection(Grid((8, 8)), "12"), r"one component per axis \(2\)"),
        # a negative spacing would flip a Neumann slope's sign; a negative width, garbage
        (lambda: pde.pad(torch.ones(8), Neumann(1.0, 1.0), -0.1, 1), "dx must be positive"),
        (lambda: pde.pad(torch.ones(8), Neumann(1.0, 1.0), 0.0, 1), "dx must be positive"),
        (lambda: pde.pad(torch.ones(8), Periodic(), 0.1, -1), "width must be an integer >= 1"),
        (lambda: pde.pad(torch.ones(8), Dirichlet(), 0.1, 0), "width must be an integer >= 1"),
        (lambda: pde.derivative(torch.ones(8), Grid((8,)), 0, True), "n must be 1 or 2"),
        (lambda: pde.derivative(torch.ones(8), Grid((8,)), 0, 2.0), "n must be 1 or 2"),
        (lambda: pde.laplacian(torch.ones(8), Grid((8,)), 4.0), "order must be 2 or 4"),
        # tau = 0 would give NaN in dv/dt
        (lambda: pde.FitzHughNagumo(Grid((4, 4)), tau=0.0), "tau must be positive and finite"),
        (lambda: pde.FitzHughNagumo(Grid((4, 4)), tau=math.nan), "tau must be positive"),
        (lambda: pde.FitzHughNagumo(Grid((4, 4)), k=math.inf), "k must be finite"),
        (lambda: pde.ConvNet(Grid((8,)), 1, kernel_size=-1), "kernel_size must be an integer"),
        (lambda: pde.ConvNet(Grid((8,)), 0), "channels must be an integer >= 1"),
        (lambda: pde.ConvNet(Grid((8,)), 1, layers=-1), "layers must be an integer >= 0"),
        (lambda: pde.PointwiseMLP(Grid((8,)), 1, layers=-1), "layers must be an integer >= 0"),
        (lambda: pde.PointwiseMLP(Grid((8,)), 0), "channels must be an integer >= 1"),
        (lambda: pde.PointwiseMLP(Grid((8,)), 1, hidden=0), "hidden must be an integer >= 1"),
        (lambda: pde.random_fourier_field(Grid((8,)), 2, modes=-1), "modes must be an integer"),
        (lambda: pde.random_fourier_field(Grid((8,)), 0), "batch must be an integer >= 1"),
        # a NaN amplitude would give all-NaN fields
        (
            lambda: pde.random_fourier_field(Grid((8,)), 1, amplitude=math.nan),
            "amplitude must be positive and finite",
        ),
        (lambda: pde.random_fourier_field(Grid((8,)), 1, offset=math.inf), "offset must be"),
    ],
)
def test_model_and_stencil_arguments_are_validated(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_models_take_zero_hidden_layers() -> None:
    grid = Grid((8,))
    u = torch.randn(2, 1, 8, dtype=F64)
    for model in (pde.PointwiseMLP(grid, 1, layers=0), pde.ConvNet(grid, 1, layers=0)):
        assert model.double()(None, u).shape == u.shape


def test_grid_accepts_lists_arrays_and_numpy_numbers() -> None:
    grid = Grid([8, 4], lengths=torch.tensor([2.0, 1.0]), boundary=[Periodic(), Neumann(0, 1)])
    assert grid.shape == (8, 4) and grid.lengths == (2.0, 1.0)
    assert grid.boundaries == (Periodic(), Neumann(0.0, 1.0))


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operators_and_models_keep_dtype_and_device(device: str, dtype: torch.dtype) -> None:
    grid = Grid((8, 6), boundary=(Periodic(), Neumann(0.1, 0.2)))
    u = torch.randn(3, 2, 8, 6, dtype=dtype, device=device)
    outputs = [
        pde.laplacian(u, grid, 4),
        pde.gradient(u, grid),
        pde.spectral_derivative(u, Grid((8, 6)), 1, 1),
        pde.NeuralPDE(pde.Diffusion(grid, (0.1, 0.2)), pde.PointwiseMLP(grid, 2)).to(device, dtype)(
            torch.zeros((), device=device), u
        ),
        pde.ConvNet(grid, 2).to(device, dtype)(None, u),
    ]
    for out in outputs:
        assert out.dtype == dtype and out.device == u.device
    # float32 stencils agree with float64 to float32 round-off (relative to 1/dx^2 scales)
    exact = pde.laplacian(u.double(), grid, 4)
    assert torch.allclose(outputs[0].double(), exact, rtol=1e-4, atol=1e-3)


def test_convnet_wraps_periodic_axes_and_replicates_bounded_ones() -> None:
    # shifting u along the periodic axis shifts du/dt (circular padding on that axis alone);
    # the bounded axis does not wrap: two 3-wide layers see 2 nodes each way, so the first
    # column depends on the last row (wrapped) but not on the last column (5 columns away)
    grid = Grid((6, 5), boundary=(Periodic(), Dirichlet()))
    torch.manual_seed(0)
    net = pde.ConvNet(grid, 2, hidden=3, layers=2, kernel_size=3).double()
    u = torch.randn(2, 2, 6, 5, dtype=F64)
    shifted = net(None, u.roll(2, 2))
    assert torch.allclose(shifted, net(None, u).roll(2, 2), atol=1e-12)
    last_column, last_row = u.clone(), u.clone()
    last_column[..., -1] += 1.0
    last_row[..., -1, :] += 1.0
    assert torch.equal(net(None, last_column)[..., 0], net(None, u)[..., 0])
    assert not torch.allclose(net(None, last_row)[..., 0, :], net(None, u)[..., 0, :])
    flipped = Grid((5, 6), boundary=(Dirichlet(), Periodic()))
    net_t = pde.ConvNet(flipped, 2, hidden=3, layers=2, kernel_size=3).double()
    net_t.load_state_dict(net.state_dict())  # the same parameter names for every grid
    v = u.transpose(2, 3)
    assert torch.allclose(net_t(None, v.roll(1, 3)), net_t(None, v).roll(1, 3), atol=1e-12)


def test_convnet_takes_any_leading_batch_dimensions() -> None:
    grid = Grid((8,))
    torch.manual_seed(0)
    net = pde.ConvNet(grid, 2, hidden=3, layers=2, kernel_size=3).double()
    u = torch.randn(3, 4, 2, 8, dtype=F64)
    out = net(None, u)
    assert out.shape == u.shape
    torch.testing.assert_close(out[1], net(None, u[1]), rtol=0, atol=1e-14)
    torch.testing.assert_close(out[1, 2], net(None, u[1, 2]), rtol=0, atol=1e-14)  # one field


def test_diffusivities_as_numpy_numbers_and_tensors() -> None:
    grid = Grid((8,))
    u = torch.randn(2, 8, dtype=F64)
    expected = pde.Diffusion(grid, 0.1)(None, u)
    for diffusivity in (torch.tensor(0.1), np.float64(0.1)):
        torch.testing.assert_close(pde.Diffusion(grid, diffusivity)(None, u), expected)
    per_channel = torch.randn(2, 2, 8, dtype=F64)
    expected = pde.Diffusion(grid, [0.1, 0.2])(None, per_channel)
    for diffusivity in (torch.tensor([0.1, 0.2]), np.array([0.1, 0.2])):
        torch.testing.assert_close(pde.Diffusion(grid, diffusivity)(None, per_channel), expected)
    with pytest.raises(ValueError, match="one number per channel"):
        pde.Diffusion(grid, [[0.1]])


def test_fully_learned_convnet_right_hand_side_trains_through_the_solver() -> None:
    grid = Grid((6, 5), boundary=(Periodic(), Dirichlet()))
    torch.manual_seed(0)
    model = pde.NeuralPDE(learned=pde.ConvNet(grid, 1, hidden=3, layers=1, kernel_size=3))
    model = model.double()
    u0 = torch.randn(2, 1, 6, 5, dtype=F64)
    ts = torch.tensor([0.0, 0.2], dtype=F64)
    grads = []
    for gradient in (no.Direct(), no.Checkpointed()):
        model.zero_grad()
        sol = no.solve(model, u0, ts, gradient=gradient, controller=no.PIController(rtol=1e-8))
        sol.ys[-1].pow(2).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().max() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-9, atol=1e-12)
    weight = model.learned.net[0].weight

    def forecast(w: torch.Tensor) -> torch.Tensor:
        def f(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {"learned.net.0.weight": w}, (t, u))

        return no.solve(f, u0, ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.1)).ys

    assert torch.autograd.gradcheck(forecast, (weight.detach().clone().requires_grad_(True),))


def test_random_fourier_fields_include_the_constant_mode() -> None:
    """The wave vectors run over -modes..modes per axis, k = 0 included (as documented): the
    fields have random means, and with one mode a field is c + a cos x + b sin x exactly."""
    grid = pde.Grid((32,), lengths=(2 * math.pi,))
    u0, _ = pde.random_fourier_field(grid, 8, modes=1, generator=torch.Generator().manual_seed(0))
    means = u0.mean(-1).flatten()
    assert float(means.abs().max()) > 0.1
    spectrum = torch.fft.rfft(u0, dim=-1).abs()
    assert float(spectrum[..., 2:].max()) < 1e-12
