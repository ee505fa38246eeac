"""The virtual Brownian tree (Kidger et al. 2021, "Efficient and accurate gradients for neural
SDEs"): Brownian motion as a pure function of the query time, in tensor operations only.

``W(t)`` (and the running integral ``I(t) = int_{t0}^t W``, from which the space-time Lévy area
of any interval follows) is found by bisection: from the root interval ``[t0, t1]`` each level
splits the interval holding ``t`` at its midpoint with the Brownian bridge (``bridge``, the
split of ``BrownianInterval``) and descends into the half holding ``t``, down to intervals of
length ``tol``; inside that last interval ``t`` splits it. The splits are linear, so all
levels are solved at once (``_bisection._Splits``). The bridge's noise is counter-based:
a splitmix64 hash of the entropy, the row, the element and the node, so a query needs no cache
or generator state, gives the same values in any order, and every row of the batch may ask
for its own times (``bm(ta, tb)`` with ``ta``, ``tb`` of shape (batch,)): what a per-sample
SDE solve, each sample on its own steps, needs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch

from ._bisection import _MAX_LEVELS, _SALT_AREA, _signed, _Splits, mix, normal_pair
from ._bridge import _LEFT_HALF, _mix, bridge, levy_area
from ._brownian import _Stored, default_entropy
from .settings import LEVY_AREA_APPROXIMATIONS


class VirtualBrownianTree(_Stored):
    """Brownian motion on ``[t0, t1]`` that is a pure function of the query times: each row
    of the batch (dimension 0) may ask for its own interval.

    ``bm(ta, tb)`` is the increment over ``[ta, tb]``; ``ta`` and ``tb`` are scalars (every
    row the same interval, as for ``BrownianInterval``) or tensors of shape (batch,) (row i
    its own path's increment over ``[ta[i], tb[i]]``: what ``per_sample=True`` SDE solves
    need). The values are found by bisection to depth ``log2((t1 - t0) / tol)`` with
    counter-based noise, so they do not depend on which or in what order times are queried,
    and no memory grows with the queries. ``bm.rows(index)`` is the Brownian motion of some
    rows, with exactly their paths (a sample solved alone sees its own path). Values are
    computed in float64 and returned in ``dtype``.

    Example:
        ```python
        bm = VirtualBrownianTree(0.0, 1.0, size=(3, 2), entropy=0)
        bm(0.0, 0.5).shape  # (3, 2): every row over [0, 0.5]
        bm(torch.zeros(3), torch.tensor([0.1, 0.5, 1.0]))  # row i over [0, tb[i]]
        ```

    Arguments:
        t0: the initial time.
        t1: the terminal time (greater than ``t0``).
        size: the shape of the samples, ``(batch, ...)``: dimension 0 holds the rows that
            may have their own query times; ``shape`` is accepted as its alias.
        tol: the time resolution of the bisection (default ``(t1 - t0) * 2**-20``); below it
            the path is the bridge of its last interval with one noise.
        entropy: the seed (``None``: drawn from NumPy's global generator, as torchsde).
        levy_area_approximation: ``"none"``, ``"space-time"`` (``return_U``), ``"davie"`` or
            ``"foster"`` (also ``return_A``).
        dtype: the dtype of the returned values (default: torch's default dtype).
        device: their device (default: cpu).
        shape: alias of ``size``.

    Raises:
        ValueError: ``t1 <= t0``, a non-positive ``tol``, no ``size``, or an unknown Lévy area
            approximation.
    """

    def __init__(
        self,
        t0: float | torch.Tensor = 0.0,
        t1: float | torch.Tensor = 1.0,
        size: Sequence[int] | None = None,
        tol: float | None = None,
        entropy: int | None = None,
        levy_area_approximation: str = LEVY_AREA_APPROXIMATIONS.none,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        shape: Sequence[int] | None = None,
    ):
        t0, t1 = float(t0), float(t1)
        if not t1 > t0:
            raise ValueError(f"VirtualBrownianTree needs t0 < t1, got t0={t0}, t1={t1}")
        if size is None:
            size = shape
        if size is None:
            raise ValueError("VirtualBrownianTree needs size=(batch, ...) (or shape=...)")
        if tol is None:
            tol = (t1 - t0) * 2.0**-20
        if not tol > 0:
            raise ValueError(f"tol must be positive, got {tol}")
        self._keep_levy_area_approximation(levy_area_approximation)
        self._t0, self._t1, self._tol = t0, t1, float(tol)
        self._size = torch.Size(size)
        self._dtype = torch.get_default_dtype() if dtype is None else dtype
        self._device = torch.device("cpu" if device is None else device)
        self._entropy = default_entropy() if entropy is None else int(entropy)
        self._levels = min(_MAX_LEVELS, max(0, math.ceil(math.log2((t1 - t0) / tol))))
        batch = self._size[0] if len(self._size) else 1
        self._row_ids = torch.arange(batch, dtype=torch.long, device=self._device)
        self._keys = self._element_keys()
        depth = torch.arange(self._levels + 1, device=self._device)
        self._node_base = 1 << depth  # node 2**level + k: interval k on its level
        self._node_shift = self._levels - depth
        self._bit_shift = self._levels - 1 - depth[:-1]
        self._splits = _Splits(t1 - t0, self._levels, self._have_H, self._device)

    def rows(self, index: int | Sequence[int] | slice | torch.Tensor) -> VirtualBrownianTree:
        """The Brownian motion of the rows ``index`` (dimension 0): the same paths as those
        rows of this one, so a sample solved alone meets the noise it meets in the batch.

        Arguments:
            index: the rows, as for tensor indexing (an int keeps the dimension).

        Returns:
            A ``VirtualBrownianTree`` of shape ``(len(rows), *shape[1:])``.

        Raises:
            ValueError: a Brownian motion of shape ``()`` has no rows.
        """
        if not len(self._size):
            raise ValueError("a VirtualBrownianTree of shape () has no rows to take")
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self._device)
        out = object.__new__(VirtualBrownianTree)
        out.__dict__.update(self.__dict__)
        out._row_ids = self._row_ids[index].reshape(-1)
        out._size = torch.Size((out._row_ids.shape[0], *self._size[1:]))
        out._keys = out._element_keys()
        return out

    # ----------------------------------------------------------------------------------------
    # noise

    def _element_keys(self) -> torch.Tensor:
        """The hash of (entropy, row, element) of every value, (batch, elements) int64."""
        elements = self._size[1:].numel() if len(self._size) else 1
        seed = _signed(_mix(self._entropy))
        rows = mix(self._row_ids + seed)
        index = torch.arange(elements, dtype=torch.long, device=self._device)
        return mix(rows[:, None] + mix(index))

    def _noise(self, node: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two normals (W's and H's split) of the nodes ``node`` (queries, batch, nodes):
        each (queries, batch, elements, nodes) float64."""
        return normal_pair(self._keys[..., None] ^ mix(node)[..., None, :])

    # ----------------------------------------------------------------------------------------
    # the bisection

    def _points(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``W(t)`` and (with the Lévy area) ``I(t) = int_{t0}^t W``, (queries, batch,
        elements) float64, at the times ``t`` (queries, batch) float64.

        The path through the tree is known from ``t`` (the bits of its last interval's
        index), so the noise of every level is drawn at once, and the levels' splits, a
        linear recurrence (``_Splits``), are solved for all levels at once; the halves left
        behind on the way give ``W`` and ``I`` at the start of the interval holding ``t``."""
        levels, span = self._levels, self._t1 - self._t0
        width = span * 2.0**-levels  # of the last intervals
        t = t.clamp(self._t0, self._t1)
        last = ((t - self._t0) / width).floor().long().clamp(0, (1 << levels) - 1)
        on_levels = self._node_base + (last[..., None] >> self._node_shift)
        nodes = torch.cat([torch.zeros_like(last)[..., None], on_levels], -1)
        noise_w, noise_h = self._noise(nodes)  # (q, b, e, 1 + levels + 1): root, levels, last
        right = ((last[..., None, None] >> self._bit_shift) & 1).bool()  # (q, b, 1, levels)
        W = noise_w[..., 0] * math.sqrt(span)  # noqa: N806  the root's increment
        H = noise_h[..., 0] * math.sqrt(span / 12) if self._have_H else None  # noqa: N806
        W, H, w_start, i_start = self._splits.descend(  # noqa: N806
            W, H, right, noise_w[..., 1:-1], noise_h[..., 1:-1] if self._have_H else None
        )
        # inside the last interval: its bridge split at t itself
        left = (t - (self._t0 + last.to(torch.float64) * width)).clamp(0, width)[..., None]
        w_part, h_part = bridge(
            W, H, left, width - left, width, noise_w[..., -1],
            noise_h[..., -1] if self._have_H else None, _LEFT_HALF,
        )  # fmt: skip
        if not self._have_H:
            return w_start + w_part, None
        return w_start + w_part, i_start + left * w_start + left * (0.5 * w_part + h_part)

    # ----------------------------------------------------------------------------------------
    # queries

    def _times(self, t: float | torch.Tensor) -> torch.Tensor:
        """A query time as (batch,) float64."""
        batch = self._row_ids.shape[0]
        t = torch.as_tensor(t, dtype=torch.float64, device=self._device)
        if t.ndim == 0:
            return t.expand(batch)
        if tuple(t.shape) != (batch,):
            raise ValueError(
                f"per-row query times must have shape (batch,) = ({batch},), got {tuple(t.shape)}"
            )
        return t

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        """The increment over ``[ta, tb]`` (``tb=None``: ``W(ta) = W(t0, ta)``), each a
        scalar or one time per row, (batch,); plus ``U`` and/or ``A`` when asked. Times
        outside ``[t0, t1]`` are clamped to it (with a warning where both are Python
        numbers; tensors are not read back); a row with ``ta > tb`` gets minus the
        increment over ``[tb, ta]``."""
        if tb is None:
            ta, tb = self._t0, ta
        if return_U and not self._have_H:
            raise ValueError(
                "return_U=True needs the space-time Lévy area: create the Brownian motion "
                "with levy_area_approximation='space-time' (or 'davie' / 'foster')"
            )
        if return_A and not self._have_A:
            raise ValueError(
                "return_A=True needs a Lévy area approximation: create the Brownian motion "
                "with levy_area_approximation='davie' or 'foster'"
            )
        if isinstance(ta, (int, float)) and isinstance(tb, (int, float)):
            # (times held as tensors are not read back: that would synchronise a device)
            if min(ta, tb) < self._t0 or max(ta, tb) > self._t1:
                warnings.warn(
                    f"Query [{ta}, {tb}] lies outside [t0, t1] = [{self._t0}, {self._t1}]; "
                    "clamped to it.",
                    stacklevel=2,
                )
        ta, tb = self._times(ta), self._times(tb)
        w, i = self._points(torch.stack([ta, tb]))
        if i is None:
            return self.between(ta, tb, (w[0], None), (w[1], None), return_U, return_A)
        return self.between(ta, tb, (w[0], i[0]), (w[1], i[1]), return_U, return_A)

    def points(self, times: Sequence[torch.Tensor]) -> list[tuple]:
        """The path at several times in one bisection, for ``between``.

        What a per-sample step doubling asks for (three times, three intervals between them).

        Arguments:
            times: the times, each a (batch,) tensor, one time per row.

        Returns:
            One ``(W, I)`` per time: the path there and its time integral (``None`` without
                a Lévy area approximation), to pass to ``between``.
        """
        w, i = self._points(torch.stack([self._times(t) for t in times]))
        return [(w[k], None if i is None else i[k]) for k in range(len(times))]

    def between(self, ta, tb, a: tuple, b: tuple, return_U=False, return_A=False):  # noqa: N803
        """``bm(ta, tb, ...)`` from the path at ``ta`` and ``tb`` (``points``).

        Arguments:
            ta (torch.Tensor): the start times, (batch,).
            tb (torch.Tensor): the end times, (batch,).
            a: the path at ``ta``, from ``points``.
            b: the path at ``tb``, from ``points``.
            return_U (bool): also return the space-time Lévy area's integral
                int_ta^tb (W_s - W_ta) ds.
            return_A (bool): also return the Lévy area.

        Returns:
            (torch.Tensor | tuple): The increment W(tb) - W(ta) of shape ``shape`` (exactly
                zero where ``ta == tb``); with ``return_U`` or ``return_A`` (and a Lévy area
                approximation) a tuple with those appended.
        """
        (wa, ia), (wb, ib) = a, b
        empty = (ta == tb)[:, None]  # exactly zero (the sums over the levels may round apart)
        W = torch.where(empty, 0.0, wb - wa)  # noqa: N806
        out = [W.reshape(self._size).to(self._dtype)]
        if self._have_H and (return_U or return_A):
            h = (tb - ta)[:, None]
            U = torch.where(empty, 0.0, ib - ia - h * wa)  # noqa: N806  int (W_s - W_ta) ds
            if return_U:
                out.append(U.reshape(self._size).to(self._dtype))
            if return_A:
                safe = torch.where(h == 0, 1.0, h)
                H = torch.where(h == 0, 0.0, U / safe - 0.5 * W)  # noqa: N806
                out.append(self._area(ta, tb, W, H).to(self._dtype))
        return out[0] if len(out) == 1 else tuple(out)

    def _area(self, ta, tb, W, H):  # noqa: N803
        """The Lévy area over each row's ``[ta, tb]``: Davie's (or Foster's) approximation,
        its noise keyed on the row and the interval's ends."""
        if len(self._size) < 2:  # (no pairs of channels: zeros of W's shape, as torchsde's)
            return torch.zeros(self._size, dtype=W.dtype, device=W.device)
        m = self._size[-1]
        shape = torch.Size((*self._size, m))
        W, H = W.reshape(self._size), H.reshape(self._size)  # noqa: N806
        ends = mix(ta.contiguous().view(torch.long)) ^ mix(
            tb.contiguous().view(torch.long) ^ _SALT_AREA
        )
        keys = mix(self._row_ids ^ ends ^ _signed(_mix(self._entropy)))
        count = shape[1:].numel()
        index = torch.arange(count, dtype=torch.long, device=self._device)
        noise, _ = normal_pair(mix(keys[:, None] + mix(index)) ^ _SALT_AREA)
        h = (tb - ta).reshape(-1, *([1] * (len(shape) - 1)))
        return levy_area(W, H, h, noise.reshape(shape), self._levy_area_approximation)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(t0={self._t0}, t1={self._t1}, size={tuple(self._size)}, "
            f"tol={self._tol}, entropy={self._entropy}, dtype={self._dtype}, "
            f"device={repr(self._device)}, "
            f"levy_area_approximation={repr(self._levy_area_approximation)})"
        )

    per_row_times = True  # ``bm(ta, tb)`` takes one time per row (per-sample SDE solves)

    @property
    def t0(self) -> float:
        """The start of the interval the Brownian motion covers."""
        return self._t0

    @property
    def t1(self) -> float:
        """The end of the interval the Brownian motion covers."""
        return self._t1
