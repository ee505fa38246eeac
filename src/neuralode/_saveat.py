"""What a solve saves (``SaveAt``): its validation against the rest of the solve and the
``Solution`` it makes from the solve's outputs (``saved``).

The steps a solve keeps (``SaveAt(steps=True)``, dense output) are collected by
``_recorder.Recorder``; the dense solution evaluated from them is ``_dense.DenseSolution``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch.utils import _pytree

from ._recorder import Recorder
from ._status import Status
from .solvers.base import Solver
from .solvers.hyper import HyperSolver
from .solvers.partitioned import PartitionedSolver


@dataclass(frozen=True)
class SaveAt:
    """What [`solve`][neuralode.solve] saves (diffrax's ``SaveAt`` is the model).

    By default the states at every time of ``ts``. ``ts`` stays the span in every case:
    ``ts[0]`` is the start and ``ts[-1]`` the end.

    Attributes:
        t1: save only the end of the span: ``Solution.ts`` is ``ts[-1:]`` and ``ys`` has one
            entry.
        steps: save the start and the end of every accepted step instead of ``ts``:
            ``Solution.ts`` holds those times. Per sample, each sample takes its own number
            of steps: ``ts`` is (batch, most steps + 1) and ``ys`` (most steps + 1, batch,
            ...), NaN after each sample's last step.
        dense: keep every step for [`Solution.evaluate`][neuralode.Solution.evaluate] and
            [`Solution.derivative`][neuralode.Solution.derivative] anywhere in the span, on
            the method's own continuous extension. Costs the memory of the steps (and, for
            dopri8, the four extra evaluations of f per step of its extension).
        fn: a function ``fn(t, y)`` applied to the state before saving it: ``ys`` holds
            ``fn(t, y)`` at each saved time (``t`` a 0-dim tensor, or with per-sample output
            times (batch, n) every sample's time there, (batch,); ``y`` the state there, in
            ``y0``'s structure: per sample, the batch), stacked on a new dimension 0 of every
            tensor it returns. Dense output is not affected.

    Raises:
        ValueError: ``t1`` and ``steps`` together.
        TypeError: ``fn`` that is not callable.

    [`solve`][neuralode.solve] refuses any ``SaveAt`` but the default with an ``event``
    (a ``ValueError`` naming the alternative).
    """

    t1: bool = False
    steps: bool = False
    dense: bool = False
    fn: Callable[[torch.Tensor, Any], Any] | None = None

    def __post_init__(self) -> None:
        for name in ("t1", "steps", "dense"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SaveAt({name}=...) must be a bool, got {getattr(self, name)!r}")
        if self.t1 and self.steps:
            raise ValueError("SaveAt(t1=True, steps=True): choose one, the end or every step")
        if self.fn is not None and not callable(self.fn):
            raise TypeError(f"SaveAt(fn=...) must be callable as fn(t, y), got {self.fn!r}")

    @property
    def records(self) -> bool:
        """Whether the solve keeps its steps."""
        return self.steps or self.dense


def check_saveat(
    saveat: Any, dense: Any, execution: Any, solver: Solver, gradient: Any, event: Any, n: int
) -> SaveAt | None:
    """The one place that validates what to save against the rest of the solve: the
    ``SaveAt`` (or ``None`` for the states at ``ts``), with ``dense=True`` folded in."""
    if saveat is None and dense is False:  # the states at ts (the common case)
        return None
    from .adjoint.direct import Direct

    if saveat is not None and not isinstance(saveat, SaveAt):
        raise TypeError(f"saveat must be a no.SaveAt, got {type(saveat).__name__}")
    if not isinstance(dense, bool):
        raise TypeError(f"dense must be True or False, got {dense!r}")
    if dense:
        saveat = replace(saveat or SaveAt(), dense=True)
    if saveat is None or saveat == SaveAt():
        return None
    if event is not None and not saveat.records:  # (the kept steps' refusal is below)
        what, fix = (
            ("SaveAt(t1=True)", "the state where a terminal event stops is Solution.event_y")
            if saveat.t1
            else ("SaveAt(fn=...)", "apply fn to Solution.ys and Solution.event_y")
        )
        raise ValueError(
            f"{what} does not support events: a solve with an event saves the states at ts "
            f"(the default SaveAt()); {fix}"
        )
    if not saveat.records:
        return saveat
    what = "dense=True" if saveat.dense else "SaveAt(steps=True)"
    if type(solver).hermite_f0 is Solver.hermite_f0 and "dense_record" not in vars(type(solver)):
        raise ValueError(f"{what}: {solver!r} has no dense output; use a Runge-Kutta method")
    if event is not None:
        raise ValueError(
            f"{what} does not support events: solve to Solution.event_t first, then solve "
            "again with that end time and dense=True"
        )
    if gradient is not None and not isinstance(gradient, Direct):
        raise ValueError(
            f"{what} keeps the steps in the autograd graph, so it needs gradient=Direct() "
            f"(the default), got {gradient!r}; for O(1) memory gradients save at ts instead"
        )
    if n < 2:
        raise ValueError(f"{what} needs a span: ts with at least two times")
    if execution.per_sample and isinstance(solver, (HyperSolver, PartitionedSolver)):
        raise ValueError(
            f"{what} per sample keeps the stages of an explicit Runge-Kutta method, "
            f"which {solver.name} has not: solve at more output times ts instead, or "
            "solve each sample alone"
        )
    if execution.skip_finished:
        raise ValueError(
            f"{what} with skip_finished: finished samples are not evaluated, so their last "
            "step's dense output is incomplete; use per_sample=True"
        )
    return saveat


def saved(saveat: SaveAt, recorder: Recorder | None, problem: Any, ys: torch.Tensor) -> Any:
    """The ``Solution`` of a solve with ``saveat``, from the flat states at ``ts``."""
    from ._solution import Solution

    spec, ts = problem.spec, problem.ts
    if saveat.steps:
        per_sample = problem.config.execution.per_sample
        outputs = ys
        times, ys = recorder.step_times(per_sample)
        times = times.to(ts.dtype)
        if not per_sample and ts.ndim == 1 and float(times[-1]) == float(ts[-1].detach()):
            # the last step ends at ts[-1]: its state is the output there, which carries
            # the derivatives with respect to the times (``run_with_time_gradients``)
            ys = torch.cat([ys[:-1], outputs[-1:]])
            times = torch.cat([ts[:1], times[1:-1], ts[-1:]]) if len(times) > 1 else ts[:1]
        ts = times
    elif saveat.t1:  # per-sample output times (batch, n): each sample's last
        ts, ys = ts[..., -1:], ys[-1:]
    if saveat.fn is None:
        values = spec.unflatten(ys)
    else:  # per-sample output times: fn gets every sample's j-th time, (batch,)
        outs = [saveat.fn(t, spec.unflatten(y)) for t, y in zip(ts.T if ts.ndim == 2 else ts, ys)]
        values = _pytree.tree_map(lambda *x: torch.stack(x), outs[0], *outs[1:])
    solution = Solution(ts=ts, ys=values, stats=problem.stats)
    if saveat.dense:
        per_sample = problem.config.execution.per_sample
        solution.interpolation = recorder.solution(problem.config.solver, spec, per_sample)
        status = problem.stats.status
        if status is not None:  # throw=False: a failed sample's values after its stop are NaN
            failed = ((status > 0) & (status != Status.EVENT)).reshape(-1)
            t_asked = problem.ts[..., -1].detach().to(torch.float64).expand(failed.shape)
            solution.interpolation.stop(failed, t_asked)
    return solution
