"""User callbacks of a solve, called with tensors in the state's structure."""

from __future__ import annotations

from typing import Any

import torch

from ._tree import TreeSpec


class Callbacks:
    """Calls a user's ``on_step`` / ``on_accept`` / ``on_reject`` with tensors in y0's shape."""

    def __init__(self, target: Any, spec: TreeSpec):
        self._spec = spec
        self._hooks = {
            name: getattr(target, name, None) for name in ("on_step", "on_accept", "on_reject")
        }

    def _call(self, name: str, t: float, y: torch.Tensor, dt: float) -> None:
        hook = self._hooks[name]
        if hook is not None:
            t_ = torch.tensor(t, dtype=torch.float64, device=y.device)
            dt_ = torch.tensor(dt, dtype=torch.float64, device=y.device)
            hook(t_, self._spec.unflatten(y), dt_)

    def step(self, t: float, y: torch.Tensor, dt: float) -> None:
        self._call("on_step", t, y, dt)

    def accept(self, t: float, y: torch.Tensor, dt: float) -> None:
        self._call("on_accept", t, y, dt)

    def reject(self, t: float, y: torch.Tensor, dt: float) -> None:
        self._call("on_reject", t, y, dt)
