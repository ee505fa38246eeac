"""The PI(D) controller's formula over its settings, once for every mode: host floats for
one problem, (batch,) tensors per sample, and the compiled whole solve."""

from __future__ import annotations

import math
from typing import Any

import torch

from ._ops import clip as _clip
from ._ops import nan_to as _nan_to
from ._ops import power as _power
from ._ops import predicted
from ._ops import where as _where


class PIFormula:
    """The step-size formula of [`PIController`][neuralode.controllers.PIController], which
    sets the attributes read here (``safety``, ``ifactor``, ``dfactor``, ``icoeff``,
    ``pcoeff``, ``dcoeff``, ``predictive``, ``min_step``, ``max_step``,
    ``shrink_after_accept``)."""

    safety: float
    ifactor: float
    dfactor: float
    icoeff: float
    pcoeff: float
    dcoeff: float
    predictive: bool
    min_step: float
    max_step: float
    shrink_after_accept: bool

    @property
    def memory_size(self) -> int:
        """How many past error ratios the formula reads: 0 (integral), 1 (PI), 2 (PID)."""
        return 2 if self.dcoeff or self.predictive else 1 if self.pcoeff else 0

    def initial_memory(self, like: torch.Tensor | None = None) -> Any:
        """The memory ``decide`` reads before the first accepted step: ratios of 1.

        Arguments:
            like: per sample, a (batch,) float64 tensor to shape the memory like; ``None``
                for one problem on the host.

        Returns:
            A float, or with ``dcoeff`` a pair of floats; per sample a (batch,) tensor, or
                with ``dcoeff`` a (2, batch) one.
        """
        if self.predictive:  # (the last accepted ratio and size: none yet, size 0)
            if like is None:
                return (1.0, 0.0)
            return torch.stack([torch.ones_like(like), torch.zeros_like(like)])
        if like is None:
            return (1.0, 1.0) if self.dcoeff else 1.0
        ones = torch.ones_like(like)
        return torch.stack([ones, ones]) if self.dcoeff else ones

    def decide(
        self, ratio: Any, size: Any, previous_ratio: Any, exponent: float, running: Any = None
    ) -> tuple:
        """The controller's formula, once for every mode (host floats or per-sample tensors).

        A NaN ratio rejects and shrinks by ``dfactor``; a ratio of 0 grows by ``ifactor``;
        with ``shrink_after_accept=False`` an accepted step's factor is at least 1. A step at
        ``min_step`` is accepted whatever its error (the user asked for no smaller steps); on
        the host ``adapt`` warns of it once per solve (torchsde warns at every such step).

        Arguments:
            ratio: the step's scaled error: a Python float for one problem on the host, or
                a (batch,) tensor, one per sample.
            size: the step's size (positive), as ``ratio``.
            previous_ratio: the memory (``initial_memory``): the scaled error of the last
                accepted step, and with ``dcoeff`` the one before it, with ``predictive``
                that step's size (a pair, or a (2, batch) tensor).
            exponent: ``1 / k``, ``k`` one more than the order of the error estimate.
            running: per sample, a boolean mask: only these samples may accept, the others
                keep their memory; ``None`` for all.

        Returns:
            ``(accept, new_size, previous_ratio)``: whether the step is accepted, the size
                of the next step (clipped to ``[min_step, max_step]``) and the new memory.
        """
        accept = ratio <= 1
        if self.min_step > 0:  # (a non-finite ratio is never accepted)
            forced = (size <= self.min_step * (1 + 1e-12)) & (ratio < math.inf)
            accept = accept | forced
        if running is not None:
            accept = accept & running
        p, i, d = self.pcoeff, self.icoeff, self.dcoeff
        factor = self.safety * _power(ratio, -(i + p + d) * exponent)
        if d:  # the last two accepted steps' ratios
            last, before = previous_ratio[0], previous_ratio[1]
            factor = factor * _power(last, (p + 2 * d) * exponent)
            factor = factor * _power(before, -d * exponent)
            kept = _where(accept, _clip(ratio, 1e-10, math.inf), last), _where(accept, last, before)
            previous_ratio = torch.stack(kept) if isinstance(last, torch.Tensor) else kept
        elif p:
            factor = factor * _power(previous_ratio, p * exponent)
            previous_ratio = _where(accept, _clip(ratio, 1e-10, math.inf), previous_ratio)
        if self.predictive:  # Gustafsson's: never beyond the last accepted step's trend
            last, last_size = previous_ratio[0], previous_ratio[1]
            factor = factor * predicted(ratio, size, last, last_size, exponent)
            kept = (
                _where(accept, _clip(ratio, 1e-10, math.inf), last),
                _where(accept, size, last_size),
            )
            previous_ratio = torch.stack(kept) if isinstance(last, torch.Tensor) else kept
        factor = _nan_to(factor, self.dfactor)
        if self.shrink_after_accept:
            factor = _clip(factor, self.dfactor, self.ifactor)
        else:  # an accepted step's factor at least 1
            high = _clip(factor, 1.0, self.ifactor)
            factor = _where(accept, high, _clip(factor, self.dfactor, self.ifactor))
        return accept, _clip(size * factor, self.min_step, self.max_step), previous_ratio
