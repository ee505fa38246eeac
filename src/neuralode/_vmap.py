"""``torch.func.vmap`` over ``solve``: each vmapped problem takes its own steps.

Under ``vmap`` the loop cannot read a batched tensor back to the host (``.item()``), and a
step size shared by the batch would not be each problem's own. So ``solve`` unwraps the
vmapped dimension of ``y0`` (``torch._C._functorch``), solves the problems as one
per-sample solve (``per_sample=True``: every problem has its own time, step size and
decisions, and equals solving it alone), calls ``func`` on the rows through an inner
``torch.func.vmap`` (so ``func`` sees one problem, as it would unbatched), and wraps the
outputs back into the vmapped dimension. Fixed-step solvers take the same steps for every
problem, so there the batch is solved as one system. Transforms applied outside ``vmap``
(``torch.func.grad``, ``jacrev``, ``jvp``) see ordinary differentiable operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._C import _functorch as functorch

from ._tree import tree_spec


def vmap_level(y0: Any, ts: Any) -> int | None:
    """The vmap level ``y0`` is batched at (the innermost transform), or ``None``."""
    level = functorch.maybe_current_level()
    if level is None:
        return None
    if isinstance(ts, torch.Tensor) and _batched_at(ts, level):
        raise ValueError(
            "vmap over the output times t is not supported: every vmapped problem must share "
            "t (vmap over y0, with t outside the vmapped arguments: in_dims=(0, None))"
        )
    _, leaves = tree_spec(y0, "y0")
    return level if any(_batched_at(x, level) for x in leaves) else None


def _batched_at(x: torch.Tensor, level: int) -> bool:
    return functorch.is_batchedtensor(x) and functorch.maybe_get_level(x) == level


def solve_vmapped(
    solve: Callable[..., Any], func: Callable, y0: Any, ts: torch.Tensor, level: int, kwargs: dict
) -> Any:
    """``solve(func, y0, ts, **kwargs)`` for a ``y0`` batched at vmap ``level`` (see the
    module); returns the Solution with ``ys`` batched at that level."""
    for name in ("event", "per_sample", "dense", "saveat"):
        if kwargs.pop(name, None):
            raise ValueError(
                f"{name} is not supported under torch.func.vmap: vmap already solves each "
                "problem on its own; call solve with per_sample=True on the batch instead"
            )
    spec, leaves = tree_spec(y0, "y0")
    unwrapped = [_unwrap(x, level) for x in leaves]
    batch = max(x.shape[0] for x, batched in unwrapped if batched)
    rows = [(x if batched else x.expand(batch, *x.shape)) for x, batched in unwrapped]
    flat = torch.cat([x.reshape(batch, -1) for x in rows], 1)

    def one(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return spec.flatten(func(t, spec.unflatten(y)), "func's output")

    batched_func = torch.func.vmap(one, in_dims=(0, 0))
    solver = kwargs.get("solver")
    adaptive = solver is None or getattr(solver, "adaptive", True)

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = batched_func(t.expand(batch) if t.ndim == 0 else t, y)
        if functorch.is_batchedtensor(out):
            raise ValueError(
                "under torch.func.vmap, func captured a tensor batched by the same vmap (e.g. "
                "a per-problem parameter): carry it in the state instead (as a constant "
                "channel with zero derivative), so that each problem's rows hold their own"
            )
        return out

    try:
        sol = solve(field, flat, ts, per_sample=adaptive, **kwargs)
    except ValueError as error:
        if not str(error).startswith("per_sample=True"):
            raise
        raise ValueError(
            f"torch.func.vmap over solve gives each problem its own steps (per-sample mode), "
            f"and {error}"
        ) from error
    ys = sol.ys  # (len(ts), batch, n): each problem's outputs, wrapped back per problem
    sol.ys = spec.unflatten(functorch._add_batch_dim(ys, 1, level))
    return sol


def _unwrap(x: torch.Tensor, level: int) -> tuple[torch.Tensor, bool]:
    """``x`` without its vmapped dimension at ``level`` (moved first), and whether it had one."""
    if not (functorch.is_batchedtensor(x) and functorch.maybe_get_level(x) == level):
        return x, False
    inner, dim = functorch._unwrap_batched(x, level)
    return inner.movedim(dim, 0), True
