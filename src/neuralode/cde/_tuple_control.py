"""``TupleControl``: several controls over one interval, for a tuple state (torchcde's)."""

from __future__ import annotations

from typing import Any

import torch


class TupleControl(torch.nn.Module):
    """Controls of a tuple state, one per tensor of z0: their ``evaluate`` and ``derivative``
    return tuples (torchcde's ``TupleControl``).

    Arguments:
        *controls: the controls (modules with ``evaluate``, ``derivative``, ``interval`` and
            ``grid_points``), all over the same interval.

    Raises:
        ValueError: no controls, or controls over different intervals.
    """

    def __init__(self, *controls: Any):
        super().__init__()
        if not controls:
            raise ValueError("TupleControl needs one or more controls to batch together")
        self._interval = controls[0].interval
        grid_points = controls[0].grid_points
        same_grid = True
        for control in controls[1:]:
            interval = control.interval
            if interval.shape != self._interval.shape or bool((interval != self._interval).any()):
                raise ValueError(
                    "TupleControl batches controls over the same interval; got "
                    f"{self._interval.tolist()} and {interval.tolist()}"
                )
            points = control.grid_points
            if same_grid and (
                points.shape != grid_points.shape or bool((points != grid_points).any())
            ):
                same_grid = False
        self._grid_points = grid_points if same_grid else None
        self.controls = torch.nn.ModuleList(controls)

    @property
    def interval(self) -> torch.Tensor:
        """The common interval [t0, t1] of the controls."""
        return self._interval

    @property
    def grid_points(self) -> torch.Tensor:
        """The common grid points of the controls.

        Raises:
            RuntimeError: the controls have different grid points.
        """
        if self._grid_points is None:
            raise RuntimeError(
                "the controls of this TupleControl have different grid points; read each "
                "control's grid_points instead (tuple_control.controls[i].grid_points)"
            )
        return self._grid_points

    def evaluate(self, t: Any) -> tuple[torch.Tensor, ...]:
        """Each control's value at t.

        Arguments:
            t: the time.

        Returns:
            A tuple of each control's ``evaluate(t)``.
        """
        return tuple(control.evaluate(t) for control in self.controls)

    def derivative(self, t: Any) -> tuple[torch.Tensor, ...]:
        """Each control's derivative at t.

        Arguments:
            t: the time.

        Returns:
            A tuple of each control's ``derivative(t)``.
        """
        return tuple(control.derivative(t) for control in self.controls)
