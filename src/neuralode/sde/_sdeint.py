"""``sdeint``: torchsde's entry point, its solve and its return conventions (its input checks:
``_contract``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._graph_break import outside_dynamo
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ._brownian import BaseBrownian
from ._contract import _assert_no_grad, _check_unused, _Problem, check_contract
from ._engine import SDESolver, SDETerm, fixed_grid, run

# torchsde's largest growth of an adaptive step
_FAC_MAX = 1.4


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
        eps = torch.finfo(problem.ts.dtype).eps
        controller = FixedGrid(grid=fixed_grid(problem.ts_list, float(dt), eps))
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
        progress=problem.options.get("progress_meter"),
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
            any ``bm(ta, tb)`` with ``shape`` and ``levy_area_approximation``) of ``y0``'s
            dtype and device, covering ``[ts[0], ts[-1]]``; default a fresh
            ``BrownianInterval`` over ``[ts[0], ts[-1]]``.
        method: one of ``settings.METHODS``; default srk for Itô diagonal/additive/scalar
            noise, euler for Itô general noise, midpoint for Stratonovich.
        dt: the step size (the initial one when ``adaptive``).
        adaptive: step-doubling adaptive steps.
        rtol: relative tolerance (adaptive).
        atol: absolute tolerance (adaptive).
        dt_min: the smallest adaptive step.
        options: method options, e.g. ``{"grad_free": True}`` for Milstein, and
            ``progress_meter``: a [`ProgressMeter`][neuralode.ProgressMeter] (e.g.
            ``neuralode.TqdmProgressMeter()``) showing the solve's progress while it runs
            (the fraction of ``[ts[0], ts[-1]]`` done, ``t``, the accepted and rejected
            steps).
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
        TypeError: ``options["progress_meter"]`` is not a ``ProgressMeter``.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _SDEINT_OUTSIDE_DYNAMO(locals())
    _check_unused(unused_kwargs, "`sdeint`")
    problem = check_contract(sde, y0, ts, bm, method, adaptive, options, names, logqp)
    _assert_no_grad(["ts", "dt", "rtol", "atol", "dt_min"], [problem.ts, dt, rtol, atol, dt_min])
    ys, extra_state = solve(problem, dt, adaptive, rtol, atol, dt_min, extra_solver_state)
    return parse_return(problem.y0, ys, extra_state, extra, logqp)


_SDEINT_OUTSIDE_DYNAMO = outside_dynamo(sdeint)
