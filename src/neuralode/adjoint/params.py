"""Finding the parameters an adjoint must differentiate."""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._errors import user_stacklevel


def keep_params(params: Any) -> Any:
    """The ``params`` a strategy was given, kept for every solve it runs: an iterator (such as
    ``module.parameters()``) is read into a tuple once, where keeping it would leave every
    solve after the first without parameters, and so without their gradients.

    Arguments:
        params: ``None``, an ``nn.Module``, a tensor, or an iterable of tensors.

    Returns:
        ``params``, an iterable read into a tuple (checked by ``resolve_params`` at a solve).
    """
    if params is None or isinstance(params, (torch.nn.Module, torch.Tensor)):
        return params
    try:
        return tuple(params)
    except TypeError:  # (resolve_params names the problem at the solve)
        return params


def not_a_module(func: Any) -> ValueError:
    """The error for parameters looked up on a ``func`` that is not an ``nn.Module`` (named
    as the user gave it: a wrapper of the package's says whose ``user_func`` it wraps)."""
    func = getattr(func, "user_func", func)
    return ValueError(
        f"func is a {type(func).__name__}, not a torch.nn.Module, so its parameters cannot be "
        "found: pass them explicitly (params=... in the core API, adjoint_params=... in "
        "odeint_adjoint); pass () if there are none"
    )


def resolve_params(
    func: Callable[..., Any], params: Sequence[torch.Tensor] | None
) -> tuple[torch.Tensor, ...]:
    """``params`` if given, else ``func.parameters()`` for an ``nn.Module``; only tensors
    that require grad are kept, each once (a tensor listed twice, say by two overlapping
    modules' parameters, would otherwise receive its gradient twice)."""
    if params is None:
        if not isinstance(func, torch.nn.Module):
            raise not_a_module(func)
        params = module_parameters(func)
        _warn_unreached(func, params)
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
    unique: dict[int, torch.Tensor] = {}
    for p in params:
        if p.requires_grad:
            unique.setdefault(id(p), p)
    return tuple(unique.values())


def _warn_unreached(module: torch.nn.Module, params: tuple[torch.Tensor, ...]) -> None:
    """Warn, once per module, of the tensors it holds that require gradients but are not
    among ``params`` (plain tensor attributes, buffers): the adjoint would leave their
    gradients silently unset."""
    if getattr(module, "_is_replica", False) or module in _CHECKED:
        return
    _CHECKED.add(module)
    found = {id(p) for p in params}
    names = []
    for prefix, sub in module.named_modules():
        for name, value in [*vars(sub).items(), *sub._buffers.items()]:
            if isinstance(value, torch.Tensor) and value.requires_grad and id(value) not in found:
                found.add(id(value))
                names.append(f"{prefix}.{name}" if prefix else name)
    if names:
        warnings.warn(
            f"func holds tensors that require gradients but are not parameters "
            f"({', '.join(names)}): the adjoint (Backsolve, Checkpointed, odeint_adjoint) gives "
            "them no gradient. Pass them with the parameters (params=(*func.parameters(), "
            "tensor) in the core API, adjoint_params=... in odeint_adjoint), or make them "
            "nn.Parameters",
            stacklevel=user_stacklevel(),
        )


_CHECKED: weakref.WeakSet = weakref.WeakSet()  # the modules ``_warn_unreached`` has read


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
