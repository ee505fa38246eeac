"""The one generic explicit Runge-Kutta stepper; each method only supplies a tableau.

The step (``propose``: the stage combinations of every mode) and the device loop's per-row
interface are here; the tableau's numbers as tensors and the stage arithmetic are in
``_rk_coefficients``, the dense output in ``_rk_dense`` (``ExplicitRK``'s base).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from .._host import wrapped
from .._term import ODETerm
from ._rk_coefficients import Coefficients, shared_coefficients, stage_sum
from ._rk_dense import ExplicitDenseOutput
from ._step import RowFacts, Step
from .tableau import ButcherTableau


class ExplicitRK(ExplicitDenseOutput):
    """Explicit Runge-Kutta method defined by the class attribute ``tableau``.

    Stage combinations are one fused ``addmv`` each; an FSAL method's last stage starts the
    next step; dense output uses the tableau's own extension or cubic Hermite.
    """

    tableau: ClassVar[ButcherTableau]

    def __init__(self) -> None:
        self._cache: dict[tuple[torch.dtype, torch.device], Coefficients] = {}

    @property
    def order(self) -> int:  # type: ignore[override]
        """The order of the solution, the tableau's ``order``."""
        return self.tableau.order

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        """The order of the embedded error estimate (``None``: fixed steps only)."""
        return self.tableau.error_order

    @property
    def name(self) -> str:
        """The tableau's name (torchdiffeq's, e.g. ``"dopri5"``)."""
        return self.tableau.name

    @property
    def stage_reach(self) -> float:
        """The latest stage time of the tableau, in steps (at least 1.0).

        Returns:
            ``max(1.0, *tableau.c)``.
        """
        return max(1.0, *self.tableau.c)

    def _coefficients(self, like: torch.Tensor) -> Coefficients:
        key = (like.dtype, like.device)
        co = self._cache.get(key)
        if co is None:
            co = self._cache[key] = shared_coefficients(type(self), self.tableau, like)
        return co

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """Make the tableau's coefficients for ``y0``'s dtype and device; the state is ``f0``.

        Arguments:
            term: the vector field.
            t0: the initial time.
            y0: the flat initial state.
            f0: ``term(t0, y0)`` when already known, else ``None``.

        Returns:
            ``f0``, the first step's f(t0, y0) (``None``: the step evaluates it).
        """
        # the coefficients are looked up before the loop: a compiled step (``compile_step``)
        # then always finds them, instead of compiling once more for the first step
        self._coefficients(y0)
        return f0

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """Attempt one Runge-Kutta step from ``(t0, y0)`` to ``t1``.

        Arguments:
            term: the vector field.
            t0: the start time (a float, or a 0-dim float64 tensor in a compiled step).
            t1: the end time, as ``t0``.
            y0: the flat state at ``t0``.
            state: f(t0, y0) when known (FSAL, or kept after a rejection), else ``None``.
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step]: ``y1``, the error estimate, the stages
                and, for an FSAL method, ``f1``.
        """
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
        co: Coefficients | None = None,
        compiling: bool | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor], torch.Tensor]:
        """The side-effect-free step of every solve mode.

        With ``buffer`` the stages are written into its rows, each combination one
        matrix-vector product on its columns; otherwise they are stacked (autograd), or,
        under torch.compile, combined pointwise with the tableau's numbers as constants
        (fused by the compiler).

        Arguments:
            y0: the state at the start of the step.
            h: the step size: a Python float (one problem), a 0-dim tensor (a compiled
                step), or a tensor broadcasting against ``y0`` ((batch, 1): one step size
                per sample).
            f0: f(t0, y0), shaped like ``y0``.
            evaluate: ``evaluate(i, y_stage)`` returns stage ``i``'s derivative (the caller
                knows the stage's time).
            buffer: the ``StageBuffer`` of a graph-free solve, or ``None``.
            co: the coefficients for ``y0`` when the caller has them already.
            compiling: whether torch.compile traces, when the caller knows it already.

        Returns:
            ``(y1, error, ks, stacked)``: the proposal, the error estimate (``None``
                without an embedded method), the stages as a list and stacked
                (stages, *y0.shape), the dense output's coefficients (``dense``).
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
                y_stage = stage_sum(y0, h, co.a[i], tab.a[i], ks, part, compiling)
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
        y1 = y_stage if co.fsal else stage_sum(y0, h, co.b, tab.b, ks, every, compiling)
        if co.b_error is None:
            error = None
        else:
            error = stage_sum(None, h, co.b_error, tab.b_error, ks, every, compiling)
        if rows is not None and y0.ndim == 1:
            ks = list(rows)  # the rows themselves (f0's copy among them)
        return y1, error, ks, stacked

    # ----------------------------------------------------------------------------------------
    # the device loop's interface (``_per_sample``, ``_attempt``, ``_pending_dense``)

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> ExplicitRK:
        """The method as the device loop runs it.

        Arguments:
            term: the vector field (unused).
            like: a tensor of the state's dtype and device.

        Returns:
            The method itself, its coefficients made now (before a compiled step runs).
        """
        self._coefficients(like)
        return self

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        """What the device loop keeps and evaluates around each attempt.

        Arguments:
            like: a tensor of the state's dtype and device.

        Returns:
            A ``RowFacts``: the number of stages, FSAL, f0 needed, and whether the
                interpolant needs f(t1, y1).
        """
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
        """Evaluations of f in one attempt, besides f0.

        Returns:
            The tableau's number of stages less one.
        """
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
        t1_inner: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """``propose`` for every row (sample) from its own time ``t`` to ``t1``.

        Arguments:
            call: evaluates f as ``call(times, states)``, times (batch,) and states
                (batch, n).
            t: the rows' start times, (batch,) float64.
            t1: the rows' end times, (batch,) float64.
            h: ``t1 - t``, (batch,) float64.
            y: the rows' states, (batch, n).
            f0: f at ``(t, y)``, (batch, n).
            buffer: the ``StageBuffer`` of a graph-free solve, or ``None``.
            t1_inner: where the stages at the step's end evaluate f, (batch,) float64:
                ``t1``, or one ulp inside the step where it ends on a jump of f (default
                ``t1``).

        Returns:
            ``(y1, error, k_last, stacked)``: the proposals (batch, n), the error estimates
                (``None`` without an embedded method), the last stage and the stages stacked
                (stages, batch, n).
        """
        h_y = h.to(y.real.dtype)[:, None]
        c = self.tableau.c
        end = t1 if t1_inner is None else t1_inner

        def evaluate(i: int, y_stage: torch.Tensor) -> torch.Tensor:
            return call(end if c[i] == 1 else torch.add(t, h, alpha=c[i]), y_stage)

        y1, error, ks, k_all = self.propose(y, h_y, f0, evaluate, buffer)
        return y1, error, ks[-1], k_all

    def reject(self, step: Step, state: Any) -> Any:
        """The state for retrying from the same point after ``step`` was rejected.

        Arguments:
            step: the rejected step.
            state: the state the step started from.

        Returns:
            f(t0, y0), the step's first stage, when reusable (not perturbed), else ``state``.
        """
        # f(t0, y0) does not depend on the step size: keep it for the retry.
        return step.stages[0] if step.extra["f0_reusable"] else state
