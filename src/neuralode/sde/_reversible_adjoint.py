"""Reversible Heun's algebraically exact adjoint (Kidger et al. 2021): the backward pass of
``sdeint_adjoint`` after ``method="reversible_heun"``."""

from __future__ import annotations

import bisect

import torch

from ._base import vjp
from ._engine import midpoint
from .settings import NOISE_TYPES


def _reversible_backward(config, ys, extra_out, params, grad_ys, grad_extra):
    """Walks the forward grid backwards, reconstructing each step's input from its output
    exactly (up to round-off) and backpropagating through that one step: the gradient equals
    backprop's through the whole solve. After adaptive steps (step doubling: each accepted
    step is two half steps meeting at ``midpoint``) it walks the half steps."""
    problem = config.problem
    sde, bm = problem.sde, problem.bm

    def time(t: float) -> torch.Tensor:
        return torch.tensor(t, dtype=problem.ts.dtype, device=problem.ts.device)

    accepted = config.grid
    stride = 2 if config.adaptive else 1  # index k of ``accepted`` is ``stride * k`` here
    grid = list(accepted)
    if config.adaptive:
        grid = [accepted[0]]
        for t0, t1 in zip(accepted[:-1], accepted[1:]):
            grid += [midpoint(t0, t1), t1]
    ts = problem.ts_list
    diagonal = sde.noise_type == NOISE_TYPES.diagonal

    def adj_prod(cot, dw):
        return cot * dw if diagonal else cot.unsqueeze(-1) * dw.unsqueeze(-2)

    # each output's cotangent goes to the grid points it was interpolated from
    at_point: dict[int, list[tuple[float, int]]] = {}
    for j, t in enumerate(ts):
        k = bisect.bisect_left(accepted, t)
        if accepted[k] == t:
            at_point.setdefault(stride * k, []).append((1.0, j))
        else:
            w = (t - accepted[k - 1]) / (accepted[k] - accepted[k - 1])
            at_point.setdefault(stride * k, []).append((w, j))
            at_point.setdefault(stride * (k - 1), []).append((1.0 - w, j))

    def add_outputs(k, cot):
        for w, j in at_point.get(k, ()):
            cot = cot + w * grad_ys[j]
        return cot

    def evaluate(t, z):
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            f, g = sde.f_and_g(time(t), z)
        return z, f, g

    def backprop_fg(z, f, g, cot_f, cot_g, grad_params):
        out = vjp((f, g), [z, *params], (cot_f, cot_g))
        for i, x in enumerate(out[1:]):
            grad_params[i] = grad_params[i] + x
        return out[0]

    grad_params = [torch.zeros_like(p) for p in params]
    f1, g1, z1 = (x.detach() for x in extra_out)
    y1 = ys[-1].detach()
    zeros = (torch.zeros_like(f1), torch.zeros_like(g1), torch.zeros_like(z1))
    cot_f, cot_g, cot_z = (zeros[i] if grad_extra[i] is None else grad_extra[i] for i in range(3))
    k_last = len(grid) - 1
    cot_y = add_outputs(k_last, torch.zeros_like(y1))
    z_leaf, f_graph, g_graph = evaluate(grid[-1], z1)
    with torch.no_grad():
        for k in range(k_last, 0, -1):
            t0, t1 = grid[k - 1], grid[k]
            h = t1 - t0
            dw = bm(t0, t1)
            # reconstruct the step's input
            z0 = 2 * y1 - z1 - f1 * h - sde.prod(g1, dw)
            z0_leaf, f0_graph, g0_graph = evaluate(t0, z0)
            f0, g0 = f0_graph.detach(), g0_graph.detach()
            y0 = y1 - (f0 + f1) * (0.5 * h) - sde.prod(g0 + g1, 0.5 * dw)
            # backprop through y1 = y0 + (f0 + f1) h / 2 + (g0 + g1) dW / 2
            half = adj_prod(cot_y, 0.5 * dw)
            cot_f0 = cot_y * (0.5 * h)
            cot_f1 = cot_f + cot_f0
            cot_g0 = half
            cot_g1 = cot_g + half
            # ... through (f1, g1) = F(t1, z1)
            cot_z1 = cot_z + backprop_fg(z_leaf, f_graph, g_graph, cot_f1, cot_g1, grad_params)
            # ... through z1 = 2 y0 - z0 + f0 h + g0 dW
            cot_y0 = cot_y + 2 * cot_z1
            cot_f = cot_f0 + cot_z1 * h
            cot_g = cot_g0 + adj_prod(cot_z1, dw)
            cot_z = -cot_z1
            cot_y = add_outputs(k - 1, cot_y0)
            y1, f1, g1, z1 = y0, f0, g0, z0
            z_leaf, f_graph, g_graph = z0_leaf, f0_graph, g0_graph
        if config.n_extra:
            # the initial (f, g, z) were given: their cotangents are theirs
            return cot_y, (cot_f, cot_g, cot_z), grad_params
        # (f0, g0) = F(t0, y0) and z0 = y0
        cot_y = cot_y + cot_z + backprop_fg(z_leaf, f_graph, g_graph, cot_f, cot_g, grad_params)
    return cot_y, (), grad_params
