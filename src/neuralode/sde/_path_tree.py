"""torchsde's ``BrownianPath`` and ``BrownianTree`` as views of a ``BrownianInterval``, and
``brownian_interval_like``."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ._brownian import _Delegating
from ._interval import BrownianInterval


class _Wrapped(_Delegating):
    """A Brownian motion delegating to an inner ``BrownianInterval``; point queries
    ``bm(t)`` return ``w0 + W(t0, t)``."""

    def __init__(self, interval: BrownianInterval, w0: torch.Tensor):
        self._inner = interval
        self._w0 = w0

    def __call__(self, t, tb=None, return_U=False, return_A=False):  # noqa: N803
        if tb is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._inner(t, None, return_U=return_U, return_A=return_A)
            if not return_U and not return_A:
                out = out + self._w0
            return out
        return self._inner(t, tb, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self._inner})"

    @property
    def t0(self) -> float:
        """The start of the interval the Brownian motion covers."""
        return self._inner.t0

    @property
    def t1(self) -> float:
        """The end of the interval the Brownian motion covers."""
        return self._inner.t1


class BrownianPath(_Wrapped):
    """A Brownian path that keeps every computed value (fast; memory grows with the queries).

    Arguments:
        t0: the initial time (the path lives on ``[t0, t0 + 1]``, as in torchsde).
        w0: the initial value; its shape, dtype and device are the samples'.
        window_size: unused (kept for torchsde compatibility).
    """

    def __init__(self, t0: float | torch.Tensor, w0: torch.Tensor, window_size: int = 8):
        t0 = float(t0)
        interval = BrownianInterval(
            t0=t0, t1=t0 + 1, size=w0.shape, dtype=w0.dtype, device=w0.device, cache_size=None
        )
        super().__init__(interval, w0)


class BrownianTree(_Wrapped):
    """A Brownian motion that depends on the entropy only, not on the query points: a dyadic
    tree searched down to ``tol``.

    Arguments:
        t0: the initial time.
        w0: the initial value; its shape, dtype and device are the samples'.
        t1: the terminal time (default ``t0 + 1``).
        w1: the value at ``t1`` (drawn if not given).
        entropy: the seed (``None``: drawn from NumPy's global generator, as torchsde).
        tol: the resolution of the dyadic search.
        pool_size: accepted for torchsde compatibility.
        cache_depth: unused (kept for torchsde compatibility).
        safety: unused (kept for torchsde compatibility).
    """

    def __init__(
        self,
        t0: float | torch.Tensor,
        w0: torch.Tensor,
        t1: float | torch.Tensor | None = None,
        w1: torch.Tensor | None = None,
        entropy: int | None = None,
        tol: float = 1e-6,
        pool_size: int = 24,
        cache_depth: int = 9,
        safety: float | None = None,
    ):
        t0 = float(t0)
        t1 = t0 + 1 if t1 is None else float(t1)
        interval = BrownianInterval(
            t0=t0,
            t1=t1,
            size=w0.shape,
            dtype=w0.dtype,
            device=w0.device,
            entropy=entropy,
            tol=tol,
            pool_size=pool_size,
            halfway_tree=True,
            W=None if w1 is None else w1 - w0,
        )
        super().__init__(interval, w0)


def brownian_interval_like(
    y: torch.Tensor,
    t0: float | torch.Tensor = 0.0,
    t1: float | torch.Tensor = 1.0,
    size: tuple[int, ...] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> BrownianInterval:
    """A ``BrownianInterval`` with the size, dtype and device of ``y`` (unless given).

    Arguments:
        y: the tensor to copy size, dtype and device from.
        t0: the initial time.
        t1: the terminal time.
        size: overrides ``y.shape``.
        dtype: overrides ``y.dtype``.
        device: overrides ``y.device``.
        **kwargs: the other arguments of ``BrownianInterval``.

    Returns:
        The Brownian interval.
    """
    return BrownianInterval(
        t0=t0,
        t1=t1,
        size=y.shape if size is None else size,
        dtype=y.dtype if dtype is None else dtype,
        device=y.device if device is None else device,
        **kwargs,
    )
