"""``sdeint_adjoint``: gradients by the stochastic adjoint (Li et al. 2020) or by reversible
Heun's algebraically exact adjoint (Kidger et al. 2021).

The stochastic adjoint solves, backwards in time on the same Brownian path, the augmented SDE
of the state ``y``, its adjoint ``a = dL/dy`` and the parameters' adjoint. In reversed time
``s = -t`` (Stratonovich form, with ``rbm(sa, sb) = bm(-sb, -sa)``):

    dy = -f ds - g o dW,    da = a df/dy ds + a dg/dy o dW,    dθ̄ = a df/dθ ds + a dg/dθ o dW

For an Itô SDE the forward drift is first converted to Stratonovich form
(``f - 1/2 sum_l (dg_l/dy) g_l``) and the augmented SDE back to Itô form, so that Itô methods
(euler, milstein) solve it. Every vector-Jacobian product is local to one evaluation: the
memory does not grow with the number of steps.
"""

from __future__ import annotations

import bisect
import warnings
from array import array
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ._base import jvp, vjp
from ._brownian import BaseBrownian, ReverseBrownian
from ._engine import SDESolver, SDETerm, run
from ._sdeint import _FAC_MAX, _assert_no_grad, _check_unused, check_contract, parse_return, solve
from ._solvers import make_solver
from .settings import METHODS, NOISE_TYPES, SDE_TYPES


class _AdjointSDE:
    """The augmented SDE on a flat state ``[y, a, θ̄]`` in reversed time (see the module)."""

    is_adjoint = True

    def __init__(self, forward, params: list[torch.Tensor], shape: torch.Size):
        self.forward = forward
        self.sde_type = forward.sde_type
        self.noise_type = {NOISE_TYPES.additive: NOISE_TYPES.general}.get(
            forward.noise_type, forward.noise_type
        )
        self.params = params
        self.shape = shape
        self.numel = shape.numel()
        self.ito_corrected = (
            forward.sde_type == SDE_TYPES.ito and forward.noise_type != NOISE_TYPES.additive
        )

    # ----------------------------------------------------------------------------------------
    def _split(self, z: torch.Tensor):
        n = self.numel
        y = z[:n].view(self.shape).detach().requires_grad_(True)
        return y, z[n : 2 * n].view(self.shape)

    def _pack(self, y_part: torch.Tensor, grads) -> torch.Tensor:
        return torch.cat([y_part.reshape(-1)] + [g.reshape(-1) for g in grads])

    def _drift(self, t, y, a, v=None):
        """The forward drift in the form the adjoint needs (Itô: Stratonovich-corrected, with
        its graph), the diffusion-vector product ``g v`` (if ``v``), and the Itô correction's
        extra term as an (output, cotangent) pair whose vjp is ``sum_l (a dg_l/dy) dg_l/d(y, θ)``.

        For diagonal noise each ``g_i`` depends on ``y_i`` only (torchsde's assumption), so the
        corrections use ``g' = d(sum g)/dy``, the diagonal of the Jacobian: one reverse pass."""
        fwd = self.forward
        if not self.ito_corrected:
            if v is None:
                return fwd.f(-t, y), None, None
            f, g_prod = fwd.f_and_g_prod(-t, y, v)
            return f, g_prod, None
        f, g = fwd.f_and_g(-t, y)
        g_prod = None if v is None else fwd.prod(g, v)
        if fwd.noise_type == NOISE_TYPES.diagonal:
            (dg,) = vjp(g.sum(), [y], None, create_graph=True)
            return f - g * dg, g_prod, (g, (a * dg).detach())
        columns = [g[..., col] for col in range(g.shape[-1])]
        g_dg = sum(jvp(column, y, column, create_graph=True) for column in columns)
        a_dg = [vjp(column, [y], a, retain_graph=True)[0] for column in columns]
        return f - g_dg, g_prod, (columns, a_dg)

    def _vjp(self, outputs, cotangents, y):
        """One reverse pass for all (output, cotangent) pairs, into ``[y, *params]``."""
        outs, cots = [], []
        for out, cot in zip(outputs, cotangents):
            if isinstance(out, list):
                outs += out
                cots += cot
            else:
                outs.append(out)
                cots.append(cot)
        return vjp(outs, [y, *self.params], cots)

    def _scaled(self, extra, scale: float):
        if scale == 1.0:
            return extra
        out, cot = extra
        return out, [c * scale for c in cot] if isinstance(cot, list) else cot * scale

    def increment(self, t, z, dt: float, v):
        y, a = self._split(z)
        with torch.enable_grad():
            f, g_prod, extra = self._drift(t, y, a, v)
            total = f * dt + g_prod
            pairs = [(total, a)] + ([] if extra is None else [self._scaled(extra, dt)])
            grads = self._vjp(*zip(*pairs), y)
        return self._pack(-total.detach(), grads)

    def f(self, t, z):
        y, a = self._split(z)
        with torch.enable_grad():
            f, _, extra = self._drift(t, y, a)
            pairs = [(f, a)] + ([] if extra is None else [extra])
            grads = self._vjp(*zip(*pairs), y)
        return self._pack(-f.detach(), grads)

    def g_prod(self, t, z, v):
        y, a = self._split(z)
        with torch.enable_grad():
            g_prod = self.forward.g_prod(-t, y, v)
            grads = vjp(g_prod, [y, *self.params], a)
        return self._pack(-g_prod.detach(), grads)

    def f_and_g_prod(self, t, z, v):
        y, a = self._split(z)
        with torch.enable_grad():
            f, g_prod, extra = self._drift(t, y, a, v)
            pairs = [(f, a)] + ([] if extra is None else [extra])
            grads_f = self._vjp(*zip(*pairs), y)
            grads_g = vjp(g_prod, [y, *self.params], a)
        return self._pack(-f.detach(), grads_f), self._pack(-g_prod.detach(), grads_g)

    def increment_and_gdg(self, t, z, dt: float, v1, v2):
        """Milstein on the augmented SDE of diagonal noise (each ``g_l`` a function of
        ``y_l``): ``sum_l (dG_l/dz) G_l v2_l`` has y-part ``g g' v2`` and (a, θ)-part
        ``sum_l v2_l a_l (g_l' dg_l/d(y, θ) - g_l dg_l'/d(y, θ))``. The increment and this
        term are returned summed (the Milstein step adds them), from one reverse pass."""
        if self.forward.noise_type != NOISE_TYPES.diagonal:
            raise ValueError(
                "adjoint_method='milstein' needs diagonal noise; use adjoint_method='euler' "
                f"for {self.forward.noise_type} noise"
            )
        y, a = self._split(z)
        with torch.enable_grad():
            f, g = self.forward.f_and_g(-t, y)
            (dg,) = vjp(g.sum(), [y], None, create_graph=True)
            weight = (a * v2).detach()
            g_cot = weight * dg.detach()
            if self.ito_corrected:
                f = f - g * dg
                g_cot = g_cot + (a * dg).detach() * dt
            total = f * dt + g * v1
            grads = vjp([total, g, dg], [y, *self.params], [a, g_cot, -weight * g.detach()])
            y_part = total.detach().neg_().add_(g.detach() * dg.detach() * v2)
        return self._pack(y_part, grads), 0.0

    def g(self, t, z):
        raise RuntimeError("The adjoint SDE offers diffusion-vector products only, not `g`.")

    f_and_g = g

    def prod(self, g, v):
        raise RuntimeError("The adjoint SDE offers diffusion-vector products only, not `prod`.")


class _Config:
    """Everything the backward pass needs besides tensors."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class _SdeintAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config: _Config, y0: torch.Tensor, *tensors):
        n_extra = config.n_extra
        extra = tuple(x.detach() for x in tensors[:n_extra]) if n_extra else None
        grid = array("d")  # the accepted step ends, 8 bytes a step
        problem = config.problem
        problem.y0 = y0.detach()
        ys, extra_out = solve(
            problem,
            config.dt,
            config.adaptive,
            config.rtol,
            config.atol,
            config.dt_min,
            extra,
            record=grid,
        )
        config.grid = grid
        ctx.config = config
        saved = (*extra_out,) if config.reversible else ()
        ctx.save_for_backward(ys, *saved, *tensors[n_extra:])
        return (ys, *extra_out)

    @staticmethod
    def backward(ctx, grad_ys, *grad_extra):
        config = ctx.config
        ys, *rest = ctx.saved_tensors
        if config.reversible:
            n_state = len(config.extra_shapes)
            extra_out, params = rest[:n_state], rest[n_state:]
            grad_y0, grad_extra_in, grad_params = _reversible_backward(
                config, ys, extra_out, list(params), grad_ys, grad_extra
            )
        else:
            params = list(rest)
            grad_y0, grad_params = _stochastic_backward(config, ys, params, grad_ys)
            grad_extra_in = (None,) * config.n_extra
        return (None, grad_y0, *grad_extra_in, *grad_params)


def _segment(grid: array, ta: float, tb: float) -> array:
    """The forward grid's points in ``[ta, tb]``, with the ends, in reversed time ``-t``."""
    lo = bisect.bisect_right(grid, ta)
    hi = bisect.bisect_left(grid, tb)
    segment = array("d", (-tb,))
    segment.extend(-grid[k] for k in range(hi - 1, lo - 1, -1))
    segment.append(-ta)
    return segment


def _stochastic_backward(config, ys, params, grad_ys):
    problem = config.problem
    ts = problem.ts_list
    shape = ys.shape[1:]
    term = SDETerm(_AdjointSDE(problem.sde, params, shape), ReverseBrownian(problem.bm))
    solver = SDESolver(
        config.adjoint_method, config.adjoint_options, step_doubling=config.adjoint_adaptive
    )
    n = shape.numel()
    with torch.no_grad():
        z = torch.cat(
            [ys[-1].reshape(-1), grad_ys[-1].reshape(-1)]
            + [torch.zeros(p.numel(), dtype=ys.dtype, device=ys.device) for p in params]
        )
        for i in range(len(ts) - 1, 0, -1):
            segment = [-ts[i], -ts[i - 1]]
            if config.adjoint_adaptive:
                controller = PIController(
                    config.adjoint_rtol,
                    config.adjoint_atol,
                    first_step=float(config.dt),
                    min_step=float(config.dt_min),
                    ifactor=_FAC_MAX,
                )
            else:
                controller = FixedGrid(grid=_segment(config.grid, ts[i - 1], ts[i]))
            out, _ = run(term, z, segment, solver, controller, time_dtype=problem.ts.dtype)
            z = out[-1].clone()
            z[:n] = ys[i - 1].reshape(-1)
            z[n : 2 * n] += grad_ys[i - 1].reshape(-1)
        grad_y0 = z[n : 2 * n].view(shape)
        grads, offset = [], 2 * n
        for p in params:
            grads.append(z[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
    return grad_y0, grads


def _reversible_backward(config, ys, extra_out, params, grad_ys, grad_extra):
    """Walks the forward grid backwards, reconstructing each step's input from its output
    exactly (up to round-off) and backpropagating through that one step: the gradient equals
    backprop's through the whole solve."""
    problem = config.problem
    sde, bm = problem.sde, problem.bm

    def time(t: float) -> torch.Tensor:
        return torch.tensor(t, dtype=problem.ts.dtype, device=problem.ts.device)

    grid = config.grid
    ts = problem.ts_list
    diagonal = sde.noise_type == NOISE_TYPES.diagonal

    def adj_prod(cot, dw):
        return cot * dw if diagonal else cot.unsqueeze(-1) * dw.unsqueeze(-2)

    # each output's cotangent goes to the grid points it was interpolated from
    at_point: dict[int, list[tuple[float, int]]] = {}
    for j, t in enumerate(ts):
        k = bisect.bisect_left(grid, t)
        if grid[k] == t:
            at_point.setdefault(k, []).append((1.0, j))
        else:
            w = (t - grid[k - 1]) / (grid[k] - grid[k - 1])
            at_point.setdefault(k, []).append((w, j))
            at_point.setdefault(k - 1, []).append((1.0 - w, j))

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


def _default_adjoint_method(sde, method: str, adjoint_method: str | None) -> str:
    if adjoint_method is not None:
        return adjoint_method
    if method == METHODS.reversible_heun:
        return METHODS.adjoint_reversible_heun
    if sde.sde_type == SDE_TYPES.stratonovich:
        return METHODS.midpoint
    return METHODS.milstein if sde.noise_type == NOISE_TYPES.diagonal else METHODS.euler


def sdeint_adjoint(
    sde: nn.Module,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: BaseBrownian | None = None,
    method: str | None = None,
    adjoint_method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    adjoint_adaptive: bool = False,
    rtol: float = 1e-5,
    adjoint_rtol: float = 1e-5,
    atol: float = 1e-4,
    adjoint_atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
    **unused_kwargs: Any,
) -> Any:
    """Integrates an SDE like ``sdeint``, with gradients from an adjoint backward pass whose
    memory does not grow with the number of steps (torchsde's ``sdeint_adjoint``).

    With ``method="reversible_heun"`` (and ``adjoint_method="adjoint_reversible_heun"``, its
    default) the backward pass reverses each step exactly, so the gradients equal backprop's
    through the solver up to round-off. Otherwise the stochastic adjoint SDE is solved backwards
    on the same Brownian path: its gradients converge to the true ones as ``dt`` shrinks.

    Arguments:
        sde: as in ``sdeint``; an ``nn.Module`` unless ``adjoint_params`` is given.
        y0: the initial state (batch, d).
        ts: strictly increasing output times.
        bm: the Brownian motion (default: a ``BrownianInterval``).
        method: the forward method (as ``sdeint``).
        adjoint_method: the backward method; default: adjoint_reversible_heun after
            reversible_heun, milstein for Itô diagonal noise, euler for other Itô noise,
            midpoint for Stratonovich. srk and log_ode cannot solve the adjoint SDE.
        dt: the step size of both passes.
        adaptive: adaptive steps forward.
        adjoint_adaptive: adaptive steps backward.
        rtol: forward relative tolerance.
        adjoint_rtol: backward relative tolerance.
        atol: forward absolute tolerance.
        adjoint_atol: backward absolute tolerance.
        dt_min: the smallest adaptive step.
        options: forward method options.
        adjoint_options: backward method options.
        adjoint_params: the tensors to differentiate (default ``sde.parameters()``).
        names: other method names for the SDE's functions (as ``sdeint``).
        logqp: also return the log-ratio increments.
        extra: also return the solver's extra state.
        extra_solver_state: the solver's extra state to start from.
        **unused_kwargs: warned about and ignored.

    Returns:
        As ``sdeint``.

    Raises:
        ValueError: for bad input (as ``sdeint``), an ``sde`` that is not an ``nn.Module``
            without ``adjoint_params``, or an adjoint method that cannot solve the adjoint SDE.
    """
    _check_unused(unused_kwargs, "`sdeint_adjoint`")
    if adjoint_params is None and not isinstance(sde, nn.Module):
        raise ValueError(
            "`sde` must be an instance of nn.Module to specify the adjoint parameters; "
            "alternatively they can be specified explicitly via the `adjoint_params` argument. "
            "If there are no parameters then it is allowable to set `adjoint_params=()`."
        )
    problem = check_contract(sde, y0, ts, bm, method, adaptive, options, names, logqp)
    _assert_no_grad(
        ["ts", "dt", "rtol", "adjoint_rtol", "atol", "adjoint_atol", "dt_min"],
        [problem.ts, dt, rtol, adjoint_rtol, atol, adjoint_atol, dt_min],
    )
    params = tuple(sde.parameters()) if adjoint_params is None else tuple(adjoint_params)
    params = tuple(p for p in params if p.requires_grad)
    method = problem.method
    adjoint_method = _default_adjoint_method(problem.sde, method, adjoint_method)
    reversible = method == METHODS.reversible_heun
    if reversible and adjoint_method != METHODS.adjoint_reversible_heun:
        warnings.warn(
            f"method={method!r}, but adjoint_method!={METHODS.adjoint_reversible_heun!r}.",
            stacklevel=2,
        )
        reversible = False
    if adjoint_method == METHODS.adjoint_reversible_heun and not (
        method == METHODS.reversible_heun
    ):
        raise ValueError(
            f"{METHODS.adjoint_reversible_heun} can only be used as the adjoint_method of "
            f"method={METHODS.reversible_heun!r}."
        )
    if adjoint_method not in METHODS:
        raise ValueError(f"Expected adjoint method in {METHODS}, but found {adjoint_method}.")
    if reversible and adjoint_adaptive:
        warnings.warn(
            "adjoint_adaptive is ignored with adjoint_reversible_heun: the backward pass "
            "retraces the forward steps exactly.",
            stacklevel=2,
        )
    # check the methods now, not in the middle of the solve or of backward()
    make_solver(
        method, problem.sde, problem.bm, problem.ts.dtype, problem.ts.device, problem.options
    )
    if not reversible:
        make_solver(
            adjoint_method,
            _AdjointSDE(problem.sde, list(params), problem.y0.shape),
            ReverseBrownian(problem.bm),
            problem.ts.dtype,
            problem.ts.device,
            dict(adjoint_options or {}),
        )
    extra_in = tuple(extra_solver_state) if extra_solver_state is not None else ()
    if reversible and not extra_in:
        extra_shapes = 3
    else:
        extra_shapes = len(extra_in) if reversible else 0
    config = _Config(
        problem=problem,
        dt=dt,
        adaptive=adaptive,
        rtol=rtol,
        atol=atol,
        dt_min=dt_min,
        adjoint_method=adjoint_method,
        adjoint_adaptive=adjoint_adaptive,
        adjoint_rtol=adjoint_rtol,
        adjoint_atol=adjoint_atol,
        adjoint_options=dict(adjoint_options or {}),
        reversible=reversible,
        n_extra=len(extra_in),
        extra_shapes=(None,) * extra_shapes,
        grid=None,
    )
    ys, *extra_state = _SdeintAdjoint.apply(config, problem.y0, *extra_in, *params)
    return parse_return(problem.y0, ys, tuple(extra_state), extra, logqp)
