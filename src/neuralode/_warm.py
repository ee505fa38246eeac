"""Warm calls of ``solve(..., compile=True)``: the checks and objects that depend only on
the call's settings, made once.

A whole-solve call's host work around the compiled graph is mostly checks whose outcome
depends on nothing but types and settings (the strategies, the execution, the mode's
conditions, the state's dtype and shape) and the objects they make (the state's spec, the
loop's settings, the plan of the graph). A call whose other arguments keep their defaults
and that runs under ``torch.no_grad()`` with no ``torch.func`` transform is keyed by f (as
itself), the solver and controller by type and settings (``_whole_plan._settings``: plain
attributes only, else no key; read anew on each call, so that a controller changed in place
is another key), ``per_sample`` (a bool) and ``max_steps`` (an int or ``None``), and the
shapes, dtypes and devices of y0 and ts (``compile`` is ``True`` or ``"solve"``, one
execution). After a key's first solve ran as one graph (``solve``'s full path), a later
call with an equal key checks only what depends on its values (y0 finite, the times and the
outputs) and runs the remembered plan (another direction of time: its own plan, kept
alongside). A key is kept only where the tolerances pass for every y0 of the dtype
(``check_tolerances``), and a non-finite y0 or a graph that cannot run goes the full way,
which raises or warns as always. Nothing is keyed by ``id()``: f and the settings are held
by the key itself (the last 8 keys, which keep their f alive as the plans do).
"""

from __future__ import annotations

from typing import Any

import torch

from . import _whole_solve
from ._solution import Solution, SolveStats
from ._status import success
from ._term import ODETerm
from ._validate_times import check_time_resolution, check_time_values
from ._whole_plan import _settings

_ENTRIES: dict[tuple, Warm] = {}
_MOST_ENTRIES = 8


class Warm:
    """What a key's first whole solve made: f on the flat state (``ODETerm``), the loop's
    settings (with the plan's copies of the solver and controller), the plans by
    direction of time, the shape of the status and that of the outputs."""

    __slots__ = ("term", "config", "plans", "shape", "out_shape", "rows", "as_rows", "graph_shape")

    def __init__(self, spec: Any, func: Any, y0_flat: torch.Tensor, config: Any, n_out: int):
        plan = next(iter(config.whole_plans.values()))[0]
        self.term = ODETerm(func, spec, y0_flat)  # (each solve counts on a ``fresh`` copy)
        self.out_shape = (n_out, *spec.shapes[0])  # ``spec.unflatten``'s of the outputs
        self.plans = config.whole_plans
        self.config = type(config)(
            solver=plan.solver,
            controller=plan.controller,
            norm=config.norm,
            max_steps=config.max_steps,
            execution=config.execution,
            whole_plans=self.plans,
        )
        self.shape = spec.shapes[0][:1] if config.per_sample else ()
        # the graph's (batch, n) rows of y0; y0 itself where it has that shape
        batch = spec.shapes[0][0] if config.per_sample else 1
        self.rows = (batch, spec.numels[0] // batch)
        self.as_rows = tuple(spec.shapes[0]) == self.rows
        self.graph_shape = (n_out, *self.rows)  # (the graph's outputs: (len(ts), batch, n))


def defaults(*options: Any) -> bool:
    """Whether a call's other arguments keep their defaults and it passes no option
    aliases (a keyed call's condition besides ``compile`` asking for the whole solve):
    ``options`` are ``solve``'s norm, gradient, event, saveat, callbacks, dense, perturb,
    throw, step_t, jump_t and aliases, in this order."""
    norm, gradient, event, saveat, callbacks, dense, perturb, throw, step_t, jump_t, aliases = (
        options
    )
    return (
        norm is gradient is event is saveat is callbacks is None  # (each of them None)
        and dense is perturb is False
        and throw is True
        and type(step_t) is type(jump_t) is tuple
        and not (step_t or jump_t or aliases)
    )  # fmt: skip


def warm_key(
    func: Any, y0: Any, ts: Any, solver: Any, controller: Any, per_sample: Any, max_steps: Any
) -> tuple | None:
    """The key of a call whose other arguments keep their defaults and whose ``compile``
    asks for the whole solve (the caller checks those); ``None`` for a call that is not
    keyed (grad mode on, a ``torch.func`` transform, a tensor subclass, ``per_sample`` or
    ``max_steps`` of another type, a solver or controller with other than plain
    attributes)."""
    if (
        type(y0) is not torch.Tensor
        or type(ts) is not torch.Tensor
        or torch.is_grad_enabled()
        or _transform_level() is not None
        or (per_sample is not False and per_sample is not True)
        or (max_steps is not None and type(max_steps) is not int)  # (True == 1: no bool)
    ):
        return None
    solver_key = None if solver is None else _settings(solver)
    ctrl_key = None if controller is None else _settings(controller)
    if (solver_key is None and solver is not None) or (ctrl_key is None and controller is not None):
        return None
    return (
        func, solver_key, ctrl_key, per_sample, max_steps, y0.shape, y0.dtype, y0.device,
        ts.shape, ts.dtype, ts.device,
    )  # fmt: skip


def remember(
    key: tuple,
    spec: Any,
    func: Any,
    y0_flat: torch.Tensor,
    config: Any,
    cleared: bool,
    n_out: int,
) -> None:
    """Keep what the key's solve made, if it ran as one graph (``config.whole_plans``
    filled) and ``check_tolerances`` passes whatever y0's values (``cleared``)."""
    if not config.whole_plans or not cleared:
        return
    try:
        hash(key)
    except TypeError:
        return
    if len(_ENTRIES) >= _MOST_ENTRIES:
        _ENTRIES.pop(next(iter(_ENTRIES)))
    _ENTRIES[key] = Warm(spec, func, y0_flat, config, n_out)


_transform_level = torch._C._functorch.maybe_current_level  # (None: no transform active)


def solve_warm(
    func: Any, y0: Any, ts: Any, solver: Any, controller: Any, per_sample: Any, max_steps: Any
) -> tuple[tuple | None, Solution | None]:
    """A call's key (``None``: not keyed, ``warm_key``) and, when its key's first solve ran
    as one graph, its solution (``None``: the full path must run, and raises or warns what
    it finds)."""
    key = warm_key(func, y0, ts, solver, controller, per_sample, max_steps)
    try:
        warm = None if key is None else _ENTRIES.get(key)
    except TypeError:  # an unhashable f
        return None, None
    if warm is None:
        return key, None
    return key, _solve(key, warm, y0, ts)


def _solve(key: tuple, warm: Warm, y0: torch.Tensor, ts: torch.Tensor) -> Solution | None:
    """The solve of a keyed call after its key's first: the check of its times, the
    remembered plan's graph (which checks y0 and the outputs, ``integrate_whole``).
    ``None``: the full path must run (it warns what it finds)."""
    # (y0 itself if contiguous and outside autograd: as its view, it matches the guards)
    if warm.as_rows and not y0.requires_grad and y0.is_contiguous():
        rows = y0
    else:
        rows = y0.reshape(warm.rows)
    # (ts's shape, dtype and device are the key's first call's, which check_times passed)
    times = check_time_values(ts.tolist())
    check_time_resolution(times, y0.dtype)  # (the key's first call checked only its own)
    stats = SolveStats()
    term = warm.term.fresh()
    try:
        outputs = _whole_solve.integrate_whole(
            term, rows, times, warm.config, stats, warm.plans, warm.graph_shape
        )
    except _whole_solve.WholeSolveUnavailable:  # the full path warns and compiles steps
        _ENTRIES.pop(key, None)
        return None
    stats.status = success(warm.shape, rows)
    stats.nfe = term.nfe
    ys = outputs if warm.as_rows else outputs.reshape(warm.out_shape)
    return Solution(ts=ts, ys=ys, stats=stats, status=stats.status)
