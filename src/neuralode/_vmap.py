"""``torch.func.vmap`` over ``solve``: each vmapped problem takes its own steps.

Under ``vmap`` the loop cannot read a batched tensor back to the host (``.item()``), and a
step size shared by the batch would not be each problem's own. So ``solve`` unwraps the
vmapped dimension of ``y0`` and ``ts`` (``torch._C._functorch``) and solves the problems as
one per-sample solve (``per_sample=True``: every problem has its own time, step size and
decisions, and equals solving it alone; vmapped times are per-sample spans) for the
explicit Runge-Kutta methods. ``func`` is called with the rows wrapped back into the
vmapped dimension, so it sees one problem as it would unbatched, and tensors it captures
that are batched by the same vmap (a per-problem parameter) pair with their own problem's
rows. Fixed-step solvers on shared times take the same steps for every problem, so there
the batch is solved as one system; on each problem's own times they run per sample, each
problem on its own grid. Where per-sample mode cannot run the solve (implicit
methods, whose Newton iterations a batch would share, multistep methods, other
controllers, ``norm``, a nested state on adaptive steps with per-element tolerances,
``perturb``, callbacks, spans in both directions), the problems are
solved one after the other. Transforms applied outside ``vmap`` (``torch.func.grad``,
``jacrev``, ``jvp``) see ordinary differentiable operations.

A transform inside ``vmap`` (``vmap(grad(loss))``) hides the vmapped dimension beneath its
own level: ``_vmap_inside`` solves those.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch._C import _functorch as functorch

from ._host import peeled
from ._solution import Solution, SolveStats
from ._status import Status, mark_non_finite
from ._term import separable_halves
from ._tree import TreeSpec, _rebuild, rows_tree, tree_rows, tree_spec
from .solvers.explicit_rk import ExplicitRK


def vmap_level(y0: Any, ts: Any) -> int | None:
    """The vmap level ``y0`` or ``ts`` is batched at (the innermost transform), or ``None``."""
    level = functorch.maybe_current_level()
    if level is None:
        return None
    _, leaves = tree_spec(y0, "y0")
    if isinstance(ts, torch.Tensor):
        leaves = [*leaves, ts]
    return level if any(_batched_at(x, level) for x in leaves) else None


def _batched_at(x: torch.Tensor, level: int) -> bool:
    return functorch.is_batchedtensor(x) and functorch.maybe_get_level(x) == level


def _batched_within(x: torch.Tensor, level: int) -> bool:
    """Whether ``x`` is batched at vmap ``level``, also beneath the wrappers of transforms the
    solve applies inside it (an implicit method's Jacobian by ``torch.func.vjp``)."""
    while functorch.is_functorch_wrapped_tensor(x):
        if _batched_at(x, level):
            return True
        x = functorch.get_unwrapped(x)
    return False


def solve_vmapped(
    solve: Callable[..., Any], func: Callable, y0: Any, ts: torch.Tensor, level: int, kwargs: dict
) -> Any:
    """``solve(func, y0, ts, **kwargs)`` for a ``y0`` or ``ts`` batched at vmap ``level`` (see
    the module); returns the Solution with ``ys`` (and ``ts``, if batched) at that level."""
    for name in ("event", "per_sample", "dense", "saveat"):
        if kwargs.pop(name, None):
            raise ValueError(
                f"{name} is not supported under torch.func.vmap: vmap already solves each "
                "problem on its own; solve the batch with per_sample=True instead (odeint and "
                "odeint_event: options=dict(per_sample=True))"
            )
    compiled = [
        name for name in ("compile", "compile_step", "cuda_graph") if kwargs.pop(name, None)
    ]
    if compiled:
        warnings.warn(
            f"{', '.join(compiled)} does not apply under torch.func.vmap (torch cannot batch a "
            "compiled solve): the vmapped problems run the eager per-sample loop. For the "
            "compiled solve, call solve(..., per_sample=True, compile=True) on the batch",
            stacklevel=3,
        )
    spec, leaves = tree_spec(y0, "y0")
    unwrapped = [_unwrap(x, level) for x in leaves]
    times, own_times = _unwrap(ts, level)  # own_times: (batch, n), each problem its times
    batch = max(x.shape[0] for x, batched in [*unwrapped, (times, own_times)] if batched)
    rows = [(x if batched else x.expand(batch, *x.shape)) for x, batched in unwrapped]
    flat = torch.cat([x.reshape(batch, -1) for x in rows], 1)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f on the (batch, n) rows: t is (batch,) per sample, or 0-dim (one system)."""
        t_problem = t if t.ndim == 0 else functorch._add_batch_dim(t, 0, level)
        y_problem = spec.unflatten(functorch._add_batch_dim(y, 0, level))
        out = spec.flatten(func(t_problem, y_problem), "func's output")
        return _rows(out, level, batch)

    solver = kwargs["solver"]  # an instance: ``solve`` resolves it before vmap
    # the rows as one per-sample solve (one system on fixed steps and shared times, where
    # every problem takes the same steps): explicit Runge-Kutta only (a batch would share
    # Newton or multistep iterations), with each problem's own times all in one direction.
    # A nested state on adaptive steps runs as a nested per-sample state, whose rows' error
    # norm is a lone problem's (the max of its tensors' RMS norms): with tolerances that
    # are numbers (per-element ones are laid out per problem, not per batch)
    directions = set((times[:, -1] > times[:, 0]).tolist()) if own_times else set()
    as_rows = isinstance(solver, ExplicitRK) and (not own_times or len(directions) == 1)
    nested = not spec.is_leaf and solver.adaptive
    if nested:
        controller = kwargs.get("controller")
        tolerances = (getattr(controller, name, None) for name in ("rtol", "atol"))
        as_rows = as_rows and not any(isinstance(tol, torch.Tensor) for tol in tolerances)
    sol = None
    with peeled(level):  # the solves below see this level's problems as rows
        if as_rows:
            per_sample = solver.adaptive or own_times
            try:
                if nested:
                    sol = _solve_nested_rows(solve, field, spec, rows, times, kwargs)
                else:
                    sol = solve(field, flat, times, per_sample=per_sample, **kwargs)
            except ValueError as error:  # an option per-sample mode refuses: one by one
                if not str(error).startswith("per_sample=True"):
                    raise
        if sol is None:
            sol = _solve_one_by_one(solve, func, spec, flat, times, own_times, level, kwargs)
    ys = sol.ys  # (len(ts), batch, n): each problem's outputs, wrapped back per problem
    sol.ys = spec.unflatten(functorch._add_batch_dim(ys, 1, level))
    sol.ts = ts
    if sol.status is not None and sol.status.ndim == 0 and not kwargs.get("throw", True):
        # one system on fixed steps: its status is the batch's (NON_FINITE when any problem's
        # outputs are); each problem's own comes from its outputs, as solved alone (the grid,
        # and so MAX_STEPS, is every problem's)
        base = torch.where(sol.status == Status.NON_FINITE, int(Status.SUCCESS), sol.status)
        sol.status = mark_non_finite(base.expand(batch), ys.reshape(ys.shape[0], -1), batch)
    if sol.status is not None and sol.status.ndim == 1:  # each problem's own status
        sol.status = functorch._add_batch_dim(sol.status, 0, level)
    return sol


def _solve_one_by_one(
    solve: Callable[..., Any],
    func: Callable,
    spec: TreeSpec,
    flat: torch.Tensor,
    ts: torch.Tensor,
    own_times: bool,
    level: int,
    kwargs: dict,
) -> Solution:
    """Each problem solved alone (for what per-sample mode cannot run), at its own row of
    ``ts`` if ``own_times``; ``ys`` is the flat (len(ts), batch, n) of the solutions, the
    statistics summed with per-sample rows."""

    def unbatched(out: Any) -> Any:
        _, leaves = tree_spec(out, "func's output")
        if any(_batched_within(x, level) for x in leaves):
            raise ValueError(
                f"under torch.func.vmap {kwargs['solver']!r} solves the problems one after the "
                "other (per-sample mode cannot run it, or an option it takes), and func captured "
                "a tensor batched by the same vmap (e.g. a per-problem parameter), which a lone "
                "problem cannot take: carry it in the state instead (as a constant channel with "
                "zero derivative), or use an explicit Runge-Kutta method"
            )
        return out

    def one(t: torch.Tensor, y: Any) -> Any:
        return unbatched(func(t, y))

    halves = separable_halves(func)
    if halves is not None:  # (the symplectic methods call them: ``ODETerm.separable``)
        dq_dt, dp_dt = halves
        one.dq_dt = lambda t, p: unbatched(dq_dt(t, p))  # type: ignore[attr-defined]
        one.dp_dt = lambda t, q: unbatched(dp_dt(t, q))  # type: ignore[attr-defined]

    times = ts if own_times else ts.expand(len(flat), *ts.shape)
    solutions = [solve(one, spec.unflatten(y), t, **kwargs) for y, t in zip(flat, times)]
    stats = SolveStats()
    for name in ("nfe", "n_steps", "n_accepted", "n_rejected"):
        setattr(stats, name, sum(getattr(s.stats, name) for s in solutions))
    for name, total in (("sample_nfe", "nfe"), ("sample_steps", "n_steps")):
        setattr(stats, name, torch.tensor([getattr(s.stats, total) for s in solutions]))
    stats.sample_accepted = torch.tensor([s.stats.n_accepted for s in solutions])
    stats.sample_rejected = torch.tensor([s.stats.n_rejected for s in solutions])
    ys = torch.stack([_flat_outputs(spec, s.ys) for s in solutions], 1)
    status = torch.stack([s.status for s in solutions])
    return Solution(ts=ts, ys=ys, stats=stats, status=status)


def _solve_nested_rows(
    solve: Callable[..., Any],
    field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    spec: TreeSpec,
    rows: list[torch.Tensor],
    times: torch.Tensor,
    kwargs: dict,
) -> Solution:
    """The problems of a nested state as one per-sample solve of the nested rows (each
    tensor (batch, *its shape)), ``field`` on their flat (batch, n) form; ``ys`` is the
    flat (len(ts), batch, n) of the solutions."""
    batch = rows[0].shape[0]
    start = _rebuild(spec.structure, iter(rows))
    batched, _ = tree_spec(start, "y0")  # (every tensor's dimension 0 the batch)

    def nested(t: torch.Tensor, state: Any) -> Any:
        return rows_tree(batched, field(t, tree_rows(batched, state, batch, "y")))

    sol = solve(nested, start, times, per_sample=True, **kwargs)
    _, leaves = tree_spec(sol.ys, "ys")  # each (len(ts), batch, *its shape)
    sol.ys = torch.cat([x.reshape(x.shape[0], batch, -1) for x in leaves], 2)
    return sol


def _flat_outputs(spec: TreeSpec, ys: Any) -> torch.Tensor:
    """A solution's outputs (the state's structure with a leading time dimension) as (n_t, n)."""
    _, leaves = tree_spec(ys, "ys")
    return torch.cat([x.reshape(x.shape[0], -1) for x in leaves], 1)


def _rows(out: torch.Tensor, level: int, batch: int) -> torch.Tensor:
    """f's per-problem output (batched at ``level``) as the physical (batch, n) rows; an
    output that does not depend on the problem is the same for every row."""
    if not _batched_at(out, level):
        return out.expand(batch, *out.shape)
    inner, dim = functorch._unwrap_batched(out, level)
    return inner.movedim(dim, 0)


def _unwrap(x: torch.Tensor, level: int) -> tuple[torch.Tensor, bool]:
    """``x`` without its vmapped dimension at ``level`` (moved first), and whether it had one."""
    if not (functorch.is_batchedtensor(x) and functorch.maybe_get_level(x) == level):
        return x, False
    inner, dim = functorch._unwrap_batched(x, level)
    return inner.movedim(dim, 0), True
