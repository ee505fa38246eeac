"""torchdiffeq-compatible façade: ``odeint``, ``odeint_adjoint`` and ``odeint_event``.

Same signatures, method names, options and callbacks as torchdiffeq; strings are parsed and
validated (``_compat_options``) and turned into the core API's objects (``solve`` with a
solver, a controller and a gradient strategy). Unknown methods or options raise
``ValueError``.
"""

from __future__ import annotations

import contextvars
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ._compat_options import (
    _ALIASES,
    _LOOP_FLAGS,
    _adjoint_callback_view,
    _adjoint_norm,
    _backward_norm_of,
    _callbacks,
    _parse,
)
from ._events import Event
from ._graph_break import outside_dynamo
from ._solution import SolveStats
from ._solve import solve
from ._tree import tree_spec
from .adjoint.backsolve import Backsolve
from .adjoint.base import GradientStrategy
from .adjoint.direct import Direct
from .adjoint.params import resolve_params


def odeint(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
) -> Any:
    """Solve dy/dt = func(t, y) and return y at every time in ``t`` (stacked on dim 0).

    The torchdiffeq interface on the native engine ([`solve`][neuralode.solve]).

    Arguments:
        func: the vector field ``func(t, y)``; its ``callback_step``, ``callback_accept_step``
            and ``callback_reject_step`` methods, if any, are called as in torchdiffeq, with
            ``(t0, y0, dt)`` of the step and ``dt`` positive in either direction of time (one
            the method never calls, e.g. ``callback_accept_step`` of a fixed-grid method, is
            named in a warning).
        y0: the initial state, a tensor or a tuple of tensors of one dtype (the result has
            the same structure; torchdiffeq promotes a tuple of mixed dtypes, such as complex
            and real, to one, and so would its f's inputs: here such a tuple is refused,
            naming the dtypes).
        t: the output times, 1-D and strictly monotonic; ``t[0]`` is the initial time (on
            another device than ``y0``, moved to y0's with a warning, as in torchdiffeq). With
            ``options=dict(per_sample=True)`` also (batch, n): each sample's own output times
            (see [`solve`][neuralode.solve]'s ``ts``); the result is then (n, batch, ...).
        rtol: the relative tolerance of adaptive methods: a number, a tensor or a list of
            numbers (per element, broadcasting against a tensor ``y0``) or, for a tuple
            ``y0``, one number or tensor per tensor of it (a tuple, a list or a tensor), as
            in torchdiffeq.
        atol: the absolute tolerance of adaptive methods, as ``rtol``.
        method: a name from [`METHODS`][neuralode.solvers.METHODS] (default ``"dopri5"``;
            ``"fixed_adams"`` is ``"implicit_adams"``) or ``"scipy_solver"``.
        options: torchdiffeq's method options (``step_size``, ``first_step``, ``max_num_steps``
            (``None``: no limit), ``step_t``, ``jump_t``, ``perturb``, ``norm``,
            ``grid_constructor``, ...; fixed-grid methods take ``interp="linear" | "cubic"``,
            torchdiffeq's interpolation between grid points, ``"linear"`` by default, also
            used to locate events) and
            this library's solve flags
            (``per_sample``, ``compile``, ``throw``, and the older ``skip_finished``,
            ``compile_step``, ``device_loop``, ``cuda_graph``; see
            [`solve`][neuralode.solve]). ``throw=False``: a failed solve or sample returns NaN
            after the last output it reached instead of raising (``solve`` also returns its
            ``status``). ``progress_meter``: a
            [`ProgressMeter`][neuralode.ProgressMeter] (e.g.
            ``neuralode.TqdmProgressMeter()``) showing the solve's progress, as ``solve``'s.
        event_fn: stop where an element of ``event_fn(t, y)`` crosses zero (``t[1:]`` only gives
            the direction). With ``options=dict(per_sample=True)`` every sample (dim 0 of
            ``y0``) stops at its own event: ``event_fn`` receives (batch,) times and returns
            (batch,) or (batch, k) values.

    Returns:
        The states at ``t``, stacked on a new dimension 0. With ``event_fn``: ``(event_t,
            solution)``, where ``solution`` holds the states at ``t[0]`` and at the event
            (``event_t`` of shape (batch,) in per-sample mode). Gradients of both include the
            event time's dependence on ``y0`` and the parameters, as ``odeint_event``'s
            (torchdiffeq's ``odeint`` with ``event_fn`` holds the event time fixed).

    Raises:
        ValueError: an unknown method or option, or an option the method does not take; the
            message names it.
        SolverError: the solve failed (see [`solve`][neuralode.solve]).
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _ODEINT_OUTSIDE_DYNAMO(locals())
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, Direct())


_ODEINT_OUTSIDE_DYNAMO = outside_dynamo(odeint)


def odeint_adjoint(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    t: torch.Tensor,
    *,
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
    event_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_method: str | None = None,
    adjoint_options: dict[str, Any] | None = None,
    adjoint_params: Sequence[torch.Tensor] | None = None,
) -> Any:
    """``odeint`` whose gradients come from the continuous adjoint (O(1) memory in steps).

    The forward solve is [`odeint`][neuralode.odeint]'s; the backward solve integrates the
    adjoint system with [`Backsolve`][neuralode.adjoint.Backsolve].

    Arguments:
        func: the vector field ``func(t, y)``; ``callback_*_adjoint`` methods of ``func`` are
            called during the backward solve with torchdiffeq's augmented state ``(t, y,
            adj_y, *adj_params)`` (``t`` a zero; y and adj_y flat for a tuple y0), the
            step's start time (for a decreasing ``t`` torchdiffeq gives minus it) and a
            positive ``dt``.
        y0: the initial state, a tensor or a tuple of tensors of one dtype.
        t: the output times, 1-D and strictly monotonic.
        rtol: the relative tolerance of the forward solve (as for ``odeint``).
        atol: the absolute tolerance of the forward solve (as for ``odeint``).
        method: the forward method's name (default ``"dopri5"``).
        options: the forward method's options (as for ``odeint``).
        event_fn: an event function, as for ``odeint``.
        adjoint_rtol: the backward solve's relative tolerance (default ``rtol``).
        adjoint_atol: the backward solve's absolute tolerance (default ``atol``).
        adjoint_method: the backward solve's method (default ``method``).
        adjoint_options: the backward solve's options (default: the forward ones without
            ``norm`` and ``progress_meter``: the forward solve's meter shows the forward
            solve only). ``step_t``, ``jump_t`` and ``perturb`` there apply to the backward
            solves, and a ``grid_constructor`` is called again for each with its reversed
            times. ``{"norm": "seminorm"}`` leaves the parameter-gradient channels out of the
            error norm; a callable norm is given ``(t, *y, *adj_y, *adj_params)`` as in
            torchdiffeq (``t`` a zero: the time gradient is not integrated).
        adjoint_params: the tensors to differentiate with respect to (any iterable, read
            once, e.g. ``func.parameters()``; default
            ``tuple(func.parameters())``, or an ``nn.DataParallel`` replica's parameter
            copies, as in torchdiffeq; ``func`` must then be an ``nn.Module``).

    Returns:
        As [`odeint`][neuralode.odeint].

    Raises:
        ValueError: ``scipy_solver`` as a method, ``per_sample`` or ``progress_meter`` in
            ``adjoint_options``, or an ``adjoint_options["norm"]`` that is neither
            ``"seminorm"`` nor a callable.
        SolverError: the forward or the backward solve failed.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _ODEINT_ADJOINT_OUTSIDE_DYNAMO(locals())
    if adjoint_params is not None:  # (a generator such as func.parameters() is read once)
        adjoint_params = tuple(adjoint_params)
    method = "dopri5" if method is None else _ALIASES.get(method, method)
    adjoint_method = (
        method if adjoint_method is None else _ALIASES.get(adjoint_method, adjoint_method)
    )
    if "scipy_solver" in (method, adjoint_method):
        raise ValueError(
            "scipy_solver is not differentiable and cannot be used with odeint_adjoint; use a "
            "torch method (e.g. dopri5) for method and adjoint_method"
        )
    inherited = adjoint_options is None
    if inherited:
        adjoint_options = {
            k: v
            for k, v in (options or {}).items()
            if k != "norm" and k not in (*_LOOP_FLAGS, "throw", "progress_meter")
        }
    adjoint_options = dict(adjoint_options)
    if "progress_meter" in adjoint_options:
        raise ValueError(
            "adjoint_options cannot set progress_meter: the backward solves show no progress "
            "(set progress_meter in options for the forward solve)"
        )
    if "per_sample" in adjoint_options:
        raise ValueError(
            "adjoint_options cannot set per_sample: the backward solve always runs the whole "
            "batch as one system (set per_sample in options for the forward solve)"
        )
    norm = adjoint_options.pop("norm", None)
    if not (norm is None or norm == "seminorm" or callable(norm)):
        raise ValueError(
            f"adjoint_options['norm'] must be 'seminorm', a callable or absent, got {norm!r}; "
            "the default is the max over the state, adjoint and parameter-gradient RMS norms"
        )
    t = _on_state_device(t, y0)
    adjoint_rtol = rtol if adjoint_rtol is None else adjoint_rtol
    adjoint_atol = atol if adjoint_atol is None else adjoint_atol
    spec, _ = tree_spec(y0, "y0")
    try:
        solver, controller, extra = _parse(
            adjoint_method, adjoint_options, adjoint_rtol, adjoint_atol, func, y0, t, spec
        )
    except ValueError as error:
        if not inherited or not str(error).startswith("unknown option"):
            raise
        raise ValueError(
            f"{error}. adjoint_options was not given, so the backward solve took the options "
            f"of method {method!r}: pass adjoint_options for adjoint_method {adjoint_method!r}"
        ) from None
    forward_norm = None if options is None else options.get("norm")
    if callable(norm):
        norm = _adjoint_norm(norm, spec, resolve_params(func, adjoint_params))
    elif callable(forward_norm):  # torchdiffeq: the forward norm measures y and the adjoint
        params = () if norm == "seminorm" else resolve_params(func, adjoint_params)
        norm = _backward_norm_of(forward_norm, spec, params)
    gradient = Backsolve(
        params=adjoint_params,
        solver=solver,
        # (it holds adjoint_rtol and adjoint_atol as odeint's controller holds its tolerances:
        # NumPy values, one per tensor of a tuple y0, laid out as the flat state)
        controller=controller,
        seminorm=norm == "seminorm",
        max_steps=extra.get("max_steps"),
        callbacks=_callbacks(
            func,
            "_adjoint",
            adjoint_method,
            solver,
            _adjoint_callback_view(spec, func, adjoint_params),
        ),
        compile_step=bool(extra.get("compile_step") or extra.get("compile")),
        step_t=extra.get("step_t"),
        jump_t=extra.get("jump_t"),
        perturb=extra.get("perturb"),
        norm=norm if callable(norm) else None,
    )
    return _odeint(func, y0, t, rtol, atol, method, options, event_fn, gradient)


_ODEINT_ADJOINT_OUTSIDE_DYNAMO = outside_dynamo(odeint_adjoint)


def odeint_dense(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    t0: torch.Tensor | float,
    t1: torch.Tensor | float,
    *,
    rtol: float | torch.Tensor | Sequence[float] = 1e-7,
    atol: float | torch.Tensor | Sequence[float] = 1e-9,
    method: str | None = None,
    options: dict[str, Any] | None = None,
) -> Callable[[torch.Tensor], Any]:
    """Solve from ``t0`` to ``t1`` keeping every step; return the solution as a function of
    time (torchdiffeq's ``odeint_dense``).

    torchdiffeq's takes ``dopri5`` and a tensor ``y0`` only; this one takes every method
    with dense output and tuple states, and evaluates on the method's own interpolant (see
    the guide's "Dense solutions").

    Arguments:
        func: the vector field ``func(t, y)``.
        y0: the initial state, a tensor or a tuple of tensors of one dtype.
        t0: the initial time.
        t1: the final time (before ``t0`` for a solve backward in time).
        rtol: the relative tolerance (as for ``odeint``).
        atol: the absolute tolerance (as for ``odeint``).
        method: the method's name (default ``"dopri5"``).
        options: the method's options (as for ``odeint``).

    Returns:
        ``dense_output_fn(t_eval)``: the state at the times ``t_eval`` (a tensor of any
            shape inside the span; the result has its shape followed by ``y0``'s, in
            ``y0``'s structure), differentiable with respect to ``y0`` and ``func``'s
            parameters.

    Raises:
        ValueError: ``scipy_solver`` as the method; an evaluation outside the span; bad
            input as for ``odeint``.
        SolverError: the solve failed.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _ODEINT_DENSE_OUTSIDE_DYNAMO(locals())
    like = t0 if isinstance(t0, torch.Tensor) else t1
    dtype = like.dtype if isinstance(like, torch.Tensor) else torch.get_default_dtype()
    span = torch.stack([torch.as_tensor(t, dtype=dtype).reshape(()) for t in (t0, t1)])
    solution = _odeint(func, y0, span, rtol, atol, method, options, None, Direct(), dense=True)
    return solution.evaluate


_ODEINT_DENSE_OUTSIDE_DYNAMO = outside_dynamo(odeint_dense)


def odeint_event(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    t0: torch.Tensor,
    *,
    event_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    reverse_time: bool = False,
    odeint_interface: Callable[..., Any] = odeint,
    **kwargs: Any,
) -> tuple[torch.Tensor, Any]:
    """Solve from ``t0`` until ``event_fn(t, y)`` crosses zero; return ``(event_t, solution)``.

    As in torchdiffeq; both results are differentiable, the event time by the implicit function
    theorem.

    Arguments:
        func: the vector field ``func(t, y)``.
        y0: the initial state, a tensor or a tuple of tensors of one dtype.
        t0: the initial time (a scalar tensor).
        event_fn: the event function ``event_fn(t, y)``; the solve ends where an element
            crosses zero. As in torchdiffeq, an adaptive method ends at ``t0`` (both states
            ``y0``) where an element is exactly 0 at ``t0``; a fixed-grid one reports that
            element's next crossing (torchdiffeq's never sees it cross).
        reverse_time: search backwards in time.
        odeint_interface: [`odeint`][neuralode.odeint] or
            [`odeint_adjoint`][neuralode.odeint_adjoint].
        **kwargs: passed to ``odeint_interface`` (``rtol``, ``atol``, ``method``,
            ``options``, ...). ``options=dict(per_sample=True)`` gives per-sample events.

    Returns:
        ``(event_t, solution)``: ``solution`` stacks the states at ``t0`` and at the event
            (take ``solution[-1]``, or ``s[-1]`` per tensor of a tuple, for the state at the
            event). In per-sample mode ``event_t`` has shape (batch,) and ``solution``
            (2, batch, ...).

    Raises:
        SolverError: no event was found before the solve failed (e.g. ``MaxStepsError``).
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _ODEINT_EVENT_OUTSIDE_DYNAMO(locals())
    t0 = torch.as_tensor(t0).reshape(-1)[:1]
    t = torch.cat([t0, t0.detach() + (-1.0 if reverse_time else 1.0)])
    return odeint_interface(func, y0, t, event_fn=event_fn, **kwargs)


_ODEINT_EVENT_OUTSIDE_DYNAMO = outside_dynamo(odeint_event)


def _odeint(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    t: torch.Tensor,
    rtol: float,
    atol: float,
    method: str | None,
    options: dict[str, Any] | None,
    event_fn: Callable | None,
    gradient: GradientStrategy,
    dense: bool = False,
) -> Any:
    """The solve behind the façade's functions: ``ys``, or with ``event_fn`` ``(event_t,
    states at t0 and at the event)``, or with ``dense`` the ``Solution`` keeping its steps."""
    method = "dopri5" if method is None else _ALIASES.get(method, method)
    options = {} if options is None else dict(options)
    t = _on_state_device(t, y0)
    if method == "scipy_solver" and dense:
        raise ValueError(
            "odeint_dense needs a torch method (e.g. dopri5): scipy_solver keeps no steps"
        )
    if method == "scipy_solver":
        if options.get("progress_meter") is not None:
            raise ValueError(
                "method scipy_solver takes no progress_meter (SciPy runs its own loop); use a "
                "torch method (e.g. dopri5) to show progress"
            )
        _callbacks(func, "", method, None)  # warns: SciPy calls none
        return _scipy(func, y0, t, rtol, atol, options, event_fn)
    spec, _ = tree_spec(y0, "y0")
    solver, controller, extra = _parse(method, options, rtol, atol, func, y0, t, spec)
    event = None
    if event_fn is not None and "throw" in extra and not extra["throw"]:
        raise ValueError(
            "option throw=False is not supported with event_fn: the event's time and state "
            "have no status to go with them; use neuralode.solve(..., event=Event(fn), "
            "throw=False) and read Solution.status"
        )
    if event_fn is not None:
        if not isinstance(t, torch.Tensor) or t.ndim != 1 or t.numel() < 2:
            raise ValueError(
                "with event_fn, t must be a 1-D tensor [t0, t1] (t1 gives the direction)"
            )
        direction = 1.0 if float(t[1].detach()) > float(t[0].detach()) else -1.0
        t = torch.cat(
            [t[:1], torch.full((1,), direction * math.inf, dtype=t.dtype, device=t.device)]
        )
        event = Event(event_fn)
    start = None
    if event_fn is not None and solver.adaptive:
        # torchdiffeq's adaptive solvers end at t0 where an element of event_fn(t0, y0) is
        # exactly 0 (its fixed-grid ones never see that element cross); neuralode.Event
        # counts no event at t0, so the façade adds it
        per_sample = bool(extra.get("per_sample", False))
        start = _zero_at_start(event_fn, t[0], y0, int(spec.shapes[0][0]) if per_sample else 0)
        if bool(start.all()):
            _LAST_STATS.set(SolveStats())
            return t[0].expand(start.shape), _stack_pair(y0, y0)
        if bool(start.any()):  # some samples: they end just after t0, set back to t0 below
            event = Event(_ending_at_start(event_fn, start, t[0], float(t[1] > t[0]) * 2 - 1))
    sol = solve(
        func,
        y0,
        t,
        solver=solver,
        controller=controller,
        gradient=gradient,
        event=event,
        callbacks=_callbacks(func, "", method, solver),
        dense=dense,
        **extra,
    )
    _LAST_STATS.set(sol.stats)
    if dense:
        return sol
    if event is None:
        return sol.ys
    assert sol.event_t is not None  # the solve runs towards infinity until an event
    event_t, event_y = sol.event_t, sol.event_y
    if start is not None and bool(start.any()):
        event_t = torch.where(start, t[0].to(event_t.dtype), event_t)
        event_y = _rows_from(y0, event_y, start)
    return event_t, _stack_pair(y0, event_y)


def _zero_at_start(event_fn: Callable, t0: torch.Tensor, y0: Any, batch: int) -> torch.Tensor:
    """Whether an element of ``event_fn(t0, y0)`` is exactly 0: a 0-dim bool, or per sample
    (``batch`` > 0, ``event_fn`` given the (batch,) times) a (batch,) one."""
    with torch.no_grad():
        t = t0.detach().expand(batch) if batch else t0.detach()
        values = torch.as_tensor(event_fn(t, y0))
    zero = values == 0
    if not batch:
        return zero.any()
    return zero.reshape(batch, -1).any(1)


def _ending_at_start(
    event_fn: Callable, start: torch.Tensor, t0: torch.Tensor, sign: float
) -> Callable:
    """``event_fn`` whose rows ``start`` are replaced by a ramp that crosses 0 just after
    ``t0`` (in the direction ``sign`` of the solve), so that those samples end there."""
    t0 = t0.detach()
    offset = float(max(abs(float(t0)), 1.0)) * 2.0**-20

    def fn(t: torch.Tensor, y: Any) -> torch.Tensor:
        values = event_fn(t, y)
        ramp = (sign * (t0 - t) + offset).to(values.dtype)
        ramp = ramp.reshape(-1, *[1] * (values.ndim - 1)).expand_as(values)
        return torch.where(start.reshape(-1, *[1] * (values.ndim - 1)), ramp, values)

    return fn


def _rows_from(y0: Any, y_event: Any, start: torch.Tensor) -> Any:
    """``y_event`` with the rows ``start`` taken from ``y0``."""

    def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(start.reshape(-1, *[1] * (a.ndim - 1)), a, b)

    if isinstance(y0, torch.Tensor):
        return pick(y0, y_event)
    return type(y_event)(pick(a, b) for a, b in zip(y0, y_event))


# the statistics of this context's last solve by ``odeint`` / ``odeint_adjoint``, whose
# torchdiffeq signature returns only the states: for the models built on the façade
# (``NeuralCDE``), including compiled solves, where counting f's calls cannot work
_LAST_STATS: contextvars.ContextVar[SolveStats | None] = contextvars.ContextVar(
    "neuralode_last_stats", default=None
)


def last_stats() -> SolveStats | None:
    """The ``SolveStats`` of this context's last ``odeint`` / ``odeint_adjoint`` solve
    (``nfe_backward`` filled in by its adjoint's backward pass), or ``None``."""
    return _LAST_STATS.get()


def _on_state_device(t: Any, y0: Any) -> Any:
    """``t`` on y0's device, with torchdiffeq's warning if it was elsewhere (torchdiffeq
    accepts times on another device, e.g. the CPU for a CUDA state, and moves them; the move
    is differentiable, so gradients still reach the given ``t``)."""
    first = y0 if isinstance(y0, torch.Tensor) else next(iter(y0), None)
    if not (isinstance(t, torch.Tensor) and isinstance(first, torch.Tensor)):
        return t  # solve's validation names what is wrong
    if t.device == first.device or t.is_meta:
        return t  # (a meta tensor holds no values to move: solve's validation names it)
    warnings.warn("t is not on the same device as y0. Coercing to y0.device.", stacklevel=4)
    return t.to(first.device)


def _stack_pair(y0: Any, y_event: Any) -> Any:
    if isinstance(y0, torch.Tensor):
        return torch.stack([y0, y_event])
    return tuple(torch.stack([a, b]) for a, b in zip(y0, y_event))


def _scipy(func, y0, t, rtol, atol, options, event_fn):
    if event_fn is not None:
        raise ValueError("scipy_solver does not support event_fn; use a torch method")
    from .solvers.scipy_solver import solve_scipy

    options = dict(options)
    method = options.pop("solver", "RK45")
    return solve_scipy(func, y0, t, method=method, rtol=rtol, atol=atol, **options)
