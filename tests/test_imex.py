"""The IMEX additive Runge-Kutta methods (KenCarp3/4/5) with a stiff linear part: their
tableaux against the additive order conditions, convergence on fixed steps, adaptive solves
of PDEs against references, gradients, and bad input."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from conftest import loglog_slope
from sweeps import asymptotic_errors_on_fraction, sweep_fraction
from test_tableaux import density, trees

import neuralode as no
from neuralode import pde
from neuralode.solvers import IMEXRK, AdditiveTableau, KenCarp3, KenCarp4, KenCarp5, LinearPart

IMEX = {"kencarp3": KenCarp3, "kencarp4": KenCarp4, "kencarp5": KenCarp5}
TOL = 1e-11


# ---------------------------------------------------------------------------------------------
# the tableaux


def _matrices(tab: AdditiveTableau) -> tuple[np.ndarray, np.ndarray]:
    s = tab.explicit.stages
    explicit = np.zeros((s, s))
    for i, row in enumerate(tab.explicit.a):
        explicit[i, : len(row)] = row
    return explicit, np.array(tab.implicit.a)


def _colourings(tree: tuple) -> list[tuple]:
    """Every colouring of ``tree``'s non-root vertices by the two tableaux (0 explicit, 1
    implicit): a child's colour picks the matrix its edge to the parent takes."""
    per_child = [
        [(colour, sub) for colour in (0, 1) for sub in _colourings(child)] for child in tree
    ]
    return [tuple(choice) for choice in itertools.product(*per_child)]


def _weights(matrices: tuple[np.ndarray, np.ndarray], coloured: tuple) -> np.ndarray:
    out = np.ones(matrices[0].shape[0])
    for colour, child in coloured:
        out = out * (matrices[colour] @ _weights(matrices, child))
    return out


def _additive_residuals(tab: AdditiveTableau, b: np.ndarray, order: int) -> list[float]:
    """|Phi - 1/gamma| over every bi-coloured tree of ``order`` vertices: the explicit and
    implicit conditions and the coupling conditions between them."""
    matrices = _matrices(tab)
    return [
        abs(b @ _weights(matrices, coloured) - 1 / density(tree))
        for tree in trees(order)
        for coloured in _colourings(tree)
    ]


@pytest.mark.parametrize("name", sorted(IMEX))
def test_additive_order_conditions_with_coupling(name: str) -> None:
    """b satisfies every bi-coloured tree's condition through the declared order (explicit,
    implicit and coupling), the embedded weights through the error order, and the solution
    misses at least one condition one order higher."""
    tab = IMEX[name].tableaux
    b = np.array(tab.explicit.b)
    for order in range(1, tab.explicit.order + 1):
        assert max(_additive_residuals(tab, b, order)) < TOL, (name, order)
    assert max(_additive_residuals(tab, b, tab.explicit.order + 1)) > 1e-6
    embedded = b - np.array(tab.explicit.b_error)
    for order in range(1, tab.explicit.error_order + 1):
        assert max(_additive_residuals(tab, embedded, order)) < TOL, (name, order)
    assert max(_additive_residuals(tab, embedded, tab.explicit.error_order + 1)) > 1e-6


@pytest.mark.parametrize("name", sorted(IMEX))
def test_implicit_tableau_is_stiffly_accurate_and_l_stable(name: str) -> None:
    """The implicit tableau's stability function R(z) = 1 + z b^T (I - z A)^-1 1 stays within
    the unit disk on the negative axis and decays like 1/z (R(-inf) = 0: y1 is the last
    stage, and the explicit first stage's row of A does not weigh in)."""
    tab = IMEX[name].tableaux
    a = np.array(tab.implicit.a)
    b = np.array(tab.implicit.b)
    assert tab.implicit.stiffly_accurate
    ones = np.ones(len(b))
    for z in (-1e-2, -1.0, -10.0, -1e2, -1e4, -1e6):
        r = 1 + z * b @ np.linalg.solve(np.eye(len(b)) - z * a, ones)
        assert abs(r) <= min(1.0, 20 / abs(z)), (z, r)


def test_invalid_additive_tableau_is_rejected() -> None:
    tab = KenCarp3.tableaux
    other = KenCarp4.tableaux
    with pytest.raises(ValueError, match="differ"):
        AdditiveTableau(tab.explicit, other.implicit)
    with pytest.raises(ValueError, match="ESDIRK"):
        AdditiveTableau(tab.explicit, no.solvers.RadauIIA3.tableau)


# ---------------------------------------------------------------------------------------------
# convergence on a split problem with a known solution

LAMBDAS = torch.tensor([-1.0, -4.0, -10.0, -25.0], dtype=torch.float64)


def _exact(t: float | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.stack([torch.sin(t), torch.cos(2 * t), torch.exp(-t), 1 / (1 + t)])


def _exact_derivative(t: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(t), -2 * torch.sin(2 * t), -torch.exp(-t), -1 / (1 + t) ** 2])


def _split_field(lambdas: torch.Tensor):
    """y' = L y + N(t, y), L = diag(lambdas), N nonlinear and coupling the components, with
    the exact solution ``_exact``: N = y*' - L y* + sin(roll(y)) - sin(roll(y*))."""

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        star = _exact(t)
        rest = _exact_derivative(t) - lambdas * star
        return lambdas * y + rest + torch.sin(y.roll(1)) - torch.sin(star.roll(1))

    linear = LinearPart(lambda y: lambdas * y, lambda c, r: r / (1 - c * lambdas))
    return field, linear


def _fixed_error(cls: type[IMEXRK], lambdas: torch.Tensor, t1: float, n: int) -> float:
    field, linear = _split_field(lambdas)
    ts = torch.tensor([0.0, t1], dtype=torch.float64)
    sol = no.solve(
        field, _exact(0.0), ts, solver=cls(linear=linear), controller=no.FixedGrid(t1 / n)
    )
    assert sol.stats.n_steps == n
    return float((sol.ys[-1] - _exact(t1)).abs().max())


@pytest.mark.parametrize("name", sorted(IMEX))
def test_order_on_split_problem(name: str) -> None:
    """The measured order on fixed steps is the declared one (3, 4, 5), to within 0.3."""
    cls = IMEX[name]
    k = sweep_fraction(cls().order)  # (a k-th of the span: sweeps)
    counts, errors = asymptotic_errors_on_fraction(
        lambda n: _fixed_error(cls, LAMBDAS, 2.0 / k, n), k
    )
    slope = loglog_slope([1 / n for n in counts], errors)
    assert abs(slope - cls().order) <= 0.3, f"{name}: measured {slope:.2f}: {errors}"


def test_without_linear_part_is_the_explicit_tableau() -> None:
    """linear=None is L = 0: the same solution as L = 0 given as a linear part."""
    field, _ = _split_field(LAMBDAS)
    zero = LinearPart(torch.zeros_like, lambda c, r: r)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    grid = no.FixedGrid(0.1)
    a = no.solve(field, _exact(0.0), ts, solver=KenCarp4(), controller=grid).ys
    b = no.solve(field, _exact(0.0), ts, solver=KenCarp4(linear=zero), controller=grid).ys
    torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# adaptive PDE solves against references


def _heat1d(n: int = 63) -> tuple[pde.Heat, torch.Tensor, torch.Tensor]:
    grid = pde.Grid((n,), boundary=pde.Dirichlet())
    (x,) = grid.coordinates()
    u0 = (torch.sin(math.pi * x) + torch.exp(-100 * (x - 0.3) ** 2))[None, None]
    func = pde.Heat(grid, 1.0)
    matrix = func(torch.tensor(0.0), torch.eye(n, dtype=torch.float64)[:, None]).reshape(n, n).T
    return func, u0, matrix


def test_linear_part_of_a_pde_model() -> None:
    """``linear_part()`` applies the diffusion without boundary data (with zero Dirichlet
    data: the model itself) and inverts I - c L."""
    func, u0, _ = _heat1d()
    lin = func.linear_part()
    torch.testing.assert_close(lin(u0), func(torch.tensor(0.0), u0), rtol=1e-10, atol=1e-9)
    r = torch.randn_like(u0)
    torch.testing.assert_close(lin.solve(0.3, r - 0.3 * lin(r)), r, rtol=1e-10, atol=1e-10)


# tolerance units between steps (kencarp3/4: cubic Hermite; kencarp5: its continuous
# extension of order 4), measured 7.4, 4.9 and 6.3, with a margin
BETWEEN_STEPS = {"kencarp3": 15.0, "kencarp4": 15.0, "kencarp5": 15.0}


@pytest.mark.parametrize("name", sorted(IMEX))
def test_heat1d_within_tolerance_with_dense_output(name: str) -> None:
    """The adaptive IMEX solve of the heat equation (stiffness ~ 4 / dx^2 = 16384) against
    exp(t A) u0: within a few tolerance units at the final time, a step's end, and within
    ``BETWEEN_STEPS`` units at the outputs inside steps; in a small fraction of the steps an
    explicit method's stability limit allows (dopri5: ~ 0.2 * 16384 / 3.3 ~ 1000)."""
    func, u0, matrix = _heat1d()
    ts = torch.linspace(0, 0.2, 9, dtype=torch.float64)
    rtol, atol = 1e-6, 1e-9
    sol = no.solve(
        func,
        u0,
        ts,
        solver=IMEX[name](linear=func.linear_part()),
        controller=no.PIController(rtol=rtol, atol=atol),
    )
    exact = torch.stack([torch.linalg.matrix_exp(t * matrix) @ u0.reshape(-1) for t in ts])
    units = (sol.ys.reshape(len(ts), -1) - exact).abs() / (atol + rtol * exact.abs())
    assert float(units[-1].max()) < 5, float(units[-1].max())
    assert float(units.max()) < BETWEEN_STEPS[name], float(units.max())
    assert sol.stats.n_steps < 200


@functools.cache
def _fitzhugh_nagumo() -> tuple[pde.FitzHughNagumo, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(func, u0, ts, dopri5's states at ts at rtol 1e-10), the reference computed once."""
    grid = pde.Grid((64,), lengths=(2.0,))
    generator = torch.Generator().manual_seed(0)
    u0, _ = pde.random_fourier_field(grid, 1, 2, amplitude=0.5, generator=generator)
    func = pde.FitzHughNagumo(grid, a=0.25, b=1.0)
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    return func, u0, ts, pde.reference_solve(func, u0, ts, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(IMEX))
def test_fitzhugh_nagumo_1d_within_tolerance(name: str) -> None:
    """FitzHugh-Nagumo in 1-D (stiffness ~ 4 b / dx^2 = 4096) against dopri5 at a tight
    tolerance: within a few tolerance units once the initial transient has decayed (measured
    4.9, 0.5 and 3.2), in a fraction of the steps dopri5's stability allows (~ 4096 / 3.3 =
    1,240)."""
    func, u0, ts, reference = _fitzhugh_nagumo()
    rtol, atol = 1e-6, 1e-9
    sol = no.solve(
        func,
        u0,
        ts,
        solver=IMEX[name](linear=func.linear_part()),
        controller=no.PIController(rtol=rtol, atol=atol),
    )
    units = (sol.ys - reference).abs() / (atol + rtol * reference.abs())
    assert float(units.max()) < 10, float(units.max())
    assert sol.stats.n_steps < 400


def test_neural_pde_takes_its_known_part_and_learned_part_explicitly() -> None:
    """A hybrid model's IMEX solve (the known diffusion implicit, the learned term explicit)
    agrees with radau at a tight tolerance (rtol 1e-9: within 5e-13 of 1e-11); without a
    known part there is no linear part."""
    func, u0, _ = _heat1d(31)
    model = pde.NeuralPDE(known=func, learned=lambda t, u: torch.tanh(u))
    ts = torch.tensor([0.0, 0.1], dtype=torch.float64)
    tight = no.PIController(rtol=1e-9, atol=1e-11)
    reference = no.solve(model, u0, ts, solver=no.solvers.Radau(), controller=tight).ys
    sol = no.solve(
        model,
        u0,
        ts,
        solver=KenCarp4(linear=model.linear_part()),
        controller=no.PIController(rtol=1e-7, atol=1e-10),
    )
    torch.testing.assert_close(sol.ys, reference, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="known part"):
        pde.NeuralPDE(learned=lambda t, u: u).linear_part()


# ---------------------------------------------------------------------------------------------
# gradients


class _Reaction(torch.nn.Module):
    """u_t = D u_xx + k u (1 - u) on a small grid, k a parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.diffusion = pde.Diffusion(pde.Grid((6,), boundary=pde.Dirichlet()), 0.5)
        self.k = torch.nn.Parameter(torch.tensor(0.7, dtype=torch.float64))

    def forward(self, t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.diffusion(t, u) + self.k * u * (1 - u)


def _gradient_problem():
    torch.manual_seed(0)
    func = _Reaction()
    u0 = torch.rand(1, 6, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.3, 0.6], dtype=torch.float64)
    return func, u0, ts


@pytest.mark.parametrize("method", IMEX)
def test_gradcheck_fixed_steps_direct(method: str) -> None:
    """Direct (autograd through the steps and their linear solves) against finite
    differences, for y0 and a parameter of the explicit part."""
    func, u0, ts = _gradient_problem()
    solver = IMEX[method](linear=func.diffusion.linear_part())

    def run(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        field = lambda t, y: func.diffusion(t, y) + k * y * (1 - y)  # noqa: E731
        return no.solve(field, u, ts, solver=solver, controller=no.FixedGrid(0.05)).ys

    k = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (u0.clone().requires_grad_(True), k))


def test_checkpointed_equals_direct_adaptive() -> None:
    """Checkpointed (replayed steps) gives Direct's gradient, for y0 and the parameter,
    on an adaptive solve with dense outputs."""
    func, u0, ts = _gradient_problem()
    grads = {}
    for gradient in (no.Direct(), no.Checkpointed(params=tuple(func.parameters()))):
        y0 = u0.clone().requires_grad_(True)
        sol = no.solve(
            func,
            y0,
            ts,
            solver=KenCarp4(linear=func.diffusion.linear_part()),
            controller=no.PIController(rtol=1e-6, atol=1e-9),
            gradient=gradient,
        )
        loss = (sol.ys**2).sum()
        grads[type(gradient).__name__] = torch.autograd.grad(loss, (y0, func.k))
    for a, b in zip(grads["Direct"], grads["Checkpointed"]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_backsolve_with_linear_part_is_refused_before_the_solve() -> None:
    """L acts on the forward state, not on the adjoint system's: refused up front (f never
    evaluated), by ``solve`` and by ``odeint_adjoint``, whose backward solve would take the
    forward options."""
    func, u0, ts = _gradient_problem()
    calls = []

    def counted(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return func(t, u)

    with pytest.raises(ValueError, match="Direct or Checkpointed"):
        no.solve(
            counted,
            u0.clone().requires_grad_(True),
            ts,
            solver=KenCarp4(linear=func.diffusion.linear_part()),
            gradient=no.Backsolve(params=tuple(func.parameters())),
        )
    with pytest.raises(ValueError, match="adjoint_options"):
        no.odeint_adjoint(
            func,
            u0.clone().requires_grad_(True),
            ts,
            method="kencarp4",
            options=dict(linear=func.diffusion.linear_part()),
        )
    assert not calls


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_linear_parts_are_rejected() -> None:
    with pytest.raises(ValueError, match="without a solve method"):
        KenCarp4(linear=lambda y: -y)
    with pytest.raises(ValueError, match="linear must be"):
        KenCarp4(linear=3.0)
    with pytest.raises(ValueError, match="two callables"):
        LinearPart(lambda y: y, None)  # type: ignore[arg-type]


def test_linear_part_of_the_wrong_shape_is_reported() -> None:
    field, _ = _split_field(LAMBDAS)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    wrong = LinearPart(lambda y: LAMBDAS * y, lambda c, r: (r / (1 - c * LAMBDAS))[:2])
    with pytest.raises(ValueError, match=r"solve\(c, r\) must return a tensor of the state"):
        no.solve(field, _exact(0.0), ts, solver=KenCarp4(linear=wrong))
    wrong = LinearPart(lambda y: (LAMBDAS * y).float(), lambda c, r: r / (1 - c * LAMBDAS))
    with pytest.raises(ValueError, match=r"linear\(y\) must return a tensor of the state"):
        no.solve(field, _exact(0.0), ts, solver=KenCarp4(linear=wrong))


def test_structured_state_with_linear_part_is_refused() -> None:
    _, linear = _split_field(LAMBDAS)
    y0 = {"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)}
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    with pytest.raises(ValueError, match="one tensor"):
        no.solve(lambda t, y: y, y0, ts, solver=KenCarp4(linear=linear))
