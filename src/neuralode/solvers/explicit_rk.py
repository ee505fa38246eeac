"""The one generic explicit Runge-Kutta stepper; each method only supplies a tableau."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._term import ODETerm
from .base import Solver, Step, hermite_interpolate
from .tableau import ButcherTableau


@dataclass
class _Coefficients:
    """A tableau's coefficients as tensors of one dtype on one device."""

    a: list[torch.Tensor]
    b: torch.Tensor
    b_error: torch.Tensor | None
    dense: torch.Tensor | None
    extra_a: list[torch.Tensor]
    extra_is_f1: list[bool]
    # Plain-Python facts read on every step (tableau properties recompute them each time).
    stages: int
    c: tuple[float, ...]
    fsal: bool
    first_a: float  # a[1][0]: stage 1 is one fused add, no stack or matrix product


# One set of coefficient tensors per (method, dtype, device), shared by all instances: a
# solver built per call (``solve(..., solver=Dopri5())``) must not rebuild them every time.
_SHARED: dict[tuple[type, torch.dtype, torch.device], _Coefficients] = {}


class ExplicitRK(Solver):
    """Explicit Runge-Kutta method defined by the class attribute ``tableau``.

    Stage combinations are one fused ``addmv`` each; an FSAL method's last stage starts the
    next step; dense output uses the tableau's own extension or cubic Hermite.
    """

    tableau: ClassVar[ButcherTableau]

    def __init__(self) -> None:
        self._cache: dict[tuple[torch.dtype, torch.device], _Coefficients] = {}

    @property
    def order(self) -> int:  # type: ignore[override]
        return self.tableau.order

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        return self.tableau.error_order

    @property
    def name(self) -> str:
        return self.tableau.name

    def _coefficients(self, like: torch.Tensor) -> _Coefficients:
        key = (like.dtype, like.device)
        co = self._cache.get(key)
        if co is None:
            shared_key = (type(self), like.dtype, like.device)
            co = _SHARED.get(shared_key)
            if co is None:
                co = _SHARED[shared_key] = self._build(like.dtype, like.device)
            self._cache[key] = co
        return co

    def _build(self, dtype: torch.dtype, device: torch.device) -> _Coefficients:
        tab = self.tableau

        def t(values: Any) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)

        dense = tab.dense
        b_padded = list(tab.b)
        extra_is_f1 = []
        for m, (c, row) in enumerate(zip(dense.extra_c, dense.extra_a) if dense else ()):
            pad = b_padded + [0.0] * m
            extra_is_f1.append(c == 1 and all(abs(x - y) < 1e-15 for x, y in zip(row, pad)))
        return _Coefficients(
            a=[t(row) for row in tab.a],
            b=t(tab.b),
            b_error=None if tab.b_error is None else t(tab.b_error),
            dense=None if dense is None else t(dense.coefficients),
            extra_a=[t(row) for row in dense.extra_a] if dense else [],
            extra_is_f1=extra_is_f1,
            stages=tab.stages,
            c=tuple(tab.c),
            fsal=tab.fsal,
            first_a=tab.a[1][0] if tab.stages > 1 else 0.0,
        )

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        # the coefficients are looked up before the loop: a compiled step (``compile_step``)
        # then always finds them, instead of compiling once more for the first step
        self._coefficients(y0)
        return f0

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        co = self._coefficients(y0)
        c = co.c
        dt = t1 - t0
        # t0 and t1 may be 0-dim float64 tensors (a compiled step, never perturbed)
        inward = (1.0 if dt > 0 else -1.0) if perturb else 0.0
        f0 = state if state is not None else term(t0, y0, inward)
        end_perturb = -inward
        # All stage times in one host-to-tensor conversion (CPU only: on an accelerator that
        # would be a copy; there each stage fills its own 0-dim tensor on the device).
        times = term.times([t1 if ci == 1 else t0 + ci * dt for ci in c[1:]])
        ks = [f0]
        y_stage = y0
        compiling = torch.compiler.is_compiling()
        if torch.is_grad_enabled() or compiling:
            # Autograd path: stages stacked as rows (contiguous copies, unlike columns, which
            # are slow for large states); addmv reads the transposed view directly. Also the
            # compiled path (its combinations pointwise, fused by the compiler): the compiler
            # plans its own memory, and a buffer written in place would be an input mutated
            # by the graph.
            for i in range(1, co.stages):
                if compiling:
                    y_stage = combine(y0, ks, self.tableau.a[i], dt)
                elif i == 1:
                    y_stage = torch.add(y0, f0, alpha=dt * co.first_a)
                else:
                    y_stage = torch.addmv(y0, torch.stack(ks).T, co.a[i], alpha=dt)
                ks.append(self._stage(term, times, i, c[i], t0 + c[i] * dt, y_stage, end_perturb))
            stacked = torch.stack(ks)
            all_columns = stacked.T
        else:
            # Graph-free path: f writes each stage into a row of one buffer reused across
            # steps (the stages are those rows), and each combination is one addmv on a
            # prepared view of the first rows.
            buffer = term.stage_buffer(co.stages, y0)
            stacked, rows, columns = buffer.stacked, buffer.rows, buffer.columns
            rows[0].copy_(f0)  # f0 may be the previous step's last row: copied before reuse
            for i in range(1, co.stages):
                if i == 1:
                    y_stage = torch.add(y0, rows[0], alpha=dt * co.first_a)
                else:
                    y_stage = torch.addmv(y0, columns[i], co.a[i], alpha=dt)
                if times is None or (c[i] == 1 and end_perturb):
                    k = self._stage(term, times, i, c[i], t0 + c[i] * dt, y_stage, end_perturb)
                    rows[i].copy_(k)
                else:
                    term.into(times[i - 1], y_stage, buffer, i)
            ks = list(rows)
            all_columns = columns[co.stages]
        tab = self.tableau
        if co.fsal:
            y1, f1 = y_stage, ks[-1]
        elif compiling:
            y1, f1 = combine(y0, ks, tab.b, dt), None
        else:
            y1, f1 = torch.addmv(y0, all_columns, co.b, alpha=dt), None
        if co.b_error is None:
            error = None
        elif compiling:
            error = combine(None, ks, tab.b_error, dt)
        else:  # dt * (K^T b_error) in one op: with beta=0, addmv ignores its first argument
            error = torch.addmv(y0, all_columns, co.b_error, beta=0, alpha=dt)
        extra = {"stacked": stacked, "f0_reusable": state is not None or not perturb}
        return Step(t0, t1, y0, y1, error, ks, f1, extra, end_perturb)

    @staticmethod
    def _stage(
        term: ODETerm,
        times: tuple[torch.Tensor, ...] | None,
        i: int,
        c: float,
        t: float,
        y: torch.Tensor,
        end_perturb: float,
    ) -> torch.Tensor:
        """f at stage ``i``; a stage at the step's end is perturbed inwards if asked."""
        if c == 1 and end_perturb:
            return term(t, y, end_perturb)
        if times is None:
            return term(t, y)
        return term.at(times[i - 1], y)

    def reject(self, step: Step, state: Any) -> Any:
        # f(t0, y0) does not depend on the step size: keep it for the retry.
        return step.stages[0] if step.extra["f0_reusable"] else state

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        tab = self.tableau
        if tab.dense is None:
            return hermite_interpolate(term, step, thetas, step.stages[0])
        co = self._coefficients(step.y0)
        stacked = step.extra.get("dense_stacked")
        if stacked is None:
            stacked = self._extra_stages(term, step, co)
            step.extra["dense_stacked"] = stacked
        powers = torch.arange(1, co.dense.shape[1] + 1, dtype=torch.float64)
        theta_powers = thetas[None, :] ** powers[:, None]
        weights = co.dense @ theta_powers.to(dtype=co.dense.dtype, device=co.dense.device)
        return torch.addmm(step.y0[None, :], weights.T, stacked, alpha=step.dt)

    def _extra_stages(self, term: ODETerm, step: Step, co: _Coefficients) -> torch.Tensor:
        """Evaluate the dense output's extra stages (once per step) and stack all stages."""
        dense = self.tableau.dense
        ks = list(step.stages)
        dt = step.dt
        for c, row, is_f1 in zip(dense.extra_c, co.extra_a, co.extra_is_f1):
            if is_f1:
                if step.f1 is None:
                    step.f1 = term(step.t1, step.y1, step.end_perturb)
                ks.append(step.f1)
            else:
                y_stage = torch.addmv(step.y0, torch.stack(ks).T, row, alpha=dt)
                ks.append(term(step.t0 + c * dt, y_stage))
        return step.extra["stacked"] if len(ks) == len(step.stages) else torch.stack(ks)


def combine(
    y: torch.Tensor | None, ks: Sequence[torch.Tensor], coefficients: Sequence[float], alpha: Any
) -> torch.Tensor:
    """``y + alpha * sum_j c_j k_j`` (``y`` None: without it) as pointwise arithmetic with the
    tableau's numbers as constants, for a compiled step: the compiler fuses it into the
    kernels around it, where a matrix-vector product (``addmv``) stays a separate call on a
    stacked copy of the stages (a compiled dopri5 step ran ~10 % faster this way). ``alpha``
    (the step size, symbolic under torch.compile) multiplies: ``alpha=`` would specialise it,
    one recompilation per step size."""
    total = None
    for c, k in zip(coefficients, ks):
        if c:
            total = k * c if total is None else total + k * c
    total = total * alpha
    return total if y is None else y + total
