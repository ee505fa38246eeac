"""Flattening of nested states (tensors, tuples, lists, dicts) into one flat tensor.

The integration loop works on a single 1-D tensor; a ``TreeSpec`` remembers how to turn it back
into the user's structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TreeSpec:
    """Structure and shapes of a (possibly nested) state."""

    structure: Any  # nested tuple/list/dict with None at the leaves, or None for a bare tensor
    shapes: tuple[torch.Size, ...]
    numels: tuple[int, ...]
    # the namedtuple types in the structure, in order (a namedtuple skeleton equals a plain
    # tuple's: this tells their specs apart)
    named: tuple[type, ...] = ()

    @property
    def is_leaf(self) -> bool:
        return self.structure is None

    @property
    def numel(self) -> int:
        return sum(self.numels)

    def unflatten(self, flat: torch.Tensor) -> Any:
        """Split a flat (..., numel) tensor into the stored structure, keeping leading dims."""
        lead = flat.shape[:-1]
        if self.is_leaf:  # (reshape(*ints) parses faster than reshape(tuple))
            shape = (*lead, *self.shapes[0])
            return flat.reshape(*shape) if shape else flat.reshape(())
        pieces = torch.split(flat, self.numels, dim=-1)
        leaves = iter(p.reshape((*lead, *s)) for p, s in zip(pieces, self.shapes))
        return _rebuild(self.structure, leaves)

    def flatten(self, tree: Any, what: str = "value") -> torch.Tensor:
        """Flatten a structure matching this spec into a 1-D tensor, checking every shape.

        Dicts are read in the state's key order, whatever order ``tree``'s keys are in.
        """
        leaves = self.leaves(tree, what)
        if len(leaves) == 1:
            return leaves[0].reshape(-1)
        return torch.cat([leaf.reshape(-1) for leaf in leaves])

    def leaves(self, tree: Any, what: str = "value") -> list[torch.Tensor]:
        """The tensors of a structure matching this spec, in the state's order, checked as
        ``flatten`` checks them: the structure, every shape, one dtype."""
        leaves = _leaves(tree, what) if self.is_leaf else _leaves_as(self.structure, tree, what)
        if len(leaves) != len(self.shapes):
            raise ValueError(
                f"{what} has {len(leaves)} tensors but the state has {len(self.shapes)}"
            )
        for i, (leaf, shape) in enumerate(zip(leaves, self.shapes)):
            if leaf.shape != shape:
                where = "" if self.is_leaf else f" (tensor {i} of the state)"
                raise ValueError(
                    f"{what} has shape {tuple(leaf.shape)}{where}; expected {tuple(shape)}, "
                    "the shape of the state"
                )
        for i, leaf in enumerate(leaves[1:], 1):
            if leaf.dtype != leaves[0].dtype:
                raise TypeError(
                    f"{what} mixes dtypes: tensor {i} is {leaf.dtype}, tensor 0 is "
                    f"{leaves[0].dtype}"
                )
        return leaves


# The specs of bare-tensor states by shape: immutable, made once (a frozen dataclass costs
# ~0.7 us to make, as much as a few checks of a solve's arguments).
_LEAF_SPECS: dict[torch.Size, TreeSpec] = {}


def leaf_spec(shape: torch.Size) -> TreeSpec:
    """The spec of a bare tensor of ``shape`` (``tree_spec``'s, made once per shape)."""
    spec = _LEAF_SPECS.get(shape)
    if spec is None:
        if len(_LEAF_SPECS) >= 256:
            _LEAF_SPECS.clear()
        spec = _LEAF_SPECS[shape] = TreeSpec(None, (shape,), (math.prod(shape),))
    return spec


def tree_spec(tree: Any, what: str = "y0") -> tuple[TreeSpec, list[torch.Tensor]]:
    """Return the spec of ``tree`` and its leaves (tensors) in order."""
    leaves = _leaves(tree, what)
    structure = None if isinstance(tree, torch.Tensor) else _skeleton(tree)
    shapes, numels = tuple(x.shape for x in leaves), tuple(x.numel() for x in leaves)
    return TreeSpec(structure, shapes, numels, _named_types(structure)), leaves


def _leaves(tree: Any, what: str) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (tuple, list)):
        return [leaf for item in tree for leaf in _leaves(item, what)]
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in _leaves(tree[key], what)]
    raise TypeError(
        f"{what} must be a tensor or a tuple/list/dict of tensors, got {type(tree).__name__}"
    )


def _leaves_as(structure: Any, tree: Any, what: str) -> list[torch.Tensor]:
    """The leaves of ``tree`` in the order of ``structure``, checking containers match."""
    if structure is None:
        return _leaves(tree, what)
    if isinstance(structure, dict):
        if not isinstance(tree, dict):
            raise TypeError(f"{what} must be a dict like the state, got {type(tree).__name__}")
        if set(tree) != set(structure):
            raise ValueError(
                f"{what} has keys {sorted(map(str, tree))}; the state has "
                f"{sorted(map(str, structure))}"
            )
        return [leaf for key in structure for leaf in _leaves_as(structure[key], tree[key], what)]
    if not isinstance(tree, (tuple, list)):
        return _leaves(tree, what)
    if len(tree) != len(structure):
        return _leaves(tree, what)  # the count check in flatten names the mismatch
    return [leaf for sub, item in zip(structure, tree) for leaf in _leaves_as(sub, item, what)]


def _skeleton(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return None
    if isinstance(tree, tuple):
        children = (_skeleton(x) for x in tree)
        return type(tree)(*children) if _is_namedtuple(tree) else tuple(children)
    if isinstance(tree, list):
        return [_skeleton(x) for x in tree]
    return {key: _skeleton(value) for key, value in tree.items()}


def _is_namedtuple(x: Any) -> bool:
    """A namedtuple (kept as its type through the solve: f and the outputs see it)."""
    return isinstance(x, tuple) and hasattr(type(x), "_fields")


def _named_types(structure: Any) -> tuple[type, ...]:
    if isinstance(structure, (tuple, list)):
        own = (type(structure),) if _is_namedtuple(structure) else ()
        return own + tuple(t for x in structure for t in _named_types(x))
    if isinstance(structure, dict):
        return tuple(t for x in structure.values() for t in _named_types(x))
    return ()


def _rebuild(structure: Any, leaves: Any) -> Any:
    if structure is None:
        return next(leaves)
    if isinstance(structure, tuple):
        children = (_rebuild(x, leaves) for x in structure)
        return type(structure)(*children) if _is_namedtuple(structure) else tuple(children)
    if isinstance(structure, list):
        return [_rebuild(x, leaves) for x in structure]
    return {key: _rebuild(value, leaves) for key, value in structure.items()}


# ------------------------------------------------------------------------------------------
# per-sample rows of a nested state: every tensor's dimension 0 is the batch, and row i of the
# device loop's (batch, r) state holds sample i's part of each tensor, in the state's order


def row_widths(spec: TreeSpec) -> list[int]:
    """The elements of one sample's part of each tensor (the tensor's numel over its batch)."""
    return [math.prod(shape[1:]) for shape in spec.shapes]


def flat_to_rows(spec: TreeSpec, flat: torch.Tensor) -> torch.Tensor:
    """The flat state(s) (..., numel), tensor after tensor, as per-sample rows
    (..., batch, r)."""
    lead, batch = flat.shape[:-1], int(spec.shapes[0][0])
    pieces = flat.split(list(spec.numels), dim=-1)
    return torch.cat([piece.reshape(*lead, batch, -1) for piece in pieces], dim=-1)


def rows_to_flat(spec: TreeSpec, rows: torch.Tensor) -> torch.Tensor:
    """Per-sample rows (..., batch, r) as flat state(s) (..., numel): ``flat_to_rows``
    undone."""
    lead = rows.shape[:-2]
    pieces = rows.split(row_widths(spec), dim=-1)
    return torch.cat([piece.reshape(*lead, -1) for piece in pieces], dim=-1)


def rows_tree(spec: TreeSpec, rows: torch.Tensor, lead: tuple[int, ...] | None = None) -> Any:
    """m rows (m, r) in the state's structure, each tensor (m, *its shape[1:]) (or, given
    ``lead`` with m entries in all, (*lead, *its shape[1:]))."""
    lead = (rows.shape[0],) if lead is None else tuple(lead)
    pieces = rows.split(row_widths(spec), dim=-1)
    leaves = iter(p.reshape(*lead, *s[1:]) for p, s in zip(pieces, spec.shapes))
    return _rebuild(spec.structure, leaves)


def tree_rows(spec: TreeSpec, tree: Any, m: int, what: str) -> torch.Tensor:
    """A structure like the state's with m rows per tensor as (m, r) rows, its shapes
    checked (``rows_tree`` undone)."""
    leaves = _leaves_as(spec.structure, tree, what)
    if len(leaves) != len(spec.shapes):
        raise ValueError(f"{what} has {len(leaves)} tensors but the state has {len(spec.shapes)}")
    for i, (leaf, shape) in enumerate(zip(leaves, spec.shapes)):
        if not isinstance(leaf, torch.Tensor) or tuple(leaf.shape) != (m, *shape[1:]):
            got = tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
            raise ValueError(
                f"{what} has shape {got} (tensor {i} of the state); expected "
                f"{(m, *shape[1:])}, one row per sample it is given"
            )
    return torch.cat([leaf.reshape(m, -1) for leaf in leaves], dim=1)
