"""The interval tree of a ``BrownianInterval``: its intervals as parallel arrays, how they
split, and the search for the intervals that partition a query."""

from __future__ import annotations

from array import array
from collections.abc import Callable

from ._bridge import _mix

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

    def split_towards(self, node: int, t: float, halfway: Callable[[float], float] | None) -> None:
        """Split interval ``node`` at ``t``; with ``halfway`` (the rounding of times to the
        resolution) at dyadic midpoints instead, down to the interval that ends or starts at
        ``t``."""
        if halfway is None:
            self.split(node, t)
            return
        while True:
            half = halfway(0.5 * (self.start[node] + self.end[node]))
            if half <= self.start[node] or half >= self.end[node]:
                half = t  # below the resolution: split at the point itself
            self.split(node, half)
            if t > half:
                node = self.left[node] + 1
            elif t < half:
                node = self.left[node]
            else:
                return

    def locate(
        self, node: int, ta: float, tb: float, halfway: Callable[[float], float] | None
    ) -> list[int]:
        """The existing or newly split intervals that partition ``[ta, tb]``, in order,
        searched from interval ``node`` (the last query's: the next one usually starts near
        it); ``halfway`` as in ``split_towards``."""
        start, end, mid, left, parent = self.start, self.end, self.mid, self.left, self.parent
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
                    self.split_towards(node, b if a == start[node] else a, halfway)
                m, child = mid[node], left[node]
                if b <= m:
                    node = child
                elif a >= m:
                    node = child + 1
                else:
                    pending.append((child + 1, m, b))
                    node, b = child, m
        return out

    def split_coarser_than(self, piece: float, round_time: Callable[[float], float]) -> None:
        """Split every interval longer than ``piece`` at its (rounded) midpoint, dyadically."""
        pending = [0]
        while pending:
            node = pending.pop()
            start, end = self.start[node], self.end[node]
            if end - start > piece:
                if self.left[node] < 0:
                    self.split(node, round_time(0.5 * (start + end)))
                child = self.left[node]
                pending += [child, child + 1]
