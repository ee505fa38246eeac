"""``sdeint_adjoint``: gradients by the stochastic adjoint (Li et al. 2020) or by reversible
Heun's algebraically exact adjoint (Kidger et al. 2021).

The stochastic adjoint solves, backwards in time on the same Brownian path, the augmented SDE
of the state ``y``, its adjoint ``a = dL/dy`` and the parameters' adjoint
(``_adjoint_sde._AdjointSDE``), one segment between two output times at a time
(``_stochastic_backward``). Every vector-Jacobian product is local to one evaluation: the
memory does not grow with the number of steps. After ``method="reversible_heun"`` the
backward pass reverses each step exactly instead (``_reversible_adjoint``).
"""

from __future__ import annotations

import bisect
import warnings
from array import array
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._graph_break import outside_dynamo
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ._adjoint_sde import _AdjointSDE
from ._brownian import BaseBrownian, ReverseBrownian
from ._contract import _assert_no_grad, _check_unused, check_contract
from ._engine import SDESolver, SDETerm, run
from ._reversible_adjoint import _reversible_backward
from ._sdeint import _FAC_MAX, parse_return, solve
from ._solvers import make_solver
from .settings import METHODS, NOISE_TYPES, SDE_TYPES


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
            midpoint for Stratonovich. srk, log_ode and reversible_heun cannot solve the
            adjoint SDE.
        dt: the step size of both passes.
        adaptive: adaptive steps forward.
        adjoint_adaptive: adaptive steps backward.
        rtol: forward relative tolerance.
        adjoint_rtol: backward relative tolerance.
        atol: forward absolute tolerance.
        adjoint_atol: backward absolute tolerance.
        dt_min: the smallest adaptive step.
        options: forward method options (``progress_meter`` too, as ``sdeint``'s: the forward
            solve's progress; the backward solve shows none).
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
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _SDEINT_ADJOINT_OUTSIDE_DYNAMO(locals())
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
        try:
            make_solver(
                adjoint_method,
                _AdjointSDE(problem.sde, list(params), problem.y0.shape),
                ReverseBrownian(problem.bm),
                problem.ts.dtype,
                problem.ts.device,
                dict(adjoint_options or {}),
            )
        except ValueError as error:
            # the message of the augmented SDE's check names its noise type (general for an
            # additive SDE), not the user's: say which SDE it is and what solves it
            sde = problem.sde
            fits = _default_adjoint_method(sde, METHODS.euler, None)
            # (where the method fits with other options, the inner message names them)
            advice = "" if fits == adjoint_method else f"; use adjoint_method={fits!r}"
            raise ValueError(
                f"adjoint_method={adjoint_method!r} cannot solve the adjoint SDE of this "
                f"{sde.sde_type} SDE with {sde.noise_type} noise ({error}){advice}."
            ) from error
    if adjoint_method == METHODS.reversible_heun:  # (torchsde fails in backward() there)
        raise ValueError(
            f"adjoint_method={adjoint_method!r} needs the diffusion g itself, which the "
            "adjoint SDE does not give (only diffusion-vector products): for reversible "
            f"Heun's exact gradients use method={METHODS.reversible_heun!r} (its default "
            f"adjoint_method is {METHODS.adjoint_reversible_heun!r}), else "
            f"adjoint_method={_default_adjoint_method(problem.sde, METHODS.euler, None)!r}."
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


_SDEINT_ADJOINT_OUTSIDE_DYNAMO = outside_dynamo(sdeint_adjoint)
