"""Parareal: a parallel-in-time solve of one initial value problem by multiple shooting.

The interval from ``ts[0]`` to ``ts[-1]`` is cut into K segments. A cheap coarse propagator G
runs through them one after the other; an accurate fine propagator F solves all K segments
at once, as one batched solve of K x batch independent problems; the correction

    U[n+1] <- G(U_new[n]) + F(U_old[n]) - G(U_old[n])

repeats until the boundary states U stop changing (Lions, Maday & Turinici 2001). After k
iterations the first k boundary states equal the sequential fine solve's (the coarse sweep of
iteration k starts at segment k: before it the correction is F's end), so K iterations
reproduce it (up to round-off); smooth problems converge in far fewer.

Every propagation is one ``neuralode.solve`` of its rows (segments x samples). The output
times are placed at the same local times s in [0, 1] of every segment (t = t_start + s *
length), so that the rows share their number: adaptive methods solve per sample, each row on
its own time span with its own steps; fixed steps solve the rows as one problem in s, on one
grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from .._args import is_int
from .._graph_break import outside_dynamo
from .._solve import solve
from .._tree import TreeSpec, _rebuild, tree_spec
from .._validate import coerce_strategies
from .._validate_times import check_times
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..solvers.base import Solver

# solve() arguments that parareal sets itself
_RESERVED = ("solver", "controller", "per_sample", "event", "saveat", "dense", "step_t", "jump_t")


@dataclass(frozen=True)
class Propagator:
    """How parareal solves a segment: a method with fixed steps or adaptive steps.

    Attributes:
        solver: a [`Solver`][neuralode.solvers.Solver] or a method name of
            [`METHODS`][neuralode.solvers.METHODS] (``"dopri5"``, ``"rk4"``, ...).
        steps: fixed steps: this many equal steps per segment (any explicit Runge-Kutta
            method, adaptive ones included, taken without error control); the segments are
            then solved as one problem on one grid. ``None``: adaptive steps (an adaptive
            explicit Runge-Kutta method), each segment and sample its own
            (``solve(..., per_sample=True)``), which needs ``y0`` to be one tensor.
        controller: the adaptive steps' ``PIController``; ``None``: ``PIController(rtol,
            atol)`` with parareal's tolerances.
        options: other keyword arguments of [`solve`][neuralode.solve]: ``max_steps``,
            ``gradient`` (``Direct()``, or ``Backsolve()`` for the fine solves), ``norm`` (fixed
            steps), ...

    Raises:
        ValueError: ``steps`` not a positive integer, ``steps`` with a ``controller``, or an
            option that parareal sets itself.
    """

    solver: Solver | str = "dopri5"
    steps: int | None = None
    controller: PIController | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.steps is not None and (not is_int(self.steps) or self.steps < 1):
            raise ValueError(f"steps must be a positive integer or None, got {self.steps!r}")
        if self.steps is not None and self.controller is not None:
            raise ValueError(
                "give steps (fixed steps per segment) or a controller (adaptive steps), not both"
            )
        taken = sorted(set(self.options) & set(_RESERVED))
        if taken:
            raise ValueError(
                f"Propagator options may not set {taken}: parareal chooses them (the solver "
                "and controller are the Propagator's own fields)"
            )

    def method(self) -> Solver:
        """The solver instance (a name resolved as ``solve`` resolves it).

        Returns:
            The [`Solver`][neuralode.solvers.Solver].

        Raises:
            ValueError: an unknown method name, or adaptive steps with a fixed-step method.
        """
        solver = coerce_strategies(self.solver, None, None, None)[0]
        if self.steps is None and not solver.adaptive:
            raise ValueError(
                f"{solver!r} has no error estimate for adaptive steps: give "
                f"Propagator({solver.name!r}, steps=...) for fixed steps per segment"
            )
        return solver


FINE = Propagator("dopri5")
"""The default fine propagator: dopri5 with adaptive steps, parareal's tolerances."""
COARSE = Propagator("rk4", steps=2)
"""The default coarse propagator: two rk4 steps per segment."""


@dataclass
class PararealSolution:
    """What [`parareal`][neuralode.shooting.parareal] returns.

    Attributes:
        ts: the output times given.
        ys: the states at ``ts`` from the last fine solves: the structure of ``y0`` with a
            leading dimension over ``ts``, (len(ts), batch, ...).
        boundary_ts: the segment boundaries, (segments + 1,): ``ts[0]``, ..., ``ts[-1]``.
        boundary_ys: the corrected states at the boundaries, (segments + 1, batch, ...):
            pass them as the next solve's ``initial=`` to start from them.
        iterations: the fine sweeps (iterations) taken.
        converged: whether the last correction changed every boundary state by less than
            ``atol + rtol * |y|`` (after ``segments`` iterations always: the result is then
            the sequential fine solve's).
        changes: each iteration's largest change of a boundary state, in units of
            ``atol + rtol * |y|`` (converged when at most 1).
        nfe: evaluations of ``func``, all propagations summed; a fine sweep counts each
            segment's evaluations (with adaptive steps: the most any sample of the segment
            needed), as solving the segments one by one would.
        nfe_sequential: the evaluations on the critical path: each coarse sweep's segments one
            after the other, and each fine sweep once (its segments run side by side), which
            is what parallel hardware pays.
    """

    ts: torch.Tensor
    ys: Any
    boundary_ts: torch.Tensor
    boundary_ys: Any
    iterations: int
    converged: bool
    changes: list[float]
    nfe: int
    nfe_sequential: int


class _LocalTime:
    """dy/ds = length * func(t_start + s * length, y) for s in [0, 1]: the segments of rows
    in one common time, so that they share one fixed grid."""

    def __init__(self, func: Callable, t_start: torch.Tensor, length: torch.Tensor):
        self.func, self.t_start, self.length = func, t_start, length
        self.user_func = func  # (what an error about func names)

    def __call__(self, s: Any, y: Any) -> Any:
        dy = self.func(self.t_start + s * self.length, y)
        spec, leaves = tree_spec(dy, "func's value")
        scaled = (d * self.length.reshape(-1, *(1,) * (d.ndim - 1)) for d in leaves)
        return _rebuild(spec.structure, scaled)


class _LocalTimeModule(nn.Module):
    """``_LocalTime`` for an ``nn.Module`` ``func``: its parameters stay visible to an
    adjoint (``Backsolve()`` finds them as this module's)."""

    def __init__(self, func: nn.Module, t_start: torch.Tensor, length: torch.Tensor):
        super().__init__()
        self.func = func
        self.local = _LocalTime(func, t_start, length)

    def forward(self, s: Any, y: Any) -> Any:
        return self.local(s, y)


@dataclass
class _Run:
    """One propagation's results: the states at the local output times and its work."""

    ys: list[torch.Tensor]  # leaves, (len(s_out), rows, ...)
    nfe: int
    depth: int


def _propagate(
    prop: Propagator,
    func: Callable,
    spec: TreeSpec,
    starts: list[torch.Tensor],
    t_start: torch.Tensor,
    length: torch.Tensor,
    s_out: torch.Tensor,
    groups: int,
    tolerances: tuple[float, float],
) -> _Run:
    """Solve every row (segment x sample) from its start over its segment, outputs at the
    local times ``s_out`` (0 first, 1 last); ``groups`` segments make up the rows."""
    solver = prop.method()
    y = _rebuild(spec.structure, iter(starts))
    if prop.steps is None:
        controller = prop.controller or PIController(*tolerances)
        spans = t_start[:, None] + s_out[None, :] * length[:, None]
        spans[:, 0], spans[:, -1] = t_start, t_start + length
        sol = solve(
            func, y, spans, solver=solver, controller=controller, per_sample=True, **prop.options
        )
        per_segment = sol.stats.sample_nfe.reshape(groups, -1).amax(1)
        nfe, depth = int(per_segment.sum()), sol.stats.nfe
    else:
        # n steps of each row's length / n are one grid in the local time s: the rows solve
        # as ONE problem on it, which (unlike per-sample mode with a step size per row)
        # takes a nested state, ``norm`` and every gradient strategy
        local = (_LocalTimeModule if isinstance(func, nn.Module) else _LocalTime)(
            func, t_start, length
        )
        grid = torch.linspace(0.0, 1.0, prop.steps + 1, dtype=torch.float64)
        sol = solve(local, y, s_out, solver=solver, controller=FixedGrid(grid=grid), **prop.options)
        nfe, depth = groups * sol.stats.nfe, sol.stats.nfe
    return _Run(tree_spec(sol.ys, "the solution")[1], nfe, depth)


def _boundaries(segments: Any, ts: torch.Tensor, times: list[float]) -> list[float]:
    """The boundary times from ``segments``: a count of equal segments, or the times."""
    if isinstance(segments, bool):
        raise TypeError("segments must be a number of segments or a tensor of boundary times")
    if is_int(segments):
        segments = int(segments)
        if segments < 1:
            raise ValueError(f"segments must be at least 1, got {segments}")
        t0, t1 = times[0], times[-1]
        bounds = [t0 + (t1 - t0) * i / segments for i in range(segments + 1)]
        bounds[-1] = t1
        if any(a == b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(
                f"{segments} segments of [{t0}, {t1}] are shorter than the time resolution: "
                "use fewer segments"
            )
        return bounds
    if not isinstance(segments, torch.Tensor):
        raise TypeError(
            "segments must be a number of segments (int) or a 1-D tensor of boundary times, "
            f"got {type(segments).__name__}"
        )
    if segments.ndim != 1 or segments.numel() < 2:
        raise ValueError(
            "boundary times must be a 1-D tensor of at least 2 times (t0, ..., t1), got shape "
            f"{tuple(segments.shape)}"
        )
    try:
        bounds = check_times(segments.to(ts.dtype), ts.device)
    except ValueError as error:
        raise ValueError(f"boundary times: {error}") from None
    if bounds[0] != times[0] or bounds[-1] != times[-1]:
        raise ValueError(
            f"the boundary times must start at ts[0]={times[0]} and end at ts[-1]={times[-1]}, "
            f"got {bounds[0]} ... {bounds[-1]}"
        )
    if len(times) > 1 and (bounds[1] > bounds[0]) != (times[1] > times[0]):
        raise ValueError("the boundary times must run in the direction of ts")
    return bounds


def _output_grid(
    times: list[float], bounds: list[float], dtype: torch.dtype
) -> tuple[torch.Tensor, list[int], list[int]]:
    """The local output times s shared by the segments (0 and 1 included), and for each
    output time its segment and its column of s. Local times that would not stay distinct
    in ``dtype`` (as s or as a segment's time) are merged: the output is taken there, a few
    ulps of t away."""
    sign = 1.0 if bounds[-1] > bounds[0] else -1.0
    segment, local = [], []
    for t in times:
        n = 0
        while n < len(bounds) - 2 and sign * (t - bounds[n + 1]) > 0:
            n += 1
        s = 1.0 if t == bounds[n + 1] else (t - bounds[n]) / (bounds[n + 1] - bounds[n])
        segment.append(n)
        local.append(min(max(s, 0.0), 1.0))
    candidates = sorted(set(local) | {0.0, 1.0})
    start = torch.tensor(bounds[:-1], dtype=torch.float64)
    length = torch.tensor(bounds[1:], dtype=torch.float64) - start

    def column(s: float) -> torch.Tensor:
        return torch.cat([torch.tensor([s]), start + s * length]).to(dtype)

    kept, columns = [0.0], [column(0.0)]
    for s in candidates[1:]:
        c = column(s)
        if s == 1.0:
            while len(kept) > 1 and not bool((sign * (c[1:] - columns[-1][1:]) > 0).all()):
                kept.pop(), columns.pop()  # 1 stays: the segments' ends
        elif not (
            bool(c[0] > columns[-1][0]) and bool((sign * (c[1:] - columns[-1][1:]) > 0).all())
        ):
            continue
        kept.append(s)
        columns.append(c)
    grid = torch.tensor(kept, dtype=torch.float64)
    index = [int(torch.argmin((grid - s).abs())) for s in local]
    return grid.to(dtype), segment, index


def _scaled_change(
    new: list[list[torch.Tensor]], old: list[list[torch.Tensor]], rtol: float, atol: float
) -> float:
    """The largest change of a boundary state in units of atol + rtol * |y|: an unchanged
    entry none (also where that scale is 0: y = 0 with atol = 0), a non-finite one inf."""
    worst = 0.0
    for u_new, u_old in zip(new, old):
        for a, b in zip(u_new, u_old):
            a, b = a.detach(), b.detach()
            scale = atol + rtol * torch.maximum(a.abs(), b.abs())
            difference = (a - b).abs()
            ratio = torch.where(difference == 0, 0.0, difference / scale)
            worst = max(worst, float(torch.nan_to_num(ratio, nan=math.inf, posinf=math.inf).max()))
    return worst


def _split(leaves: list[torch.Tensor], groups: int) -> list[list[torch.Tensor]]:
    """(groups * batch, ...) leaves as ``groups`` lists of (batch, ...) leaves."""
    parts = [leaf.reshape(groups, -1, *leaf.shape[1:]) for leaf in leaves]
    return [[p[i] for p in parts] for i in range(groups)]


def _join(states: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """States of (batch, ...) leaves as (len(states) * batch, ...) leaves."""
    return [torch.cat(leaves) for leaves in zip(*states)]


def parareal(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    ts: torch.Tensor,
    *,
    segments: int | torch.Tensor,
    fine: Propagator | Solver | str | None = None,
    coarse: Propagator | Solver | str | None = None,
    iterations: int | None = None,
    rtol: float = 1e-7,
    atol: float = 1e-9,
    initial: Any = None,
) -> PararealSolution:
    """Solve dy/dt = func(t, y) by Parareal: coarse sweeps in sequence, fine solves of all
    segments at once, corrected until the boundary states converge.

    ``func`` is called as in per-sample mode: ``y`` of shape (rows, ...) and ``t`` of shape
    (rows,), one time per row, where the rows are segments x samples (segment-major) in the
    fine solves and the samples alone in a coarse sweep. Each row must be treated on its own
    (``func`` may not capture per-sample tensors: carry them in the state). Gradients flow by
    backpropagation through the iterations (and through ``Propagator(options=dict(
    gradient=no.Backsolve()))``'s adjoint inside each fine solve); with respect to ``ts``
    there are none.

    Arguments:
        func: the vector field ``func(t, y)``.
        y0: the initial state, (batch, ...): a tensor, or with fixed-step propagators a
            tuple/list/dict of tensors (batch, ...).
        ts: the output times, 1-D and strictly monotonic (decreasing: backwards in time);
            ``ts[0]`` is t0, ``ts[-1]`` is t1, the others anywhere in between.
        segments: the number K of equal segments of [t0, t1], or the K + 1 boundary times
            (a tensor from ``ts[0]`` to ``ts[-1]``, strictly monotonic in its direction).
        fine: the fine propagator, a [`Propagator`][neuralode.shooting.Propagator] or a method
            (a name or a ``Solver``: adaptive steps); default dopri5, adaptive.
        coarse: the coarse propagator, as ``fine``; default two rk4 steps per segment.
        iterations: the most iterations (fine sweeps); default K, after which the result is
            the sequential fine solve's.
        rtol: the relative tolerance of convergence (the largest change of a boundary state
            below ``atol + rtol * |y|``) and of propagators with adaptive steps and no
            controller of their own.
        atol: the absolute tolerance, as ``rtol``.
        initial: boundary states to start from (a warm start), the structure of ``y0`` with
            a leading dimension of K + 1, as ``PararealSolution.boundary_ys``; the first is
            replaced by ``y0``. Default: a coarse sweep from ``y0``.

    Returns:
        A [`PararealSolution`][neuralode.shooting.PararealSolution]: the outputs, the
            boundary states, the iterations, whether they converged and the evaluations.

    Raises:
        ValueError: bad ``segments`` or boundary times, ``ts`` not strictly monotonic,
            ``y0`` without a batch dimension, an ``initial`` of the wrong shape, adaptive
            steps with a nested state, or a bad ``iterations``.
        TypeError: arguments of the wrong type.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _PARAREAL_OUTSIDE_DYNAMO(locals())
    spec, y0_leaves = tree_spec(y0)
    if any(leaf.ndim == 0 for leaf in y0_leaves) or len({leaf.shape[0] for leaf in y0_leaves}) > 1:
        raise ValueError(
            "parareal needs y0 of shape (batch, ...), each tensor with the same batch first, "
            f"got shapes {[tuple(leaf.shape) for leaf in y0_leaves]}: for one problem pass "
            "y0[None]"
        )
    if y0_leaves[0].shape[0] == 0:
        raise ValueError("parareal needs at least one sample: y0's batch dimension is empty")
    times = check_times(ts, y0_leaves[0].device)
    if ts.requires_grad:
        raise ValueError(
            "parareal does not differentiate with respect to ts: pass ts.detach(), or "
            "neuralode.solve for gradients with respect to the times"
        )
    if len(times) < 2:
        raise ValueError(f"ts needs at least the two times t0 and t1, got {times}")
    bounds = _boundaries(segments, ts, times)
    count = len(bounds) - 1
    if iterations is None:
        iterations = count
    if not is_int(iterations) or iterations < 1:
        raise ValueError(f"iterations must be a positive integer, got {iterations!r}")
    iterations = int(iterations)
    fine, coarse = _as_propagator(fine, FINE, "fine"), _as_propagator(coarse, COARSE, "coarse")
    for name, prop in (("fine", fine), ("coarse", coarse)):
        prop.method()
        if prop.steps is None and not spec.is_leaf:
            raise ValueError(
                f"the {name} propagator takes adaptive steps per sample, which needs y0 to be "
                f"one tensor: give Propagator(..., steps=n) (fixed steps) for a nested state, "
                "or concatenate it"
            )
    dtype, device = y0_leaves[0].dtype, y0_leaves[0].device
    batch = y0_leaves[0].shape[0]
    s_out, segment_of, column_of = _output_grid(times, bounds, dtype)
    start = torch.tensor(bounds[:-1], dtype=torch.float64)
    length = torch.tensor(bounds[1:], dtype=torch.float64) - start
    start, length = start.to(dtype=dtype, device=device), length.to(dtype=dtype, device=device)
    s_ends = torch.tensor([0.0, 1.0], dtype=dtype, device=device)
    s_out = s_out.to(device)
    tolerances = (rtol, atol)
    nfe = depth = 0

    def coarse_step(state: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        nonlocal nfe, depth
        rows = start[n].expand(batch), length[n].expand(batch)
        run = _propagate(coarse, func, spec, state, *rows, s_ends, 1, tolerances)
        nfe, depth = nfe + run.nfe, depth + run.depth
        return [y[-1] for y in run.ys]

    def sweep(prop: Propagator, states: list[list[torch.Tensor]], s: torch.Tensor) -> _Run:
        nonlocal nfe, depth
        rows = start.repeat_interleave(batch), length.repeat_interleave(batch)
        run = _propagate(prop, func, spec, _join(states), *rows, s, count, tolerances)
        nfe, depth = nfe + run.nfe, depth + run.depth
        return run

    try:
        if initial is None:
            boundary = [y0_leaves]
            for n in range(count):
                boundary.append(coarse_step(boundary[n], n))
            coarse_old = boundary[1:]
        else:
            given = _initial(initial, spec, y0_leaves, count)
            boundary = [y0_leaves, *given[1:]]
            coarse_old = _split([y[-1] for y in sweep(coarse, boundary[:-1], s_ends).ys], count)
        changes: list[float] = []
        converged = False
        for k in range(1, iterations + 1):
            run = sweep(fine, boundary[:-1], s_out)
            fine_end = _split([y[-1] for y in run.ys], count)
            # segments 0..k-1 started from exact states (the sequential fine solve's: y0, then
            # by induction), where the correction's two coarse terms cancel: their ends are F's
            corrected = [y0_leaves, *fine_end[:k]]
            coarse_new: list[Any] = [None] * k
            for n in range(k, count):
                g = coarse_step(corrected[n], n)
                corrected.append([a + f - b for a, f, b in zip(g, fine_end[n], coarse_old[n])])
                coarse_new.append(g)
            changes.append(_scaled_change(corrected[1:], boundary[1:], rtol, atol))
            boundary, coarse_old = corrected, coarse_new
            if changes[-1] <= 1.0 or k >= count:
                converged = True
                break
    except Exception as error:  # a forgotten batch dimension shows in func's errors
        if all(leaf.ndim == 1 for leaf in y0_leaves):
            error.add_note(
                f"parareal takes a 1-D y0 (shape {tuple(y0_leaves[0].shape)}) as a batch of "
                "scalar states, one per row: if func expects one state of that size, pass "
                "y0[None]"
            )
        raise
    # the outputs: row (segment, sample) of the last fine sweep at its column of s
    ys = []
    for y in run.ys:
        rows = y.reshape(y.shape[0], count, batch, *y.shape[2:])
        ys.append(rows[column_of, segment_of])
    return PararealSolution(
        ts=ts,
        ys=_rebuild(spec.structure, iter(ys)),
        boundary_ts=torch.tensor(bounds, dtype=dtype, device=device),
        boundary_ys=_rebuild(spec.structure, (torch.stack(b) for b in zip(*boundary))),
        iterations=k,
        converged=converged,
        changes=changes,
        nfe=nfe,
        nfe_sequential=depth,
    )


_PARAREAL_OUTSIDE_DYNAMO = outside_dynamo(parareal)


def _as_propagator(value: Any, default: Propagator, name: str) -> Propagator:
    """``fine``/``coarse`` as a ``Propagator``: a method alone takes adaptive steps."""
    if value is None:
        return default
    if isinstance(value, Propagator):
        return value
    if isinstance(value, (str, Solver)):
        return Propagator(value)
    raise TypeError(
        f"{name} must be a Propagator, a Solver or a method name, got {type(value).__name__}"
    )


def _initial(initial: Any, spec: TreeSpec, y0: list[torch.Tensor], count: int) -> list[list]:
    """The warm start's boundary states, checked against ``y0`` and the segments."""
    if isinstance(initial, PararealSolution):
        initial = initial.boundary_ys
    leaves = tree_spec(initial, "initial")[1]
    if len(leaves) != len(y0) or any(a.shape != (count + 1, *b.shape) for a, b in zip(leaves, y0)):
        raise ValueError(
            f"initial must hold the {count + 1} boundary states of the {count} segments: "
            f"shapes {[(count + 1, *b.shape) for b in y0]}, got "
            f"{[tuple(a.shape) for a in leaves]} (PararealSolution.boundary_ys of a solve with "
            "the same segments and batch)"
        )
    if not all(bool(torch.isfinite(leaf[1:]).all()) for leaf in leaves):
        raise ValueError(
            "initial contains NaN or inf: give finite boundary states (PararealSolution."
            "boundary_ys of a solve that succeeded), or leave initial out for a coarse sweep"
        )
    return [[leaf[n].to(b.dtype) for leaf, b in zip(leaves, y0)] for n in range(count + 1)]


class PararealBlock(nn.Module):
    """An ODE block solved by [`parareal`][neuralode.shooting.parareal]: maps x to y(t1)
    where dy/dt = dynamics(t, y), y(t0) = x, the fine solves of all segments running at once.

    In training mode the block keeps the last call's boundary states (detached) and, where
    no gradient is recorded (under ``torch.no_grad()``), starts the next call from them when
    its input is the same batch (equal values, the same times): the differentiable multiple
    shooting layers' warm start (Massaroli et al., 2021), with which one iteration suffices
    once the parameters change little. Where a gradient is recorded every call starts cold:
    the kept states are constants to autograd, so outputs solved from them after one
    iteration would lose their derivative through them (with respect to x exactly zero at
    the last segment's outputs). A different batch starts from a coarse sweep: the
    boundary states of other samples would be a worse first guess than the coarse solve. In
    eval mode the block neither uses nor keeps them, so that its outputs depend on the input
    and the parameters alone. ``last`` holds the last call's
    [`PararealSolution`][neuralode.shooting.PararealSolution], detached (its iterations,
    convergence and evaluations).

    Arguments:
        dynamics: the vector field, called as in per-sample mode: ``dynamics(t, y)`` with
            ``y`` of shape (rows, ...) and ``t`` of shape (rows,) (see ``parareal``).
        t0: the start of the integration interval.
        t1: its end.
        segments: the number of equal segments (or the boundary times, a tensor).
        fine: the fine propagator (default dopri5, adaptive).
        coarse: the coarse propagator (default two rk4 steps per segment).
        iterations: the most iterations per call (default: the number of segments).
        rtol: the relative tolerance of convergence and of the adaptive fine solves.
        atol: the absolute tolerance, as ``rtol``.
        warm_start: start from the previous call's boundary states (training mode, the same
            batch, no gradient recorded).

    Raises:
        ValueError: as [`parareal`][neuralode.shooting.parareal], at the first call.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        t0: float = 0.0,
        t1: float = 1.0,
        segments: int | torch.Tensor = 4,
        fine: Propagator | Solver | str | None = None,
        coarse: Propagator | Solver | str | None = None,
        iterations: int | None = None,
        rtol: float = 1e-3,
        atol: float = 1e-3,
        warm_start: bool = True,
    ):
        super().__init__()
        self.dynamics = dynamics
        self.t0, self.t1 = float(t0), float(t1)
        self.segments = segments
        self.fine, self.coarse = fine, coarse
        self.iterations = iterations
        self.rtol, self.atol = rtol, atol
        self.warm_start = warm_start
        self.last: PararealSolution | None = None
        self._warm: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def extra_repr(self) -> str:
        """The solve's settings, shown by ``repr`` beside the dynamics.

        Returns:
            The settings as ``name=value`` pairs.
        """
        return (
            f"t0={self.t0}, t1={self.t1}, segments={self.segments}, rtol={self.rtol}, "
            f"atol={self.atol}, warm_start={self.warm_start}"
        )

    def forward(self, x: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        """Solve from ``x`` by parareal, warm-started as described above.

        Arguments:
            x: the initial state y(t0), (batch, ...).
            ts: output times (``ts[0]`` the initial time), or ``None`` for ``[t0, t1]``.

        Returns:
            y(t1), of the shape of ``x``; with ``ts``, the states at ``ts`` stacked on a new
                dimension 0, (len(ts), *x.shape).
        """
        times = ts
        if times is None:
            interval = torch.tensor([self.t0, self.t1], dtype=torch.float64)
            times = interval.to(dtype=x.dtype, device=x.device)
        initial = None
        warm = self.training and self.warm_start
        # (the kept states are constants to autograd: outputs solved from them would have no
        # derivative through them, with respect to x or the parameters; only where no
        # gradient is recorded do they serve)
        if warm and self._warm is not None and not torch.is_grad_enabled():
            x_prev, times_prev, boundary = self._warm
            if (
                x_prev.shape == x.shape
                and times_prev.shape == times.shape
                and torch.equal(x_prev, x.detach())
                and torch.equal(times_prev, times.detach())
            ):
                initial = boundary
        sol = parareal(
            self.dynamics,
            x,
            times,
            segments=self.segments,
            fine=self.fine,
            coarse=self.coarse,
            iterations=self.iterations,
            rtol=self.rtol,
            atol=self.atol,
            initial=initial,
        )
        boundary = sol.boundary_ys.detach()
        if warm:
            self._warm = (x.detach().clone(), times.detach().clone(), boundary)
        self.last = replace(sol, ys=sol.ys.detach(), boundary_ys=boundary)
        return sol.ys if ts is not None else sol.ys[-1]
