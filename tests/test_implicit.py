"""Fixed-point solvers and the deep equilibrium layer, against linear algebra, backpropagation
through the unrolled iteration and finite differences."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from neuralode.implicit import FIXED_POINT_METHODS, Anderson, Broyden, Picard, fixed_point
from neuralode.models import (
    DEQ,
    ConvergenceError,
    ConvergenceWarning,
    DEQNet,
    JacobianFrobenius,
    KineticEnergy,
    VariationalDropout,
)
from neuralode.training import autograd_memory_mb

DTYPE = torch.float64


def linear_problem(eigenvalues: torch.Tensor, batch: int = 3, seed: int = 0):
    """z = A z + b per sample with A symmetric of the given eigenvalues; the exact solution."""
    generator = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q = torch.linalg.qr(torch.randn(n, n, dtype=DTYPE, generator=generator))[0]
    a = q @ torch.diag(eigenvalues.to(DTYPE)) @ q.T
    b = torch.randn(batch, n, dtype=DTYPE, generator=generator)
    exact = torch.linalg.solve(torch.eye(n, dtype=DTYPE) - a, b.T).T
    return (lambda z: z @ a.T + b), exact


@pytest.mark.parametrize("method", list(FIXED_POINT_METHODS))
def test_every_method_solves_a_linear_contraction(method: str) -> None:
    f, exact = linear_problem(torch.linspace(-0.9, 0.9, 12))
    result = fixed_point(f, torch.zeros_like(exact), method, tol=1e-10, max_iter=1000)
    assert result.converged
    assert result.max_residual <= 1e-10
    assert result.iterations == len(result.history)
    torch.testing.assert_close(result.z, exact, atol=1e-8, rtol=0)
    # each sample's own count: at most the batch's, and the batch's for the slowest
    assert int(result.sample_iterations.max()) == result.iterations
    assert int(result.sample_iterations.min()) >= 1


@pytest.mark.parametrize("method", list(FIXED_POINT_METHODS))
def test_every_method_solves_a_complex_contraction(method: str) -> None:
    """z = A z + b with complex A (spectral radius 0.8) and b: Anderson's least squares
    over complex residuals uses their Hermitian Gram matrix."""
    generator = torch.Generator().manual_seed(1)
    q = torch.linalg.qr(torch.randn(6, 6, dtype=torch.complex128, generator=generator))[0]
    phases = torch.exp(1j * torch.linspace(0.0, 3.0, 6, dtype=torch.float64))
    a = q @ torch.diag(0.8 * phases) @ q.conj().T
    b = torch.randn(2, 6, dtype=torch.complex128, generator=generator)
    exact = torch.linalg.solve(torch.eye(6, dtype=torch.complex128) - a, b.T).T
    result = fixed_point(lambda z: z @ a.T + b, torch.zeros_like(b), method, 1e-11, 2000)
    assert result.converged
    torch.testing.assert_close(result.z, exact, atol=1e-9, rtol=0)


def test_anderson_and_broyden_need_far_fewer_iterations_than_plain_iteration() -> None:
    f, exact = linear_problem(torch.linspace(-0.95, 0.95, 20))
    iterations = {
        m: fixed_point(f, torch.zeros_like(exact), m, tol=1e-8, max_iter=2000).iterations
        for m in FIXED_POINT_METHODS
    }
    assert iterations["anderson"] * 2 <= iterations["picard"], iterations
    assert iterations["broyden"] * 2 <= iterations["picard"], iterations


def test_a_nonlinear_contraction_per_sample() -> None:
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(8, 8, dtype=DTYPE, generator=generator)
    w = 0.8 * w / torch.linalg.matrix_norm(w, 2)
    x = torch.randn(5, 8, dtype=DTYPE, generator=generator)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ w.T + x)

    for method in FIXED_POINT_METHODS:
        result = fixed_point(f, torch.zeros_like(x), method, tol=1e-12, max_iter=500)
        assert result.converged, method
        torch.testing.assert_close(f(result.z), result.z, atol=1e-11, rtol=0)
        # each sample alone has the same fixed point
        alone = fixed_point(lambda z: torch.tanh(z @ w.T + x[2:3]), x[2:3] * 0, method, 1e-12, 500)
        torch.testing.assert_close(alone.z, result.z[2:3], atol=1e-10, rtol=0)


def test_anderson_and_broyden_converge_where_plain_iteration_diverges() -> None:
    # eigenvalue -1.5: z <- A z + b diverges, but I - A is invertible
    f, exact = linear_problem(torch.tensor([-1.5, -0.5, 0.3, 0.6, 0.8, 1.3]))
    plain = fixed_point(f, torch.zeros_like(exact), "picard", tol=1e-10, max_iter=200)
    assert not plain.converged
    for method in (Anderson(memory=8), Broyden()):
        result = fixed_point(f, torch.zeros_like(exact), method, tol=1e-10, max_iter=200)
        assert result.converged, method.name
        torch.testing.assert_close(result.z, exact, atol=1e-8, rtol=0)


def test_broyden_restarts_when_its_memory_is_full() -> None:
    # 20 unknowns, 4 updates kept: the estimate restarts many times and still converges
    f, exact = linear_problem(torch.linspace(-0.9, 0.9, 20))
    result = fixed_point(f, torch.zeros_like(exact), Broyden(memory=4), tol=1e-10, max_iter=500)
    assert result.converged
    torch.testing.assert_close(result.z, exact, atol=1e-8, rtol=0)
    assert max(result.history[10:]) < 10 * result.history[0]  # no blow-up between restarts


def test_damped_plain_iteration_and_the_best_iterate() -> None:
    f, exact = linear_problem(torch.tensor([-1.5, 0.2, 0.5]))
    damped = fixed_point(f, torch.zeros_like(exact), Picard(damping=0.5), 1e-10, 500)
    assert damped.converged
    torch.testing.assert_close(damped.z, exact, atol=1e-8, rtol=0)
    # diverging: the returned iterate is the best one seen, with its residual
    plain = fixed_point(f, torch.zeros_like(exact), "picard", 1e-10, 30)
    assert plain.residual.max() == min(plain.history) or plain.residual.max() <= plain.history[0]
    fz = f(plain.z)
    residual = (fz - plain.z).norm(dim=1) / fz.norm(dim=1)
    torch.testing.assert_close(residual, plain.residual)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="unknown fixed-point method 'newton'"):
        fixed_point(lambda z: z, torch.zeros(2, 2), "newton")
    with pytest.raises(ValueError, match="max_iter"):
        fixed_point(lambda z: z, torch.zeros(2, 2), max_iter=0)
    for max_iter in (True, False, 10.0, "10"):
        with pytest.raises(ValueError, match=f"max_iter must be an integer >= 1, got {max_iter!r}"):
            fixed_point(lambda z: z, torch.zeros(2, 2), max_iter=max_iter)
    with pytest.raises(ValueError, match="tol"):
        fixed_point(lambda z: z, torch.zeros(2, 2), tol=-1.0)
    with pytest.raises(ValueError, match="shape"):
        fixed_point(lambda z: z[:, :1], torch.zeros(2, 2))
    with pytest.raises(ValueError, match="tol must be a finite non-negative number, got '1e-3'"):
        fixed_point(lambda z: z, torch.zeros(2, 2), tol="1e-3")
    with pytest.raises(TypeError, match=r"z0 must be a tensor \(batch, ...\), got list"):
        fixed_point(lambda z: z, [1.0, 2.0])
    with pytest.raises(ValueError, match="z0 must be floating point or complex, got torch.int64"):
        fixed_point(lambda z: z, torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="damping"):
        Picard(damping=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        DEQ(Cell(), method="newton")
    with pytest.raises(ValueError, match="JacobianFrobenius"):
        DEQ(Cell(), regularisers=[KineticEnergy(1.0)])
    with pytest.raises(TypeError, match=r"f must be a torch.nn.Module called as f\(z, x\)"):
        DEQ("abc")
    with pytest.raises(ValueError, match="weight must be a finite non-negative number, got 'a'"):
        KineticEnergy("a")


class Cell(nn.Module):
    """f(z, x) = tanh(W z + U x + c), a contraction in z (||W|| < 1)."""

    def __init__(self, n: int = 4, contraction: float = 0.7, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(n, n, dtype=DTYPE, generator=generator)
        self.w = nn.Parameter(contraction * w / torch.linalg.matrix_norm(w, 2))
        self.u = nn.Parameter(torch.randn(n, n, dtype=DTYPE, generator=generator))
        self.c = nn.Parameter(torch.randn(n, dtype=DTYPE, generator=generator))

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.w.T + x @ self.u.T + self.c)


def gradients(layer: DEQ, x: torch.Tensor, weights: torch.Tensor) -> list[torch.Tensor]:
    x = x.detach().requires_grad_(True)
    loss = (layer(x) * weights).sum()
    return torch.autograd.grad(loss, [x, *layer.parameters()])


@pytest.mark.parametrize("backward_method", ["anderson", "broyden", "picard", "gmres"])
def test_implicit_gradients_equal_backprop_through_the_converged_iteration(
    backward_method: str,
) -> None:
    cell = Cell()
    x = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    implicit = DEQ(cell, tol=1e-13, max_iter=200, backward_method=backward_method)
    unrolled = DEQ(cell, method="picard", tol=1e-15, max_iter=200, gradient="unrolled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 1e-15 is below round-off
        expected = gradients(unrolled, x, weights)
    for got, want in zip(gradients(implicit, x, weights), expected):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    assert implicit.backward_report.converged
    assert 0 < implicit.nfe_backward <= 200


class DroppedCell(Cell):
    """The test cell with variational dropout on its pre-activation."""

    def __init__(self, p: float):
        super().__init__()
        self.drop = VariationalDropout(p)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.drop(z @ self.w.T + x @ self.u.T + self.c))


def test_variational_dropout_keeps_one_mask_per_solve() -> None:
    cell = DroppedCell(0.5)
    x = torch.randn(64, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    z = torch.randn(64, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(0)
    first = cell(z, x)
    torch.testing.assert_close(cell(z, x), first, atol=0, rtol=0)  # same map within a solve
    dropped = cell.drop._mask == 0
    assert 0.3 < float(dropped.double().mean()) < 0.7
    torch.testing.assert_close(cell.drop._mask[~dropped], torch.full_like(first, 2.0)[~dropped])
    cell.drop.new_solve()
    assert not torch.equal(cell(z, x), first)  # a new solve draws a new mask
    cell.eval()
    torch.testing.assert_close(cell(z, x), torch.tanh(z @ cell.w.T + x @ cell.u.T + cell.c))
    with pytest.raises(ValueError, match=r"p must be a dropout probability in \[0, 1\)"):
        VariationalDropout(1.0)


def test_implicit_gradients_with_variational_dropout_equal_backprop() -> None:
    """The adjoint's vector-Jacobian products see the forward solve's mask, and DEQ draws a
    new mask per forward: with the same seed, implicit and unrolled gradients agree."""
    cell = DroppedCell(0.3)
    x = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    implicit = DEQ(cell, tol=1e-13, max_iter=200, backward_method="gmres")
    unrolled = DEQ(cell, method="picard", tol=1e-15, max_iter=200, gradient="unrolled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 1e-15 is below round-off
        torch.manual_seed(7)
        expected = gradients(unrolled, x, weights)
    mask = cell.drop._mask.clone()
    assert bool((mask == 0).any())
    torch.manual_seed(7)
    got = gradients(implicit, x, weights)
    torch.testing.assert_close(cell.drop._mask, mask, atol=0, rtol=0)
    for g, want in zip(got, expected):
        torch.testing.assert_close(g, want, atol=1e-9, rtol=1e-9)
    torch.manual_seed(8)
    other = gradients(implicit, x, weights)
    assert not torch.allclose(other[0], got[0])


def test_two_calls_before_backward_keep_each_solves_dropout_mask() -> None:
    """Weight tying: the layer called on two inputs before one backward pass. Each call's
    adjoint uses its own solve's mask (not the mask of the call after it): implicit and
    unrolled gradients agree as for one call."""
    cell = DroppedCell(0.5)
    inputs = [torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(s))
              for s in (2, 4)]  # fmt: skip

    def both(layer: DEQ) -> torch.Tensor:
        torch.manual_seed(7)
        loss = sum(layer(x).pow(2).sum() for x in inputs)
        return torch.autograd.grad(loss, [cell.w])[0]

    implicit = DEQ(cell, tol=1e-13, max_iter=200, backward_method="gmres")
    unrolled = DEQ(cell, method="picard", tol=1e-15, max_iter=200, gradient="unrolled")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 1e-15 is below round-off
        expected = both(unrolled)
    torch.testing.assert_close(both(implicit), expected, atol=1e-9, rtol=1e-9)


def test_implicit_gradients_against_finite_differences() -> None:
    layer = DEQ(Cell(n=3, seed=4), method="broyden", tol=1e-13, max_iter=100,
                backward_method="gmres")  # fmt: skip
    x = torch.randn(2, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(5))
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone() for p in layer.parameters()]

    def of_everything(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, dict(zip(names, values)), (x,))

    inputs = tuple(v.requires_grad_(True) for v in (x, *params))
    # the backward solves agree to round-off between repeated backward passes, not bitwise
    assert torch.autograd.gradcheck(of_everything, inputs, atol=1e-7, nondet_tol=1e-12)


def test_forward_statistics_and_the_fixed_point() -> None:
    cell = Cell()
    layer = DEQ(cell, tol=1e-10, max_iter=100)
    x = torch.randn(5, 4, dtype=DTYPE)
    z = layer(x)
    torch.testing.assert_close(cell(z, x), z, atol=1e-8, rtol=0)
    report = layer.forward_report
    assert report.converged and report.residual <= 1e-10
    assert layer.nfe_forward == report.iterations == len(report.history)
    assert layer.nfe_backward == 0
    z.sum().backward()
    assert layer.backward_report.iterations == layer.nfe_backward > 0


def test_non_convergence_is_reported_with_the_residual() -> None:
    cell = Cell(contraction=0.99)
    x = torch.randn(4, 4, dtype=DTYPE)
    with pytest.raises(ConvergenceError, match=r"forward solve \(picard\).*relative residual"):
        DEQ(cell, method="picard", tol=1e-12, max_iter=3, on_failure="raise")(x)
    with pytest.warns(ConvergenceWarning, match="after 3 iterations"):
        DEQ(cell, method="picard", tol=1e-12, max_iter=3)(x)
    layer = DEQ(cell, tol=1e-12, max_iter=100, backward_max_iter=2, on_failure="raise")
    z = layer(x)
    with pytest.raises(ConvergenceError, match="backward solve"):
        z.sum().backward()


class Exploding(nn.Module):
    """f(z, x) = exp(3 z) + x: the iterates overflow within a few iterations."""

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(3 * z) + x


def test_a_solve_that_overflows_is_reported_as_diverged_not_as_too_few_iterations() -> None:
    layer = DEQ(Exploding(), method="picard", max_iter=50, on_failure="raise")
    with pytest.raises(ConvergenceError, match=r"diverged: the residual became nan after 3 .*best"):
        layer(torch.ones(2, 3, dtype=DTYPE))
    assert math.isnan(layer.forward_report.history[-1])
    assert math.isfinite(layer.forward_report.residual)


@pytest.mark.parametrize("method", FIXED_POINT_METHODS)
def test_a_sample_gone_non_finite_leaves_the_others_to_converge(method: str) -> None:
    """Sample 0 overflows after a few iterations; samples 1 and 2 contract to 2, meeting the
    tolerance after as many evaluations as alone (the loop stopped for all of them at the
    overflow)."""

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.exp(z[:1]) * 10, 0.5 * z[1:] + 1])

    z0 = torch.zeros(3, 2, dtype=DTYPE)
    result = fixed_point(f, z0, method, tol=1e-8, max_iter=100)
    alone = fixed_point(lambda z: 0.5 * z + 1, z0[1:], method, tol=1e-8, max_iter=100)
    torch.testing.assert_close(result.z[1:], torch.full_like(alone.z, 2.0), rtol=1e-7, atol=0)
    assert result.sample_iterations[1:].tolist() == alone.sample_iterations.tolist()
    assert result.sample_iterations[0] == -1 and not result.converged
    assert torch.isfinite(result.z).all()  # sample 0: its best finite iterate


def test_a_nan_input_row_of_a_deq_is_named_and_the_other_rows_are_solved() -> None:
    class Half(nn.Module):
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * z + x  # z* = 2 x

    x = torch.tensor([[1.0], [math.nan], [3.0]], dtype=DTYPE)
    layer = DEQ(Half(), tol=1e-8)
    with pytest.warns(ConvergenceWarning, match=r"sample\(s\) 1 became NaN or infinite"):
        out = layer(x)
    torch.testing.assert_close(out[[0, 2]], 2 * x[[0, 2]], rtol=1e-7, atol=0)
    assert out[1].isnan().all()
    assert layer.forward_report.non_finite == (1,)


class Wider(nn.Module):
    """z of width 8 read beside an x of width 4 (or returned at width 8 from z of width 4)."""

    def __init__(self, reads_z: bool):
        super().__init__()
        self.reads_z = reads_z
        self.w, self.u = nn.Linear(8, 8, dtype=DTYPE), nn.Linear(4, 8, dtype=DTYPE)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(0.3 * self.w(z) + self.u(x)) if self.reads_z else self.u(x + z)


@pytest.mark.parametrize("reads_z", [True, False])
def test_the_default_guess_shaped_like_x_asks_for_z0_where_z_differs(reads_z: bool) -> None:
    x = torch.randn(3, 4, dtype=DTYPE)
    error = RuntimeError if reads_z else ValueError
    with pytest.raises(error, match=r"zeros shaped like x \(3, 4\); .*pass z0"):
        DEQ(Wider(reads_z))(x)
    if reads_z:
        z = DEQ(Wider(reads_z))(x, z0=torch.zeros(3, 8, dtype=DTYPE))
        assert z.shape == (3, 8)


def test_training_memory_is_flat_in_the_number_of_iterations() -> None:
    cell = Cell(n=64)
    x = torch.randn(32, 64, dtype=DTYPE)

    def memory(gradient: str, iterations: int) -> float:
        layer = DEQ(cell, "picard", tol=0.0, max_iter=iterations, gradient=gradient)
        layer.on_failure = "ignore"
        return autograd_memory_mb(lambda: layer(x).square().sum())

    implicit = [memory("implicit", k) for k in (5, 40)]
    unrolled = [memory("unrolled", k) for k in (5, 40)]
    assert implicit[0] == implicit[1] > 0
    assert unrolled[1] > 3 * unrolled[0]  # grows with every recorded iteration


def test_jacobian_regularisation_estimates_the_frobenius_norm() -> None:
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(0.5 * torch.eye(3, dtype=DTYPE) + 0.1)

        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return z @ self.a.T + x

    cell = Linear()
    layer = DEQ(cell, tol=1e-10, regularisers=[JacobianFrobenius(2.0)])
    torch.manual_seed(0)
    layer(torch.randn(20_000, 3, dtype=DTYPE))
    exact = torch.linalg.matrix_norm(cell.a.detach()) ** 2
    assert abs(layer.regularisation_terms["jacobian"] - exact) < 0.03 * exact
    torch.testing.assert_close(layer.regularisation, 2 * layer.regularisation_terms["jacobian"])
    (grad,) = torch.autograd.grad(layer.regularisation, cell.a)
    torch.testing.assert_close(grad, 4 * cell.a.detach(), atol=0.1, rtol=0.05)
    layer.eval()
    layer(torch.randn(4, 3, dtype=DTYPE))
    assert float(layer.regularisation) == 0


def test_deqnet_has_the_odenet_parameter_count_and_trains() -> None:
    torch.manual_seed(0)
    model = DEQNet(channels=8, tol=1e-2, max_iter=15)
    from neuralode.models import ODENet

    assert sum(p.numel() for p in DEQNet().parameters()) == pytest.approx(
        sum(p.numel() for p in ODENet(pool="max").parameters()), rel=0.01
    )
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    losses = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(15):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model.deq.nfe_forward > 0 and model.deq.nfe_backward > 0


def test_implicit_gradients_use_the_parameters_of_the_forward_pass() -> None:
    """torch.func.functional_call swaps f's parameters for the call only; the backward pass
    comes after it, and the adjoint's vector-Jacobian products must still be those of the
    parameters the fixed point was solved with."""
    cell = Cell(n=3, seed=4)
    implicit = DEQ(cell, tol=1e-13, max_iter=200)
    unrolled = DEQ(cell, method="picard", tol=0.0, max_iter=400, gradient="unrolled",
                   on_failure="ignore")  # fmt: skip
    values = {name: (0.5 * p.detach()).requires_grad_(True) for name, p in cell.named_parameters()}
    x = torch.randn(2, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(5))

    def grad_w(layer: DEQ) -> torch.Tensor:
        out = torch.func.functional_call(layer, {f"f.{k}": v for k, v in values.items()}, (x,))
        return torch.autograd.grad(out.square().sum(), values["w"])[0]

    torch.testing.assert_close(grad_w(implicit), grad_w(unrolled), atol=1e-9, rtol=1e-9)


def test_the_gradient_with_respect_to_the_output_is_the_losss() -> None:
    """The adjoint solve acts behind the output: d loss / d output is the loss's own gradient
    (autograd.grad and retain_grad see it), and in-place operations on the output work."""
    cell = Cell()
    layer = DEQ(cell, tol=1e-12, max_iter=200)
    x = torch.randn(3, 4, dtype=DTYPE, requires_grad=True)
    z = layer(x)
    (dz,) = torch.autograd.grad((3 * z).sum(), z, retain_graph=True)
    torch.testing.assert_close(dz, torch.full_like(z, 3.0), atol=0, rtol=0)
    z.retain_grad()
    z.square().sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, 2 * z.detach(), atol=0, rtol=0)
    # a second backward pass over the retained graph solves the adjoint again, the same way
    first = x.grad.clone()
    x.grad = None
    z.square().sum().backward()
    torch.testing.assert_close(x.grad, first, atol=1e-12, rtol=0)

    class Linear(nn.Module):  # nothing saves f's output for its backward pass
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * z + x

    x = torch.randn(3, 4, dtype=DTYPE, requires_grad=True)
    out = DEQ(Linear(), tol=1e-12)(x)
    out.mul_(2.0)  # d out / d x = 2 (I - 0.5 I)^-1 = 4
    (dx,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(dx, torch.full_like(x, 4.0))


def test_a_second_derivative_through_the_implicit_gradient_is_refused() -> None:
    """The adjoint is solved without a graph: a gradient of the gradient would miss its
    dependence on x and the parameters, so it raises, and the unrolled layer has one."""
    cell = Cell()
    x = torch.randn(3, 4, dtype=DTYPE, requires_grad=True)
    layer = DEQ(cell, tol=1e-12, max_iter=200)
    (g,) = torch.autograd.grad(layer(x).pow(3).sum(), x, create_graph=True)
    unrolled = DEQ(cell, method="picard", tol=0.0, max_iter=300, gradient="unrolled",
                   on_failure="ignore")  # fmt: skip
    (g_unrolled,) = torch.autograd.grad(unrolled(x).pow(3).sum(), x, create_graph=True)
    torch.testing.assert_close(g, g_unrolled, atol=1e-10, rtol=1e-10)  # first order: exact
    with pytest.raises(RuntimeError, match='second derivatives.*gradient="unrolled"'):
        torch.autograd.grad(g.square().sum(), x)
    assert torch.autograd.grad(g_unrolled.square().sum(), x)[0].abs().sum() > 0


def test_torch_func_transforms_of_the_implicit_gradient_are_refused_by_name() -> None:
    layer = DEQ(Cell(), tol=1e-12, max_iter=200)
    x = torch.randn(3, 4, dtype=DTYPE)
    with pytest.raises(RuntimeError, match="DEQ: .*torch.func transforms"):
        torch.func.grad(lambda x: layer(x).square().sum())(x)
    params = {name: p.detach() for name, p in layer.named_parameters()}
    with pytest.raises(RuntimeError, match="DEQ: .*torch.func transforms"):
        torch.func.grad(lambda p: torch.func.functional_call(layer, p, (x,)).sum())(params)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"tol": -1.0}, r"tol must be a finite non-negative number"),
        ({"tol": float("nan")}, r"tol must be a finite non-negative number"),
        ({"backward_tol": -1e-3}, r"backward_tol must be a finite non-negative"),
        ({"max_iter": 0}, r"max_iter must be an integer >= 1, got 0"),
        ({"max_iter": 2.5}, r"max_iter must be an integer >= 1, got 2.5"),
        ({"backward_max_iter": 0}, r"backward_max_iter must be an integer >= 1"),
        ({"method_options": {"memroy": 3}}, r"method_options .*'memroy'.*its options: memory"),
        ({"method": "picard", "method_options": {"damping": 2}}, r"method_options .*damping"),
    ],
)
def test_deq_options_are_checked_when_the_layer_is_built(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DEQ(Cell(), **options)


def test_an_empty_batch_and_integer_memories() -> None:
    result = fixed_point(lambda z: 0.5 * z, torch.zeros(0, 3, dtype=DTYPE), "anderson")
    assert result.z.shape == (0, 3) and result.converged and result.iterations == 0
    assert result.residual.shape == (0,) and result.sample_iterations.shape == (0,)
    for method in (Anderson, Broyden):
        with pytest.raises(ValueError, match="memory must be an integer >= 1, got 2.5"):
            method(memory=2.5)


@pytest.mark.parametrize("backward_method", ["anderson", "broyden", "picard", "gmres"])
def test_an_empty_batch_through_the_layer_gives_empty_gradients(backward_method: str) -> None:
    layer = DEQ(Cell(), backward_method=backward_method, regularisers=[JacobianFrobenius(0.1)])
    x = torch.zeros(0, 4, dtype=DTYPE, requires_grad=True)
    out = layer(x)  # (training mode: the regulariser is estimated too)
    (out.sum() + sum(layer.regularisation_terms.values())).backward()
    assert out.shape == (0, 4) and x.grad.shape == (0, 4)
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in layer.parameters())


def test_anderson_takes_as_many_iterations_at_every_scale_of_the_fixed_point() -> None:
    """The same problem rescaled (z -> s z): plain iteration and Anderson take the same
    iterations at every scale (a floor of 1e-12 on the squared residuals' regularisation
    scale would make Anderson slower than plain iteration below s = 1e-3)."""
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(16, 16, generator=generator, dtype=DTYPE)
    w = 0.9 * w / torch.linalg.matrix_norm(w, 2)
    x = torch.randn(4, 16, generator=generator, dtype=DTYPE)
    counts = {}
    for scale in (1.0, 1e-3, 1e-6, 1e-9):
        for method in ("picard", "anderson"):
            result = fixed_point(
                lambda z, s=scale: s * torch.tanh(z / s @ w.T + x),
                torch.zeros_like(x), method, tol=1e-10, max_iter=500, norm_floor=1e-30,
            )  # fmt: skip
            assert result.converged
            counts.setdefault(method, set()).add(result.iterations)
    assert len(counts["picard"]) == 1 and len(counts["anderson"]) == 1
    assert max(counts["anderson"]) < min(counts["picard"])


@pytest.mark.parametrize(
    "make, match",
    [
        # a bool tolerance would run GMRES's backward at tolerance 1: a gradient 0.27 off
        (lambda: DEQ(Cell(), tol=True), "tol must be a finite non-negative number"),
        (lambda: DEQ(Cell(), backward_tol=True), "backward_tol must be a finite non-negative"),
        (lambda: Picard(damping=True), r"damping must be in \(0, 1\], got True"),
        (lambda: Anderson(damping="a"), r"damping must be in \(0, 1\], got 'a'"),
        # an infinite regularisation would give NaN iterates, blamed on f
        (lambda: Anderson(regularisation=math.inf), "regularisation must be finite and non-neg"),
        (lambda: Anderson(regularisation="a"), "regularisation must be finite and non-negative"),
        (
            lambda: fixed_point(lambda z: z / 2, torch.ones(2, 2), norm_floor=True),
            "norm_floor must be a positive finite number",
        ),
    ],
)
def test_bools_strings_and_infinities_are_refused_where_numbers_are_meant(make, match) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_a_module_in_another_dtype_than_x_is_named_not_z0() -> None:
    with pytest.raises(RuntimeError, match=r"layer.to\(torch.float32\), or x to the param"):
        DEQ(Cell())(torch.randn(3, 4))  # a float64 module, a float32 x


def test_numpy_integers_are_integers_and_bools_and_floats_are_not() -> None:
    """``memory``, ``max_iter`` and ``backward_max_iter`` take any integer (NumPy's too, as a
    count read from a config array would be) and store it as an int; a bool or a float is a
    ValueError naming the argument."""
    for method in (Anderson, Broyden):
        solver = method(memory=np.int64(3))
        assert solver.memory == 3 and type(solver.memory) is int
        for bad in (True, 3.0, np.float64(3.0)):
            message = re.escape(f"memory must be an integer >= 1, got {bad!r}")
            with pytest.raises(ValueError, match=message):
                method(memory=bad)
    layer = DEQ(
        Cell(), max_iter=np.int64(20), backward_max_iter=np.int32(7),
        method_options={"memory": np.int64(3)},
    )  # fmt: skip
    assert (layer.max_iter, layer.backward_max_iter) == (20, 7)
    assert type(layer.max_iter) is int and type(layer.backward_max_iter) is int
    for name in ("max_iter", "backward_max_iter"):
        for bad in (True, 20.0, np.float32(20)):
            with pytest.raises(ValueError, match=f"{name} must be an integer >= 1, got"):
                DEQ(Cell(), **{name: bad})
    x = torch.randn(3, 4, dtype=DTYPE)
    layer.train()  # forward and backward with the NumPy counts
    layer(x.requires_grad_()).sum().backward()
    assert layer.backward_report.iterations <= 7


@pytest.mark.parametrize("method", list(FIXED_POINT_METHODS))
def test_float32_solves_reach_a_relative_residual_of_1e_6(method: str) -> None:
    """The tutorial's claim: in float32 the relative residual goes down to round-off (~1e-7)."""
    generator = torch.Generator().manual_seed(1)
    w = torch.randn(16, 16, generator=generator)
    w = 0.9 * w / torch.linalg.matrix_norm(w, 2)
    x = torch.randn(8, 16, generator=generator)
    result = fixed_point(lambda z: torch.tanh(z @ w.T + x), torch.zeros_like(x), method, 1e-6, 500)
    assert result.converged and result.z.dtype == torch.float32
    fz = torch.tanh(result.z @ w.T + x)
    assert float(((fz - result.z).norm(dim=1) / fz.norm(dim=1)).max()) <= 1e-6


def test_a_frozen_layer_runs_no_adjoint_and_a_tensor_f_reaches_keeps_its_gradient() -> None:
    """Without anything that needs a gradient the output needs none: a trainable head after
    a frozen DEQ backpropagates without an adjoint solve. A tensor f uses that is neither x
    nor a parameter still gets the implicit gradient."""
    cell = Cell().requires_grad_(False)
    layer = DEQ(cell, tol=1e-12, max_iter=200)
    x = torch.randn(3, 4, dtype=DTYPE)
    z = layer(x)
    assert not z.requires_grad
    head = nn.Linear(4, 1, dtype=DTYPE)
    head(z).sum().backward()
    assert layer.nfe_backward == 0
    assert head.weight.grad is not None

    scale = torch.tensor(0.5, dtype=DTYPE, requires_grad=True)

    class Scaled(nn.Module):  # z* = x / (1 - scale): dz*/dscale = x / (1 - scale)^2
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return scale * z + x

    out = DEQ(Scaled(), tol=1e-13, max_iter=200)(x)
    (d_scale,) = torch.autograd.grad(out.sum(), scale)
    torch.testing.assert_close(d_scale, x.sum() / 0.25, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("method", list(FIXED_POINT_METHODS))
def test_a_fixed_point_at_zero_converges(method: str) -> None:
    """f(z) = z / 2 from a nonzero start: ||f(z) - z|| / ||f(z)|| is 1 at every iterate, so
    a purely relative test never stops; below ``norm_floor`` the test is absolute and the
    solve converges to 0 (for the DEQ too: no false ConvergenceWarning)."""
    for dtype in (torch.float64, torch.float32):
        result = fixed_point(lambda z: 0.5 * z, torch.ones(2, 3, dtype=dtype), method)
        assert result.converged and result.max_residual <= 1e-4, result.history
        assert float(result.z.abs().max()) <= 2e-4 * 1e-6
    strict = fixed_point(lambda z: 0.5 * z, torch.ones(2, 3, dtype=DTYPE), method,
                         max_iter=200, norm_floor=1e-9)  # fmt: skip
    assert strict.converged and float(strict.z.abs().max()) <= 2e-4 * 1e-9

    class Halve(nn.Module):
        def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * z

    layer = DEQ(Halve(), method=method, on_failure="raise")
    z = layer(torch.zeros(2, 3), z0=torch.ones(2, 3))
    assert layer.forward_report.converged and float(z.abs().max()) <= 2e-10


def test_norm_floor_must_be_positive_and_finite() -> None:
    for norm_floor in (0.0, -1e-6, math.inf, math.nan, "1e-6"):
        with pytest.raises(ValueError, match="norm_floor must be a positive finite number"):
            fixed_point(lambda z: 0.5 * z, torch.ones(2, 2), norm_floor=norm_floor)


@pytest.mark.parametrize("backward_method", list(FIXED_POINT_METHODS))
def test_implicit_gradients_scale_with_the_loss(backward_method: str) -> None:
    """The adjoint equation is linear in the output's gradient: a loss scaled by 1e-12
    (per-sample gradients far below fixed_point's norm_floor) gets the gradient scaled by
    1e-12, to the backward tolerance, and a sample with gradient 0 gets 0."""
    cell = Cell(contraction=0.9)
    x = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(3, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(3))
    weights[1] = 0.0
    layer = DEQ(cell, tol=1e-12, max_iter=300, backward_method=backward_method,
                backward_tol=1e-8)  # fmt: skip
    expected = gradients(layer, x, weights)
    for scale in (1e-6, 1e-12):
        got = gradients(layer, x, scale * weights)
        assert layer.backward_report.converged
        for g, want in zip(got, expected):
            torch.testing.assert_close(g / scale, want, atol=0, rtol=1e-6)
        assert bool((got[0][1] == 0).all())


def test_a_regularised_deq_deep_copies_after_a_training_step():
    """``regularisation`` after a training pass is part of its graph; the layer still
    deep-copies and pickles, the copy holding the value detached and computing the same."""
    import copy
    import pickle

    torch.manual_seed(0)
    layer = DEQ(Cell(), tol=1e-10, regularisers=[JacobianFrobenius(0.1)])
    x = torch.randn(3, 4, dtype=DTYPE)
    z = layer(x)
    assert layer.regularisation.requires_grad
    clones = copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))
    for clone in clones:
        assert torch.equal(clone.regularisation, layer.regularisation.detach())
    (z.sum() + layer.regularisation).backward()
    for clone in clones:
        assert torch.equal(clone(x), z)
