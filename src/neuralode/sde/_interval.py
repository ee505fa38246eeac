"""Brownian motion as an interval tree with fixed entropy (``BrownianInterval``).

A ``BrownianInterval`` over ``[t0, t1]`` is a binary tree of intervals (``_interval_tree``).
The root holds the increment ``W`` (and the space-time Lévy area ``H``) over the whole
interval; splitting an interval at a point draws its two halves from the Brownian bridge
conditioned on the parent's ``(W, H)`` (``_bridge.bridge``), with noise from seeds that depend
only on the interval's place in the tree (its key and depth) and the entropy. Values are
recomputed from the nearest cached ancestor when they have left the LRU cache
(``_interval_values``), so memory stays bounded however many steps a solve takes, and the
same queries always give the same answers. With ``halfway_tree=True`` intervals are split
only at dyadic midpoints, so the path no longer depends on which points were queried (at
resolution ``tol``).
"""

from __future__ import annotations

import math
import warnings

import torch

from ._bridge import _mix, concatenate
from ._brownian import _Stored, default_entropy
from ._interval_tree import _LEFT, _Tree
from ._interval_values import _Values
from .settings import LEVY_AREA_APPROXIMATIONS


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
        entropy: the seed; ``None`` draws one from NumPy's global generator (as torchsde).
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
        self._keep_levy_area_approximation(levy_area_approximation)
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
            entropy = default_entropy()
        self._size = torch.Size(size)
        self._dtype = dtype
        self._device = torch.device(device)
        self._entropy = int(entropy)
        self._dt = None if dt is None else float(dt)
        self._tol = float(tol)
        self._pool_size = pool_size
        self._cache_size = cache_size
        self._halfway_tree = halfway_tree
        self._digits = None if tol == 0 else -int(math.log10(tol))
        root_seed = _mix(self._entropy)
        self._tree = _Tree(self._round(t0), self._round(t1), _mix(root_seed ^ _LEFT))
        self._last = 0  # the interval of the last query: the next one usually starts near it
        h = t1 - t0
        self._values = _Values(
            self._tree,
            self._size,
            self._dtype,
            self._device,
            cache_size,
            self._have_H,
            self._levy_area_approximation,
            root_seed,
            h,
            W,
            H,
        )
        self._queries = 0
        self._mean_dt = 0.0
        self._tree_dt = h
        if not halfway_tree and dt is not None:
            self._build_dependency_tree(self._dt)

    # ----------------------------------------------------------------------------------------
    # the tree

    def _round(self, t: float) -> float:
        return t if self._digits is None else round(t, self._digits)

    def _build_dependency_tree(self, dt: float) -> None:
        """Splits dyadically down to pieces of about ``0.8 dt cache_size``: a sequence of small
        steps then forms chains no longer than the cache inside each piece, so queries in
        reverse order (the adjoint's) recompute O(1) intervals each, not the whole chain."""
        cache = 100 if self._cache_size is None else min(self._cache_size, 100)
        self._tree_dt = min(self._tree_dt, dt)
        self._tree.split_coarser_than(self._tree_dt * max(cache, 1) * 0.8, self._round)

    # ----------------------------------------------------------------------------------------
    # queries

    def display_binary_tree(self) -> None:
        """Print the tree of intervals, one ``(start, end)`` per line indented by its depth,
        depth first, left before right (torchsde's debugging aid)."""
        tree, stack, lines = self._tree, [(0, 0)], []
        while stack:
            node, depth = stack.pop()
            lines.append(" " * depth + f"({tree.start[node]}, {tree.end[node]})")
            if tree.left[node] >= 0:
                stack.append((tree.left[node] + 1, depth + 1))
                stack.append((tree.left[node], depth + 1))
        print("\n".join(lines))

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
            halfway = self._round if self._halfway_tree else None
            nodes = self._tree.locate(self._last, ta, tb, halfway)
            self._last = nodes[-1]
            values = self._values
            W, H = values.get(nodes[0])  # noqa: N806
            A = values.levy_area(nodes[0], W, H) if self._have_A else None  # noqa: N806
            for node in nodes[1:]:
                Wi, Hi = values.get(node)  # noqa: N806
                Ai = values.levy_area(node, Wi, Hi) if self._have_A else None  # noqa: N806
                u, t = self._tree.start[node], self._tree.end[node]
                W, H, A = concatenate(W, H, A, Wi, Hi, Ai, ta, u, t)  # noqa: N806
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
        """The expected step size given at construction, or ``None``."""
        return self._dt

    @property
    def pool_size(self) -> int:
        """As given (torchsde compatibility; the seeds come from a 64-bit hash)."""
        return self._pool_size

    @property
    def cache_size(self) -> int | None:
        """How many intervals' values are kept (``None``: all; 0: none)."""
        return self._cache_size

    @property
    def halfway_tree(self) -> bool:
        """Whether intervals are split only at dyadic midpoints (independent of the queries)."""
        return self._halfway_tree

    @property
    def t0(self) -> float:
        """The start of the interval the Brownian motion covers."""
        return self._tree.start[0]

    @property
    def t1(self) -> float:
        """The end of the interval the Brownian motion covers."""
        return self._tree.end[0]
