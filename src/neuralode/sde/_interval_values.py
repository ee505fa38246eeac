"""The values of a ``BrownianInterval``'s intervals (``_Values``): the increment ``W`` and
space-time Lévy area ``H`` of each interval of its tree (``_interval_tree``), and the Lévy
area approximation over one.

The root's values are drawn (or given); a half's come from the Brownian bridge on its
parent's (``_bridge.bridge``) with noise seeded by the parent's hash, so they depend only
on the entropy and the interval's place in the tree. Values that have left the LRU cache
are recomputed from the nearest cached ancestor: memory stays bounded however many
intervals are queried, and the same interval always gets the same values.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch

from ._bridge import _LEFT_HALF, _MASK, _RIGHT_HALF, _mix, bridge, levy_area
from ._interval_tree import _Tree


class _Values:
    """The values of the intervals of ``tree``, samples of shape ``size``, with at most
    ``cache_size`` intervals' values kept (``None``: all; 0: none). ``W`` and ``H`` are the
    root's (drawn from ``root_seed`` where ``None``; ``h`` is the root's length); ``have_H``:
    the space-time Lévy area is computed (else ``H`` is ``None``), ``approximation`` the Lévy
    area approximation (``levy_area``)."""

    __slots__ = (
        "tree",
        "size",
        "dtype",
        "device",
        "cache_size",
        "cache",
        "have_H",
        "approximation",
        "generator",
        "root",
    )

    def __init__(
        self,
        tree: _Tree,
        size: torch.Size,
        dtype: torch.dtype,
        device: torch.device,
        cache_size: int | None,
        have_H: bool,  # noqa: N803
        approximation: str,
        root_seed: int,
        h: float,
        W: torch.Tensor | None,  # noqa: N803
        H: torch.Tensor | None,  # noqa: N803
    ):
        self.tree = tree
        self.size = size
        self.dtype = dtype
        self.device = device
        self.cache_size = cache_size
        self.cache: OrderedDict = OrderedDict()
        self.have_H = have_H
        self.approximation = approximation
        self.generator = torch.Generator(device)
        if W is None:
            W = self.randn(_mix(root_seed + 1)) * math.sqrt(h)  # noqa: N806
        if H is None:
            H = self.randn(_mix(root_seed + 2)) * math.sqrt(h / 12)  # noqa: N806
        self.root = (W, H if have_H else None)

    def seed(self, node: int, which: int) -> int:
        """The seed of an interval's split noise (``which`` 0: W, 1: H) or its Lévy area (2)."""
        return _mix((self.tree.hash[node] + which) & _MASK)

    def randn(self, seed: int, size: torch.Size | None = None) -> torch.Tensor:
        self.generator.manual_seed(seed)
        return torch.randn(
            self.size if size is None else size,
            generator=self.generator,
            dtype=self.dtype,
            device=self.device,
        )

    def get(self, node: int):
        """``(W, H)`` of one interval, from its nearest ancestor whose values are known."""
        if node == 0:
            return self.root
        cache = self.cache
        found = cache.get(node)
        if found is not None:
            cache.move_to_end(node)
            return found
        parents = self.tree.parent
        path = [node]
        parent = parents[node]
        while parent != 0 and parent not in cache:
            path.append(parent)
            parent = parents[parent]
        values = self.get(parent)
        for child in reversed(path):
            values = self._child(child, values)
            if self.cache_size is None or self.cache_size > 0:
                cache[child] = values
                if self.cache_size is not None and len(cache) > self.cache_size:
                    cache.popitem(last=False)
        return values

    def _child(self, child: int, parent_values):
        """The bridge law of a half given its parent's increment (and space-time Lévy area)."""
        tree = self.tree
        parent = tree.parent[child]
        W, H = parent_values  # noqa: N806
        start, mid, end = tree.start[parent], tree.mid[parent], tree.end[parent]
        noise_w = self.randn(self.seed(parent, 0))
        noise_h = self.randn(self.seed(parent, 1)) if self.have_H else None
        side = _LEFT_HALF if child & 1 else _RIGHT_HALF
        return bridge(W, H, mid - start, end - mid, end - start, noise_w, noise_h, side)

    def levy_area(self, node: int, W, H):  # noqa: N803
        """Davie's (or Foster's) approximation of the Lévy area from ``W`` and ``H``."""
        if len(self.size) < 2:
            return torch.zeros_like(W)
        h = self.tree.end[node] - self.tree.start[node]
        noise = self.randn(self.seed(node, 2), (*self.size, self.size[-1]))
        return levy_area(W, H, h, noise, self.approximation)
