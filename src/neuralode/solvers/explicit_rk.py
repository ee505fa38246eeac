"""The one generic explicit Runge-Kutta stepper; each method only supplies a tableau."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._host import plain_factories, wrapped
from .._term import ODETerm
from .base import RowFacts, Solver, Step, hermite, hermite_interpolate
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
                with plain_factories():  # (cached: never a transform's tensor)
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
        # Graph-free: f writes each stage into a row of one buffer reused across steps.
        # (not under torch.func transforms: their values cannot be written into a plain buffer)
        compiling = torch.compiler.is_compiling()
        graph_free = not (torch.is_grad_enabled() or compiling or wrapped(y0))
        buffer = term.stage_buffer(co.stages, y0) if graph_free else None

        if buffer is not None and times is not None and not end_perturb:
            # the graph-free step on CPU (the common eager case): straight into the buffer
            def evaluate(i: int, y_stage: torch.Tensor) -> torch.Tensor:
                return term.into(times[i - 1], y_stage, buffer, i)

        else:

            def evaluate(i: int, y_stage: torch.Tensor) -> torch.Tensor:
                if end_perturb and c[i] == 1:  # a stage at the step's end, moved inwards
                    return term(t1, y_stage, end_perturb)
                if times is None:
                    return term(t0 + c[i] * dt, y_stage)
                if buffer is not None:
                    return term.into(times[i - 1], y_stage, buffer, i)
                return term.at(times[i - 1], y_stage)

        y1, error, ks, stacked = self.propose(y0, dt, f0, evaluate, buffer, co, compiling)
        f1 = ks[-1] if co.fsal else None
        extra = {"stacked": stacked, "f0_reusable": state is not None or not perturb}
        return Step(t0, t1, y0, y1, error, ks, f1, extra, end_perturb)

    def propose(
        self,
        y0: torch.Tensor,
        h: Any,
        f0: torch.Tensor,
        evaluate: Any,
        buffer: Any = None,
        co: _Coefficients | None = None,
        compiling: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor], torch.Tensor]:
        """The side-effect-free step of every solve mode: from ``y0`` with the step size
        ``h`` and f(t0, y0) = ``f0``, the proposal ``y1``, the error estimate (``None``
        without an embedded method), the stages ``ks`` and the stages stacked (stages,
        *y0.shape), the dense output's coefficients (``dense``).

        ``h`` is a Python float (one problem), a 0-dim tensor (a compiled step), or a
        tensor broadcasting against ``y0`` ((batch, 1): one step size per sample).
        ``evaluate(i, y_stage)`` returns stage ``i``'s derivative (the caller knows the
        stage's time). With ``buffer`` (a ``StageBuffer`` of graph-free solves) the stages
        are written into its rows, each combination one matrix-vector product on its
        columns; otherwise they are stacked (autograd), or, under torch.compile, combined
        pointwise with the tableau's numbers as constants (fused by the compiler). ``co``
        and ``compiling``: the coefficients for ``y0`` and whether torch.compile traces, when
        the caller has them already.
        """
        if co is None:
            co = self._coefficients(y0)
        if compiling is None:
            compiling = torch.compiler.is_compiling()
        tab = self.tableau
        columns = None if buffer is None else buffer.columns
        ks = [f0]
        rows = None if buffer is None else buffer.rows
        if rows is not None:  # f0 may be the last row: copied before reuse
            rows[0].copy_(f0 if f0.ndim == 1 else f0.reshape(-1))
        y_stage = y0
        first = not compiling and isinstance(h, float)  # the first stage by one add
        for i in range(1, co.stages):
            if first:
                first = False
                y_stage = torch.add(y0, f0, alpha=h * co.first_a)
            else:
                part = None if columns is None else columns[i]
                y_stage = _stage_sum(y0, h, co.a[i], tab.a[i], ks, part, compiling)
            k = evaluate(i, y_stage)
            if rows is not None and k is not rows[i]:
                rows[i].copy_(k.reshape(-1))
            ks.append(k)
        if buffer is not None:
            stacked = buffer.stacked
            if y0.ndim != 1:
                stacked = stacked.view(co.stages, *y0.shape)
            every = columns[co.stages]
        else:
            stacked = torch.stack(ks)
            every = None if compiling else (stacked if y0.ndim == 1 else stacked.flatten(1)).T
        y1 = y_stage if co.fsal else _stage_sum(y0, h, co.b, tab.b, ks, every, compiling)
        if co.b_error is None:
            error = None
        else:
            error = _stage_sum(None, h, co.b_error, tab.b_error, ks, every, compiling)
        if rows is not None and y0.ndim == 1:
            ks = list(rows)  # the rows themselves (f0's copy among them)
        return y1, error, ks, stacked

    # ----------------------------------------------------------------------------------------
    # the device loop's interface (``_per_sample``, ``_attempt``, ``_pending``)

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> ExplicitRK:
        """The method as the device loop runs it: itself (its coefficients made now, before
        a compiled step runs)."""
        self._coefficients(like)
        return self

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        """What the device loop keeps and evaluates around each attempt."""
        co = self._coefficients(like)
        dense = self.tableau.dense
        needs_f1 = dense is None or len(dense.extra_c) > 0
        return RowFacts(co.stages, co.fsal, True, needs_f1)

    @property
    def row_fsal(self) -> bool:
        """The last stage is f(t1, y1), the next attempt's f0."""
        return self.tableau.fsal

    @property
    def dense_extra_stages(self) -> int:
        """Evaluations of f the dense output adds to a step besides f(t1, y1)."""
        dense = self.tableau.dense
        return 0 if dense is None else sum(c != 1 for c in dense.extra_c)

    def evaluations_per_attempt(self) -> int:
        """Evaluations of f in one attempt, besides f0."""
        return self.tableau.stages - 1

    def propose_rows(
        self,
        call: Any,
        t: torch.Tensor,
        t1: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        f0: torch.Tensor,
        buffer: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``propose`` for every row from its own time ``t`` to ``t1`` (``h = t1 - t``, all
        (batch,) float64), f evaluated by ``call(times, states)``: ``(y1, error, the last
        stage, the stages stacked (stages, batch, n))``."""
        h_y = h.to(y.real.dtype)[:, None]
        c = self.tableau.c

        def evaluate(i: int, y_stage: torch.Tensor) -> torch.Tensor:
            return call(t1 if c[i] == 1 else torch.add(t, h, alpha=c[i]), y_stage)

        y1, error, ks, k_all = self.propose(y, h_y, f0, evaluate, buffer)
        return y1, error, ks[-1], k_all

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
        return self.dense(step.y0, None, step.dt, stacked, None, thetas)

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor | None,
        h: Any,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
        theta: torch.Tensor,
        derivative: bool = False,
    ) -> torch.Tensor:
        """The dense output of every mode from a step's start ``y0``, end ``y1``, size ``h``
        and stages ``stacked`` (with the extra stage f(t1, y1) = ``f1`` where the
        interpolant needs it), at the step fractions ``theta`` (float64): for one step,
        ``theta`` (m,) against (stages, n) stages gives (m, n); per row (a sample, or a step
        of a dense solution), ``theta`` (rows,) against (stages, rows, n) stages and ``h``
        (rows, 1) gives (rows, n). With ``derivative``: dy/dt there, sum_i B_i'(theta) k_i
        (the same polynomials differentiated in theta)."""
        co = self._coefficients(y0)
        per_row = stacked.ndim == 3
        if self.tableau.dense is None:  # cubic Hermite through (y0, f0), (y1, f1)
            if f1 is None:
                raise ValueError(f"{self!r} needs f(t1, y1) for its dense output")
            th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
            return hermite(th, y0, y1, stacked[0], f1, h, derivative)
        weights = self._theta_weights(co, theta, derivative)
        if not per_row:  # one step, many points: one matrix product
            if derivative:
                return weights.T @ stacked
            return torch.addmm(y0[None, :], weights.T, stacked, alpha=h)
        if f1 is not None and stacked.shape[0] < weights.shape[0]:
            stacked = torch.cat([stacked, f1[None]])
        combined = torch.einsum("sb,sbd->bd", weights, stacked)
        return combined if derivative else torch.addcmul(y0, h, combined)

    @staticmethod
    def _theta_weights(co: _Coefficients, theta: torch.Tensor, derivative: bool) -> torch.Tensor:
        """B_i(theta) (with ``derivative``: B_i'(theta)) of the own extension, (stages, m)."""
        powers = torch.arange(1, co.dense.shape[1] + 1, dtype=torch.float64, device=theta.device)
        if derivative:  # d/dtheta theta^p = p theta^(p-1)
            theta_powers = theta[None, :] ** (powers[:, None] - 1) * powers[:, None]
        else:
            theta_powers = theta[None, :] ** powers[:, None]  # (P, m)
        return co.dense @ theta_powers.to(dtype=co.dense.dtype, device=co.dense.device)

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        return step.stages[0]

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        if self.tableau.dense is None:
            return super().dense_record(term, step)
        stacked = step.extra.get("dense_stacked")
        if stacked is None:  # also serves the loop's interpolation of this step
            stacked = step.extra["dense_stacked"] = self._extra_stages(
                term, step, self._coefficients(step.y0)
            )
        # graph-free solves reuse one stage buffer across steps: keep a copy
        return stacked if torch.is_grad_enabled() else stacked.clone()

    def dense_weights(
        self, theta: torch.Tensor, h: torch.Tensor, like: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor:
        if self.tableau.dense is None:
            return super().dense_weights(theta, h, like, derivative)
        weights = self._theta_weights(self._coefficients(like), theta, derivative).T
        ends = torch.zeros(len(theta), 2, dtype=weights.dtype, device=weights.device)
        if derivative:
            return torch.cat([ends, weights], 1)
        ends[:, 0] = 1  # y0 + h sum_i B_i(theta) k_i
        return torch.cat([ends, h.to(weights.dtype)[:, None] * weights], 1)

    def _extra_stages(self, term: ODETerm, step: Step, co: _Coefficients) -> torch.Tensor:
        """Evaluate the dense output's extra stages (once per step) and stack all stages."""
        if not self.tableau.dense.extra_c:
            return step.extra["stacked"]

        def f1() -> torch.Tensor:
            if step.f1 is None:
                step.f1 = term(step.t1, step.y1, step.end_perturb)
            return step.f1

        def evaluate(c: float, y_stage: torch.Tensor) -> torch.Tensor:
            return term(step.t0 + c * step.dt, y_stage)

        return self.dense_stages(step.y0, step.dt, step.stages, f1, evaluate)

    def dense_stages(
        self,
        y0: torch.Tensor,
        h: Any,
        ks: Sequence[torch.Tensor],
        f1: Callable[[], torch.Tensor],
        evaluate: Callable[[float, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The step's stages ``ks`` followed by its dense output's extra stages, stacked
        (stages, *y0.shape), for every mode: an extra stage at the step's end is
        f(t1, y1) = ``f1()``; any other is ``evaluate(c, y0 + h * sum_j a_j k_j)`` (f at the
        step fraction ``c``). ``h`` is a float (one problem) or (batch, 1) (per sample)."""
        co = self._coefficients(y0)
        ks = list(ks)
        for c, row, is_f1 in zip(self.tableau.dense.extra_c, co.extra_a, co.extra_is_f1):
            if is_f1:
                ks.append(f1())
            else:
                combination = torch.einsum("s,s...->...", row, torch.stack(ks))
                ks.append(evaluate(c, y0 + h * combination))
        return torch.stack(ks)


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


def _stage_sum(
    y: torch.Tensor | None,
    h: Any,
    coefficients: torch.Tensor,
    numbers: Sequence[float],
    ks: Sequence[torch.Tensor],
    columns: torch.Tensor | None,
    compiling: bool,
) -> torch.Tensor:
    """``y + h * sum_j c_j k_j`` (without ``y`` when it is ``None``): the one stage
    combination of every mode. Pointwise under torch.compile (``combine``); with ``columns``
    (the transposed stage rows of a buffer) one matrix-vector product; otherwise on the
    stacked stages. A float ``h`` (one problem) is folded into the product (``addmv``'s
    ``alpha``); a tensor ``h`` (per sample) multiplies it (``addcmul``)."""
    if columns is None:  # (a buffer's columns: graph-free, never compiling)
        if compiling:
            return combine(y, ks, numbers, h)
        # (``numbers`` are the coefficients as floats: ``len`` of a tensor costs ~0.7 us)
        stacked = torch.stack(ks[: len(numbers)])
        columns = (stacked if stacked.ndim == 2 else stacked.flatten(1)).T
    if isinstance(h, float):  # one problem: a flat state, no reshaping
        if y is None:  # with beta=0, addmv ignores its first argument
            return torch.addmv(ks[0], columns, coefficients, beta=0, alpha=h)
        return torch.addmv(y, columns, coefficients, alpha=h)
    total = torch.mv(columns, coefficients).view_as(ks[0])  # (view(Size) parses ~1.5 us slower)
    return h * total if y is None else torch.addcmul(y, h, total)
