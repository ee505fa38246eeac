"""Host reads under ``torch.func`` transforms.

Inside ``torch.func.vmap(torch.func.grad(loss))`` (or ``jvp``, ``jacrev``, ``hessian``
inside ``vmap``) ``solve`` sees one problem: its tensors are wrapped by the transforms, and a
vmap level beneath another transform hides the problems of the batch. The device loop
(``_per_sample``) runs on these wrapped tensors as ordinary operations, so every transform
sees the steps of each problem; each problem's time, step size and decisions are tensors
merged with masks, so every problem takes the steps it would take alone. Its few host
reads (termination checks, the outputs to write, the first failure) are reductions over
every problem of the batch: ``across`` reads the values beneath all the wrappers and
reduces them (the loop goes on until every problem has finished; a finished problem takes
steps of size zero).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import torch
import torch.autograd.forward_ad as forward_ad
from torch._C import _functorch as functorch
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters


def wrapped(x: torch.Tensor) -> bool:
    """Whether ``x`` is wrapped by a ``torch.func`` transform (vmap, grad, jvp)."""
    return functorch.is_functorch_wrapped_tensor(x)


def forward_level_active() -> bool:
    """Whether a dual level of ``torch.autograd.forward_ad`` (or a ``torch.func`` forward
    transform's) is entered: dual tensors may exist."""
    return forward_ad._current_level >= 0


def forward_mode(x: torch.Tensor) -> bool:
    """Whether forward-mode differentiation is active (``torch.func.jvp``, ``jacfwd``,
    ``hessian``, or ``x`` a dual tensor of ``torch.autograd.forward_ad``)."""
    if not forward_level_active():  # no dual level entered
        return False
    jvp = functorch.TransformType.Jvp
    return forward_ad.unpack_dual(x).tangent is not None or any(
        i.key() == jvp for i in retrieve_all_functorch_interpreters()
    )


# vmap levels ``solve`` has dispatched already (``_vmap``: taken apart into rows, or run
# under as one problem): the solves within see no vmap there
_PEELED: ContextVar[frozenset[int]] = ContextVar("neuralode_peeled_vmap", default=frozenset())


def transform_active() -> bool:
    """Whether any ``torch.func`` transform (vmap, grad, jvp, ...) is active."""
    return functorch.maybe_current_level() is not None


def vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` is among the active transforms (besides the levels
    ``peeled`` marks)."""
    if functorch.maybe_current_level() is None:  # no transform at all
        return False
    vmap, skip = functorch.TransformType.Vmap, _PEELED.get()
    return any(
        i.key() == vmap and i.level() not in skip for i in retrieve_all_functorch_interpreters()
    )


def dispatched() -> frozenset[int]:
    """The vmap levels ``peeled`` marks."""
    return _PEELED.get()


@contextlib.contextmanager
def peeled(*levels: int) -> Iterator[None]:
    """Within: the vmap ``levels`` are dispatched already (``vmap_active`` ignores them)."""
    token = _PEELED.set(_PEELED.get() | set(levels))
    try:
        yield
    finally:
        _PEELED.reset(token)


def plain(x: torch.Tensor) -> torch.Tensor:
    """The values of ``x`` beneath every transform, detached: a plain tensor of shape
    (*one dimension per vmap level x is batched at, *x's shape); ``x`` itself if plain."""
    x = x.detach()
    batch_dims: list[int] = []  # positions of the vmapped dimensions in x's values
    while wrapped(x):
        if functorch.is_batchedtensor(x):
            x, dim = functorch._unwrap_batched(x, functorch.maybe_get_level(x))
            batch_dims = [d + (d >= dim) for d in batch_dims] + [dim]
        else:  # grad or jvp: the same shape
            x = functorch.get_unwrapped(x)
    return x.movedim(batch_dims, list(range(len(batch_dims)))) if batch_dims else x


def across(x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``reduce`` (sum, amax, amin, any, all: over every element) of the 0-dim ``x`` over
    every vmapped problem, as a plain 0-dim tensor; ``x`` itself if plain."""
    return reduce(plain(x)) if wrapped(x) else x


@contextlib.contextmanager
def plain_factories() -> Iterator[None]:
    """Within: tensor factories make plain tensors even under a ``torch.func`` transform
    (which otherwise wraps them at its level) or ``torch.inference_mode()`` (which makes
    inference tensors). For constants cached across solves (coefficients, tolerances): a
    wrapped one would outlive its transform and break every later solve that reads it (a
    compiled graph cannot read its data), and an inference tensor every later solve with
    autograd (autograd cannot save it for backward: training after an evaluation under
    inference mode)."""
    with torch._C._DisableFuncTorch():
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                yield
        else:
            yield
