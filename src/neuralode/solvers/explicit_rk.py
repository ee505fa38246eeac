"""The one generic explicit Runge-Kutta stepper; each method only supplies a tableau."""

from __future__ import annotations

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
            co = self._cache[key] = self._build(like.dtype, like.device)
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
        )

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        tab = self.tableau
        co = self._coefficients(y0)
        dt = t1 - t0
        inward = 1.0 if dt > 0 else -1.0
        f0 = state if state is not None else term(t0, y0, inward if perturb else 0.0)
        ks = [f0]
        y_stage = y0
        for i in range(1, tab.stages):
            y_stage = torch.addmv(y0, torch.stack(ks, 1), co.a[i], alpha=dt)
            c = tab.c[i]
            if c == 1:
                ks.append(term(t1, y_stage, -inward if perturb else 0.0))
            else:
                ks.append(term(t0 + c * dt, y_stage))
        stacked = torch.stack(ks, 1)
        if tab.fsal:
            y1, f1 = y_stage, ks[-1]
        else:
            y1, f1 = torch.addmv(y0, stacked, co.b, alpha=dt), None
        error = None if co.b_error is None else torch.mv(stacked, co.b_error) * dt
        extra = {"stacked": stacked, "f0_reusable": state is not None or not perturb}
        return Step(t0, t1, y0, y1, error, ks, f1, extra, -inward if perturb else 0.0)

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
        return torch.addmm(step.y0[:, None], stacked, weights, alpha=step.dt).T

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
                y_stage = torch.addmv(step.y0, torch.stack(ks, 1), row, alpha=dt)
                ks.append(term(step.t0 + c * dt, y_stage))
        return step.extra["stacked"] if len(ks) == len(step.stages) else torch.stack(ks, 1)
