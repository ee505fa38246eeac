"""The graph-free step (stage buffer reused across steps, used under torch.no_grad()) gives
the same results as the autograd step (stages stacked per step) for every explicit RK method,
with dense output, jumps, perturbed ends, rejections and events."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode.solvers.explicit_rk import ExplicitRK

RK_METHODS = [name for name, cls in no.METHODS.items() if issubclass(cls, ExplicitRK)]


def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # a rotation with a time-dependent decay and a jump at t = 1.5
    rate = 0.3 + (t > 1.5).to(y.dtype)
    return torch.stack([y[..., 1], -y[..., 0]], -1) - rate * y


def both(**kwargs) -> tuple[no.Solution, no.Solution]:
    with torch.enable_grad():
        graph = no.solve(**kwargs)
    with torch.no_grad():
        free = no.solve(**kwargs)
    return graph, free


@pytest.mark.parametrize("method", RK_METHODS)
def test_graph_free_step_matches_autograd_step(method):
    solver = no.METHODS[method]()
    y0 = torch.tensor([[1.0, 0.0], [0.5, 2.0]], dtype=torch.float64)
    ts = torch.linspace(0, 3, 7, dtype=torch.float64)
    controller = (
        no.PIController(1e-6, 1e-9, first_step=0.5)  # large first step: rejections
        if solver.adaptive
        else no.FixedGrid(step_size=0.05)
    )
    graph, free = both(func=field, y0=y0, ts=ts, solver=solver, controller=controller, jump_t=[1.5])
    assert graph.stats == free.stats
    torch.testing.assert_close(free.ys, graph.ys, rtol=1e-13, atol=1e-13)
    if solver.adaptive and method != "dopri8":  # dopri8 takes 0.5 at once
        assert free.stats.n_rejected > 0


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
def test_graph_free_events_and_perturb(method):
    y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)
    ts = torch.tensor([0.0, 10.0], dtype=torch.float64)
    event = no.Event(lambda t, y: y[0], direction=-1)
    kwargs = dict(func=field, y0=y0, ts=ts, solver=no.METHODS[method](), event=event)
    graph, free = both(**kwargs, perturb=True)
    assert float(free.event_t) == pytest.approx(float(graph.event_t), abs=1e-12)
    assert 0 < float(free.event_t) < math.pi
    torch.testing.assert_close(free.event_y, graph.event_y, rtol=1e-12, atol=1e-12)
