"""The compiled whole solve's plan (``_whole_solve``): the solve's fixed facts, which the
graph reads as constants, and their cache; and the output times as the graph's input
(``output_times``).

A solve's plan, the solver's coefficients and the compiled graph are made once per f, solver
and controller settings, shape, dtype, device and setting, and reused by the solves that
match all of them: per call, a tuple lookup instead of the plan, its constants and their
tolerance tensors. A solver or controller whose attributes are plain values (a default
``Dopri5()`` or ``PIController()``, made anew by each ``solve``) is keyed by its type and
settings and copied into the plan, so that a later change to the caller's object cannot
reach a plan another solve finds; with any other one (tensor tolerances, say) the plan is
made for the solve alone. f is keyed as itself:
the graph's guards check what it reads of f (its code, closure, modules and parameters) on
every call, so a changed f compiles another graph.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any

import numpy as np
import torch

from ._attempt import Constants
from ._batch_term import BatchTerm
from ._compile import compiled
from ._norms import cached_tolerance, row_norm
from ._term import ODETerm
from ._whole_backend import whole_solve_backend
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK

_PLANS: dict[tuple, tuple[Any, Any, Any]] = {}  # the last few solves' (plan, co, run)
_MOST_PLANS = 8


def planned(
    graph: Any,
    term: ODETerm,
    y: torch.Tensor,
    ts: list[float],
    config: Any,
    sign: float,
    points: Any = None,
) -> Any:
    """The plan of the graph, the solver's coefficients and the compiled graph: made once
    per f, solver and controller settings, shape, dtype, device and setting, and reused by
    the solves that match all of them (the graph's guards still check what it reads of f
    on every call). Not cached for a solver or controller with other than plain
    attributes (tensor tolerances, say)."""
    solver: ExplicitRK = config.solver
    ctrl: PIController = config.controller
    rtol, atol = ctrl.rtol, ctrl.atol
    solver_key, ctrl_key = _settings(solver), _settings(ctrl)
    key = None
    if solver_key is not None and ctrl_key is not None:  # (else made for this solve only)
        key = (
            _func_key(term.func), solver_key, ctrl_key, term.spec.shapes[0], y.dtype,
            y.device, config.per_sample, term.time_dtype, sign, len(ts), config.max_steps,
            config.norm, None if points is None else points.times.shape[0], bool(config.jump_t),
        )  # fmt: skip
        try:
            entry = _PLANS.get(key)
        except TypeError:  # an unhashable f (a dataclass with eq=True, say): no cached plan
            key = entry = None
        if entry is not None:
            return entry
    check_output(term, y, ts[0], config.per_sample)
    if key is not None:
        # the plan keeps copies: a later change to the caller's solver or controller cannot
        # reach a plan that another solve with equal settings finds
        solver, ctrl = copy.copy(solver), copy.copy(ctrl)
    co = solver._coefficients(y)  # made before tracing: constants of the graph
    plan = Plan(
        func=term.func,
        solver=solver,
        controller=ctrl,
        shape=tuple(int(n) for n in term.spec.shapes[0]),
        per_sample=config.per_sample,
        time_dtype=term.time_dtype,
        sign=sign,
        n_out=len(ts),
        max_steps=config.max_steps,
        jumps=bool(config.jump_t),  # f is evaluated again past each jump
        exponent=1.0 / (solver.error_order + 1),
    )
    if key is None:  # (plans made for one solve share the solver's compiled copy)
        run = compiled(
            graph, ("whole", type(solver)), dynamic=False, fullgraph=True,
            backend=whole_solve_backend,
        )  # fmt: skip
    else:
        run = _copy_for(graph, key)
    norm = row_norm(config.norm)
    rtol, atol = cached_tolerance(rtol, y), cached_tolerance(atol, y)
    plan.constants = Constants(
        solver, ctrl, rtol, atol, sign, plan.exponent, norm, time_dtype=term.time_dtype
    )
    if key is not None:
        if len(_PLANS) >= _MOST_PLANS:
            _PLANS.pop(next(iter(_PLANS)))
        _PLANS[key] = plan, co, run
    return plan, co, run


def check_output(term: ODETerm, y: torch.Tensor, t0: float, per_sample: bool) -> None:
    """f evaluated once eagerly on the (batch, n) rows at ``t0``, not counted, its output
    checked as a host solve checks it (its type, shape, dtype and device), before a graph is
    traced: inside the graph a wrong dtype fails in torch's tracing, after the compile time,
    and a wrong shape of the right size passes the graph's reshape unnoticed."""
    if term._checked:
        return
    time = term.time(t0)
    with torch.no_grad():
        if per_sample:  # (one time per sample: a failure to broadcast it gets its fix)
            BatchTerm(term, y.shape[0])._first(time.expand(y.shape[0]), y)
        else:
            term.call_uncounted(term.at, time, y.reshape(-1))


def _copy_for(graph: Any, key: tuple) -> Any:
    """The compiled copy of the graph that a kept plan's solves run: one per plan key
    without f and the tolerances (``_COPIES``), whose guards check f and not the plan
    (``_guards_of_f_and_state``); the last ``_MOST_COPIES`` kept."""
    ctrl_key = key[2]
    if len(ctrl_key) == 4:  # (type, names, values, types: _settings) without the tolerances
        ctrl_type, names, values, types = ctrl_key
        kept = [(n, v, t) for n, v, t in zip(names, values, types) if n not in _TOLERANCES]
        ctrl_key = (ctrl_type, tuple(kept))
    copy_key = (key[1], ctrl_key, *key[3:])
    run = _COPIES.pop(copy_key, None)
    if run is None:
        if len(_COPIES) >= _MOST_COPIES:
            _COPIES.pop(next(iter(_COPIES)))
        run = compiled(
            graph, None, dynamic=False, fullgraph=True, backend=whole_solve_backend,
            guard_filter=_guards_of_f_and_state,
        )  # fmt: skip
    _COPIES[copy_key] = run  # (the most recently used last)
    return run


# kept plans' compiled copies by their settings: the plans given to one copy differ only in
# f (which its guards check) and in the tolerances (tensors: inputs of the graph)
_COPIES: dict[tuple, Any] = {}
_MOST_COPIES = 8
_TOLERANCES = ("rtol", "atol")


def _guards_of_f_and_state(entries: list[Any]) -> list[bool]:
    """The guards a kept plan's compiled copy checks on each call: those of f (its code,
    closure, modules, parameters and the globals it reads), of y0 and the times, and of
    torch's global state; not those on the plan's own objects (the solver, its
    coefficients, the controller and the settings, equal in every plan given to the copy,
    ``_copy_for``) or on this package's functions and modules. About two thirds of the
    guards, 10-40 us per call."""
    return [not _ours(entry.name) for entry in entries]


def _ours(name: str) -> bool:
    """Whether a guard's source is the plan's own or this package's
    (``_guards_of_f_and_state``)."""
    if "plan.func" in name or "plan'].func" in name:
        return False
    return _PLAN_SOURCE.match(name) is not None or name.startswith(_OWN_GLOBALS)


_PLAN_SOURCE = re.compile(r"(?:dict\(type\()*(?:plan|L\['plan'\])(?![\w'])")


# the whole solve's module globals that are this package's functions, its modules, and the
# pytree registry and modules that while_loop flattens the loop's carried values with
_OWN_GLOBALS = (
    "G['attempt']", "G['initial_step']", "G['_stalled']", "G['retried_unchanged']",
    "G['solve_span']",
    "G['while_loop']",
    # (this package and its submodules, not a user's module whose name starts alike)
    "G['__import_neuralode']", "G['__import_neuralode_dot_",
    "G['__import_torch_dot_utils_dot__pytree']",
    "G['__import_torch_dot__higher_order_ops", "__import__('torch').utils._pytree",
)  # fmt: skip


def _func_key(func: Any) -> Any:
    """f in the plan's key: a per-sample solve's ``BatchTime`` (made anew by each ``solve``)
    as the f it wraps and its batch."""
    if _BATCH_TIME[0] is None:
        from ._dispatch import BatchTime  # (it imports the loop, which imports this module)

        _BATCH_TIME[0] = BatchTime
    if type(func) is _BATCH_TIME[0]:
        return _BATCH_TIME[0], func._func, func.batch
    return func


_BATCH_TIME: list[Any] = [None]


_PLAIN = frozenset((float, int, bool, str, type(None)))


def _settings(obj: Any) -> Any:
    """What identifies a solver or controller in the plan's key: its type and attributes
    (names, values and their types) when every attribute is a plain value (a default
    ``Dopri5()`` or ``PIController()`` made anew by each ``solve``; a solver's coefficient
    cache is no setting); ``None`` (no cached plan) for any other."""
    if _has_slots(type(obj)):  # (attributes outside __dict__)
        return None
    attributes = vars(obj)
    if "_cache" in attributes:
        if len(attributes) == 1:  # (an explicit Runge-Kutta method: its tableau's class)
            return (type(obj),)
        attributes = {k: v for k, v in attributes.items() if k != "_cache"}
    values = tuple(attributes.values())
    types = tuple(map(type, values))
    if _PLAIN.issuperset(types):
        return type(obj), tuple(attributes), values, types
    return None


@functools.cache
def _has_slots(cls: type) -> bool:
    return any(getattr(c, "__slots__", ()) for c in cls.__mro__) or "__dict__" not in dir(cls)


class Plan:
    """The solve's fixed facts: constants of the compiled graph (guarded on by
    torch.compile: another f, solver, controller or setting compiles another graph)."""

    def __init__(self, **facts: Any):
        self.__dict__.update(facts)

    def call(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f on the (batch, n) rows at the (batch,) times, as the user's f takes them."""
        batch = y.shape[0]
        time = t.to(self.time_dtype)
        out = self.func(time if self.per_sample else time.reshape(()), y.reshape(self.shape))
        # (a copy: an f returning y or a view of it would alias the loop's carried values,
        # which while_loop refuses; inductor fuses the copy into the loop that uses it)
        return out.reshape(batch, -1).clone()


def output_times(ts: list[float], device: torch.device) -> torch.Tensor:
    """The output times as a float64 tensor (on CPU through NumPy: cheaper than
    ``torch.tensor``), the last solve's again for the same times and device (the graph
    never writes to its inputs)."""
    key = (tuple(ts), device)
    if _LAST_TIMES[0] == key:
        return _LAST_TIMES[1]
    if device.type == "cpu":
        tensor = torch.from_numpy(np.array(ts, dtype=np.float64))
    else:
        tensor = torch.tensor(ts, dtype=torch.float64, device=device)
    _LAST_TIMES[:] = key, tensor
    return tensor


_LAST_TIMES: list[Any] = [None, None]
