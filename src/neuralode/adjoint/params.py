"""Finding the parameters an adjoint must differentiate."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def resolve_params(
    func: Callable[..., Any], params: Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    """``params`` if given, else ``func.parameters()`` for an ``nn.Module``; only tensors
    that require grad are kept."""
    if params is None:
        if not isinstance(func, torch.nn.Module):
            raise ValueError(
                f"func is a {type(func).__name__}, not a torch.nn.Module, so its parameters "
                "cannot be found: pass them explicitly (params=... in the core API, "
                "adjoint_params=... in odeint_adjoint); pass () if there are none"
            )
        params = module_parameters(func)
    if isinstance(params, torch.nn.Module):  # a module stands for its parameters
        params = module_parameters(params)
    elif isinstance(params, torch.Tensor):
        params = (params,)
    try:
        params = tuple(params)
    except TypeError as error:
        raise TypeError(
            f"params must be a sequence of tensors or an nn.Module, got {type(params).__name__}"
        ) from error
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"parameter {i} is a {type(p).__name__}, not a tensor")
    return tuple(p for p in params if p.requires_grad)


def module_parameters(module: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """``module.parameters()``, or, for a replica that ``nn.DataParallel`` runs on a device
    (whose ``parameters()`` is empty), the differentiable copies of the parameters it holds as
    plain tensor attributes, as torchdiffeq's ``find_parameters`` finds them.

    Arguments:
        module: the module whose parameters an adjoint differentiates.

    Returns:
        The parameters (or their replicas' copies), each once, in the modules' order.
    """
    if not getattr(module, "_is_replica", False):
        return tuple(module.parameters())
    found: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if isinstance(value, torch.Tensor) and value.requires_grad:
                found.setdefault(id(value), value)
    return tuple(found.values())
