"""A constant of a module kept exact through dtype conversions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def apply_keeping_exact(
    module: nn.Module, name: str, exact: float | None, apply: Callable[[], Any]
) -> Any:
    """``apply()`` (the module's ``nn.Module._apply``: ``.double()``, ``.to(dtype)``, ...),
    after which the tensor attribute ``name``, if it still held the constructor's value
    ``exact`` (neither trained nor loaded), holds ``exact`` rounded to its new dtype rather
    than the rounding of the old dtype's value (float32's log(0.4) is 1e-8 off).

    Arguments:
        module: the module being converted.
        name: its tensor attribute (a parameter or a buffer).
        exact: the constructor's value (``None``: nothing to keep, e.g. a module unpickled
            from before it was recorded).
        apply: the conversion itself.

    Returns:
        What ``apply`` returns.
    """
    old = getattr(module, name)
    dtype = old.dtype  # (a parameter's conversion may replace its data in place)
    untouched = (
        exact is not None
        and not old.is_meta
        and torch.equal(old.detach(), torch.full_like(old.detach(), exact))
    )
    result = apply()
    new = getattr(module, name)
    if untouched and new.dtype != dtype and new.dtype.is_floating_point and not new.is_meta:
        with torch.no_grad():
            new.fill_(exact)
    return result
