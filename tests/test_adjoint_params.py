"""The parameters an adjoint differentiates by default: a module's tensors that require
gradients but are not parameters get none, and a warning says so and how to pass them."""

from __future__ import annotations

import warnings

import pytest
import torch

import neuralode as no


class Scaled(torch.nn.Module):
    """y' = (W y) * scale + shift, scale a plain tensor attribute, shift a buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 2).double()
        self.scale = torch.full((2,), 0.5, dtype=torch.float64, requires_grad=True)
        self.register_buffer("shift", torch.zeros(2, dtype=torch.float64, requires_grad=True))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y) * self.scale + self.shift


TS = torch.tensor([0.0, 1.0], dtype=torch.float64)


@pytest.mark.parametrize(
    "run",
    [
        lambda f, y0: no.solve(f, y0, TS, gradient=no.Backsolve()),
        lambda f, y0: no.solve(f, y0, TS, gradient=no.Checkpointed()),
        lambda f, y0: no.odeint_adjoint(f, y0, TS),
    ],
    ids=["Backsolve", "Checkpointed", "odeint_adjoint"],
)
def test_tensors_that_are_not_parameters_are_named_once(run) -> None:
    f, y0 = Scaled(), torch.ones(2, dtype=torch.float64)
    with pytest.warns(
        UserWarning, match=r"not parameters \(scale, shift\).*adjoint_params"
    ) as record:
        run(f, y0)
    assert record[0].filename == __file__  # the user's line, not the package's
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run(f, y0)  # (once per module)


def test_passing_them_differentiates_them_without_a_warning() -> None:
    f, y0 = Scaled(), torch.ones(2, dtype=torch.float64)
    params = (*f.parameters(), f.scale, f.shift)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = no.odeint_adjoint(f, y0, TS, adjoint_params=params, rtol=1e-10, atol=1e-12)
    by_adjoint = torch.autograd.grad(out[-1].sum(), (f.scale, f.shift))
    out = no.odeint(f, y0, TS, rtol=1e-10, atol=1e-12)
    by_backprop = torch.autograd.grad(out[-1].sum(), (f.scale, f.shift))
    for a, b in zip(by_adjoint, by_backprop):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


class _Wrap(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def test_a_module_of_parameters_only_does_not_warn() -> None:
    f = torch.nn.Sequential(torch.nn.Linear(2, 2)).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no.odeint_adjoint(lambda t, y: f(y), torch.ones(2, dtype=torch.float64), TS,
                          adjoint_params=tuple(f.parameters()))  # fmt: skip
        no.solve(_Wrap(f),
                 torch.ones(2, dtype=torch.float64), TS, gradient=no.Backsolve())  # fmt: skip


@pytest.mark.parametrize(
    "gradient", [no.Backsolve, no.Checkpointed, no.Reversible], ids=lambda g: g.__name__
)
def test_a_tensor_listed_twice_gets_its_gradient_once(gradient) -> None:
    # y' = W y: y(1) = expm(W) y0, and Direct's gradient of sum(y(1)) with respect to W
    weight = torch.tensor([[-0.3, 1.0], [-1.0, -0.2]], dtype=torch.float64, requires_grad=True)
    linear = torch.nn.Linear(2, 2, bias=False).double()
    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64)
    controller = no.PIController(rtol=1e-10, atol=1e-12)
    grads = []
    for strategy in (no.Direct(), gradient(params=(weight, weight, *linear.parameters()))):
        sol = no.solve(lambda t, y: y @ weight.T + linear(y), y0, TS, controller=controller,
                       gradient=strategy)  # fmt: skip
        grads.append(torch.autograd.grad(sol.ys[-1].sum(), weight)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "gradient", [no.Backsolve, no.Checkpointed, no.Reversible], ids=lambda g: g.__name__
)
def test_a_strategy_given_parameters_as_an_iterator_differentiates_them_in_every_solve(
    gradient,
) -> None:
    # params=module.parameters() (a generator), one strategy for two solves (a training loop)
    linear = torch.nn.Linear(2, 2).double()
    strategy = gradient(params=linear.parameters())
    grads = []
    for _ in range(2):
        y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
        sol = no.solve(lambda t, y: torch.tanh(linear(y)), y0, TS, gradient=strategy)
        grads.append(torch.autograd.grad(sol.ys.sum(), [y0, linear.weight], allow_unused=True))
    assert grads[1][1] is not None
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=0)
