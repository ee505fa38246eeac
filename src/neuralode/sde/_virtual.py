"""The virtual Brownian tree (Kidger et al. 2021, "Efficient and accurate gradients for neural
SDEs"): Brownian motion as a pure function of the query time, in tensor operations only.

``W(t)`` (and the running integral ``I(t) = int_{t0}^t W``, from which the space-time Lévy area
of any interval follows) is found by bisection: from the root interval ``[t0, t1]`` each level
splits the interval holding ``t`` at its midpoint with the Brownian bridge (``bridge``, the
split of ``BrownianInterval``) and descends into the half holding ``t``, down to intervals of
length ``tol``; inside that last interval ``t`` splits it. The bridge's noise is counter-based:
a splitmix64 hash of the entropy, the row, the element and the node, so a query needs no cache
or generator state, gives the same values in any order, and every row of the batch may ask
for its own times (``bm(ta, tb)`` with ``ta``, ``tb`` of shape (batch,)): what a per-sample
SDE solve, each sample on its own steps, needs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch

from ._brownian import _LEFT_HALF, BaseBrownian, _mix, bridge, levy_area
from .settings import LEVY_AREA_APPROXIMATIONS


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_SALT_U2 = _signed(0xD1B54A32D192ED03)  # the second uniform of a Box-Muller pair
_SALT_AREA = _signed(0x8CB92BA72F3D8DD7)  # the Lévy area's noise
_MAX_LEVELS = 60  # node numbers 2**level + k stay in int64


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on int64 tensors (wrapping arithmetic), bit for bit ``_brownian._mix``."""
    x = x + _GOLDEN  # a fresh tensor: the rest runs in place on it
    for shift, mul in ((30, _MUL1), (27, _MUL2), (31, None)):
        x ^= (x >> shift) & ((1 << (64 - shift)) - 1)  # a logical shift
        if mul is not None:
            x *= mul
    return x


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """The top 53 bits of hashes as float64 uniforms in (0, 1] (``x`` is overwritten)."""
    x >>= 11
    x &= (1 << 53) - 1
    x += 1
    return x.to(torch.float64).mul_(2.0**-53)


def normal_pair(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals (float64) for each int64 key (Box-Muller)."""
    u = _uniform(mix(torch.stack([key, key ^ _SALT_U2])))
    radius = u[0].log_().mul_(-2).sqrt_()
    angle = u[1].mul_(2 * math.pi)
    return torch.cos(angle).mul_(radius), angle.sin_().mul_(radius)


class _Splits:
    """The bisection's splits at every level of a tree, solved for all levels at once.

    Splitting an interval at its midpoint is linear (``bridge``): the left half's
    ``(W', H')`` is ``W' = pW W + pH H + pN nw`` and ``H' = qH H + qN nw + qM nh``, with
    coefficients that depend on the level only; the right half is the left half of the
    time-reversed interval (``H``, ``nw`` and ``nh`` change sign; ``W`` and ``H'``'s ``nw``
    term do not), so the half taken has the left half's coefficients with the sign ``s`` of
    the side on ``pH``, ``pN`` and ``qM``. The coefficients are ``bridge``'s own, read off by
    splitting the unit vectors once per tree (and checked to have this form). With ``pW``
    and ``qH`` the same at every split, the levels' values follow from cumulative sums:
    ``H_l = G_l (H_0 + sum_{k <= l} d_k / G_k)`` with ``G_l`` the product of the ``qH``
    (powers of two: exact), and the same for ``W``. The sums grow geometrically, so their
    round-off is that of their last terms. Tensors hold the levels in their last dimension
    (a cumulative sum along contiguous memory)."""

    def __init__(self, span: float, levels: int, have_H: bool, device: torch.device):  # noqa: N803
        self.have_H = have_H
        f64 = dict(dtype=torch.float64, device=device)
        self.half = span * 2.0 ** -torch.arange(1, levels + 1, **f64)
        unit = torch.eye(4, **f64)[:, :, None]  # W, H, noise_w, noise_h; (4, 4, 1)
        half = self.half[None, :]
        (w_left, h_left), (w_right, h_right) = bridge(
            unit[0], unit[1] if have_H else None, half, half, 2 * half, unit[2],
            unit[3] if have_H else None,
        )  # fmt: skip
        reflect = torch.tensor([1.0, -1.0, -1.0, 1.0], **f64)[:, None]  # W, H, nw, nh
        if not (torch.equal(w_right, w_left * reflect) and w_left[3].eq(0).all()):
            raise AssertionError("the bridge's W of a half is not pW W + s (pH H + pN nw)")
        self.p_w, self.p_h, self.p_n = self._products(w_left[0]), w_left[1], w_left[2]
        if have_H:
            if not (torch.equal(h_right, -h_left * reflect) and h_left[0].eq(0).all()):
                raise AssertionError("the bridge's H of a half is not qH H + qN nw + s qM nh")
            self.q_h, self.q_n, self.q_m = h_left[1], h_left[2], h_left[3]
            self.q = self._products(h_left[1])

    @staticmethod
    def _products(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The products of the factors of the first l levels, l = 0..levels, and inverses."""
        product = torch.cat([torch.ones_like(factor[:1]), factor.cumprod(0)])
        return product, 1 / product

    @staticmethod
    def _solve(x0: torch.Tensor, terms: torch.Tensor, products: tuple) -> torch.Tensor:
        """``x_l = c_l x_{l-1} + terms_l``, l = 1..levels, from ``x0`` (..., ) with terms
        (..., levels): all ``x_l``, l = 0..levels, (..., levels + 1)."""
        product, inverse = products
        return torch.cat([x0[..., None], terms * inverse[1:]], -1).cumsum(-1).mul_(product)

    def descend(self, W, H, right, noise_w, noise_h):  # noqa: N803
        """From the root's ``W`` and ``H`` (``None``: no Lévy area), (q, b, e), down the
        halves ``right`` (q, b, 1, levels) with each level's noise (q, b, e, levels): the
        last interval's ``W`` and ``H``, and ``W`` and ``I`` at its start."""
        taken = right.to(torch.float64)  # 1 where the path goes right
        sign = 1 - 2 * taken  # the left half's coefficients, reflected on the right
        if self.have_H:
            d = torch.addcmul(self.q_n * noise_w, sign, self.q_m * noise_h)
            hs = self._solve(H, d, self.q)
            h_before = hs[..., :-1]
            e = (self.p_h * h_before).add_(self.p_n * noise_w).mul_(sign)
        else:
            e = (self.p_n * noise_w).mul_(sign)
        ws = self._solve(W, e, self.p_w)
        w_left = ws[..., :-1] - ws[..., 1:]  # the left half where the path goes right
        passed = taken * w_left  # W of the left halves passed on the way
        w_sums = passed.cumsum(-1)
        if not self.have_H:
            return ws[..., -1], None, w_sums[..., -1], None
        h_left = (self.q_h * h_before).add_(self.q_n * noise_w).add_(self.q_m * noise_h)
        # I at a passed midpoint: I at the start + W at the start times the half + U of the
        # left half
        gained = (w_sums - passed).add_(0.5 * w_left).add_(h_left).mul_(self.half * taken)
        return ws[..., -1], hs[..., -1], w_sums[..., -1], gained.sum(-1)


class VirtualBrownianTree(BaseBrownian):
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
        entropy: the seed (``None``: random).
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
        if levy_area_approximation not in LEVY_AREA_APPROXIMATIONS:
            raise ValueError(
                f"`levy_area_approximation` must be one of {LEVY_AREA_APPROXIMATIONS}, but got "
                f"'{levy_area_approximation}'."
            )
        self._t0, self._t1, self._tol = t0, t1, float(tol)
        self._size = torch.Size(size)
        self._dtype = torch.get_default_dtype() if dtype is None else dtype
        self._device = torch.device("cpu" if device is None else device)
        self._entropy = random.randrange(2**31 - 1) if entropy is None else int(entropy)
        self._levy_area_approximation = levy_area_approximation
        self._have_H = levy_area_approximation != LEVY_AREA_APPROXIMATIONS.none
        self._have_A = levy_area_approximation in (
            LEVY_AREA_APPROXIMATIONS.davie,
            LEVY_AREA_APPROXIMATIONS.foster,
        )
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
        outside ``[t0, t1]`` are clamped to it; a row with ``ta > tb`` gets minus the
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
        ta, tb = self._times(ta), self._times(tb)
        w, i = self._points(torch.stack([ta, tb]))
        if i is None:
            return self.between(ta, tb, (w[0], None), (w[1], None), return_U, return_A)
        return self.between(ta, tb, (w[0], i[0]), (w[1], i[1]), return_U, return_A)

    def points(self, times: Sequence[torch.Tensor]) -> list[tuple]:
        """The path at several (batch,) times in one bisection, for ``between``: what a
        per-sample step doubling asks for (three times, three intervals between them)."""
        w, i = self._points(torch.stack([self._times(t) for t in times]))
        return [(w[k], None if i is None else i[k]) for k in range(len(times))]

    def between(self, ta, tb, a: tuple, b: tuple, return_U=False, return_A=False):  # noqa: N803
        """``bm(ta, tb, ...)`` from the path at ``ta`` and ``tb`` (``points``)."""
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
        if len(self._size) < 2:
            return torch.zeros_like(W)
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

    @property
    def t0(self) -> float:
        return self._t0

    @property
    def t1(self) -> float:
        return self._t1
