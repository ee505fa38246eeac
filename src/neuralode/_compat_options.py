"""torchdiffeq's method names, options and callbacks turned into the core API's objects
(a solver, a controller and ``solve``'s keyword arguments), validated: the parsing behind
``compat``'s ``odeint`` and ``odeint_adjoint``."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ._args import DEFAULT_MAX_STEPS
from ._compat_interpolation import with_interpolation
from ._norms import mixed_norm
from .adjoint.params import resolve_params
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .solvers import method_class, method_names

# options of the forward solve's execution, passed to ``solve`` (not to the adjoint's):
# ``per_sample`` and ``compile`` and the older boolean flags (``_execution.Execution.of``)
_LOOP_FLAGS = (
    "per_sample", "compile", "skip_finished", "compile_step", "device_loop", "cuda_graph",
)  # fmt: skip
_ADAPTIVE_OPTIONS = {
    "first_step",
    "safety",
    "ifactor",
    "dfactor",
    "icoeff",
    "pcoeff",
    "dcoeff",
    "min_step",
    "max_step",
    "max_num_steps",
    "dtype",
    "step_t",
    "jump_t",
    "norm",
    "throw",
    "progress_meter",
    *_LOOP_FLAGS,
}
_FIXED_OPTIONS = {
    "step_size", "grid_constructor", "perturb", "interp", "max_num_steps", "compile_step",
    "compile", "per_sample", "throw", "progress_meter",
}  # fmt: skip
_INTERPOLATIONS = ("linear", "cubic")
# torchdiffeq's other names for our methods
_ALIASES = {"fixed_adams": "implicit_adams"}
# options torchdiffeq's method takes and does nothing with (its explicit Adams inherits the
# corrector's ``max_iters``): accepted, so that options shared between methods still work
_NO_EFFECT = {"explicit_adams": {"max_iters"}}
_CONTROLLER_OPTIONS = (
    "first_step", "safety", "ifactor", "dfactor", "icoeff", "pcoeff", "dcoeff",
)  # fmt: skip
_CALLBACKS = ("callback_step", "callback_accept_step", "callback_reject_step")


def _parse(
    method: str,
    options: dict[str, Any],
    rtol: Any,
    atol: Any,
    func: Callable,
    y0: Any,
    t: torch.Tensor,
    spec: Any,
):
    """(solver, controller, extra keyword arguments of ``solve``) from torchdiffeq's terms."""
    given = options  # an option set to None takes its default, as in torchdiffeq
    options = {k: v for k, v in options.items() if v is not None or k == "max_num_steps"}
    method = _ALIASES.get(method, method)
    solver_cls = method_class(method)
    if solver_cls is None:
        available = ", ".join([*method_names(), *_ALIASES, "scipy_solver"])
        raise ValueError(f"unknown method {method!r}; available methods: {available}")
    solver_args = [p for p in inspect.signature(solver_cls).parameters if p != "self"]
    probe = solver_cls(**{k: options[k] for k in solver_args if k in options})
    allowed = (_ADAPTIVE_OPTIONS if probe.adaptive else _FIXED_OPTIONS) | set(solver_args)
    allowed |= _NO_EFFECT.get(method, set())
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for method {method!r}; valid options: {sorted(allowed)}"
        )
    rtol, atol = _tolerance("rtol", rtol, y0, spec), _tolerance("atol", atol, y0, spec)
    most = options.get("max_num_steps", DEFAULT_MAX_STEPS)
    extra: dict[str, Any] = {"max_steps": None if most is None else int(most)}
    if "throw" in options:  # False: failed samples' outputs NaN instead of an error
        extra["throw"] = bool(options["throw"])
    if "progress_meter" in options:  # (``solve`` checks it)
        extra["progress_meter"] = options["progress_meter"]
    if probe.adaptive:
        dtype = options.get("dtype", torch.float64)
        # torchdiffeq's time dtype (e.g. float32 where a device lacks float64): the step-size
        # arithmetic here is always float64 on the host, and func is given t in the state's
        # dtype, as torchdiffeq gives it for dtype=float32 and a float32 state
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"option dtype must be a floating-point torch.dtype (torchdiffeq's time dtype, "
                f"e.g. torch.float32), got {dtype!r}"
            )
        kwargs = {k: float(options[k]) for k in _CONTROLLER_OPTIONS if k in options}
        kwargs["min_step"] = float(options.get("min_step", 0.0))
        kwargs["max_step"] = float(options.get("max_step", math.inf))
        controller = PIController(rtol, atol, **kwargs)
        for key in ("step_t", "jump_t"):
            if options.get(key) is not None:
                extra[key] = options[key]
        for key in _LOOP_FLAGS:
            if options.get(key):
                extra[key] = options[key]
        if options.get("norm") is not None:
            user_norm = options["norm"]
            extra["norm"] = lambda flat: user_norm(spec.unflatten(flat))
    else:
        if options.get("step_size") is not None and options.get("grid_constructor") is not None:
            raise ValueError("options step_size and grid_constructor are mutually exclusive")
        constructor = None
        if options.get("grid_constructor") is not None:
            constructor = _grid_constructor(options["grid_constructor"], func, y0, t)
        controller = FixedGrid(step_size=options.get("step_size"), constructor=constructor)
        # torchdiffeq's default: outputs between grid points interpolated linearly
        interp = options.get("interp", "linear")
        if interp not in _INTERPOLATIONS:
            raise ValueError(f"option interp must be one of {_INTERPOLATIONS}, got {interp!r}")
        probe = with_interpolation(probe, interp)
        extra["perturb"] = bool(options.get("perturb", False))
        extra["compile_step"] = bool(options.get("compile_step", False))
        for key in ("compile", "per_sample"):
            if options.get(key):
                extra[key] = options[key]
    return probe, controller, extra


class _FuncCallbacks:
    """The core's callbacks object calling torchdiffeq-style ``callback_*`` on ``func``, with
    the state passed through ``view`` first (the identity for a forward solve) and the step's
    size as torchdiffeq gives it: positive in either direction of time (torchdiffeq
    integrates a reversed span forwards in -t)."""

    def __init__(
        self, func: Any, suffix: str, names: Sequence[str], view: Callable[[Any], Any] | None
    ):
        hooks = ("on_step", "on_accept", "on_reject")
        for hook, target in zip(hooks, _CALLBACKS):
            if target in names:
                setattr(self, hook, _as_torchdiffeq(getattr(func, target + suffix), view))


def _as_torchdiffeq(method: Callable, view: Callable[[Any], Any] | None) -> Callable:
    def call(t: torch.Tensor, y: Any, dt: torch.Tensor) -> Any:
        return method(t, y if view is None else view(y), abs(dt))

    return call


def _callbacks(
    func: Any,
    suffix: str,
    method: str,
    solver: Any,
    view: Callable[[Any], Any] | None = None,
) -> _FuncCallbacks | None:
    """The callbacks ``func`` defines that ``method`` calls (as torchdiffeq: fixed-grid
    methods call only ``callback_step``, ``scipy_solver`` none); a warning names the others.
    ``view`` maps the solve's state to what the callbacks are given."""
    defined = [name for name in _CALLBACKS if callable(getattr(func, name + suffix, None))]
    if method == "scipy_solver":
        called: tuple[str, ...] = ()
    elif not solver.adaptive:
        called = ("callback_step",)
    else:
        called = _CALLBACKS
    ignored = [name + suffix for name in defined if name not in called]
    if ignored:
        warnings.warn(
            f"method {method!r} never calls {', '.join(ignored)} defined on func "
            f"({'it calls no callbacks' if not called else 'it calls only callback_step'})",
            stacklevel=4,
        )
    used = [name for name in defined if name in called]
    return _FuncCallbacks(func, suffix, used, view) if used else None


def _grid_constructor(
    constructor: Callable, func: Any, y0: Any, t: torch.Tensor
) -> Callable[[list[float]], torch.Tensor]:
    """torchdiffeq's ``grid_constructor(func, y0, t)`` as a ``FixedGrid`` constructor: called
    for each solve with its times as a tensor like ``t`` (reversed for an adjoint's backward
    solves)."""

    def build(times: list[float]) -> torch.Tensor:
        return constructor(func, y0, torch.tensor(times, dtype=t.dtype, device=t.device))

    return build


def _backward_parts(
    x: torch.Tensor, spec: Any, params: Sequence[torch.Tensor], split_y: bool
) -> tuple[torch.Tensor, ...]:
    """The flat backward state ``[y, a, g]`` as torchdiffeq's augmented state ``(t, y,
    adj_y, *adj_params)``: ``t`` a zero (the time gradient is not integrated here), the
    parameter gradients in the parameters' shapes, and ``y`` and ``adj_y`` in y0's shape for
    a tensor y0. For a tuple y0, ``split_y`` gives each of its tensors in turn (as
    torchdiffeq's adjoint norms see them), otherwise the flat concatenation (as torchdiffeq's
    adjoint callbacks see it)."""
    n = sum(spec.numels)
    grads = torch.split(x[2 * n :], [p.numel() for p in params])
    grads = tuple(g.view(p.shape) for g, p in zip(grads, params))
    t = x.new_zeros(()).real
    if spec.is_leaf:
        return (t, spec.unflatten(x[:n]), spec.unflatten(x[n : 2 * n]), *grads)
    if split_y:
        return (t, *spec.unflatten(x[:n]), *spec.unflatten(x[n : 2 * n]), *grads)
    return (t, x[:n], x[n : 2 * n], *grads)


def _adjoint_norm(norm: Callable, spec: Any, params: Sequence[torch.Tensor]) -> Callable:
    """A torchdiffeq adjoint norm, called with ``(t, *y, *adj_y, *adj_params)`` (a tuple state
    flattened into its tensors), as a norm of the flat backward state ``[y, a, g]``."""

    def flat_norm(x: torch.Tensor) -> torch.Tensor:
        return norm(_backward_parts(x, spec, params, split_y=True))

    return flat_norm


def _adjoint_callback_view(spec: Any, func: Any, adjoint_params: Any) -> Callable:
    """The state torchdiffeq's ``callback_*_adjoint`` are given: the tuple ``(t, y, adj_y,
    *adj_params)`` of the flat backward state ``[y, a, g]``. The parameters are resolved as
    the backward solve resolves them, at its first step."""
    params: list[tuple[torch.Tensor, ...]] = []

    def view(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if not params:
            params.append(resolve_params(func, adjoint_params))
        return _backward_parts(x, spec, params[0], split_y=False)

    return view


def _backward_norm_of(
    forward_norm: Callable, spec: Any, params: Sequence[torch.Tensor]
) -> Callable:
    """torchdiffeq's backward norm where ``options`` give a forward norm and
    ``adjoint_options`` none: the largest of the forward norm of y, the forward norm of the
    adjoint and (without ``"seminorm"``, ``params`` not empty) the parameter gradients' mixed
    RMS norm, as a norm of the flat backward state ``[y, a, g]``."""
    n = sum(spec.numels)
    gradients = mixed_norm([p.numel() for p in params]) if params else None

    def flat_norm(x: torch.Tensor) -> torch.Tensor:
        parts = [forward_norm(spec.unflatten(x[:n])), forward_norm(spec.unflatten(x[n : 2 * n]))]
        if gradients is not None:
            parts.append(gradients(x[2 * n :]))
        return torch.stack([torch.as_tensor(p, dtype=x.real.dtype) for p in parts]).max()

    return flat_norm


def _tolerance(name: str, value: Any, y0: Any, spec: Any) -> float | torch.Tensor:
    """torchdiffeq's ``rtol``/``atol``: a number (NumPy's too); a tensor, NumPy array or
    sequence of numbers (per element, broadcasting against a tensor state); or, for a tuple
    state, one number or tensor per tensor of the state (a sequence, or a tensor with one
    entry per tensor), laid out as the flat state."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        raise ValueError(f"{name} cannot require gradient; pass {name}.detach()")
    if isinstance(value, (np.ndarray, np.generic)) and value.dtype.kind in "fiu":
        value = torch.as_tensor(value, dtype=torch.float64)  # (as torchdiffeq takes them)
    if isinstance(y0, torch.Tensor) and isinstance(value, (tuple, list)):
        try:  # torchdiffeq makes it a tensor
            value = torch.as_tensor(value, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(
                f"{name} must be a non-negative number or a tensor (or sequence) of them "
                f"broadcasting against y0; got {value!r} ({error})"
            ) from None
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    nested = isinstance(y0, (tuple, list))
    if nested and (isinstance(value, (tuple, list)) or isinstance(value, torch.Tensor)):
        leaves = list(y0)
        if len(value) != len(leaves):
            raise ValueError(
                f"{name} has {len(value)} entries but y0 has {len(leaves)} tensors: give one "
                "tolerance per tensor of y0, or a number"
            )
        parts = [torch.as_tensor(tol, dtype=torch.float64).expand(leaf.shape).reshape(-1)
                 for tol, leaf in zip(value, leaves)]  # fmt: skip
        value = torch.cat(parts)
    if isinstance(value, torch.Tensor):
        if not bool((value >= 0).all()):
            raise ValueError(f"{name} must be non-negative, got {value}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(
            f"{name} must be a non-negative number, a tensor of them, or (for a tuple y0) one "
            f"per tensor of y0; got {value!r}"
        )
    return float(value)
