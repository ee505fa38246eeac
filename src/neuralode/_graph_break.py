"""Solves under an outer ``torch.compile``: one graph break, then the solve as it runs alone.

A solve's loop is driven from the host (step sizes, accept/reject decisions and output
times read as Python numbers), so dynamo tracing into it breaks the graph at every read,
specialises on every float it reads (a recompilation per new step size, up to the recompile
limit), can change that arithmetic, and can fail inside torch ("Guard failed on the same
frame it was created" from ``_tensorify_python_scalars``, torch 2.13). Each public entry
point therefore starts with

    if torch.compiler.is_compiling():
        return _ENTRY_OUTSIDE_DYNAMO(locals())

which, traced by dynamo, is one graph break: the call runs outside dynamo
(``torch.compiler.disable``), as it would without the outer compile, and ``compile=`` still
chooses how it runs (its ``torch.compile`` calls work beneath the disabled frame). Outside a
trace the check is one call of ``torch.compiler.is_compiling`` and adds no frame (the
warnings' ``stacklevel`` still point at the caller).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch


def outside_dynamo(function: Callable) -> Callable[[dict[str, Any]], Any]:
    """A caller of ``function`` that dynamo does not trace: it takes the ``locals()`` of
    ``function``'s first line (its arguments by name, ``**kwargs`` as one dict)."""
    extra = [
        parameter.name
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is parameter.VAR_KEYWORD
    ]

    def call(arguments: dict[str, Any]) -> Any:
        named = dict(arguments)
        keywords = named.pop(extra[0]) if extra else {}
        return function(**named, **keywords)

    return torch.compiler.disable(call)
