"""The implicit-function gradient of event times, one for every mode and gradient strategy."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._event_tracker import Events
from ._host import forward_mode


def refuse_forward_mode(y_event: torch.Tensor) -> None:
    """Refuse a forward-mode tangent (a ``torch.autograd.forward_ad`` dual tensor: of y0, ts
    or what f reads) in the state at an event, before ``EventGradient`` meets it: the event
    time's derivative comes from its backward pass only, and torch's own error ("must
    implement the jvp function") names neither the event nor a way out.

    Arguments:
        y_event: the states at the events, as the solve computed them.

    Raises:
        ValueError: ``y_event`` carries a tangent.
    """
    if forward_mode(y_event):
        raise ValueError(
            "an event's time does not support forward-mode differentiation: a dual tensor of "
            "torch.autograd.forward_ad (in y0, ts or what func reads) reaches the state at the "
            "event, and the event time's derivative comes from a backward pass only. "
            "Differentiate in reverse mode (backward(), torch.autograd.grad), or for forward "
            "mode solve to fixed output times, without the event"
        )


class EventGradient(torch.autograd.Function):
    """The implicit-function gradient of every row's event time (a sample's, or the one
    problem's: a batch of one), rerouted through its state at the event; the one event
    gradient of every mode and gradient strategy.

    For sample i with g_i(t*_i, y_i(t*_i)) = 0 the incoming gradients of t*_i and y_i(t*_i)
    become one gradient of y_i(t*_i): grad_y - (grad_t + grad_y . f) / (dg/dt + dg/dy . f)
    dg/dy. Samples without an event pass ``grad_y`` through. The event function must treat
    samples independently (row i of its values depends on sample i only).
    """

    @staticmethod
    def forward(ctx: Any, events: Events, func: Callable, t_event, y_event):
        ctx.events = events
        ctx.func = func
        ctx.save_for_backward(t_event, y_event)
        return t_event.detach().clone(), y_event.detach().clone()

    @staticmethod
    def backward(ctx: Any, grad_t: torch.Tensor, grad_y: torch.Tensor):
        events: Events = ctx.events
        t_event, y_event = ctx.saved_tensors
        mask = events.mask
        time_dtype = events.term.time_dtype
        with torch.enable_grad():
            t = torch.where(mask, t_event, 0.0).detach().requires_grad_(True)
            y = y_event.detach().requires_grad_(True)
            f, g = events.fields(ctx.func, t.to(time_dtype), y)
            f = f.detach()
            g = g.gather(1, events.index[:, None])[:, 0]
            dg_dt, dg_dy = torch.autograd.grad(g.sum(), (t, y), allow_unused=True)
        dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
        dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
        slope = dg_dt + _dot(dg_dy, f)
        flat = mask & (slope == 0)
        if bool(flat.any()):
            i = int(flat.nonzero()[0])
            raise ValueError(
                f"the event function{events.label(i)} crosses zero tangentially (dg/dt = 0 along "
                "the solution), so its event time has no derivative"
            )
        grad_t = torch.where(mask, grad_t.to(torch.float64), 0.0)
        total_t = grad_t + _dot(grad_y, f)
        coefficient = torch.where(mask, total_t / torch.where(mask, slope, 1.0), 0.0)
        return None, None, None, grad_y - coefficient.to(y.real.dtype)[:, None] * dg_dy


def with_event_parameters(
    events: Events, func: Callable, t_event: torch.Tensor, y_event: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``EventGradient``'s outputs, (rows,) and (rows, n), made differentiable also with
    respect to the tensors the event function uses besides t and y (its parameters, a
    learned threshold): for g(t*, y(t*); p) = 0, dt*/dp = -(dg/dp) / (dg/dt + dg/dy . f) and
    dy(t*)/dp = f dt*/dp. They enter as a term that is zero in value (g - g.detach()), so
    nothing is added where ``fn`` uses no tensor that requires grad (one evaluation of ``fn``
    finds out)."""
    if not torch.is_grad_enabled():
        return t_event, y_event
    mask = events.mask
    time_dtype = events.term.time_dtype
    t = torch.where(mask, t_event.detach(), 0.0)
    y = y_event.detach()
    with torch.enable_grad():
        _, g = events.fields(None, t.to(time_dtype), y)
    if not g.requires_grad:
        return t_event, y_event
    with torch.enable_grad():
        t_in, y_in = t.requires_grad_(True), y.clone().requires_grad_(True)
        f, g = events.fields(func, t_in.to(time_dtype), y_in)
        g = g.gather(1, events.index[:, None])[:, 0]
        dg_dt, dg_dy = torch.autograd.grad(
            g.sum(), (t_in, y_in), retain_graph=True, allow_unused=True
        )
    f = f.detach()
    dg_dt = torch.zeros_like(t) if dg_dt is None else dg_dt
    dg_dy = torch.zeros_like(y) if dg_dy is None else dg_dy
    slope = dg_dt + _dot(dg_dy, f)
    usable = mask & (slope != 0)  # (a tangential crossing: EventGradient's backward says so)
    shift = -(g - g.detach()).to(torch.float64) / torch.where(usable, slope, 1.0)
    shift = torch.where(usable, shift, 0.0)
    return t_event + shift.to(t_event.dtype), y_event + shift.to(y.real.dtype)[:, None] * f


def _dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Row-wise real inner products, in float64."""
    prod = (u.conj() * v).real if u.is_complex() else u * v
    return prod.sum(1).to(torch.float64)
