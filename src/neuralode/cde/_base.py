"""``InterpolationBase``: the interface of a control (torchcde's)."""

from __future__ import annotations

import abc
from typing import Any

import torch


class InterpolationBase(torch.nn.Module, metaclass=abc.ABCMeta):
    """The interface ``cdeint`` reads a control X through (torchcde's ``InterpolationBase``):
    subclass it for a control of one's own (an analytic path, another interpolation)."""

    @property
    @abc.abstractmethod
    def grid_points(self) -> torch.Tensor:
        """The times where X's derivative may jump (an adaptive solver's ``jump_t``)."""

    @property
    @abc.abstractmethod
    def interval(self) -> torch.Tensor:
        """``tensor([t_first, t_last])``, the interval X covers."""

    @abc.abstractmethod
    def evaluate(self, t: Any) -> torch.Tensor:
        """X at t.

        Arguments:
            t: the time (a float or a 0-dim tensor).

        Returns:
            X(t), (..., channels).
        """

    @abc.abstractmethod
    def derivative(self, t: Any) -> torch.Tensor:
        """dX/dt at t.

        Arguments:
            t: the time (a float or a 0-dim tensor).

        Returns:
            dX/dt(t), (..., channels).
        """
