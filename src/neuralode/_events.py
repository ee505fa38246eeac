"""Events: stop (or record) where an element of g(t, y) crosses zero, located on dense output.

``Event`` is what the user gives. One tracker serves every mode (``_event_tracker.Events``):
each row of a batch (a sample of a per-sample solve, or the one problem of the host loop or
the device loop: a batch of one, ``OneProblemEvents``) compares the signs of its event values
at the ends of its accepted steps; the rows with a crossing locate it together on their own
dense output (``_crossing.refine``: the ITP method). One implicit-function gradient
(``_event_gradient.EventGradient``) serves them all.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Event:
    """An event function ``fn(t, y) -> tensor``: an event happens where an element crosses 0.

    The time is located on the solver's dense output (the ITP method) to ``tol``.

    Attributes:
        fn: the event function, ``fn(t, y)`` returning a real tensor whose sign changes at
            the event (or that reaches 0 there). An element that is exactly 0 at the start
            is no event there; it fires when it returns to 0. It may use tensors that
            require grad (a learned threshold): the event time and state are differentiable
            with respect to them. A NaN value (which never changes sign) makes the solve raise
            ``ValueError`` naming its time; an empty result is refused at once.
        direction: the int 1 counts only rising crossings (negative to non-negative), -1 only
            falling ones, 0 both.
        terminal: a terminal event ends the solve; a non-terminal one is recorded (in
            ``Solution.event_ts``) and the solve goes on.
        tol: the time tolerance of the location, a positive finite number (default: the
            resolution of float64).

    Raises:
        ValueError: ``direction`` is not -1, 0 or 1, or ``tol`` is not positive and finite.
        TypeError: ``direction`` is not an int (a float or a bool), ``fn`` is not callable,
            ``terminal`` is not a bool or ``tol`` not a number.
    """

    fn: Callable[[torch.Tensor, Any], torch.Tensor]
    direction: int = 0
    terminal: bool = True
    tol: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.direction, numbers.Integral) or isinstance(self.direction, bool):
            raise TypeError(
                f"event direction must be the int -1, 0 or 1, got {self.direction!r} "
                f"({type(self.direction).__name__})"
            )
        if self.direction not in (-1, 0, 1):
            raise ValueError(f"event direction must be -1, 0 or 1, got {self.direction!r}")
        if not callable(self.fn):
            raise TypeError(f"the event function must be callable, got {type(self.fn).__name__}")
        if not isinstance(self.terminal, bool):
            raise TypeError(f"event terminal must be True or False, got {self.terminal!r}")
        if self.tol is not None:
            if not isinstance(self.tol, numbers.Real) or isinstance(self.tol, bool):
                raise TypeError(f"event tol must be a number or None, got {self.tol!r}")
            if not (math.isfinite(self.tol) and self.tol > 0):  # a NaN tol stops at once
                raise ValueError(
                    f"event tol must be a positive finite time tolerance, got {self.tol!r}; "
                    "use None for the resolution of float64"
                )

    def values(self, t: torch.Tensor, y: Any) -> torch.Tensor:
        """``fn(t, y)`` without a graph (for locating events), checked to be a tensor.

        Arguments:
            t: the time, a 0-dim tensor (per sample: one time per sample).
            y: the state there, in ``y0``'s structure.

        Returns:
            The event values, a real tensor.

        Raises:
            TypeError: ``fn`` returns no tensor, a complex one or a bool one.
            ValueError: ``fn`` returns an empty tensor.
        """
        with torch.no_grad():
            g = self.fn(t, y)
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"the event function must return a tensor, got {type(g).__name__}")
        if g.is_complex():
            raise TypeError("the event function must return real values, got a complex tensor")
        if g.dtype == torch.bool:
            raise TypeError(
                "the event function returned a bool tensor, which has no zero crossing to "
                "locate; return a real value whose sign changes at the event (e.g. y[0] - 1 "
                "rather than y[0] > 1)"
            )
        if g.numel() == 0:
            raise ValueError(
                f"the event function returned an empty tensor (shape {tuple(g.shape)}), which "
                "can never cross zero; return at least one value whose sign changes at the event"
            )
        return g
