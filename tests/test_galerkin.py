"""Depth-variant (Galerkin) layers and data-controlled neural ODEs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import neuralode
from neuralode.models import (
    DataControlled,
    DataControlledMLP,
    FourierBasis,
    GalerkinConv2d,
    GalerkinLinear,
    GalerkinMLPDynamics,
    KineticEnergy,
    MLPDynamics,
    ODEBlock,
    PiecewiseConstantBasis,
    PolynomialBasis,
    make_basis,
)

F64 = torch.float64


def _by_hand(name: str, t: float, n: int, t0: float, t1: float) -> list[float]:
    """The basis functions' values written out from their definitions."""
    s = 2 * (t - t0) / (t1 - t0) - 1
    if name == "fourier":
        w = 2 * math.pi / (t1 - t0)
        return [1.0, math.cos(w * t), math.sin(w * t), math.cos(2 * w * t), math.sin(2 * w * t)][:n]
    if name == "legendre":
        return [
            1.0,
            s,
            (3 * s**2 - 1) / 2,
            (5 * s**3 - 3 * s) / 2,
            (35 * s**4 - 30 * s**2 + 3) / 8,
        ][:n]
    if name == "monomial":
        return [s**k for k in range(n)]
    k = min(int((t - t0) / (t1 - t0) * n), n - 1)
    return [1.0 if i == k else 0.0 for i in range(n)]


@pytest.mark.parametrize("name", ["fourier", "legendre", "monomial", "piecewise"])
def test_galerkin_linear_is_linear_with_the_weight_on_the_basis(name: str) -> None:
    """At time t the layer is F.linear with W = Σ α_k φ_k(t), b = Σ β_k φ_k(t)."""
    torch.manual_seed(0)
    t0, t1, n = 0.5, 2.5, 5
    layer = GalerkinLinear(3, 4, name, n_terms=n, t0=t0, t1=t1).double()
    with torch.no_grad():  # coefficients of every term, not the depth-invariant start
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(6, 3, dtype=F64)
    for t in (0.5, 0.9, 1.7, 2.2, 2.5):
        phi = torch.tensor(_by_hand(name, t, n, t0, t1), dtype=F64)
        weight = (phi[:, None, None] * layer.weight).sum(0)
        bias = (phi[:, None] * layer.bias).sum(0)
        got = layer(torch.tensor(t, dtype=F64), x)
        torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=1e-12, atol=1e-12)


def test_layers_start_depth_invariant_as_torch_initialises_them() -> None:
    """At initialisation W(t) is the same at every time: the coefficients of the constant
    function times an nn.Linear / nn.Conv2d initial weight."""
    for name in ("fourier", "legendre", "monomial", "piecewise"):
        layer = GalerkinLinear(3, 4, name, n_terms=4)
        conv = GalerkinConv2d(2, 3, basis=name, n_terms=4)
        x, image = torch.randn(5, 3), torch.randn(2, 2, 6, 6)
        times = (torch.tensor(0.1), torch.tensor(0.6), torch.tensor(0.95))
        torch.testing.assert_close(layer(times[0], x), layer(times[1], x))
        torch.testing.assert_close(layer(times[0], x), layer(times[2], x))
        torch.testing.assert_close(conv(times[0], image), conv(times[2], image))
        bound = 1 / math.sqrt(3)  # nn.Linear's uniform initialisation
        weight = layer.weight.detach()
        assert weight.abs().max() <= bound and weight.abs().max() > bound / 2


def test_fourier_and_legendre_terms_are_orthogonal_on_their_interval() -> None:
    """Gram matrices by quadrature: Fourier diag(P, P/2, ...) on any window of one period,
    Legendre diag((t1 - t0)/(2k + 1)) on [t0, t1]."""
    t0, period, n = 0.3, 2.0, 7
    t = torch.linspace(t0, t0 + period, 20001, dtype=F64)
    phi = FourierBasis(n, period=period)(t)
    gram = torch.trapezoid(phi[:, :, None] * phi[:, None, :], t, dim=0)
    expected = torch.diag(torch.tensor([period] + [period / 2] * (n - 1), dtype=F64))
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-7)
    phi = PolynomialBasis(n, t0, t0 + period)(t)
    gram = torch.trapezoid(phi[:, :, None] * phi[:, None, :], t, dim=0)
    expected = torch.diag(torch.tensor([period / (2 * k + 1) for k in range(n)], dtype=F64))
    torch.testing.assert_close(gram, expected, rtol=0, atol=1e-7)


def test_one_time_per_sample_gives_each_sample_its_own_weight() -> None:
    torch.manual_seed(0)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    for basis in ("fourier", "piecewise"):
        layer = GalerkinLinear(3, 2, basis, n_terms=4).double()
        conv = GalerkinConv2d(2, 3, basis=basis, n_terms=4).double()
        with torch.no_grad():
            for p in [*layer.parameters(), *conv.parameters()]:
                p.normal_()
        x, image = torch.randn(4, 5, 3, dtype=F64), torch.randn(4, 2, 5, 5, dtype=F64)
        rows, maps = layer(t, x), conv(t, image)
        for i in range(4):
            torch.testing.assert_close(rows[i], layer(t[i], x[i]))
            torch.testing.assert_close(maps[i : i + 1], conv(t[i], image[i : i + 1]))
    with pytest.raises(ValueError, match="dimension 0 to be the batch"):
        layer(t, torch.randn(3, 3, dtype=F64))


def test_galerkin_field_solves_per_sample_and_under_vmap_as_alone() -> None:
    """Per-sample mode (times (batch,)) and torch.func.vmap over the solve give each sample
    the solve it gets alone; the piecewise basis's bin edges are passed as jump_t."""
    torch.manual_seed(0)
    field = GalerkinMLPDynamics(2, hidden=8, basis="piecewise", n_terms=4).double()
    y0 = torch.randn(3, 2, dtype=F64)
    spans = torch.tensor([[0.0, 0.5], [0.25, 1.0], [0.0, 1.0]], dtype=F64)
    control = neuralode.PIController(1e-10, 1e-12)
    options = dict(controller=control, jump_t=field.basis.jump_t)
    with torch.no_grad():
        batch = neuralode.solve(field, y0, spans, per_sample=True, **options).ys[-1]
        mapped = torch.func.vmap(lambda y: neuralode.solve(field, y, spans[2], **options).ys[-1])(
            y0
        )
        for i in range(3):
            alone = neuralode.solve(field, y0[i : i + 1], spans[i], **options).ys[-1]
            torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-12, atol=1e-12)
        whole = neuralode.solve(field, y0, spans[2], **options).ys[-1]
    torch.testing.assert_close(mapped, whole, rtol=1e-9, atol=1e-9)


def test_piecewise_linear_field_solves_to_the_exponential_of_its_bin_rates() -> None:
    """dy/dt = a_k y on bin k of [0, 1] (4 bins): y(1) = y0 exp(Σ a_k / 4); adaptive steps
    land on the bin edges (jump_t) and the solve is exact to the tolerance."""
    layer = GalerkinLinear(1, 1, "piecewise", n_terms=4, bias=False).double()
    rates = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(rates[:, None, None])
    y0 = torch.tensor([[1.0], [-2.0]], dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    sol = neuralode.solve(
        layer, y0, ts, controller=neuralode.PIController(1e-10, 1e-12), jump_t=layer.basis.jump_t
    )
    torch.testing.assert_close(sol.ys[-1], y0 * torch.exp(rates.sum() / 4), rtol=1e-8, atol=0)


def _fit_nonautonomous(n_terms: int) -> tuple[float, torch.Tensor]:
    """Fit dy/dt = a(t) y, a(t) = cos 2πt (y = y0 exp(sin(2πt)/2π)) by a GalerkinLinear(1, 1)
    field on a Fourier basis of n_terms; the RMS error of the trajectories and the
    coefficients."""
    torch.manual_seed(0)
    ts = torch.linspace(0, 1, 5, dtype=F64)
    y0 = torch.linspace(-1, 1, 8, dtype=F64)[:, None]
    target = y0 * torch.exp(torch.sin(2 * math.pi * ts) / (2 * math.pi))[:, None, None]
    field = GalerkinLinear(1, 1, "fourier", n_terms, bias=False).double()
    opt = torch.optim.Adam(field.parameters(), lr=0.1)
    for _ in range(80):
        ys = neuralode.solve(
            field, y0, ts, solver=neuralode.RK4(), controller=neuralode.FixedGrid(step_size=0.125)
        ).ys
        loss = (ys - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.sqrt().item(), field.weight.detach().flatten()


def test_depth_variant_field_recovers_a_nonautonomous_linear_system() -> None:
    """a(t) = cos 2πt lies in the span of 1, cos 2πt, sin 2πt: three terms recover it, one
    (a constant rate, a depth-invariant linear field) cannot fit y0 exp(sin(2πt)/2π)."""
    variant, coefficients = _fit_nonautonomous(3)
    invariant, _ = _fit_nonautonomous(1)
    assert variant < 2e-3
    torch.testing.assert_close(
        coefficients, torch.tensor([0.0, 1.0, 0.0], dtype=F64), rtol=0, atol=0.02
    )
    assert invariant > 0.05 and invariant > 20 * variant


def _fit_reflection(controlled: bool) -> float:
    """Train x -> -x on [-1, 1] (32 points, 100 Adam steps, seed 0); the RMS error."""
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 32)[:, None]
    field = DataControlledMLP(1, hidden=16) if controlled else MLPDynamics(1, hidden=16)
    block = ODEBlock(field, method="rk4", step_size=0.25, gradient="direct")
    opt = torch.optim.Adam(block.parameters(), lr=0.03)
    for _ in range(100):
        loss = (block(x) + x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.sqrt().item()


def test_data_control_learns_the_reflection_a_plain_neural_ode_cannot() -> None:
    """A 1-D ODE's flow preserves order, so a plain neural ODE cannot map x to -x (its best
    is near the constant 0: RMS error about sqrt(1/3)); the data-controlled one, of the same
    parameter count, can."""
    assert sum(p.numel() for p in DataControlledMLP(1, hidden=16).parameters()) == sum(
        p.numel() for p in MLPDynamics(1, hidden=16).parameters()
    )
    controlled, plain = _fit_reflection(True), _fit_reflection(False)
    assert controlled < 0.02
    assert plain > 0.4


def test_gradcheck_through_a_solve_of_the_coefficients_and_the_input() -> None:
    """Direct gradients of a fixed-step solve in float64, with respect to the Galerkin
    coefficients, the initial state and the data-controlled field's input x."""
    torch.manual_seed(0)
    field = DataControlled(GalerkinMLPDynamicsIn(3, 2, hidden=2)).double()
    names = [name for name, _ in field.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in field.parameters())
    y0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    x = torch.randn(2, 1, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)

    def end(y0: torch.Tensor, x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        def f(t: torch.Tensor, state: tuple) -> tuple:
            return torch.func.functional_call(field, dict(zip(names, values)), (t, state))

        sol = neuralode.solve(
            f, (y0, x), ts, solver=neuralode.RK4(), controller=neuralode.FixedGrid(0.5)
        )
        return sol.ys[0][-1]

    assert torch.autograd.gradcheck(end, (y0, x, *params))


class GalerkinMLPDynamicsIn(torch.nn.Module):
    """A depth-variant net of z = [y, x] (n_in features) to y's n_out: GalerkinLinear, tanh,
    GalerkinLinear (Legendre and Fourier bases)."""

    def __init__(self, n_in: int, n_out: int, hidden: int = 4):
        super().__init__()
        self.first = GalerkinLinear(n_in, hidden, "legendre", n_terms=3)
        self.second = GalerkinLinear(hidden, n_out, "fourier", n_terms=3)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.second(t, torch.tanh(self.first(t, z)))


def test_backsolve_gradients_equal_direct_for_coefficients_and_input() -> None:
    """The continuous adjoint reaches x through the state's constant part: its gradients of
    the Galerkin coefficients and of x equal backpropagation's (tight tolerances; steps of
    at most 0.05, which resolve the basis functions, see the guide)."""
    torch.manual_seed(0)
    x = torch.randn(5, 2, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    grads = []
    for gradient in (neuralode.Direct(), neuralode.Backsolve()):
        torch.manual_seed(1)
        field = DataControlled(GalerkinMLPDynamicsIn(4, 2)).double()
        xi = x.clone().requires_grad_(True)
        control = neuralode.PIController(1e-10, 1e-12, max_step=0.05)
        ys = neuralode.solve(
            field, field.initial_state(xi), ts, controller=control, gradient=gradient
        ).ys
        ys[0][-1].pow(2).sum().backward()
        grads.append([xi.grad, *(p.grad for p in field.parameters())])
        assert all(g is not None and g.abs().sum() > 0 for g in grads[-1])
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)


def test_ode_block_adjoint_gradient_reaches_the_input_of_a_data_controlled_field() -> None:
    """Through ODEBlock's default adjoint, x's gradient (initial state and control at once)
    and the parameters' equal backpropagation's."""
    x = torch.randn(6, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    grads = []
    for gradient in ("direct", "adjoint"):
        torch.manual_seed(1)
        block = ODEBlock(DataControlledMLP(1, hidden=8).double(), rtol=1e-10, atol=1e-12)
        block.gradient = gradient
        xi = x.clone().requires_grad_(True)
        block(xi).pow(2).sum().backward()
        grads.append([xi.grad, *(p.grad for p in block.parameters())])
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, direct, rtol=1e-7, atol=1e-9)


def test_data_controlled_forms_and_block_outputs() -> None:
    """The pair and flat states give the same y; per-sample mode (flat state) gives each
    sample its solve alone; ODEBlock returns y alone, at every ts."""
    torch.manual_seed(0)
    field = DataControlledMLP(2, data_dim=3, hidden=8).double()
    x, y0 = torch.randn(4, 3, dtype=F64), torch.randn(4, 2, dtype=F64)
    ts = torch.linspace(0, 1, 3, dtype=F64)
    control = neuralode.PIController(1e-10, 1e-12)
    ys, xs = neuralode.solve(field, field.initial_state(x, y0), ts, controller=control).ys
    flat = neuralode.solve(field, field.initial_state(x, y0, flat=True), ts, controller=control)
    torch.testing.assert_close(flat.ys[..., :2], ys, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(flat.ys[..., 2:], x.expand(3, 4, 3), rtol=0, atol=0)
    torch.testing.assert_close(xs, x.expand(3, 4, 3), rtol=0, atol=0)
    spans = torch.tensor([[0.0, 0.5], [0.2, 1.0], [0.0, 1.0], [0.5, 0.75]], dtype=F64)
    z0 = field.initial_state(x, y0, flat=True)
    rows = neuralode.solve(field, z0, spans, controller=control, per_sample=True).ys[-1]
    for i in range(4):
        alone = neuralode.solve(field, z0[i : i + 1], spans[i], controller=control).ys[-1]
        torch.testing.assert_close(rows[i : i + 1], alone, rtol=1e-12, atol=1e-12)
    block = ODEBlock(DataControlledMLP(2, hidden=8))
    assert block(torch.randn(4, 2)).shape == (4, 2)
    assert block(torch.randn(4, 2), torch.linspace(0, 1, 3)).shape == (3, 4, 2)


def test_a_numpy_integer_is_a_number_of_terms() -> None:
    for make in (FourierBasis, PolynomialBasis, PiecewiseConstantBasis):
        basis = make(np.int64(3))
        assert basis.n_terms == 3 and type(basis.n_terms) is int
    assert make_basis("legendre", n_terms=np.int32(2)).n_terms == 2


def test_bad_input_names_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown basis 'chebyshev'; available: fourier"):
        GalerkinLinear(2, 2, "chebyshev")
    for n in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="n_terms must be a positive integer"):
            make_basis("fourier", n_terms=n)
    with pytest.raises(ValueError, match="n_terms must be a positive integer"):
        GalerkinMLPDynamics(2, n_terms=0)
    with pytest.raises(TypeError, match="basis must be a name or a Basis"):
        GalerkinConv2d(2, 2, basis=3)
    with pytest.raises(ValueError, match="finite t0 < t1"):
        PolynomialBasis(3, t0=1.0, t1=1.0)
    with pytest.raises(ValueError, match="period must be positive"):
        FourierBasis(3, period=0.0)
    with pytest.raises(ValueError, match="kind must be one of"):
        PolynomialBasis(3, kind="chebyshev")
    bins = PiecewiseConstantBasis(4, 0.0, 1.0)
    assert bins(torch.tensor(1.0)).tolist() == [0.0, 0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"outside the piecewise-constant basis's interval"):
        bins(torch.tensor([0.5, 1.25]))
    layer = GalerkinLinear(1, 1, "piecewise", n_terms=4)
    with pytest.raises(ValueError, match="t0 and t1 covering the solve's times"):
        neuralode.solve(layer, torch.ones(1, 1), torch.tensor([0.0, 2.0]))
    field = DataControlledMLP(2, hidden=4)
    with pytest.raises(TypeError, match=r"initial_state\(x\)"):
        field(torch.tensor(0.0), [torch.ones(1, 2)])
    with pytest.raises(ValueError, match="shorter along dim -1"):
        DataControlled(MLPDynamics(2, hidden=4))(torch.tensor(0.0), torch.ones(3, 2))
    with pytest.raises(ValueError, match="regularisers do not take a DataControlled field"):
        ODEBlock(field, regularisers=[KineticEnergy()])
