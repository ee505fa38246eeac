"""The steps a solve keeps (``LoopConfig.save``), for dense output and ``SaveAt(steps=True)``.

Every step attempt of the batch (one problem: a batch of one) is kept with its accept mask;
the host loop adds its accepted steps with Python-float times, the device loop every attempt
as tensors. ``step_times`` lays out the accepted steps per sample (NaN after each sample's
last step); ``solution`` stacks them for ``_dense.DenseSolution``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ._dense import DenseSolution
from ._tree import TreeSpec
from .solvers.base import Solver


@dataclass
class _Attempt:
    """A step attempt of every sample (one problem: a batch of one), kept for dense output."""

    t: Any  # (batch,) float64 (the host loop: a float until ``Recorder._host_times``)
    t1: Any
    y: torch.Tensor  # (batch, n)
    y1: torch.Tensor
    stacked: torch.Tensor  # (K, batch, n): ``dense_record``'s, or the stages until finished
    accept: Any  # (batch,) bool (the host loop: None until ``Recorder._host_times``)
    f1: torch.Tensor | None = None


class Recorder:
    """Collects the steps of a solve (``LoopConfig.save``): ``add`` from the host loop (an
    accepted ``Step``), ``add_batch``/``set_f1``/``finish_batch`` from the device loop."""

    def __init__(self) -> None:
        self.attempts: list[_Attempt] = []
        self.t_end: torch.Tensor | None = None

    def add(self, solver: Solver, term: Any, step: Any) -> None:
        """An accepted step of the host loop."""
        stacked = solver.dense_record(term, step)[:, None]
        y0, y1 = step.y0.reshape(1, -1), step.y1.reshape(1, -1)
        # the times stay floats until the end (no tensor, no device copy per step)
        self.attempts.append(_Attempt(step.t0, step.t1, y0, y1, stacked, None))

    def add_batch(self, *values: torch.Tensor | None) -> None:
        """A step attempt of the device loop: t, t1, y, y1, stages, accept, f1 (or None)."""
        if not torch.is_grad_enabled():  # graph-free: the loop reuses its buffers
            values = tuple(None if v is None else v.clone() for v in values)
        self.attempts.append(_Attempt(*values))

    def set_f1(self, f1: torch.Tensor) -> None:
        """f(t1, y1) of the last attempt, where accepted (the next step's f0)."""
        self.attempts[-1].f1 = f1 if torch.is_grad_enabled() else f1.clone()

    def finish_batch(self, solver: Any, f: Callable, t_end: torch.Tensor) -> int:
        """Turn the device loop's stages into ``dense_record``'s (evaluating f(t1, y1) and
        the extension's extra stages where the method needs them); return the batched
        evaluations of f this made."""
        dense, calls = solver.tableau.dense, 0
        self.t_end = t_end
        for a in self.attempts:
            if (dense is None or dense.extra_c) and a.f1 is None:
                a.f1, calls = f(a.t1, a.y1), calls + 1
            h = (a.t1 - a.t).to(a.y.real.dtype)[:, None]
            if dense is None:
                a.stacked = torch.stack([a.stacked[0], a.f1])
            elif dense.extra_c:
                a.stacked = solver.dense_stages(
                    a.y, h, a.stacked.unbind(0), lambda a=a: a.f1,
                    lambda c, y, a=a: f(a.t + c * (a.t1 - a.t), y),
                )  # fmt: skip
                calls += sum(c != 1 for c in dense.extra_c)
        return calls

    def _host_times(self) -> None:
        """The host loop's float times and accept masks as the device loop's tensors."""
        a = self.attempts
        if a[0].accept is not None:
            return
        device = a[0].y.device
        t0 = torch.tensor([[x.t] for x in a], dtype=torch.float64, device=device)
        t1 = torch.tensor([[x.t1] for x in a], dtype=torch.float64, device=device)
        accept = torch.ones(1, dtype=torch.bool, device=device)
        for x, start, end in zip(a, t0, t1):
            x.t, x.t1, x.accept = start, end, accept
        self.t_end = t1[-1]

    def step_times(self, per_sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The saved steps: the start and every accepted step's end. One problem: the times
        (steps + 1,) and flat states (steps + 1, n); per sample: (batch, most steps + 1)
        and (most steps + 1, batch x n), each sample's after its last step NaN."""
        self._host_times()
        a = self.attempts
        t0, t1 = torch.stack([x.t for x in a]), torch.stack([x.t1 for x in a])
        y1 = torch.stack([x.y1 for x in a])  # (attempts, batch, n)
        # accepted steps that move (a finished sample takes steps of size zero)
        kept = torch.stack([x.accept.expand(t1.shape[1]) for x in a]) & (t1 != t0)
        position = kept.long().cumsum(0)  # each kept step's place after the start
        step, sample = kept.nonzero(as_tuple=True)
        where = (position[step, sample], sample)
        width = int(position[-1].max()) + 1
        batch, n = y1.shape[1], y1.shape[2]
        ts = t1.new_full((width, batch), torch.nan).index_put(where, t1[step, sample])
        ts[0] = a[0].t
        ys = y1.new_full((width, batch, n), torch.nan).index_put(where, y1[step, sample])
        ys = torch.cat([a[0].y[None], ys[1:]])
        if per_sample:  # the flat states of the whole batch, as the solve's outputs
            return ts.T, ys.reshape(width, batch * n)
        return ts[:, 0], ys[:, 0]

    def solution(self, solver: Solver, spec: TreeSpec, per_sample: bool) -> DenseSolution:
        self._host_times()
        a = self.attempts

        def stack(name: str, dim: int = 0) -> torch.Tensor:
            return torch.stack([getattr(x, name) for x in a], dim)

        # (steps, batch, 2 + K, n): y0, y1 and the dense record of each step of each sample
        rows = torch.stack([torch.cat([x.y[None], x.y1[None], x.stacked]) for x in a], 0)
        rows = rows.transpose(1, 2)
        t0, t1, accept = stack("t"), stack("t1"), stack("accept")
        return DenseSolution(solver, spec, per_sample, t0, t1, rows, accept, a[0].t, self.t_end)
