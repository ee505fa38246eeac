"""The implicit-function derivative of event times, one for every mode and gradient strategy.

For a row with event function g, its event time t* solves g(t*, y(t*); p) = 0. With the
slope s = dg/dt + dg/dy . f(t*, y*) (the rate of g along the solution) the event time's
tangent is dt* = -(dg/dy . ydot(t*) + dg/dp . pdot) / s, where ydot(t*) is the state's
tangent at the fixed time t*, and the event state's is ydot(t*) + f(t*, y*) dt*. Forward
mode (``EventGradient.jvp``, ``with_event_parameters``) applies this map, reverse mode
(``EventGradient.backward``) its transpose; both take the partials from ``_partials`` and
divide by the slope in ``_along``. The rules are first derivatives: they take the partials as
constants of the located event, so a derivative of them raises (``SECOND_DERIVATIVES``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._autograd import FirstDerivativeOnly, FirstOrder
from ._event_tracker import Events
from ._host import forward_level_active, forward_mode, transform_active

# why a derivative of the event's derivative is refused (a backward through
# ``EventGradient.backward``; ``refuse_under_transforms`` under nested torch.func transforms)
SECOND_DERIVATIVES = (
    "second derivatives through an event (torch.func.hessian, jacrev(jacrev), "
    "jacfwd(jacrev), jacfwd(jacfwd), torch.autograd.grad with create_graph=True then "
    "differentiated) are not supported: the event time's derivative "
    "-(dg/dy . ydot + dg/dp . pdot) / (dg/dt + dg/dy . f) takes dg/dy, f(t*, y*) and the "
    "slope as constants of the located event, so a derivative of it would miss how they "
    "move with the event. Take first derivatives there (torch.func.grad, jacrev, vjp, jvp, "
    "jacfwd, torch.autograd.grad), and second ones by finite differences of them"
)


class EventGradient(torch.autograd.Function):
    """The implicit-function derivative of every row's event time (a sample's, or the one
    problem's: a batch of one), rerouted through its state at the event; the one event
    derivative of every mode and gradient strategy.

    For sample i with g_i(t*_i, y_i(t*_i)) = 0, in forward mode the tangent ydot_i of the
    state at t*_i gives dt*_i = -(dg/dy . ydot_i) / s_i and the event state's tangent
    ydot_i + f dt*_i; in reverse mode the incoming gradients of t*_i and y_i(t*_i) become
    one gradient of y_i(t*_i): grad_y - (grad_t + grad_y . f) / s_i dg/dy (the transpose),
    with s_i = dg/dt + dg/dy . f. Samples without an event pass the state's derivative
    through (and the time's is zero). The event function must treat samples independently
    (row i of its values depends on sample i only). Both rules run under ``torch.func``
    (grad, vjp, jacrev, jvp, jacfwd: ``_partials`` takes its vector-Jacobian product by
    ``torch.func.vjp`` there); a derivative of the backward's result raises.
    """

    generate_vmap_rule = True  # (jacfwd's vmap over the tangents, jacrev's over cotangents)

    @staticmethod
    def forward(events: Events, func: Callable, t_event, y_event):
        return t_event.detach().clone(), y_event.detach().clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        events, func, t_event, y_event = inputs
        ctx.events = events
        ctx.func = func
        ctx.save_for_backward(t_event, y_event)
        ctx.save_for_forward(t_event, y_event)

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        events: Events = ctx.events
        t_event, y_event = ctx.saved_tensors
        _, f, dg_dy, slope = _partials(events, ctx.func, t_event, y_event, refuse_flat=True)
        grad_t = torch.where(events.mask, grad_t.to(torch.float64), 0.0)
        coefficient = _along(events.mask, grad_t + _dot(grad_y, f), slope)
        grad_y = grad_y + coefficient.to(y_event.real.dtype)[:, None] * dg_dy
        if torch.is_grad_enabled():  # create_graph=True (torch.func.grad): first-order only
            grad_y = FirstDerivativeOnly.apply(grad_y, y_event, SECOND_DERIVATIVES)
        return None, None, None, grad_y

    @staticmethod
    def jvp(ctx: Any, _events: None, _func: None, _t_dot: Any, y_dot: Any):
        # the event time is an output of the location, not an input: its own tangent (none
        # from the solve) does not enter; the time's tangent comes from the state's
        events: Events = ctx.events
        t_event, y_event = ctx.saved_tensors
        if y_dot is None:
            y_dot = torch.zeros_like(y_event)
        _, f, dg_dy, slope = _partials(events, ctx.func, t_event, y_event, refuse_flat=True)
        t_dot = _along(events.mask, _dot(dg_dy, y_dot), slope)
        return t_dot.to(t_event.dtype), y_dot + t_dot.to(y_event.real.dtype)[:, None] * f


def with_event_parameters(
    events: Events, func: Callable, t_event: torch.Tensor, y_event: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``EventGradient``'s outputs, (rows,) and (rows, n), made differentiable also with
    respect to the tensors the event function uses besides t and y (its parameters, a
    learned threshold), in reverse and forward mode: for g(t*, y(t*); p) = 0,
    dt*/dp = -(dg/dp) / (dg/dt + dg/dy . f) and dy(t*)/dp = f dt*/dp. They enter as a term
    that is zero in value (g - g.detach()), so nothing is added where ``fn`` uses no tensor
    that requires grad or carries a tangent (one evaluation of ``fn`` finds out)."""
    if not (torch.is_grad_enabled() or forward_level_active()):
        return t_event, y_event
    mask = events.mask
    t = torch.where(mask, t_event.detach(), 0.0)
    y = y_event.detach()
    with torch.enable_grad():
        _, g = events.fields(None, t.to(events.term.time_dtype), y)
    if not (g.requires_grad or forward_mode(g)):
        return t_event, y_event
    g, f, _, slope = _partials(events, func, t, y, refuse_flat=False)
    # (a tangential crossing adds nothing here: EventGradient's derivative refuses it)
    # (the slope is a constant here: a second derivative through the shift raises)
    rate = FirstOrder.apply((g - g.detach()).to(torch.float64), SECOND_DERIVATIVES)
    shift = _along(mask & (slope != 0), rate, slope)
    return t_event + shift.to(t_event.dtype), y_event + shift.to(y.real.dtype)[:, None] * f


def _partials(
    events: Events, func: Callable, t_event: torch.Tensor, y_event: torch.Tensor, refuse_flat: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """At every row's event (time (rows,) float64, where ``events.mask``; state (rows, n)):
    the firing event function's value g (in the graph of what ``fn`` reads besides t and
    y), f (detached), dg/dy and the slope dg/dt + dg/dy . f (float64).

    Raises:
        ValueError: ``refuse_flat`` and a row's slope is zero (a tangential crossing).
    """
    mask, time_dtype = events.mask, events.term.time_dtype
    t = torch.where(mask, t_event, 0.0).detach()
    y = y_event.detach()
    if transform_active():  # (torch.func.jvp, jacfwd: autograd.grad cannot run there)

        def fired(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return events.fields(None, t.to(time_dtype), y)[1].gather(1, events.index[:, None])[
                :, 0
            ]

        g, pullback = torch.func.vjp(fired, t, y)
        dg_dt, dg_dy = pullback(torch.ones_like(g))
        f = events.fields(func, t.to(time_dtype), y)[0]
    else:
        with torch.enable_grad():
            t, y = t.requires_grad_(True), y.clone().requires_grad_(True)
            f, g = events.fields(func, t.to(time_dtype), y)
            g = g.gather(1, events.index[:, None])[:, 0]
            dg_dt, dg_dy = torch.autograd.grad(
                g.sum(), (t, y), retain_graph=g.requires_grad, allow_unused=True
            )
    dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt.detach()
    dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy.detach()
    f = f.detach()
    slope = dg_dt + _dot(dg_dy, f)
    flat = mask & (slope == 0)
    if refuse_flat and bool(flat.any()):
        i = int(flat.nonzero()[0])
        raise ValueError(
            f"the event function{events.label(i)} crosses zero tangentially (dg/dt = 0 along "
            "the solution), so its event time has no derivative"
        )
    return g, f, dg_dy, slope


def _along(mask: torch.Tensor, rate: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """-rate / slope (float64) on the rows of ``mask``, 0 elsewhere: the event time's shift
    for a change ``rate`` of the event function at the fixed event time."""
    return torch.where(mask, -rate / torch.where(mask, slope, 1.0), 0.0)


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise real inner products, in float64."""
    prod = (u.conj() * v).real if u.is_complex() else u * v
    return prod.sum(1).to(torch.float64)
