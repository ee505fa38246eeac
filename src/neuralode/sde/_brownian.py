"""The interface of every Brownian motion (``BaseBrownian``), the stored properties of those
that keep them (``_Stored``) or wrap another (``_Delegating``), and the Brownian motion of
reversed time (``ReverseBrownian``).

The Brownian motions themselves: ``BrownianInterval`` (``_interval``, with its views
``BrownianPath`` and ``BrownianTree`` in ``_path_tree``) and ``VirtualBrownianTree``
(``_virtual``).
"""

from __future__ import annotations

import abc

import numpy as np
import torch

from .settings import LEVY_AREA_APPROXIMATIONS


def default_entropy() -> int:
    """The seed of a Brownian motion made without ``entropy``: drawn from NumPy's global
    generator, as torchsde's, so that ``np.random.seed`` makes such solves reproducible."""
    return int(np.random.randint(0, 2**31 - 1))


class BaseBrownian(metaclass=abc.ABCMeta):
    """The interface of every Brownian motion: ``bm(ta, tb)`` is the increment over
    ``[ta, tb]``; ``return_U`` adds the space-time Lévy area scaled as ``U = h (W / 2 + H)``
    (the integral of ``W_{ta, s} ds``) and ``return_A`` the Lévy area."""

    __slots__ = ()

    @abc.abstractmethod
    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        raise NotImplementedError

    @abc.abstractmethod
    def __repr__(self) -> str:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def dtype(self) -> torch.dtype:
        """The dtype of the increments."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """The device of the increments."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def shape(self) -> torch.Size:
        """The shape of one increment, e.g. (batch, noise channels)."""
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def levy_area_approximation(self) -> str:
        """The Lévy area approximation: ``"none"``, ``"space-time"``, ``"davie"``, ``"foster"``."""
        raise NotImplementedError

    def size(self) -> torch.Size:
        """The shape of one increment, as ``shape``.

        Returns:
            ``shape``.
        """
        return self.shape


class _Stored(BaseBrownian):
    """The properties of a Brownian motion that keeps them as attributes (``_size``,
    ``_dtype``, ``_device``, ``_entropy``, ``_levy_area_approximation``, ``_tol``)."""

    __slots__ = ()

    @property
    def shape(self) -> torch.Size:
        return self._size

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def entropy(self) -> int:
        return self._entropy

    @property
    def levy_area_approximation(self) -> str:
        return self._levy_area_approximation

    @property
    def tol(self) -> float:
        return self._tol

    def _keep_levy_area_approximation(self, approximation: str) -> None:
        """Check ``approximation`` and keep it, with whether the space-time Lévy area
        (``_have_H``) and the Lévy area (``_have_A``) are computed."""
        if approximation not in LEVY_AREA_APPROXIMATIONS:
            raise ValueError(
                f"`levy_area_approximation` must be one of {LEVY_AREA_APPROXIMATIONS}, but got "
                f"'{approximation}'."
            )
        self._levy_area_approximation = approximation
        self._have_H = approximation != LEVY_AREA_APPROXIMATIONS.none
        self._have_A = approximation in (
            LEVY_AREA_APPROXIMATIONS.davie,
            LEVY_AREA_APPROXIMATIONS.foster,
        )


class _Delegating(BaseBrownian):
    """The properties of a Brownian motion that wraps another one, ``_inner``."""

    _inner: BaseBrownian

    @property
    def dtype(self) -> torch.dtype:
        return self._inner.dtype

    @property
    def device(self) -> torch.device:
        return self._inner.device

    @property
    def shape(self) -> torch.Size:
        return self._inner.shape

    @property
    def levy_area_approximation(self) -> str:
        return self._inner.levy_area_approximation


class ReverseBrownian(_Delegating):
    """The Brownian motion of the reversed time ``s = -t``: ``rbm(sa, sb) = bm(-sb, -sa)``
    (the forward increment over the same interval; the adjoint SDE's diffusion carries the sign).

    Arguments:
        base_brownian: the forward Brownian motion.
    """

    def __init__(self, base_brownian: BaseBrownian):
        self.base_brownian = base_brownian

    @property
    def _inner(self) -> BaseBrownian:
        return self.base_brownian

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        return self.base_brownian(-tb, -ta, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_brownian={self.base_brownian})"
