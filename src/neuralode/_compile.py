"""The compiled step functions of ``compile_step``: one torch.compile copy per key."""

from __future__ import annotations

import types
from collections.abc import Callable, Hashable
from typing import Any

import torch

_COMPILED: dict[tuple[Callable, Hashable], Any] = {}


def compiled(
    fn: Callable,
    key: Hashable,
    dynamic: bool | None = None,
    fullgraph: bool = False,
    backend: Callable | None = None,
) -> Any:
    """``fn`` under torch.compile, made once per (``fn``, ``key``) and process; ``dynamic``
    as torch.compile's (``None``: static shapes until a second shape is seen); ``backend``
    a torch.compile backend in place of inductor with its C++ wrapper (the whole solve's:
    ``_whole_backend.whole_solve_backend``).

    Default mode with inductor's C++ wrapper (the generated code calls its kernels from C++
    rather than Python: a dopri5 step of a small MLP costs about half as much). Each key
    gets its own copy of ``fn``'s code object, and with it its own budget of torch's
    ``recompile_limit`` (counted per code object): one solver's graphs (per f, shape, dtype
    and grad mode) do not push another's out to eager execution.
    """
    entry = _COMPILED.get((fn, key))
    if entry is None:
        copy = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        if backend is None:
            entry = torch.compile(
                copy, dynamic=dynamic, fullgraph=fullgraph, options={"cpp_wrapper": True}
            )
        else:
            entry = torch.compile(copy, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
        _COMPILED[(fn, key)] = entry
    return entry
