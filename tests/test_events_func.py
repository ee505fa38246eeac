"""Reverse-mode torch.func transforms (grad, vjp, jacrev) through solves that end at an event:
event times and states against closed forms and torch.autograd, in every event mode; second
derivatives through an event refused (float64)."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no

F64 = torch.float64
G = 9.81
TIGHT = dict(controller=no.PIController(rtol=1e-11, atol=1e-12))
OPEN = torch.tensor([0.0, math.inf], dtype=F64)


def _decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


def _crossing(level: float | torch.Tensor) -> no.Event:
    """y falls through ``level`` (one problem: y[0]; per sample: column 0)."""
    return no.Event(lambda t, y: (y[:, 0] if y.ndim == 2 else y[0]) - level, direction=-1)


@pytest.mark.parametrize("mode", ["one", "per_sample", "odeint_event"])
def test_grad_of_the_decay_threshold_time_is_the_closed_form(mode: str) -> None:
    """y' = -y from y0 falls through c at t* = log(y0 / c): torch.func.grad gives
    dt*/dy0 = 1/y0, with one problem, per sample (each sample its own) and odeint_event."""
    y0 = torch.tensor([[2.0], [3.0], [5.0]] if mode == "per_sample" else [2.0], dtype=F64)

    def event_times(y: torch.Tensor) -> torch.Tensor:
        if mode == "odeint_event":
            t_event, _ = no.odeint_event(
                _decay, y, OPEN[0], event_fn=lambda t, y: y[0] - 0.5, rtol=1e-11, atol=1e-12
            )
            return t_event
        sol = no.solve(_decay, y, OPEN, event=_crossing(0.5), per_sample=mode == "per_sample")
        return sol.event_t

    t_star = event_times(y0)
    torch.testing.assert_close(t_star.reshape(-1), torch.log(y0 / 0.5).reshape(-1))
    grads = torch.func.grad(lambda y: event_times(y).sum())(y0)
    torch.testing.assert_close(grads, 1 / y0, rtol=1e-7, atol=0)


@pytest.mark.parametrize("per_sample", [False, True])
def test_jacrev_of_event_time_and_state_equals_torch_autograd(per_sample: bool) -> None:
    """torch.func.jacrev and vjp of (event time, event state) of a nonlinear field equal
    torch.autograd.functional.jacobian of the same function (the EventGradient backward
    outside torch.func)."""
    y0 = torch.tensor([[1.0, 0.2], [1.2, -0.1]] if per_sample else [1.0, 0.2], dtype=F64)
    weight = torch.tensor([[0.1, 1.0], [-1.0, -0.2]], dtype=F64)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ weight.T)

    def event(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sol = no.solve(field, y, OPEN, event=_crossing(0.3), per_sample=per_sample)
        return sol.event_t, sol.event_y

    by_func = torch.func.jacrev(event)(y0)
    by_autograd = torch.autograd.functional.jacobian(event, y0)
    for got, expected in zip(by_func, by_autograd, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)
    outputs, pullback = torch.func.vjp(event, y0)
    (pulled,) = pullback(tuple(torch.ones_like(out) for out in outputs))
    expected = sum(jacobian.reshape(-1, *y0.shape).sum(0) for jacobian in by_autograd)
    torch.testing.assert_close(pulled, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("per_sample", [False, True])
def test_falling_ball_impact_time_gradient_in_the_height(per_sample: bool) -> None:
    """A ball dropped from h0 lands at t* = sqrt(2 h0 / g): torch.func.grad of t* in h0 is
    1/sqrt(2 g h0) (a tuple state for one problem, a batch of balls per sample), and
    jacrev's Jacobian of the batch's landing times is that diagonal."""
    if per_sample:
        heights = torch.tensor([1.0, 2.0, 5.0], dtype=F64)

        def landing(h: torch.Tensor) -> torch.Tensor:
            y0 = torch.stack([h, torch.zeros_like(h)], 1)
            fall = lambda t, y: torch.stack([y[:, 1], torch.full_like(y[:, 1], -G)], 1)  # noqa: E731
            event = no.Event(lambda t, y: y[:, 0], direction=-1)
            return no.solve(fall, y0, OPEN, event=event, per_sample=True).event_t

        jacobian = torch.func.jacrev(landing)(heights)
        torch.testing.assert_close(jacobian, torch.diag(1 / torch.sqrt(2 * G * heights)))
    else:
        heights = torch.tensor(1.5, dtype=F64)

        def landing(h: torch.Tensor) -> torch.Tensor:
            fall = lambda t, s: (s[1], torch.full_like(s[1], -G))  # noqa: E731
            event = no.Event(lambda t, s: s[0], direction=-1)
            return no.solve(fall, (h, torch.zeros_like(h)), OPEN, event=event).event_t

    grads = torch.func.grad(lambda h: landing(h).sum())(heights)
    torch.testing.assert_close(grads, 1 / torch.sqrt(2 * G * heights))


@pytest.mark.parametrize("per_sample", [False, True])
def test_grad_of_a_learned_threshold(per_sample: bool) -> None:
    """The event function's own tensor (a threshold c of y' = -y) gets its gradient under
    torch.func.grad: t* = log(y0 / c), dt*/dc = -1/c per event."""
    y0 = torch.tensor([[2.0], [3.0]] if per_sample else [2.0], dtype=F64)
    level = torch.tensor(0.5, dtype=F64)

    def event_times(c: torch.Tensor) -> torch.Tensor:
        sol = no.solve(_decay, y0, OPEN, event=_crossing(c), per_sample=per_sample, **TIGHT)
        return sol.event_t.sum()

    grad = torch.func.grad(event_times)(level)
    torch.testing.assert_close(grad, torch.tensor(-len(y0) / 0.5, dtype=F64))


@pytest.mark.parametrize("per_sample", [False, True])
def test_grad_of_the_field_parameters_by_functional_call(per_sample: bool) -> None:
    """y' = w y (w = -k < 0, a Linear layer's weight passed by torch.func.functional_call)
    falls through c at t* = log(y0 / c) / k: dt*/dw = t*/k per event."""
    layer = torch.nn.Linear(1, 1, bias=False, dtype=F64)
    params = {"weight": torch.tensor([[-1.5]], dtype=F64)}
    y0 = torch.tensor([[2.0], [4.0]] if per_sample else [2.0], dtype=F64)

    def event_times(p: dict[str, torch.Tensor]) -> torch.Tensor:
        field = lambda t, y: torch.func.functional_call(layer, p, (y,))  # noqa: E731
        sol = no.solve(field, y0, OPEN, event=_crossing(0.5), per_sample=per_sample, **TIGHT)
        return sol.event_t.sum()

    t_star = torch.log(y0[..., 0] / 0.5) / 1.5
    grad = torch.func.grad(event_times)(params)["weight"]
    torch.testing.assert_close(grad, (t_star / 1.5).sum().reshape(1, 1))


def test_grad_with_respect_to_the_start_time() -> None:
    """t* = t0 + log(y0 / c) for y' = -y: dt*/dt0 = 1 under torch.func.grad, through solve's
    ts and through odeint_event's t0."""

    def by_solve(t0: torch.Tensor) -> torch.Tensor:
        ts = torch.stack([t0, torch.tensor(math.inf, dtype=F64)])
        return no.solve(_decay, torch.tensor([2.0], dtype=F64), ts, event=_crossing(0.5)).event_t

    def by_odeint_event(t0: torch.Tensor) -> torch.Tensor:
        y0 = torch.tensor([2.0], dtype=F64)
        return no.odeint_event(_decay, y0, t0, event_fn=lambda t, y: y[0] - 0.5)[0].sum()

    t0 = torch.tensor(0.3, dtype=F64)
    for event_time in (by_solve, by_odeint_event):
        torch.testing.assert_close(torch.func.grad(event_time)(t0), torch.tensor(1.0, dtype=F64))


def _event_time(y: torch.Tensor) -> torch.Tensor:
    return no.solve(_decay, y, OPEN, event=_crossing(0.5), **TIGHT).event_t


@pytest.mark.parametrize(
    "second", ["hessian", "jacrev(jacrev)", "jacfwd(jacrev)", "jacfwd(jacfwd)", "grad(grad)"]
)
def test_second_derivatives_through_an_event_are_refused(second: str) -> None:
    """EventGradient's rules take the partials as constants of the located event, so a
    derivative of them would be wrong (jacrev(jacrev) gave 0 for d2t*/dy0^2 = -1/y0^2):
    nested torch.func derivatives are refused before solving, with the reason."""
    func = torch.func
    transforms = {
        "hessian": func.hessian(_event_time),
        "jacrev(jacrev)": func.jacrev(func.jacrev(_event_time)),
        "jacfwd(jacrev)": func.jacfwd(func.jacrev(_event_time)),
        "jacfwd(jacfwd)": func.jacfwd(func.jacfwd(_event_time)),
        "grad(grad)": func.grad(lambda y: func.grad(lambda z: _event_time(z).sum())(y).sum()),
    }
    with pytest.raises(ValueError, match="second derivatives through an event .* constants"):
        transforms[second](torch.tensor([2.0], dtype=F64))


def test_second_derivatives_through_an_event_by_autograd_raise() -> None:
    """torch.autograd.grad with create_graph=True gives the right first derivative of
    L = t*^2 (2 t*/y0) and raises where that derivative is differentiated again (it
    gave 0.5 where d2L/dy0^2 = (2 - 2 t*)/y0^2 = -0.193 at y0 = 2), also through
    torch.func.grad inside torch.autograd and through the event function's tensors;
    finite differences of torch.func.grad (the refusal's advice) give
    d2t*/dy0^2 = -1/y0^2."""
    y0 = torch.tensor([2.0], dtype=F64, requires_grad=True)
    (first,) = torch.autograd.grad(_event_time(y0).pow(2).sum(), y0, create_graph=True)
    torch.testing.assert_close(first, 2 * math.log(4.0) / y0.detach())
    with pytest.raises(RuntimeError, match="second derivatives through an event"):
        torch.autograd.grad(first.sum(), y0)
    inner = torch.func.grad(lambda y: _event_time(y).sum())(y0)
    with pytest.raises(RuntimeError, match="second derivatives through an event"):
        torch.autograd.grad(inner.sum(), y0)
    # through the event function's own tensor (a threshold c): 8 where 2/c^2 + 2 t*/c^2 = 19.1
    level = torch.tensor(0.5, dtype=F64, requires_grad=True)
    event = _crossing(level)
    t_star = no.solve(_decay, y0.detach(), OPEN, event=event, **TIGHT).event_t
    (first,) = torch.autograd.grad(t_star.pow(2), level, create_graph=True)
    torch.testing.assert_close(first, torch.tensor(-2 * math.log(4.0) / 0.5, dtype=F64))
    with pytest.raises(RuntimeError, match="second derivatives through an event"):
        torch.autograd.grad(first, level)
    step = 1e-4
    grad = torch.func.grad(lambda y: _event_time(y).sum())
    second = (grad(y0.detach() + step) - grad(y0.detach() - step)) / (2 * step)
    torch.testing.assert_close(second, torch.tensor([-0.25], dtype=F64), rtol=1e-6, atol=0)
