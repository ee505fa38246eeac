"""Per-sample events: each sample of a batch stops (or records) at its own event."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no

F64 = torch.float64
G = 9.81
TIGHT = dict(controller=no.PIController(1e-10, 1e-12))
HEIGHTS = torch.tensor([1.0, 2.0, 0.5, 3.0, 0.1], dtype=F64)
VELOCITIES = torch.tensor([0.0, 1.0, -2.0, 4.0, 0.3], dtype=F64)


class Ball(torch.nn.Module):
    """Free fall, state (height, velocity) per sample, gravity a parameter."""

    def __init__(self, gravity: float = G):
        super().__init__()
        self.gravity = torch.nn.Parameter(torch.tensor(gravity, dtype=F64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([y[:, 1], (-self.gravity).expand_as(y[:, 1])], 1)


def ground(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[:, 0]


def impact(h0: torch.Tensor, v0: torch.Tensor, g: float = G) -> torch.Tensor:
    """h0 + v0 t - g t^2 / 2 = 0, the positive root."""
    return (v0 + torch.sqrt(v0**2 + 2 * g * h0)) / g


def balls() -> torch.Tensor:
    return torch.stack([HEIGHTS, VELOCITIES], 1)


def test_impact_times_of_a_batch_of_balls_match_the_analytic_ones() -> None:
    ts = torch.tensor([0.0, math.inf], dtype=F64)
    sol = no.solve(
        Ball(), balls(), ts, event=no.Event(ground, direction=-1), per_sample=True, **TIGHT
    )
    expected = impact(HEIGHTS, VELOCITIES)
    assert sol.event_t.shape == (5,) and bool(sol.event_mask.all())
    torch.testing.assert_close(sol.event_t, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.event_y[:, 0], torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)
    speed = -torch.sqrt(VELOCITIES**2 + 2 * G * HEIGHTS)
    torch.testing.assert_close(sol.event_y[:, 1], speed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sol.ys[-1], sol.event_y)  # the infinite end holds the event
    # the samples took different numbers of steps and stopped at their own events
    assert sol.stats.n_steps == int(sol.stats.sample_steps.sum())
    assert sol.event_ts.shape == (5, 1)
    torch.testing.assert_close(sol.event_ts[:, 0], sol.event_t)
    coarse = no.solve(
        Ball(), balls(), ts, event=no.Event(ground, -1, tol=1e-4), per_sample=True, **TIGHT
    )
    error = (coarse.event_t.detach() - expected).abs()
    assert bool((error <= 1e-4).all()) and float(error.max()) > 1e-12  # located to tol only


def test_bouncing_balls_per_sample() -> None:
    """Five bounces of every ball, each sample restarted from its own event."""
    restitution = 0.8
    y, t0 = balls(), torch.zeros(5, dtype=F64)
    expected_first = impact(HEIGHTS, VELOCITIES)
    bounce = [expected_first]
    speed = torch.sqrt(VELOCITIES**2 + 2 * G * HEIGHTS)
    for k in range(1, 5):
        bounce.append(bounce[-1] + 2 * restitution**k * speed / G)
    elapsed = torch.zeros(5, dtype=F64)
    ts = torch.tensor([0.0, math.inf], dtype=F64)
    for k in range(5):
        # time restarts at 0 for every flight (an autonomous field)
        sol = no.solve(
            Ball(), y, ts, event=no.Event(ground, direction=-1), per_sample=True, **TIGHT
        )
        elapsed = elapsed + sol.event_t
        torch.testing.assert_close(elapsed, bounce[k], rtol=0, atol=1e-10)
        y = sol.event_y.detach() * torch.tensor([0.0, -restitution], dtype=F64)
    del t0


def test_each_sample_matches_its_solve_alone() -> None:
    """Van der Pol samples with different mu; event x = 0 falling. Alone (the batch of one,
    non-per-sample solve) every sample takes the same steps, so times agree to round-off."""
    mu = torch.tensor([0.5, 1.5, 3.0], dtype=F64)
    y0 = torch.tensor([[2.0, 0.0], [1.0, 0.5], [0.5, -1.0]], dtype=F64)

    def vdp(mu):
        return lambda t, y: torch.stack([y[:, 1], mu * (1 - y[:, 0] ** 2) * y[:, 1] - y[:, 0]], 1)

    control = no.PIController(1e-8, 1e-10)
    ts = torch.tensor([0.0, 2.0, math.inf], dtype=F64)
    event = no.Event(lambda t, y: y[:, 0], direction=-1)
    sol = no.solve(vdp(mu), y0, ts, controller=control, event=event, per_sample=True)
    for i in range(3):
        alone = no.solve(
            vdp(mu[i : i + 1]),
            y0[i : i + 1],
            ts,
            controller=control,
            event=no.Event(lambda t, y: y[:, 0], direction=-1),
        )
        torch.testing.assert_close(sol.event_t[i], alone.event_t, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(sol.event_y[i], alone.event_y[0], rtol=1e-12, atol=1e-12)
        assert int(sol.stats.sample_steps[i]) == alone.stats.n_steps
        assert int(sol.stats.sample_rejected[i]) == alone.stats.n_rejected
        assert int(sol.stats.sample_nfe[i]) == alone.stats.nfe
        before = alone.ts.shape[0] - (1 if alone.ts[-1] > alone.event_t else 0)
        torch.testing.assert_close(sol.ys[:before, i], alone.ys[:before, 0])


def test_sample_without_an_event_runs_to_the_end_and_others_hold() -> None:
    ts = torch.linspace(0.0, 1.0, 6, dtype=F64)
    y0 = torch.tensor([[0.3, 0.0], [2.0, 5.0], [1.0, 0.0]], dtype=F64)  # sample 1 stays up
    sol = no.solve(Ball(), y0, ts, event=no.Event(ground, direction=-1), per_sample=True, **TIGHT)
    assert sol.event_mask.tolist() == [True, False, True]
    assert math.isnan(float(sol.event_t[1].detach())) and bool(torch.isnan(sol.event_y[1]).all())
    expected = impact(y0[[0, 2], 0], y0[[0, 2], 1])
    torch.testing.assert_close(sol.event_t[[0, 2]], expected, rtol=0, atol=1e-12)
    assert sol.ys.shape == (6, 3, 2)
    exact = torch.stack([y0[:, 0] + y0[:, 1] * ts[:, None] - G / 2 * ts[:, None] ** 2], -1)
    before = ts[:, None] <= sol.event_t.nan_to_num(math.inf)[None]
    torch.testing.assert_close(sol.ys[..., 0][before], exact[..., 0][before], rtol=0, atol=1e-12)
    # after its event a sample holds its event state
    held = ~before
    assert bool(held.any())
    torch.testing.assert_close(sol.ys[held], sol.event_y[None].expand(6, 3, 2)[held])
    assert sol.event_ts.shape == (3, 1) and math.isnan(float(sol.event_ts[1, 0]))


def test_direction_per_sample() -> None:
    """y = offset + t per sample; sin(pi y) falls through 0 at odd y, rises at even y."""
    offsets = torch.tensor([[0.5], [1.25], [-0.25]], dtype=F64)
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    control = no.PIController(max_step=0.25)
    fn = lambda t, y: torch.sin(math.pi * y[:, 0])  # noqa: E731
    field = lambda t, y: torch.ones_like(y)  # noqa: E731
    for direction, expected in (
        (-1, [0.5, 1.75, 1.25]),
        (1, [1.5, 0.75, 0.25]),
        (0, [0.5, 0.75, 0.25]),
    ):
        sol = no.solve(
            field,
            offsets,
            ts,
            controller=control,
            event=no.Event(fn, direction=direction),
            per_sample=True,
        )
        torch.testing.assert_close(
            sol.event_t, torch.tensor(expected, dtype=F64), atol=1e-12, rtol=0
        )


def test_non_terminal_events_are_recorded_per_sample() -> None:
    rates = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    fn = lambda t, y: torch.sin(math.pi * y[:, 0])  # noqa: E731
    sol = no.solve(
        lambda t, y: rates[:, None].expand_as(y),
        torch.full((3, 1), 0.25, dtype=F64),
        torch.linspace(0.0, 4.0, 5, dtype=F64),
        controller=no.PIController(max_step=0.1),
        event=no.Event(fn, terminal=False),
        per_sample=True,
    )
    assert not bool(sol.event_mask.any()) and bool(torch.isnan(sol.event_t).all())
    # crossings where 0.25 + rate t is an integer, within t <= 4
    for i, rate in enumerate(rates.tolist()):
        k = torch.arange(1, int(0.25 + 4 * rate) + 1, dtype=F64)
        times = (k - 0.25) / rate
        found = sol.event_ts[i][~torch.isnan(sol.event_ts[i])]
        torch.testing.assert_close(found, times, rtol=0, atol=1e-12)
    assert sol.event_ts.shape == (3, 8)
    torch.testing.assert_close(sol.ys[-1, :, 0], 0.25 + 4 * rates)  # every sample went on


@pytest.mark.parametrize("strategy", ["direct", "backsolve"])
@pytest.mark.parametrize("finite", [False, True])
def test_event_gradients_match_the_analytic_ones(strategy: str, finite: bool) -> None:
    """t* = (v0 + S) / g and v(t*) = -S with S = sqrt(v0^2 + 2 g h0)."""
    ball = Ball()
    y0 = balls().requires_grad_(True)
    gradient = no.Direct() if strategy == "direct" else no.Backsolve(rtol=1e-10, atol=1e-12)
    end = 0.6 if finite else math.inf  # finite: samples 1 and 3 have no event before it
    ts = torch.tensor([0.0, 0.25, end], dtype=F64)
    sol = no.solve(
        ball,
        y0,
        ts,
        event=no.Event(ground, direction=-1),
        per_sample=True,
        gradient=gradient,
        **TIGHT,
    )
    mask = sol.event_mask
    weights = torch.arange(1.0, 6.0, dtype=F64)
    loss = (weights * sol.event_t)[mask].sum() + (weights * sol.event_y[:, 1])[mask].sum()
    loss = loss + sol.ys[-1].sum()
    g_y0, g_gravity = torch.autograd.grad(loss, (y0, ball.gravity))
    h0, v0 = HEIGHTS, VELOCITIES
    s = torch.sqrt(v0**2 + 2 * G * h0)
    t_star = (v0 + s) / G
    # the event terms
    d_h = weights * (1 / s - G / s)
    d_v = weights * ((1 + v0 / s) / G - v0 / s)
    d_g = weights * (-(v0 + s) / G**2 + h0 / (s * G) - h0 / s)
    # ys[-1]: (h, v) at min(end, t*): after the event (0, -S); before it the free flight
    t_last = torch.minimum(torch.tensor(end, dtype=F64), t_star)
    out_h = torch.where(mask, 0.0, 1.0) + torch.where(mask, -G / s, 0.0)
    out_v = torch.where(mask, -v0 / s, 1.0 + t_last)
    out_g = torch.where(mask, -h0 / s, -(t_last**2) / 2 - t_last)
    expected_h = torch.where(mask, d_h, 0.0) + out_h
    expected_v = torch.where(mask, d_v, 0.0) + out_v
    expected_g = torch.where(mask, d_g, 0.0).sum() + out_g.sum()
    assert mask.tolist() == ([True, False, True, False, True] if finite else [True] * 5)
    torch.testing.assert_close(g_y0[:, 0], expected_h, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_y0[:, 1], expected_v, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(g_gravity, expected_g, rtol=1e-9, atol=1e-9)


class Decay(torch.nn.Module):
    """A nonlinear, time-dependent field with one rate per sample."""

    def __init__(self, rates: torch.Tensor):
        super().__init__()
        self.rates = torch.nn.Parameter(rates.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        first = -self.rates * y[:, 0] + 0.1 * torch.sin(t) + 0.05 * y[:, 1] ** 2
        return torch.stack([first, y[:, 0] - y[:, 1]], 1)


@pytest.mark.parametrize("strategy", ["direct", "backsolve"])
def test_event_gradients_match_finite_differences(strategy: str) -> None:
    rates = torch.tensor([0.9, 1.3, 0.8], dtype=F64)
    y0 = torch.tensor([[2.0, 0.5], [1.5, -0.2], [2.0, 1.0]], dtype=F64)
    ts = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=F64)  # outputs before and after the events
    control = no.PIController(1e-10, 1e-12)

    def loss_of(field, y0_value):
        gradient = no.Direct() if strategy == "direct" else no.Backsolve(rtol=1e-10, atol=1e-12)
        sol = no.solve(
            field,
            y0_value,
            ts,
            controller=control,
            event=no.Event(lambda t, y: y[:, 0] - 0.5),
            per_sample=True,
            gradient=gradient,
        )
        assert bool(sol.event_mask.all())
        weights = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
        # one loss per sample (samples are independent: one perturbation of every sample
        # at once gives each sample's finite difference)
        outputs = sol.ys[1:].pow(2).sum((0, 2))
        return weights * sol.event_t + 3 * sol.event_y[:, 1] + outputs

    field = Decay(rates)
    y0_leaf = y0.clone().requires_grad_(True)
    g_y0, g_rates = torch.autograd.grad(loss_of(field, y0_leaf).sum(), (y0_leaf, field.rates))
    eps = 1e-6
    with torch.no_grad():
        shifted = [loss_of(Decay(rates + s * eps), y0) for s in (1, -1)]
        torch.testing.assert_close(
            g_rates, (shifted[0] - shifted[1]) / (2 * eps), rtol=1e-5, atol=1e-6
        )
        for j in range(2):
            step = torch.zeros_like(y0)
            step[:, j] = eps
            shifted = [loss_of(field, y0 + s * step) for s in (1, -1)]
            numeric = (shifted[0] - shifted[1]) / (2 * eps)
            torch.testing.assert_close(g_y0[:, j], numeric, rtol=1e-5, atol=1e-6)


def test_odeint_event_and_odeint_per_sample() -> None:
    ball = Ball()
    y0 = balls().requires_grad_(True)
    event_t, states = no.odeint_event(
        ball,
        y0,
        torch.tensor(0.0, dtype=F64),
        event_fn=ground,
        rtol=1e-10,
        atol=1e-12,
        options=dict(per_sample=True),
    )
    assert event_t.shape == (5,) and states.shape == (2, 5, 2)
    torch.testing.assert_close(event_t, impact(HEIGHTS, VELOCITIES), rtol=0, atol=1e-12)
    torch.testing.assert_close(states[0], y0)
    (g,) = torch.autograd.grad(event_t.sum(), y0)
    s = torch.sqrt(VELOCITIES**2 + 2 * G * HEIGHTS)
    torch.testing.assert_close(g[:, 0], 1 / s, rtol=1e-9, atol=1e-9)
    # odeint with event_fn, and the adjoint, per torchdiffeq's contract
    t = torch.tensor([0.0, 1.0], dtype=F64)
    event_t2, states2 = no.odeint(
        ball, y0, t, event_fn=ground, rtol=1e-10, atol=1e-12, options=dict(per_sample=True)
    )
    torch.testing.assert_close(event_t2, event_t)
    torch.testing.assert_close(states2, states)
    event_t3, states3 = no.odeint_adjoint(
        ball, y0, t, event_fn=ground, rtol=1e-10, atol=1e-12, options=dict(per_sample=True)
    )
    torch.testing.assert_close(event_t3, event_t)
    (g3,) = torch.autograd.grad(event_t3.sum() + states3[-1, :, 1].sum(), y0)
    torch.testing.assert_close(g3[:, 0], 1 / s - G / s, rtol=1e-8, atol=1e-8)


def test_per_sample_event_errors() -> None:
    y0 = balls()
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    event = no.Event(ground)
    with pytest.raises(ValueError, match=r"one row of values per sample, shape \(5,\)"):
        no.solve(Ball(), y0, ts, event=no.Event(lambda t, y: y[:3, 0]), per_sample=True)
    with pytest.raises(ValueError, match=r"got shape \(\)"):
        no.solve(Ball(), y0, ts, event=no.Event(lambda t, y: y[:, 0].sum()), per_sample=True)
    with pytest.raises(TypeError, match="must return a tensor"):
        no.solve(Ball(), y0, ts, event=no.Event(lambda t, y: 1.0), per_sample=True)
    with pytest.raises(ValueError, match="supports the explicit Runge-Kutta methods"):
        no.solve(Ball(), y0, ts, event=event, solver="implicit_euler", per_sample=True)
    with pytest.raises(ValueError, match=r"Direct\(\), Backsolve\(\) and Checkpointed"):
        no.solve(Ball(), y0, ts, event=event, gradient=no.Reversible(), per_sample=True)
    with pytest.raises(ValueError, match="with respect to t are not supported"):
        no.solve(Ball(), y0, ts.clone().requires_grad_(True), event=event, per_sample=True)
    with pytest.raises(no.MaxStepsError, match="sample 1 reached max_steps=40"):
        # oscillators of amplitudes 3 and 1: the second never reaches x = 2
        no.solve(
            lambda t, y: torch.stack([y[:, 1], -y[:, 0]], 1),
            torch.tensor([[3.0, 0.0], [1.0, 0.0]], dtype=F64),
            torch.tensor([0.0, math.inf], dtype=F64),
            event=no.Event(lambda t, y: y[:, 0] - 2),
            per_sample=True,
            max_steps=40,
        )


@pytest.mark.parametrize("strategy", ["direct", "backsolve"])
def test_backwards_in_time_and_one_batched_backward_solve(strategy: str) -> None:
    """y' = 1 from t=0 towards -inf: y hits 0 at t* = -y0, so dt*/dy0 = -1. The adjoint's
    backward solve evaluates f for the whole batch at once (one solve, not one per sample)."""
    calls = []

    def field(t, y):
        calls.append(t.shape)
        return torch.ones_like(y) + 0 * y

    y0 = torch.tensor([[1.0], [2.0], [0.5]], dtype=F64, requires_grad=True)
    gradient = no.Direct() if strategy == "direct" else no.Backsolve(params=())
    ts = torch.tensor([0.0, -1.5, -math.inf], dtype=F64)
    sol = no.solve(
        field, y0, ts, event=no.Event(lambda t, y: y[:, 0]), per_sample=True, gradient=gradient
    )
    torch.testing.assert_close(sol.event_t, -y0[:, 0].detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.ys[1, :, 0], torch.tensor([0.0, 0.5, 0.0], dtype=F64))
    forward_calls = len(calls)
    (g,) = torch.autograd.grad(sol.event_t.sum() + sol.ys[1].sum(), y0)
    torch.testing.assert_close(g[:, 0], torch.tensor([-1.0, 0.0, -1.0], dtype=F64))
    backward_calls = calls[forward_calls:]
    assert backward_calls and all(shape == (3,) for shape in backward_calls)
    if strategy == "backsolve":
        assert 0 < sol.stats.n_steps_backward < 20


def test_float32_sample_shapes_and_several_event_values() -> None:
    """States (batch, 2, 2) in float32; the event watches two values per sample."""
    y0 = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[1.5, 0.0], [0.0, 0.9]]])
    rates = torch.tensor([1.0, 2.0])
    sol = no.solve(
        lambda t, y: -rates[:, None, None] * y,
        y0,
        torch.tensor([0.0, math.inf]),
        event=no.Event(lambda t, y: torch.stack([y[:, 0, 0], y[:, 1, 1]], 1) - 0.5),
        per_sample=True,
    )
    first = torch.minimum(y0[:, 0, 0], y0[:, 1, 1])
    assert sol.event_t.dtype == torch.float32 and sol.event_y.shape == (2, 2, 2)
    torch.testing.assert_close(sol.event_t, torch.log(first / 0.5) / rates, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["direct", "backsolve"])
def test_gradients_with_respect_to_the_event_functions_parameters(strategy: str) -> None:
    """A learned landing height per sample (``floor``, used only by the event function):
    h0 + v0 t* - g t*^2 / 2 = floor gives dt*/d floor = 1 / (v0 - g t*) = -1 / |v(t*)|; the
    event state's height is floor itself and its velocity v0 - g t*, as are the outputs
    held after the event."""
    ball = Ball()
    floor = torch.tensor([0.2, -0.5, 0.0, 1.0, -0.1], dtype=F64, requires_grad=True)
    gradient = no.Direct() if strategy == "direct" else no.Backsolve(ball)
    span = torch.tensor([0.0, 5.0], dtype=F64)
    sol = no.solve(ball, balls(), span, event=no.Event(lambda t, y: y[:, 0] - floor), **TIGHT,
                   gradient=gradient, per_sample=True)  # fmt: skip
    t_star = impact(HEIGHTS - floor.detach(), VELOCITIES)
    torch.testing.assert_close(sol.event_t, t_star, rtol=1e-10, atol=0)
    speed = G * t_star - VELOCITIES
    (grad,) = torch.autograd.grad(sol.event_t.sum(), floor, retain_graph=True)
    torch.testing.assert_close(grad, -1 / speed, rtol=1e-8, atol=0)
    (grad,) = torch.autograd.grad(sol.event_y[:, 0].sum() + sol.ys[-1, :, 1].sum(), floor)
    torch.testing.assert_close(grad, 1 + G / speed, rtol=1e-8, atol=0)
