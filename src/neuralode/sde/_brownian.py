"""Brownian motion: an interval tree with fixed entropy (``BrownianInterval``) and its wrappers.

A ``BrownianInterval`` over ``[t0, t1]`` is a binary tree of intervals. The root holds the
increment ``W`` (and the space-time Lévy area ``H``) over the whole interval; splitting an
interval at a point draws its two halves from the Brownian bridge conditioned on the parent's
``(W, H)``, with noise from seeds that depend only on the interval's place in the tree (its key
and depth) and the entropy. Values are recomputed from the nearest cached ancestor when they have
left the LRU cache, so memory stays bounded however many steps a solve takes, and the same
queries always give the same answers. With ``halfway_tree=True`` intervals are split only at
dyadic midpoints, so the path no longer depends on which points were queried (at resolution
``tol``).
"""

from __future__ import annotations

import abc
import math
import random
import warnings
from array import array
from collections import OrderedDict
from typing import Any

import torch

from .settings import LEVY_AREA_APPROXIMATIONS

_MASK = (1 << 64) - 1
_RSQRT3 = 1 / math.sqrt(3)


def _mix(x: int) -> int:
    """splitmix64: a bijective 64-bit hash, so nearby keys give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


_LEFT_HALF, _RIGHT_HALF, _BOTH_HALVES = 0, 1, 2


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, float) else torch.sqrt(x)


def bridge(W, H, left, right, h, noise_w, noise_h, side=_BOTH_HALVES):  # noqa: N803
    """The Brownian bridge: the increment and space-time Lévy area ``(W, H)`` of the halves
    of an interval of length ``h`` split ``left`` after its start (``right = h - left``
    before its end), given the interval's ``W`` and ``H`` (``None``: no Lévy area) and two
    standard normal noises; ``side`` picks the left half, the right half or both (a pair).
    The lengths are floats (one split for every row) or tensors broadcasting against ``W``
    (each row its own split); the halves' ``W`` add up to the interval's. Every Brownian
    motion of the package (``BrownianInterval``, ``VirtualBrownianTree``) splits with it."""
    if H is None:
        left_w = (left / h) * W + _sqrt(left * right / h) * noise_w
        halves = ((left_w, None), (W - left_w, None))
        return halves if side == _BOTH_HALVES else halves[side]
    v = 0.5 * _sqrt(left * right / (left**3 + right**3))
    a = v * left**2 / h
    b = v * right**2 / h
    c = v * _RSQRT3
    third = 2 * (a * left + b * right) / h
    halves = []
    if side != _RIGHT_HALF:
        first = left / h
        second = 6 * first * right / h
        halves.append(
            (
                first * W + second * H + third * noise_w,
                first**2 * H - a * noise_w + c * right * noise_h,
            )
        )
    if side != _LEFT_HALF:
        first = right / h
        second = 6 * first * left / h
        halves.append(
            (
                first * W - second * H - third * noise_w,
                first**2 * H - b * noise_w - c * left * noise_h,
            )
        )
    return tuple(halves) if side == _BOTH_HALVES else halves[0]


def levy_area(W, H, h, noise, approximation: str):  # noqa: N803
    """Davie's (or Foster's) approximation of the Lévy area over an interval of length ``h``
    (a float, or a tensor broadcasting against (..., m, m)) from its ``W`` and ``H``, shape
    (..., m), and standard normal ``noise`` of shape (..., m, m)."""
    A = H.unsqueeze(-1) * W.unsqueeze(-2) - W.unsqueeze(-1) * H.unsqueeze(-2)  # noqa: N806
    noise = noise - noise.transpose(-1, -2)  # skew-symmetric, variance 2
    if approximation == LEVY_AREA_APPROXIMATIONS.foster:
        tenth = 0.1 * abs(h)  # (a row's interval may run backwards in time: h < 0)
        squared = H**2
        std = (tenth * (tenth + squared.unsqueeze(-1) + squared.unsqueeze(-2))).sqrt()
    else:
        std = _sqrt(h**2 / 12)
    return A + std * noise


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
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def shape(self) -> torch.Size:
        raise NotImplementedError

    @property
    @abc.abstractmethod
    def levy_area_approximation(self) -> str:
        raise NotImplementedError

    def size(self) -> torch.Size:
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


# the child hashes of an interval: a bijective mix of the parent's hash with one of two constants
_LEFT, _RIGHT = 0x2545F4914F6CDD1D, 0x9E6C63D0676A9A99


class _Tree:
    """The intervals of a ``BrownianInterval`` as parallel arrays, 40 bytes per interval (a
    Python object per interval costs ~150): the tree grows by two intervals per new query point,
    so its size is what the Brownian motion's memory grows by with the number of steps.

    Interval 0 is the root; splitting interval ``i`` at ``mid[i]`` appends its halves, the
    left one at the odd index ``left[i]`` and the right one at ``left[i] + 1`` (``left[i] < 0``:
    not split). ``hash[i]`` seeds the interval's noise: the root's comes from the entropy, a
    child's is a bijective mix of its parent's, so the values depend only on the entropy and
    the interval's place in the tree."""

    __slots__ = ("start", "end", "mid", "parent", "left", "hash")

    def __init__(self, t0: float, t1: float, root_hash: int):
        self.start = array("d", (t0,))
        self.end = array("d", (t1,))
        self.mid = array("d", (0.0,))
        self.parent = array("i", (-1,))
        self.left = array("i", (-1,))
        self.hash = array("Q", (root_hash,))

    def __len__(self) -> int:
        return len(self.start)

    def split(self, i: int, t: float) -> None:
        n = len(self.start)
        start, end, h = self.start[i], self.end[i], self.hash[i]
        self.mid[i] = t
        self.left[i] = n
        self.start.extend((start, t))
        self.end.extend((t, end))
        self.mid.extend((0.0, 0.0))
        self.parent.extend((i, i))
        self.left.extend((-1, -1))
        self.hash.extend((_mix(h ^ _LEFT), _mix(h ^ _RIGHT)))

    @property
    def nbytes(self) -> int:
        """The bytes the arrays hold."""
        return sum(
            a.itemsize * len(a)
            for a in (self.start, self.end, self.mid, self.parent, self.left, self.hash)
        )


def _is_scalar(x) -> bool:
    return isinstance(x, (int, float)) or (isinstance(x, torch.Tensor) and x.numel() == 1)


class BrownianInterval(_Stored):
    """Brownian motion on ``[t0, t1]`` with fixed entropy, queried by intervals.

    Example:
        ```python
        bm = BrownianInterval(t0=0.0, t1=1.0, size=(4, 1), entropy=0)
        dW = bm(0.0, 0.5)  # the increment over [0, 0.5], shape (4, 1)
        ```

    Arguments:
        t0: the initial time.
        t1: the terminal time.
        size: the shape of each sample, e.g. ``(batch, channels)``; the last dimension holds the
            channels of one multidimensional Brownian motion, the others are batch dimensions.
        dtype: the floating dtype of the samples (default: torch's default dtype).
        device: the device of the samples (default: cpu).
        entropy: the seed; ``None`` draws one at random.
        dt: the expected step size; with it the dependency tree is built at once (otherwise it
            is sized from the first queries).
        tol: the time resolution: query times are rounded to it (0 keeps them exact).
        pool_size: accepted for torchsde compatibility; the seeds come from a 64-bit hash.
        cache_size: how many intervals' values to keep (``None``: all, memory grows with the
            number of queries; 0: none).
        halfway_tree: split intervals only at dyadic midpoints (needs ``tol > 0``), making the
            path independent of the query points.
        levy_area_approximation: ``"none"``, ``"space-time"``, ``"davie"`` or ``"foster"``.
        W: the increment over ``[t0, t1]`` (drawn if not given).
        H: the space-time Lévy area over ``[t0, t1]`` (drawn if not given).

    Raises:
        ValueError: for times that are not scalars or decrease, a negative ``tol``, an unknown
            Lévy area approximation, or ``W``/``H`` that are not floating tensors.
    """

    def __init__(
        self,
        t0: float | torch.Tensor = 0.0,
        t1: float | torch.Tensor = 1.0,
        size: tuple[int, ...] | None = None,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        entropy: int | None = None,
        dt: float | None = None,
        tol: float = 0.0,
        pool_size: int = 8,
        cache_size: int | None = 45,
        halfway_tree: bool = False,
        levy_area_approximation: str = LEVY_AREA_APPROXIMATIONS.none,
        W: torch.Tensor | None = None,  # noqa: N803
        H: torch.Tensor | None = None,  # noqa: N803
    ):
        if not _is_scalar(t0):
            raise ValueError("Initial time t0 should be a float or 0-d torch.Tensor.")
        if not _is_scalar(t1):
            raise ValueError("Terminal time t1 should be a float or 0-d torch.Tensor.")
        if dt is not None and not _is_scalar(dt):
            raise ValueError("Expected average time step dt should be a float or 0-d torch.Tensor.")
        t0, t1 = float(t0), float(t1)
        if t0 > t1:
            raise ValueError(f"Initial time {t0} should be less than terminal time {t1}.")
        if halfway_tree:
            if not tol > 0:
                raise ValueError("`tol` should be positive when `halfway_tree=True`.")
            if dt is not None:
                raise ValueError(
                    "`dt` is not used and should be set to `None` if `halfway_tree` is True."
                )
        elif tol < 0:
            raise ValueError("`tol` should be non-negative.")
        if levy_area_approximation not in LEVY_AREA_APPROXIMATIONS:
            raise ValueError(
                f"`levy_area_approximation` must be one of {LEVY_AREA_APPROXIMATIONS}, but got "
                f"'{levy_area_approximation}'."
            )
        for name, tensor in (("W", W), ("H", H)):
            if tensor is not None and not (torch.is_tensor(tensor) and tensor.is_floating_point()):
                raise ValueError(f"{name}={tensor} should be a floating point Tensor.")
        given = [x for x in (W, H) if x is not None]
        if size is None:
            size = tuple(given[0].shape) if given else ()
        if dtype is None:
            dtype = given[0].dtype if given else torch.get_default_dtype()
        if device is None:
            device = given[0].device if given else torch.device("cpu")
        for x in given:
            if (
                tuple(x.shape) != tuple(size)
                or x.dtype != dtype
                or x.device != torch.device(device)
            ):
                raise ValueError(
                    f"W and H must match size={tuple(size)}, dtype={dtype} and device={device}"
                )
        if entropy is None:
            entropy = random.randrange(2**31 - 1)
        self._size = torch.Size(size)
        self._dtype = dtype
        self._device = torch.device(device)
        self._entropy = int(entropy)
        self._levy_area_approximation = levy_area_approximation
        self._dt = None if dt is None else float(dt)
        self._tol = float(tol)
        self._pool_size = pool_size
        self._cache_size = cache_size
        self._halfway_tree = halfway_tree
        self._have_H = levy_area_approximation != LEVY_AREA_APPROXIMATIONS.none
        self._have_A = levy_area_approximation in (
            LEVY_AREA_APPROXIMATIONS.davie,
            LEVY_AREA_APPROXIMATIONS.foster,
        )
        self._digits = None if tol == 0 else -int(math.log10(tol))
        self._generator = torch.Generator(self._device)
        self._root_seed = _mix(self._entropy)
        self._tree = _Tree(self._round(t0), self._round(t1), _mix(self._root_seed ^ _LEFT))
        self._last = 0  # the interval of the last query: the next one usually starts near it
        self._cache: OrderedDict = OrderedDict()
        h = t1 - t0
        if W is None:
            W = self._randn(_mix(self._root_seed + 1)) * math.sqrt(h)  # noqa: N806
        if H is None:
            H = self._randn(_mix(self._root_seed + 2)) * math.sqrt(h / 12)  # noqa: N806
        self._root_values = (W, H if self._have_H else None)
        self._queries = 0
        self._mean_dt = 0.0
        self._tree_dt = h
        if not halfway_tree and dt is not None:
            self._build_dependency_tree(self._dt)

    # ----------------------------------------------------------------------------------------
    # seeds and noise

    def _round(self, t: float) -> float:
        return t if self._digits is None else round(t, self._digits)

    def _seed(self, node: int, which: int) -> int:
        """The seed of an interval's split noise (``which`` 0: W, 1: H) or its Lévy area (2)."""
        return _mix((self._tree.hash[node] + which) & _MASK)

    def _randn(self, seed: int, size: torch.Size | None = None) -> torch.Tensor:
        self._generator.manual_seed(seed)
        return torch.randn(
            self._size if size is None else size,
            generator=self._generator,
            dtype=self._dtype,
            device=self._device,
        )

    # ----------------------------------------------------------------------------------------
    # the tree

    def _split(self, node: int, t: float) -> None:
        tree = self._tree
        if not self._halfway_tree:
            tree.split(node, t)
            return
        while True:
            half = self._round(0.5 * (tree.start[node] + tree.end[node]))
            if half <= tree.start[node] or half >= tree.end[node]:
                half = t  # below the resolution: split at the point itself
            tree.split(node, half)
            if t > half:
                node = tree.left[node] + 1
            elif t < half:
                node = tree.left[node]
            else:
                return

    def _locate(self, ta: float, tb: float) -> list[int]:
        """The existing or newly split intervals that partition ``[ta, tb]``, in order."""
        tree = self._tree
        start, end, mid, left, parent = tree.start, tree.end, tree.mid, tree.left, tree.parent
        node = self._last
        while ta < start[node] or tb > end[node]:
            node = parent[node]
        out: list[int] = []
        pending: list[tuple[int, float, float]] = [(node, ta, tb)]
        while pending:
            node, a, b = pending.pop()
            while True:
                if a == start[node] and b == end[node]:
                    out.append(node)
                    break
                if left[node] < 0:
                    self._split(node, b if a == start[node] else a)
                m, child = mid[node], left[node]
                if b <= m:
                    node = child
                elif a >= m:
                    node = child + 1
                else:
                    pending.append((child + 1, m, b))
                    node, b = child, m
        return out

    def _build_dependency_tree(self, dt: float) -> None:
        """Splits dyadically down to pieces of about ``0.8 dt cache_size``: a sequence of small
        steps then forms chains no longer than the cache inside each piece, so queries in
        reverse order (the adjoint's) recompute O(1) intervals each, not the whole chain."""
        cache = 100 if self._cache_size is None else min(self._cache_size, 100)
        self._tree_dt = min(self._tree_dt, dt)
        piece = self._tree_dt * max(cache, 1) * 0.8
        tree = self._tree
        pending = [0]
        while pending:
            node = pending.pop()
            start, end = tree.start[node], tree.end[node]
            if end - start > piece:
                if tree.left[node] < 0:
                    tree.split(node, self._round(0.5 * (start + end)))
                child = tree.left[node]
                pending += [child, child + 1]

    # ----------------------------------------------------------------------------------------
    # values

    def _values(self, node: int):
        """``(W, H)`` of one interval, from its nearest ancestor whose values are known."""
        if node == 0:
            return self._root_values
        cache = self._cache
        found = cache.get(node)
        if found is not None:
            cache.move_to_end(node)
            return found
        parents = self._tree.parent
        path = [node]
        parent = parents[node]
        while parent != 0 and parent not in cache:
            path.append(parent)
            parent = parents[parent]
        values = self._values(parent)
        for child in reversed(path):
            values = self._child_values(child, values)
            if self._cache_size is None or self._cache_size > 0:
                cache[child] = values
                if self._cache_size is not None and len(cache) > self._cache_size:
                    cache.popitem(last=False)
        return values

    def _child_values(self, child: int, parent_values):
        """The bridge law of a half given its parent's increment (and space-time Lévy area)."""
        tree = self._tree
        parent = tree.parent[child]
        W, H = parent_values  # noqa: N806
        start, mid, end = tree.start[parent], tree.mid[parent], tree.end[parent]
        noise_w = self._randn(self._seed(parent, 0))
        noise_h = self._randn(self._seed(parent, 1)) if self._have_H else None
        side = _LEFT_HALF if child & 1 else _RIGHT_HALF
        return bridge(W, H, mid - start, end - mid, end - start, noise_w, noise_h, side)

    def _levy_area(self, node: int, W, H):  # noqa: N803
        """Davie's (or Foster's) approximation of the Lévy area from ``W`` and ``H``."""
        if len(self._size) < 2:
            return torch.zeros_like(W)
        h = self._tree.end[node] - self._tree.start[node]
        noise = self._randn(self._seed(node, 2), (*self._size, self._size[-1]))
        return levy_area(W, H, h, noise, self._levy_area_approximation)

    # ----------------------------------------------------------------------------------------
    # queries

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        """The increment over ``[ta, tb]`` (``tb=None``: over ``[t0, ta]``), plus ``U`` and/or
        ``A`` when asked; ``ta`` and ``tb`` outside ``[t0, t1]`` are clamped with a warning."""
        start, end = self._tree.start[0], self._tree.end[0]
        if tb is None:
            warnings.warn(
                f"{type(self).__name__} is optimised for interval-based queries, not point "
                "evaluation.",
                stacklevel=2,
            )
            ta, tb = start, ta
        ta, tb = float(ta), float(tb)
        if ta < start or tb < start or ta > end or tb > end:
            warnings.warn(
                f"Query [{ta}, {tb}] lies outside [t0, t1] = [{start}, {end}]; clamped to it.",
                stacklevel=2,
            )
            ta, tb = min(max(ta, start), end), min(max(tb, start), end)
        if ta > tb:
            raise RuntimeError(f"Query times ta={ta:.3f} and tb={tb:.3f} must respect ta <= tb.")
        ta, tb = self._round(ta), self._round(tb)
        if ta == tb:
            W = torch.zeros(self._size, dtype=self._dtype, device=self._device)  # noqa: N806
            H = torch.zeros_like(W) if self._have_H else None  # noqa: N806
            A = (  # noqa: N806
                torch.zeros((*self._size, self._size[-1]), dtype=self._dtype, device=self._device)
                if self._have_A and len(self._size) >= 1
                else None
            )
        else:
            if self._dt is None and not self._halfway_tree:
                self._observe(tb - ta)
            nodes = self._locate(ta, tb)
            self._last = nodes[-1]
            W, H = self._values(nodes[0])  # noqa: N806
            A = self._levy_area(nodes[0], W, H) if self._have_A else None  # noqa: N806
            for node in nodes[1:]:
                Wi, Hi = self._values(node)  # noqa: N806
                if self._have_H:
                    # H over [s, t] from H over [s, u] and [u, t]
                    node_start, node_end = self._tree.start[node], self._tree.end[node]
                    H = (  # noqa: N806
                        (node_end - node_start) * (Hi + 0.5 * W)
                        + (node_start - ta) * (H - 0.5 * Wi)
                    ) / (node_end - ta)
                if self._have_A:
                    Ai = self._levy_area(node, Wi, Hi)  # noqa: N806
                    A = (
                        A
                        + Ai
                        + 0.5
                        * (  # noqa: N806
                            W.unsqueeze(-1) * Wi.unsqueeze(-2) - Wi.unsqueeze(-1) * W.unsqueeze(-2)
                        )
                    )
                W = W + Wi  # noqa: N806
        out = [W]
        if return_U:
            if not self._have_H:
                raise ValueError(
                    "return_U=True needs the space-time Lévy area: create the Brownian motion "
                    "with levy_area_approximation='space-time' (or 'davie' / 'foster')"
                )
            out.append((tb - ta) * (0.5 * W + H))
        if return_A:
            if not self._have_A:
                raise ValueError(
                    "return_A=True needs a Lévy area approximation: create the Brownian motion "
                    "with levy_area_approximation='davie' or 'foster'"
                )
            out.append(A)
        return out[0] if len(out) == 1 else tuple(out)

    def _observe(self, dt: float) -> None:
        """Sizes the dependency tree from the mean query length after a warm-up of 100."""
        self._queries += 1
        if self._queries > 100:
            n = self._queries - 100
            self._mean_dt += (dt - self._mean_dt) / n
            if self._mean_dt < 0.5 * self._tree_dt:
                self._build_dependency_tree(dt)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(t0={self._tree.start[0]:.3f}, t1={self._tree.end[0]:.3f}, "
            f"size={tuple(self._size)}, dtype={self._dtype}, device={repr(self._device)}, "
            f"entropy={self._entropy}, dt={self._dt}, tol={self._tol}, "
            f"pool_size={self._pool_size}, cache_size={self._cache_size}, "
            f"levy_area_approximation={repr(self._levy_area_approximation)})"
        )

    @property
    def dt(self) -> float | None:
        return self._dt

    @property
    def pool_size(self) -> int:
        return self._pool_size

    @property
    def cache_size(self) -> int | None:
        return self._cache_size

    @property
    def halfway_tree(self) -> bool:
        return self._halfway_tree

    @property
    def t0(self) -> float:
        return self._tree.start[0]

    @property
    def t1(self) -> float:
        return self._tree.end[0]


class _Wrapped(BaseBrownian):
    """A Brownian motion delegating to an inner ``BrownianInterval``; point queries
    ``bm(t)`` return ``w0 + W(t0, t)``."""

    def __init__(self, interval: BrownianInterval, w0: torch.Tensor):
        self._interval = interval
        self._w0 = w0

    def __call__(self, t, tb=None, return_U=False, return_A=False):  # noqa: N803
        if tb is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = self._interval(t, None, return_U=return_U, return_A=return_A)
            if not return_U and not return_A:
                out = out + self._w0
            return out
        return self._interval(t, tb, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(interval={self._interval})"

    @property
    def dtype(self) -> torch.dtype:
        return self._interval.dtype

    @property
    def device(self) -> torch.device:
        return self._interval.device

    @property
    def shape(self) -> torch.Size:
        return self._interval.shape

    @property
    def levy_area_approximation(self) -> str:
        return self._interval.levy_area_approximation


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
        entropy: the seed (``None``: random).
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


class ReverseBrownian(BaseBrownian):
    """The Brownian motion of the reversed time ``s = -t``: ``rbm(sa, sb) = bm(-sb, -sa)``
    (the forward increment over the same interval; the adjoint SDE's diffusion carries the sign).

    Arguments:
        base_brownian: the forward Brownian motion.
    """

    def __init__(self, base_brownian: BaseBrownian):
        self.base_brownian = base_brownian

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803
        return self.base_brownian(-tb, -ta, return_U=return_U, return_A=return_A)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_brownian={self.base_brownian})"

    @property
    def dtype(self) -> torch.dtype:
        return self.base_brownian.dtype

    @property
    def device(self) -> torch.device:
        return self.base_brownian.device

    @property
    def shape(self) -> torch.Size:
        return self.base_brownian.shape

    @property
    def levy_area_approximation(self) -> str:
        return self.base_brownian.levy_area_approximation


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
