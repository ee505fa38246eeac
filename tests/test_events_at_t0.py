"""An event function that is exactly 0 at t0.

``neuralode.Event`` counts crossings after t0: a zero at t0 is not an event, and the element
fires when it comes back to 0 after leaving it (so a solve restarted from a state on the
event surface, a ball put back on the floor, goes on). The torchdiffeq façade follows
torchdiffeq 0.2.5: its adaptive methods end at t0 when an element of ``event_fn(t0, y0)`` is
exactly 0 (per sample in per-sample mode)."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq

import neuralode as no
from neuralode.compat import last_stats

F64 = torch.float64
INF = torch.tensor([0.0, math.inf], dtype=F64)


def toss(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Height and velocity under a unit gravity: h(t) = h0 + v0 t - t^2 / 2."""
    return torch.stack([y[1], -torch.ones_like(y[1])])


def tosses(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[:, 1], -torch.ones_like(y[:, 1])], 1)


def landing(h0: float, v0: float) -> float:
    return v0 + math.sqrt(v0 * v0 + 2 * h0)


@pytest.mark.parametrize("direction", [0, -1])
def test_zero_at_t0_is_not_an_event_and_the_return_to_zero_is(direction: int) -> None:
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    sol = no.solve(toss, y0, INF, event=no.Event(lambda t, y: y[0], direction=direction))
    assert float(sol.event_t) == pytest.approx(2.0, abs=1e-12)
    assert float(sol.event_y[1]) == pytest.approx(-1.0, abs=1e-12)


def test_zero_at_t0_leaving_in_the_events_direction_is_not_an_event() -> None:
    ts = torch.tensor([0.0, 3.0], dtype=F64)
    event = no.Event(lambda t, y: y[0], direction=1)  # rises from 0 at t0, falls at t=2
    sol = no.solve(toss, torch.tensor([0.0, 1.0], dtype=F64), ts, event=event)
    assert sol.event_t is None and sol.ts.tolist() == [0.0, 3.0]
    recorded = no.Event(lambda t, y: y[0], terminal=False)
    sol = no.solve(toss, torch.tensor([0.0, 1.0], dtype=F64), ts, event=recorded)
    torch.testing.assert_close(sol.event_ts, torch.tensor([2.0], dtype=F64), rtol=0, atol=1e-12)


def test_a_zero_element_at_t0_lets_the_others_fire() -> None:
    event = no.Event(lambda t, y: torch.stack([y[0], y[1] + 0.5]))  # y[1] = -0.5 at t=1.5
    sol = no.solve(toss, torch.tensor([0.0, 1.0], dtype=F64), INF, event=event)
    assert float(sol.event_t) == pytest.approx(1.5, abs=1e-12)


def test_a_restart_on_the_event_surface_goes_on() -> None:
    """A bouncing ball put back on the floor (h = 0) with its velocity reversed flies again
    to its next landing instead of ending at once."""
    event = no.Event(lambda t, y: y[0])
    sol = no.solve(toss, torch.tensor([0.5, 0.0], dtype=F64), INF, event=event)
    t, v = float(sol.event_t), float(sol.event_y[1])
    assert t == pytest.approx(1.0, abs=1e-12) and v == pytest.approx(-1.0, abs=1e-12)
    bounced = torch.tensor([0.0, -0.5 * v], dtype=F64)
    again = no.solve(toss, bounced, torch.tensor([t, math.inf], dtype=F64), event=event)
    assert float(again.event_t) == pytest.approx(t + 1.0, abs=1e-12)


def test_per_sample_zero_at_t0_is_not_an_event() -> None:
    y0 = torch.tensor([[0.0, 1.0], [0.5, 0.0], [0.0, 2.0]], dtype=F64)
    expected = torch.tensor([landing(0, 1), landing(0.5, 0), landing(0, 2)], dtype=F64)
    event = no.Event(lambda t, y: y[:, 0])
    sol = no.solve(tosses, y0, INF, event=event, per_sample=True)
    torch.testing.assert_close(sol.event_t, expected, rtol=0, atol=1e-12)
    assert sol.event_mask.tolist() == [True, True, True]
    ts = torch.tensor([0.0, 5.0], dtype=F64)
    recorded = no.Event(lambda t, y: y[:, 0], terminal=False)
    sol = no.solve(tosses, y0, ts, event=recorded, per_sample=True)
    torch.testing.assert_close(sol.event_ts[:, 0], expected, rtol=0, atol=1e-12)
    assert sol.event_ts.shape == (3, 1)


ADAPTIVE = ["dopri5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"]


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method", ADAPTIVE)
def test_odeint_event_zero_at_t0_ends_at_t0_as_torchdiffeq(method: str, interface: str) -> None:
    """The event time, the states and their gradients are torchdiffeq's (its odeint's:
    torchdiffeq's odeint_adjoint fails in the backward pass there, on the span [t0, t0])."""
    results = []
    for lib, name in ((no, interface), (torchdiffeq, "odeint")):
        y0 = torch.tensor([0.0, 1.0], dtype=F64, requires_grad=True)
        extra = {"adjoint_params": ()} if name == "odeint_adjoint" else {}
        event_t, solution = lib.odeint_event(
            toss, y0, torch.tensor(0.5, dtype=F64), event_fn=lambda t, y: y[0] * (1 + t),
            odeint_interface=getattr(lib, name), method=method, **extra,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(event_t + solution.sum(), y0)
        results.append((event_t.detach(), solution.detach(), grad))
    (t_ours, s_ours, g_ours), (t_theirs, s_theirs, g_theirs) = results
    assert float(t_ours) == float(t_theirs) == 0.5
    torch.testing.assert_close(s_ours, s_theirs, rtol=0, atol=0)
    torch.testing.assert_close(g_ours, g_theirs, rtol=0, atol=0)  # 2: the state passes on
    if interface == "odeint_adjoint":
        theirs = torchdiffeq.odeint_event(
            toss, torch.tensor([0.0, 1.0], dtype=F64), torch.tensor(0.5, dtype=F64),
            event_fn=lambda t, y: y[0], odeint_interface=torchdiffeq.odeint_adjoint,
            method=method, adjoint_params=(),
        )  # fmt: skip
        assert float(theirs[0]) == 0.5 and torch.equal(theirs[1], s_theirs)


def test_odeint_event_zero_element_at_t0_and_tuple_state() -> None:
    """Any element of event_fn that is 0 at t0 ends the solve there, as torchdiffeq's; with
    a tuple state too, and ``odeint(..., event_fn=)`` as well."""
    h, v = torch.tensor([0.0, 0.5], dtype=F64), torch.tensor([1.0, 0.0], dtype=F64)

    def fn(t, y):
        return torch.stack([y[0][1] - 0.5, y[1][0] + 5.0])  # the first is 0 at t0

    field = lambda t, y: (y[1], -torch.ones_like(y[1]))  # noqa: E731
    outs = [lib.odeint_event(field, (h, v), INF[0], event_fn=fn) for lib in (no, torchdiffeq)]
    (t_ours, s_ours), (t_theirs, s_theirs) = outs
    assert float(t_ours) == float(t_theirs) == 0.0
    for ours, theirs in zip(s_ours, s_theirs):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    stats = last_stats()
    assert stats is not None and stats.nfe == 0  # nothing was solved
    t_odeint, s_odeint = no.odeint(field, (h, v), torch.tensor([0.0, 1.0], dtype=F64), event_fn=fn)
    assert float(t_odeint) == 0.0 and torch.equal(s_odeint[0], s_ours[0])


def test_odeint_event_zero_at_t0_moves_with_t0() -> None:
    t0 = torch.tensor(0.25, dtype=F64, requires_grad=True)
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    event_t, _ = no.odeint_event(toss, y0, t0, event_fn=lambda t, y: y[0])
    (grad,) = torch.autograd.grad(event_t, t0)
    assert float(event_t.detach()) == 0.25 and float(grad) == 1.0


def test_odeint_event_fixed_grid_reports_the_later_crossing() -> None:
    """torchdiffeq's fixed-grid methods never see an element that is 0 at t0 cross (they
    raise after 20000 steps); the façade reports its next crossing, as neuralode.Event."""
    y0 = torch.tensor([0.0, 1.0], dtype=F64)
    event_t, solution = no.odeint_event(
        toss, y0, INF[0], event_fn=lambda t, y: y[0], method="rk4", options={"step_size": 0.1}
    )
    assert float(event_t) == pytest.approx(2.0, abs=1e-12)
    assert float(solution[-1, 1]) == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_per_sample_zero_at_t0_ends_those_samples_at_t0(interface: str) -> None:
    """Per sample, each sample is as torchdiffeq's odeint_event on it alone: a sample whose
    event_fn row has a 0 at t0 ends there (with its initial state), the others at their
    crossings, with their gradients."""
    heights, velocities = [0.0, 0.5, 0.0, 2.0], [1.0, 0.0, -1.0, 0.0]
    y0 = torch.tensor(list(zip(heights, velocities)), dtype=F64, requires_grad=True)
    extra = {"adjoint_params": ()} if interface == "odeint_adjoint" else {}
    event_t, states = no.odeint_event(
        tosses, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[:, 0],
        odeint_interface=getattr(no, interface), rtol=1e-10, atol=1e-12,
        options=dict(per_sample=True), **extra,
    )  # fmt: skip
    expected = [0.0, landing(0.5, 0.0), 0.0, landing(2.0, 0.0)]
    torch.testing.assert_close(event_t, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-10)
    assert states.shape == (2, 4, 2)
    torch.testing.assert_close(states[0], y0, rtol=0, atol=0)
    torch.testing.assert_close(states[1, [0, 2]], y0[[0, 2]], rtol=0, atol=0)
    assert states[1, [1, 3], 0].abs().max() < 1e-10
    (grad,) = torch.autograd.grad(event_t.sum(), y0)
    # dt*/dh0 = 1 / sqrt(v0^2 + 2 h0), dt*/dv0 = 1 + v0 / sqrt(...); 0 where the event is t0
    exact = [[0.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.5, 1.0]]
    torch.testing.assert_close(grad, torch.tensor(exact, dtype=F64), rtol=0, atol=1e-8)
    every, states = no.odeint_event(
        tosses, y0[[0, 2]], torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[:, 0],
        options=dict(per_sample=True),
    )  # fmt: skip
    assert every.tolist() == [0.0, 0.0] and torch.equal(states[1], y0[[0, 2]])
