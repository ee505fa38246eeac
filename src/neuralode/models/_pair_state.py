"""The two forms of a state made of two halves of one shape (Hamiltonian (q, p), second-order
(x, v)): a tuple or list of two tensors, or one tensor holding them side by side on its last
dimension. One function applies a field of the two halves to either form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def on_pair_state(
    y: Any,
    field: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    what: str,
    names: tuple[str, str],
    shape: str,
    min_ndim: int,
) -> Any:
    """``field(a, b)`` on the state ``y`` = ``(a, b)``, returned in ``y``'s form.

    Arguments:
        y: a tuple or list ``(a, b)`` of two tensors of one shape, or a tensor (batch, 2 d)
            with ``a`` then ``b`` on its last dimension.
        field: the map from the halves to their time derivatives.
        what: the kind of state, for the messages (``"Hamiltonian"``).
        names: the halves' names, for the messages (``("q", "p")``).
        shape: the halves' shape as the messages state it (``"(batch, d)"``).
        min_ndim: the fewest dimensions a half of a tuple state may have.

    Returns:
        ``field``'s pair in the form of ``y``: a pair of its type, or their concatenation.

    Raises:
        ValueError: ``y`` is neither form (naming what it is and what to pass).
    """
    a, b = names
    if isinstance(y, torch.Tensor):
        if y.ndim < 2 or y.shape[-1] % 2:
            raise ValueError(
                f"a flat {what} state must be (batch, 2 d) with {a} then {b} on the last "
                f"dimension, got shape {tuple(y.shape)}; pass ({a}, {b}) as a tuple or give "
                "the state an even last dimension"
            )
        first, second = y.chunk(2, dim=-1)
        return torch.cat(field(first, second), dim=-1)
    if not (
        isinstance(y, (tuple, list))
        and len(y) == 2
        and all(isinstance(part, torch.Tensor) for part in y)
        and y[0].shape == y[1].shape
        and y[0].ndim >= min_ndim
    ):
        raise ValueError(
            f"a {what} state must be a tuple ({a}, {b}) of two tensors of one shape {shape}, "
            f"or one tensor (batch, 2 d); got {describe(y)}"
        )
    da, db = field(y[0], y[1])
    return type(y)((da, db))


def describe(y: Any) -> str:
    """What ``y`` is, for a message: a sequence with its parts' shapes or types, else its
    type's name."""
    if isinstance(y, (tuple, list)):
        parts = [tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in y]
        return f"a {type(y).__name__} of {len(y)}: {parts}"
    return type(y).__name__
