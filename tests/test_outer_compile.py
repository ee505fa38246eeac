"""A model that calls a solve, compiled by the user's own ``torch.compile``: every public solve
is one graph break and runs as it would alone (no float specialisation of the host loop, no
dynamo failure inside it), and the model's other operations are still compiled."""

from __future__ import annotations

import pytest
import torch

import neuralode as no
from neuralode import cde, odeint, odeint_adjoint, odeint_event
from neuralode.dde import solve_dde
from neuralode.implicit import fixed_point
from neuralode.sde import BrownianInterval, SDEIto, sdeint


class GraphCounter:
    """A torch.compile backend that counts the graphs it is given and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


class Field(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2)
        )

    def forward(self, t, y):
        return self.net(y)


def forced(t, y):
    return torch.cos(3 * t) * y - y**3 + torch.sin(t)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_a_time_dependent_solve_inside_a_compiled_model_is_the_eager_solve():
    # dynamo tracing the host loop itself failed here ("Guard failed on the same frame it
    # was created") after specialising on the step's float times
    controller = no.PIController(rtol=1e-7, atol=1e-9)

    def model(y0):
        solution = no.solve(forced, 2.0 * y0, torch.linspace(0, 10, 11), controller=controller)
        return solution.ys.sum(-1) + 1.0, solution.stats.nfe

    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter)
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for scale in (1.0, 1.1, 1.3):  # new values of y0 (new steps): no new graphs
        ys, nfe = compiled(scale * y0)
        expected, expected_nfe = model(scale * y0)
        assert torch.equal(ys, expected)
        assert nfe == expected_nfe
    assert counter.graphs == 2  # the operations before the solve and after it


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradients_through_a_compiled_model_equal_the_eager_ones(adjoint):
    torch.manual_seed(0)
    field = Field()
    encoder = torch.nn.Linear(3, 2)
    solve = odeint_adjoint if adjoint else odeint

    def model(x, ts):
        return solve(field, encoder(x), ts, rtol=1e-6, atol=1e-8)[-1].square().sum()

    parameters = [*field.parameters(), *encoder.parameters()]
    counter = GraphCounter()
    compiled = torch.compile(model, backend=counter)
    for end in (1.0, 1.5):
        x, ts = torch.randn(8, 3), torch.linspace(0, end, 4)
        expected = torch.autograd.grad(model(x, ts), parameters)
        actual = torch.autograd.grad(compiled(x, ts), parameters)
        for a, e in zip(actual, expected):
            assert torch.equal(a, e)
    assert counter.graphs <= 3


def test_sde_delay_fixed_point_cde_and_event_solves_inside_a_compiled_model():
    class Ornstein(SDEIto):
        def __init__(self):
            super().__init__(noise_type="diagonal")

        def f(self, t, y):
            return -y

        def g(self, t, y):
            return 0.3 * torch.ones_like(y)

    ts = torch.linspace(0, 1, 5, dtype=torch.float64)
    y0 = torch.full((3, 2), 0.5, dtype=torch.float64)

    def stochastic(y0):
        bm = BrownianInterval(0.0, 1.0, size=(3, 2), dtype=torch.float64, entropy=7)
        return sdeint(Ornstein(), y0, ts, bm=bm, dt=0.05, method="euler") * 2

    def delayed(y0):
        return solve_dde(lambda t, y, lagged: -lagged[0], y0, ts, 0.3).ys * 2

    def equilibrium(x):
        return fixed_point(lambda z: 0.5 * torch.tanh(z) + x, torch.zeros_like(x)).z * 2

    series = torch.randn(3, 6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    control = cde.CubicSpline(cde.natural_cubic_coeffs(series))

    def controlled(z0):
        field = lambda t, z: torch.tanh(z)[..., None].expand(*z.shape, 2)  # noqa: E731
        return cde.cdeint(control, field, z0, control.interval, adjoint=False) * 2

    def event(y0):
        t, ys = odeint_event(
            lambda t, y: -y,
            y0,
            torch.tensor(0.0, dtype=y0.dtype),
            event_fn=lambda t, y: y.sum() - 0.5,
        )
        return ys * t

    for model in (stochastic, delayed, equilibrium, controlled, event):
        compiled = torch.compile(model, backend=GraphCounter())
        assert torch.equal(compiled(y0), model(y0)), model.__name__
