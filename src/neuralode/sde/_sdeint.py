"""``sdeint``: torchsde's entry point, its input checks and its return conventions."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ._base import _Forward, _Logqp, _Renamed
from ._brownian import BaseBrownian
from ._engine import SDESolver, SDETerm, fixed_grid, run
from ._interval import BrownianInterval
from .settings import LEVY_AREA_APPROXIMATIONS, METHODS, NOISE_TYPES, SDE_TYPES


def _check_unused(unused: dict, where: str) -> None:
    if unused:
        warnings.warn(f"{where}: Unexpected arguments {unused}", stacklevel=3)


def _assert_no_grad(names, values) -> None:
    for name, value in zip(names, values):
        if torch.is_tensor(value) and value.requires_grad:
            raise ValueError(f"Argument {name} must not require gradient.")


# torchsde's largest growth of an adaptive step
_FAC_MAX = 1.4


@dataclass
class _Problem:
    sde: _Forward
    user_sde: Any  # the SDE as given (renamed, or with the logqp channel)
    y0: torch.Tensor
    ts: torch.Tensor
    ts_list: list[float]
    bm: Any
    method: str
    options: dict


def default_method(sde) -> str:
    if sde.sde_type == SDE_TYPES.stratonovich:
        return METHODS.midpoint
    return METHODS.euler if sde.noise_type == NOISE_TYPES.general else METHODS.srk


def check_contract(sde, y0, ts, bm, method, adaptive, options, names, logqp) -> _Problem:
    """Validates the inputs as torchsde does (same error meanings) and wraps the SDE.

    Raises:
        ValueError: for a missing or unknown noise/SDE type or method, a ``y0`` that is not a
            2-D tensor, ``ts`` that are not strictly increasing, inconsistent batch, state or
            noise sizes, or an SDE that lacks a drift or a diffusion.
    """
    if names:
        unknown = set(names) - {
            "drift",
            "diffusion",
            "prior_drift",
            "diffusion_prod",
            "drift_and_diffusion",
            "drift_and_diffusion_prod",
        }
        if unknown:
            raise ValueError(
                f"Unknown keys {sorted(unknown)} in `names`; expected some of 'drift', "
                "'diffusion', 'prior_drift', 'diffusion_prod', 'drift_and_diffusion', "
                "'drift_and_diffusion_prod'."
            )
        sde = _Renamed(sde, names)
    if not hasattr(sde, "noise_type"):
        raise ValueError("sde does not have the attribute noise_type.")
    if sde.noise_type not in NOISE_TYPES:
        raise ValueError(f"Expected noise type in {NOISE_TYPES}, but found {sde.noise_type}.")
    if not hasattr(sde, "sde_type"):
        raise ValueError("sde does not have the attribute sde_type.")
    if sde.sde_type not in SDE_TYPES:
        raise ValueError(f"Expected sde type in {SDE_TYPES}, but found {sde.sde_type}.")
    if not torch.is_tensor(y0):
        raise ValueError("`y0` must be a torch.Tensor.")
    if y0.dim() != 2:
        raise ValueError("`y0` must be a 2-dimensional tensor of shape (batch, channels).")
    if logqp:
        sde = _Logqp(sde)
        y0 = torch.cat((y0, y0.new_zeros(size=(y0.size(0), 1))), dim=1)
    if method is None:
        method = default_method(sde)
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}, but found {method}.")
    if not torch.is_tensor(ts):
        if not isinstance(ts, (tuple, list)) or not all(isinstance(t, (float, int)) for t in ts):
            raise ValueError("Evaluation times `ts` must be a 1-D Tensor or list/tuple of floats.")
        ts = torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if ts.dim() != 1 or ts.numel() < 1:
        raise ValueError("Evaluation times `ts` must be a 1-D Tensor or list/tuple of floats.")
    ts_list = [float(t) for t in ts.detach().cpu()]
    if any(b <= a for a, b in zip(ts_list, ts_list[1:])):
        raise ValueError("Evaluation times `ts` must be strictly increasing.")

    batch_sizes, state_sizes, noise_sizes = [y0.size(0)], [y0.size(1)], []
    if bm is not None:
        if len(bm.shape) != 2:
            raise ValueError("`bm` must be of shape (batch, noise_channels).")
        batch_sizes.append(bm.shape[0])
        noise_sizes.append(bm.shape[1])

    def check_2d(name, shape):
        if len(shape) != 2:
            raise ValueError(f"{name} must be of shape (batch, state_channels), but got {shape}.")
        batch_sizes.append(shape[0])
        state_sizes.append(shape[1])

    def check_2d_or_3d(name, shape):
        if sde.noise_type == NOISE_TYPES.diagonal:
            check_2d(name, shape)
            noise_sizes.append(shape[1])
        else:
            if len(shape) != 3:
                raise ValueError(
                    f"{name} must be of shape (batch, state_channels, noise_channels), but got "
                    f"{shape}."
                )
            batch_sizes.append(shape[0])
            state_sizes.append(shape[1])
            noise_sizes.append(shape[2])

    has_f = has_g = False
    t0 = ts[0]
    with torch.no_grad():
        if hasattr(sde, "f"):
            has_f = True
            check_2d("Drift", tuple(sde.f(t0, y0).size()))
        if hasattr(sde, "g"):
            has_g = True
            check_2d_or_3d("Diffusion", tuple(sde.g(t0, y0).size()))
        if hasattr(sde, "f_and_g"):
            has_f = has_g = True
            f, g = sde.f_and_g(t0, y0)
            check_2d("Drift", tuple(f.size()))
            check_2d_or_3d("Diffusion", tuple(g.size()))
        for name in ("g_prod", "f_and_g_prod"):
            if hasattr(sde, name):
                has_g = True
                has_f = has_f or name == "f_and_g_prod"
                if not noise_sizes:
                    raise ValueError(
                        "Cannot infer noise size (i.e. number of Brownian motion channels). "
                        "Either pass `bm` explicitly, or specify one of the `g`, `f_and_g` "
                        "functions."
                    )
                v = torch.randn(batch_sizes[0], noise_sizes[0], dtype=y0.dtype, device=y0.device)
                out = getattr(sde, name)(t0, y0, v)
                if name == "f_and_g_prod":
                    check_2d("Drift", tuple(out[0].size()))
                    out = out[1]
                check_2d("Diffusion-vector product", tuple(out.size()))
    if not has_f:
        raise ValueError(
            "sde must define at least one of `f`, `f_and_g`, or `f_and_g_prod`. (Or possibly "
            "more depending on the method chosen.)"
        )
    if not has_g:
        raise ValueError(
            "sde must define at least one of `g`, `f_and_g`, `g_prod` or `f_and_g_prod`. (Or "
            "possibly more depending on the method chosen.)"
        )
    for what, sizes in (("Batch", batch_sizes), ("State", state_sizes), ("Noise", noise_sizes)):
        if any(s != sizes[0] for s in sizes[1:]):
            raise ValueError(f"{what} sizes not consistent: {sizes}.")
    if sde.noise_type == NOISE_TYPES.scalar and noise_sizes[0] != 1:
        raise ValueError(
            f"Scalar noise must have only one channel; the diffusion has {noise_sizes[0]} noise "
            "channels."
        )
    if bm is None:
        levy = {
            METHODS.srk: LEVY_AREA_APPROXIMATIONS.space_time,
            METHODS.log_ode_midpoint: LEVY_AREA_APPROXIMATIONS.foster,
        }.get(method, LEVY_AREA_APPROXIMATIONS.none)
        bm = BrownianInterval(
            t0=ts_list[0],
            t1=ts_list[-1],
            size=(batch_sizes[0], noise_sizes[0]),
            dtype=y0.dtype,
            device=y0.device,
            levy_area_approximation=levy,
        )
    elif not callable(bm):
        raise ValueError("`bm` must be a Brownian motion: callable as bm(ta, tb).")
    options = {} if options is None else dict(options)
    if adaptive and method == METHODS.euler and sde.noise_type != NOISE_TYPES.additive:
        warnings.warn(
            "Numerical solution is not guaranteed to converge to the correct solution when using "
            "adaptive time-stepping with the Euler--Maruyama method with non-additive noise.",
            stacklevel=3,
        )
    return _Problem(_Forward(sde), sde, y0, ts, ts_list, bm, method, options)


def solve(problem: _Problem, dt, adaptive, rtol, atol, dt_min, extra, record=None):
    """Runs the method over ``problem.ts`` in the one loop: fixed steps of ``dt`` on
    ``fixed_grid``, or adaptive steps (the ``PIController`` on the step-doubling error, from
    ``dt``, never below ``dt_min``). Returns ``(ys, extra)``; ``record`` receives the
    accepted steps' ends."""
    solver = SDESolver(problem.method, problem.options, step_doubling=adaptive)
    if adaptive:
        controller = PIController(
            rtol, atol, first_step=float(dt), min_step=float(dt_min), ifactor=_FAC_MAX
        )
    else:
        controller = FixedGrid(grid=fixed_grid(problem.ts_list, float(dt)))
    term = SDETerm(problem.user_sde, problem.bm)
    return run(
        term,
        problem.y0,
        problem.ts_list,
        solver,
        controller,
        time_dtype=problem.ts.dtype,
        extra=extra,
        record=record,
    )


def parse_return(y0, ys, extra_solver_state, extra, logqp):
    """torchsde's returns: ``ys``; with ``logqp`` also the log-ratio increments (T - 1, batch);
    with ``extra`` also the solver's extra state."""
    if logqp:
        ys, log_ratio = ys.split(split_size=(y0.size(1) - 1, 1), dim=2)
        increments = (log_ratio[1:] - log_ratio[:-1]).squeeze(dim=2)
        return (ys, increments, extra_solver_state) if extra else (ys, increments)
    return (ys, extra_solver_state) if extra else ys


def sdeint(
    sde: Any,
    y0: torch.Tensor,
    ts: torch.Tensor | Sequence[float],
    bm: BaseBrownian | None = None,
    method: str | None = None,
    dt: float = 1e-3,
    adaptive: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-4,
    dt_min: float = 1e-5,
    options: dict[str, Any] | None = None,
    names: dict[str, str] | None = None,
    logqp: bool = False,
    extra: bool = False,
    extra_solver_state: tuple | None = None,
    **unused_kwargs: Any,
) -> Any:
    """Numerically integrates an SDE (torchsde's ``sdeint``; gradients by backprop).

    Example:
        ```python
        import torch
        from neuralode.sde import sdeint

        class GBM(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"
            def f(self, t, y): return 0.5 * y
            def g(self, t, y): return 0.2 * y

        ys = sdeint(GBM(), torch.ones(16, 1), torch.linspace(0, 1, 5), dt=0.01)  # (5, 16, 1)
        ```

    Arguments:
        sde: an object (usually an ``nn.Module``) with ``noise_type``, ``sde_type`` and the
            drift ``f(t, y)`` and diffusion ``g(t, y)`` ((batch, d) for diagonal noise, else
            (batch, d, m)), or ``f_and_g``, ``g_prod(t, y, v)`` or ``f_and_g_prod``.
        y0: the initial state, shape (batch, d).
        ts: the output times, strictly increasing (tensor or list of floats); ``y0`` is the
            state at ``ts[0]``.
        bm: the Brownian motion (``BrownianInterval``, ``BrownianPath``, ``BrownianTree`` or
            any ``bm(ta, tb)`` with ``shape`` and ``levy_area_approximation``); default a fresh
            ``BrownianInterval`` over ``[ts[0], ts[-1]]``.
        method: one of ``settings.METHODS``; default srk for Itô diagonal/additive/scalar
            noise, euler for Itô general noise, midpoint for Stratonovich.
        dt: the step size (the initial one when ``adaptive``).
        adaptive: step-doubling adaptive steps.
        rtol: relative tolerance (adaptive).
        atol: absolute tolerance (adaptive).
        dt_min: the smallest adaptive step.
        options: method options, e.g. ``{"grad_free": True}`` for Milstein.
        names: other method names for the SDE's functions, e.g. ``{"drift": "foo"}``
            (keys: drift, diffusion, prior_drift, diffusion_prod, drift_and_diffusion,
            drift_and_diffusion_prod).
        logqp: also return the log-ratio increments (needs the prior drift ``h``).
        extra: also return the solver's extra state.
        extra_solver_state: the solver's extra state to start from.
        **unused_kwargs: warned about and ignored, as in torchsde.

    Returns:
        ``ys`` of shape (len(ts), batch, d); ``(ys, log_ratio)`` with ``logqp`` (log_ratio of
        shape (len(ts) - 1, batch)); the solver's extra state appended with ``extra``.

    Raises:
        ValueError: for bad input (see ``check_contract``) or a method that does not fit the
            SDE or the Brownian motion.
    """
    _check_unused(unused_kwargs, "`sdeint`")
    problem = check_contract(sde, y0, ts, bm, method, adaptive, options, names, logqp)
    _assert_no_grad(["ts", "dt", "rtol", "atol", "dt_min"], [problem.ts, dt, rtol, atol, dt_min])
    ys, extra_state = solve(problem, dt, adaptive, rtol, atol, dt_min, extra_solver_state)
    return parse_return(problem.y0, ys, extra_state, extra, logqp)
