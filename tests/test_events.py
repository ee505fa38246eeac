"""Events: location against analytic times, direction, non-terminal events, gradients."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no

G = 9.81
F64 = torch.float64


def _ball(t, state):
    height, velocity = state
    return velocity, torch.full_like(velocity, -G)


def _ground(t, state):
    return state[0]


def test_bouncing_ball_matches_analytic_bounce_times() -> None:
    restitution, height = 0.8, torch.tensor(1.0, dtype=F64)
    velocity = torch.tensor(0.0, dtype=F64)
    t0 = 0.0
    impact_speed = math.sqrt(2 * G)
    expected = [math.sqrt(2 / G)]
    for k in range(1, 5):
        expected.append(expected[-1] + 2 * restitution**k * impact_speed / G)
    found = []
    for _ in range(5):
        sol = no.solve(
            _ball,
            (height, velocity),
            torch.tensor([t0, math.inf], dtype=F64),
            event=no.Event(_ground, direction=-1),
            controller=no.PIController(1e-10, 1e-12),
        )
        t0 = float(sol.event_t)
        found.append(t0)
        height, velocity = sol.event_y[0].detach(), -restitution * sol.event_y[1].detach()
        assert abs(float(sol.event_y[0])) < 1e-9
    assert found == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("gradient", ["direct", "backsolve", "checkpointed"])
def test_event_time_gradient_matches_finite_differences(gradient: str) -> None:
    """Time for y' = -k y from y0 to reach 1/4 of y0... with a parameter-dependent field."""
    k = torch.tensor(0.7, dtype=F64, requires_grad=True)
    y0 = torch.tensor([2.0, 0.5], dtype=F64, requires_grad=True)

    def field(t, y):
        return torch.stack([-k * y[0] + 0.1 * torch.sin(t), y[0] - y[1]])

    def event_time(k_value, y0_value):
        strategy = {
            "direct": no.Direct(),
            "backsolve": no.Backsolve(params=(k,)),
            "checkpointed": no.Checkpointed(params=(k,)),
        }[gradient]
        sol = no.solve(
            field,
            y0_value,
            torch.tensor([0.0, 10.0], dtype=F64),
            event=no.Event(lambda t, y: y[0] - 0.5),
            controller=no.PIController(1e-11, 1e-12),
            gradient=strategy,
        )
        return sol.event_t, sol.event_y

    t_event, y_event = event_time(k, y0)
    loss = t_event + 3 * y_event[1]
    grads = torch.autograd.grad(loss, (k, y0))
    eps = 1e-6
    with torch.no_grad():
        for i, analytic in enumerate([grads[0], *grads[1]]):
            values = []
            for s in (1, -1):
                k_s, y0_s = k.detach().clone(), y0.detach().clone()
                if i == 0:
                    k_s += s * eps
                else:
                    y0_s[i - 1] += s * eps
                k.data, saved = k_s, k.data
                t_s, y_s = event_time(k, y0_s)
                k.data = saved
                values.append(float(t_s + 3 * y_s[1]))
            numeric = (values[0] - values[1]) / (2 * eps)
            assert float(analytic) == pytest.approx(numeric, rel=1e-5, abs=1e-7)


def test_direction_filters_crossings() -> None:
    f = lambda t, y: torch.ones_like(y)  # noqa: E731  y = t, so sin(pi y) has roots at 1, 2, 3
    g = lambda t, y: torch.sin(math.pi * y)  # noqa: E731
    y0 = torch.tensor([0.5], dtype=F64)
    ts = torch.tensor([0.0, 10.0], dtype=F64)
    # y is linear, so the error estimate allows one huge step; crossings are looked for at
    # step ends, so two crossings within one step would cancel: cap the step.
    control = no.PIController(max_step=0.25)
    falling = no.solve(f, y0, ts, event=no.Event(g, direction=-1), controller=control)
    rising = no.solve(f, y0, ts, event=no.Event(g, direction=1), controller=control)
    either = no.solve(f, y0, ts, event=no.Event(g), controller=control)
    assert float(falling.event_t) == pytest.approx(0.5, abs=1e-12)  # y crosses 1 at t=0.5
    assert float(rising.event_t) == pytest.approx(1.5, abs=1e-12)
    assert float(either.event_t) == pytest.approx(0.5, abs=1e-12)


def test_non_terminal_events_record_every_crossing_and_finish() -> None:
    f = lambda t, y: torch.ones_like(y)  # noqa: E731
    g = lambda t, y: torch.sin(math.pi * y)  # noqa: E731
    ts = torch.linspace(0, 4, 9, dtype=F64)
    sol = no.solve(
        f,
        torch.tensor([0.25], dtype=F64),
        ts,
        event=no.Event(g, terminal=False),
        controller=no.PIController(max_step=0.25),
    )
    assert sol.event_t is None
    torch.testing.assert_close(sol.event_ts, torch.tensor([0.75, 1.75, 2.75, 3.75], dtype=F64))
    assert sol.ys.shape == (9, 1)


def test_terminal_event_truncates_outputs() -> None:
    ts = torch.linspace(0, 2, 5, dtype=F64)
    sol = no.solve(
        lambda t, y: -torch.ones_like(y),
        torch.tensor([1.2], dtype=F64),
        ts,
        event=no.Event(lambda t, y: y),
    )
    assert float(sol.event_t) == pytest.approx(1.2, abs=1e-12)
    torch.testing.assert_close(sol.ts, ts[:3])
    torch.testing.assert_close(sol.ys[:, 0], 1.2 - ts[:3])


@pytest.mark.parametrize("gradient", ["direct", "backsolve", "checkpointed"])
def test_an_output_exactly_at_a_terminal_event_is_kept(gradient: str) -> None:
    """A step lands on t = 0.5 (step_t) where the event t - 0.5 crosses: the output there is
    the event state, kept by every gradient strategy, with the same gradients."""
    strategy = {
        "direct": no.Direct(),
        "backsolve": no.Backsolve(params=()),
        "checkpointed": no.Checkpointed(params=()),
    }[gradient]
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    event = no.Event(lambda t, y: t - 0.5 + 0 * y[0], direction=1)
    sol = no.solve(lambda t, y: -y, y0, ts, event=event, step_t=[0.5], gradient=strategy)
    assert float(sol.event_t.detach()) == 0.5
    torch.testing.assert_close(sol.ts, ts[:3])
    torch.testing.assert_close(sol.ys[-1], sol.event_y)
    (sol.ys.sum() + sol.event_y.sum()).backward()
    expected = 1 + math.exp(-0.25) + 2 * math.exp(-0.5)  # d/dy0 of y0 (1 + e^-.25 + 2 e^-.5)
    assert float(y0.grad) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("gradient", [no.Direct(), no.Backsolve(()), no.Checkpointed(())])
def test_time_gradients_when_a_terminal_event_ends_the_outputs(gradient) -> None:
    """ts requiring grad and an event before ts[-1] (x = cos(sqrt(2) t), zero at 1.11):
    d/dts of x(ts[1]) + event_t, the later times not reached, for every strategy."""
    w = math.sqrt(2.0)
    ts = torch.tensor([0.0, 0.5, 5.0], dtype=F64, requires_grad=True)
    sol = no.solve(lambda t, y: torch.stack([y[1], -2.0 * y[0]]),
                   torch.tensor([1.0, 0.0], dtype=F64), ts, event=no.Event(lambda t, y: y[0]),
                   gradient=gradient, controller=no.PIController(1e-10, 1e-12))  # fmt: skip
    assert sol.ys.shape[0] == 2  # the outputs end at the event
    (grad,) = torch.autograd.grad(sol.ys[1, 0] + sol.event_t, ts)
    expected = [w * math.sin(w * 0.5) + 1.0, -w * math.sin(w * 0.5), 0.0]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=F64), rtol=1e-7, atol=1e-8)


def test_no_event_before_the_end() -> None:
    sol = no.solve(
        lambda t, y: -y,
        torch.tensor([1.0]),
        torch.tensor([0.0, 1.0]),
        event=no.Event(lambda t, y: y),
    )
    assert sol.event_t is None and sol.event_ts.numel() == 0
    assert sol.ys.shape == (2, 1)


def test_event_argument_errors() -> None:
    with pytest.raises(ValueError, match="direction"):
        no.Event(lambda t, y: y, direction=2)
    with pytest.raises(ValueError, match="NaN or inf"):
        no.solve(lambda t, y: y, torch.ones(1), torch.tensor([0.0, math.inf]))
    # an event lets the last time be infinite, never the initial one (ts of one time)
    event = no.Event(lambda t, y: y - 0.5)
    for ts in (torch.tensor([math.inf]), torch.tensor([-math.inf, 0.0])):
        with pytest.raises(ValueError, match="NaN or inf"):
            no.solve(lambda t, y: -y, torch.ones(1), ts, event=event)


def test_event_options_are_validated() -> None:
    """A NaN ``tol`` would stop the location at once (t = the step's end, far from the
    event) and a string ``terminal`` would count as True: both are refused where the Event
    is made."""
    for tol in (math.nan, math.inf, 0.0, -1e-3):
        with pytest.raises(ValueError, match="tol must be a positive finite"):
            no.Event(_ground, tol=tol)
    for tol in ("1e-3", True):
        with pytest.raises(TypeError, match="tol must be a number"):
            no.Event(_ground, tol=tol)
    for terminal in ("False", None, 0):
        with pytest.raises(TypeError, match="terminal must be True or False"):
            no.Event(_ground, terminal=terminal)
    sol = no.solve(  # a valid tol: the time to within it
        lambda t, y: -y,
        torch.ones(1, dtype=F64),
        torch.tensor([0.0, 2.0], dtype=F64),
        event=no.Event(lambda t, y: y[0] - 0.5, tol=1e-3),
    )
    assert abs(float(sol.event_t) - math.log(2)) <= 1e-3


@pytest.mark.parametrize("per_sample", [False, True])
def test_complex_event_values_are_a_type_error(per_sample: bool) -> None:
    y0 = torch.ones(1, 1, dtype=F64) if per_sample else torch.ones(1, dtype=F64)
    event = no.Event(lambda t, y: (y[..., 0] - 0.5).to(torch.complex128))
    with pytest.raises(TypeError, match="must return real values"):
        no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 2.0], dtype=F64), event=event,
                 per_sample=per_sample)  # fmt: skip


def test_an_event_function_that_stays_zero_fires_where_it_reaches_zero() -> None:
    """relu(height) falls to 0 at the landing and stays 0: the event is the landing, not the
    end of the step that crossed (0.67 s later), in every loop."""
    landing = math.sqrt(2 / G)
    event = no.Event(lambda t, s: torch.relu(s[0]), direction=-1)
    span = torch.tensor([0.0, 5.0], dtype=F64)
    start = (torch.tensor(1.0, dtype=F64), torch.tensor(0.0, dtype=F64))
    sol = no.solve(_ball, start, span, event=event)
    assert abs(float(sol.event_t) - landing) < 1e-12
    flat = torch.tensor([1.0, 0.0], dtype=F64)

    def ball(t, s):  # one tensor state (height, velocity), or a batch of them
        return torch.stack([s[..., 1], torch.full_like(s[..., 1], -G)], -1)

    device = no.solve(ball, flat, span, event=event, device_loop=True)
    assert abs(float(device.event_t) - landing) < 1e-12
    heights = torch.tensor([1.0, 2.0], dtype=F64)
    y0 = torch.stack([heights, torch.zeros(2, dtype=F64)], 1)
    rows = no.Event(lambda t, s: torch.relu(s[:, 0]), direction=-1)
    per = no.solve(ball, y0, span, event=rows, per_sample=True)
    torch.testing.assert_close(per.event_t, torch.sqrt(2 * heights / G), rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["rk4", "dopri8", "adaptive_heun", "heun3"])
def test_direct_gradients_through_a_step_with_an_event(method: str) -> None:
    """Methods whose dense output evaluates f(t1, y1) or extra stages lazily: the location
    (without a graph) must not leave those without their derivatives, which the event state,
    the outputs in that step and every later step (f1 starts the next step) reuse. For the
    linear y' = -0.7 y the computed y(T) is y0 times a constant, so dy(T)/dy0 = y(T)/y0."""
    # (adaptive Heun's first-order estimate takes ~4000 steps at the default tolerances)
    adaptive = no.PIController(rtol=1e-4, atol=1e-6)
    controller = no.FixedGrid(step_size=0.1) if method in ("rk4", "heun3") else adaptive
    y0 = torch.tensor([1.0], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0, 2.0], dtype=F64)
    event = no.Event(lambda t, y: y[0] - 0.8, terminal=False)
    sol = no.solve(lambda t, y: -0.7 * y, y0, ts, solver=method, controller=controller,
                   event=event)  # fmt: skip
    assert sol.event_ts.numel() == 1
    (grad,) = torch.autograd.grad(sol.ys[-1, 0], y0)
    torch.testing.assert_close(grad[0], sol.ys[-1, 0].detach(), rtol=1e-14, atol=0)
    # a terminal event: d t*/d v0 of the falling ball is 1 / g, and the output before it
    # in the same step has d h(0.3)/d v0 = 0.3
    start = torch.tensor([1.0, 0.0], dtype=F64, requires_grad=True)
    sol = no.solve(
        lambda t, s: torch.stack([s[1], torch.full_like(s[1], -G)]),
        start,
        torch.tensor([0.0, 0.3, 5.0], dtype=F64),
        solver=method,
        controller=controller,
        event=no.Event(lambda t, s: s[0], direction=-1),
    )
    (grad_t,) = torch.autograd.grad(sol.event_t, start, retain_graph=True)
    (grad_h,) = torch.autograd.grad(sol.ys[1, 0], start)
    exact_t = torch.tensor([1 / math.sqrt(2 * G), 1 / G], dtype=F64)
    torch.testing.assert_close(grad_t, exact_t, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_h, torch.tensor([1.0, 0.3], dtype=F64), rtol=1e-12, atol=1e-14)


class _Decay(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.5, dtype=F64))

    def forward(self, t, y):
        return -self.rate * y


@pytest.mark.parametrize("mode", ["direct", "backsolve", "checkpointed", "device_loop"])
def test_gradients_with_respect_to_the_event_functions_parameters(mode: str) -> None:
    """y = e^(-k t) reaches a learned threshold c at t* = ln(1 / c) / k: dt*/dc = -1 / (c k),
    dt*/dk = -t* / k; the event state is c (d/dc = 1, d/dk = 0). Each strategy agrees, and
    torch.autograd.gradcheck confirms d t*/d c."""
    func = _Decay()
    strategies = dict(backsolve=no.Backsolve(func), checkpointed=no.Checkpointed(func))
    options = dict(gradient=strategies.get(mode), device_loop=mode == "device_loop")
    options.update(controller=no.PIController(rtol=1e-12, atol=1e-12))
    span = torch.tensor([0.0, 10.0], dtype=F64)

    def solve(c):
        event = no.Event(lambda t, y: y[0] - c)
        return no.solve(func, torch.ones(1, dtype=F64), span, event=event, **options)

    c = torch.tensor(0.4, dtype=F64, requires_grad=True)
    sol = solve(c)
    t_star = math.log(1 / 0.4) / 0.5
    grads = torch.autograd.grad(sol.event_t + 3 * sol.event_y[0], (c, func.rate))
    torch.testing.assert_close(grads[0], torch.tensor(-1 / 0.2 + 3, dtype=F64), rtol=1e-9, atol=0)
    torch.testing.assert_close(grads[1], torch.tensor(-t_star / 0.5, dtype=F64), rtol=1e-9, atol=0)
    assert torch.autograd.gradcheck(lambda c: solve(c).event_t, (c,), atol=1e-6)


def _nan_after(t0: float, window: float = math.inf):
    """y[..., 0] - 0.5, NaN for t in (t0, t0 + window) (whatever t's shape)."""

    def fn(t, y):
        t = torch.as_tensor(t, dtype=F64)
        return torch.where((t > t0) & (t < t0 + window), math.nan, y[..., 0] - 0.5)

    return fn


@pytest.mark.parametrize(
    "mode", [{}, {"device_loop": True}, {"compile": True}, {"per_sample": True}]
)
# (the loop's check of the event values; with an event compile=True compiles the steps)
@pytest.mark.usefixtures("steps_traced_only")
def test_an_event_function_turning_nan_mid_solve_is_named(mode: dict) -> None:
    """A NaN never changes sign, so an event function that turns NaN could never fire (and
    the solve ended at ts[-1] without a word): every loop raises, naming the time of the
    first NaN value (a step's end, the first past 0.3)."""
    y0 = torch.ones(2, 1, dtype=F64) if mode.get("per_sample") else torch.ones(1, dtype=F64)
    span = torch.tensor([0.0, 2.0], dtype=F64)
    label = "of sample 0 " if mode.get("per_sample") else ""
    with pytest.raises(ValueError, match=f"event function {label}returns NaN at t=0\\.3"):
        no.solve(lambda t, y: -y, y0, span, event=no.Event(_nan_after(0.3)), **mode)


@pytest.mark.parametrize("per_sample", [False, True])
def test_an_event_function_nan_only_where_the_crossing_is_located_is_named(
    per_sample: bool,
) -> None:
    """NaN only within 1e-6 of the crossing at ln 2 (between the steps' ends): the
    location's own evaluations find it, and the solve raises rather than return a time
    located on NaN values."""
    y0 = torch.ones(1, 1, dtype=F64) if per_sample else torch.ones(1, dtype=F64)
    event = no.Event(_nan_after(math.log(2) - 1e-6, 2e-6))
    with pytest.raises(ValueError, match="returns NaN at t=0\\.693"):
        no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 2.0], dtype=F64), event=event,
                 per_sample=per_sample)  # fmt: skip


def test_a_nan_state_is_the_solvers_failure_not_the_event_functions() -> None:
    """A fixed step that makes the state NaN makes the event values NaN too: the solve
    reports the non-finite state, as without an event."""
    field = lambda t, y: torch.where(torch.as_tensor(t) > 0.5, y * math.nan, -y)  # noqa: E731
    with pytest.raises(no.NonFiniteError, match="the solution contains NaN"):
        no.solve(field, torch.ones(1, dtype=F64), torch.tensor([0.0, 2.0], dtype=F64),
                 solver=no.RK4(), controller=no.FixedGrid(0.1),
                 event=no.Event(lambda t, y: y[0] - 0.1))  # fmt: skip


@pytest.mark.parametrize("per_sample", [False, True])
def test_an_empty_event_function_is_refused(per_sample: bool) -> None:
    """No element can cross zero: refused at the first evaluation rather than never fired
    (per sample, a (batch, 0) result passes the per-row shape check)."""
    y0 = torch.ones(2, 1, dtype=F64) if per_sample else torch.ones(1, dtype=F64)
    event = no.Event(lambda t, y: y[..., :0])
    with pytest.raises(ValueError, match=r"returned an empty tensor \(shape \((0,|2, 0)\)\)"):
        no.solve(lambda t, y: -y, y0, torch.tensor([0.0, 2.0], dtype=F64), event=event,
                 per_sample=per_sample)  # fmt: skip


def test_event_direction_must_be_an_int() -> None:
    """1.0 and True compare equal to 1, but a direction is one of the ints -1, 0, 1."""
    for direction in (1.0, -1.0, 0.0, True, False, "1"):
        with pytest.raises(TypeError, match="direction must be the int -1, 0 or 1"):
            no.Event(_ground, direction=direction)
    assert no.Event(_ground, direction=-1).direction == -1
