"""The compiled functions of ``compile_step`` and of the whole solve: one torch.compile copy
per key; a whole graph (``fullgraph=True``) called past dynamo's frame hook (``Direct``)."""

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
    guard_filter: Callable | None = None,
) -> Any:
    """``fn`` under torch.compile, made once per (``fn``, ``key``) and process; ``dynamic``
    as torch.compile's (``None``: static shapes until a second shape is seen); ``backend``
    a torch.compile backend in place of inductor with its C++ wrapper (the whole solve's:
    ``_whole_backend.whole_solve_backend``).

    Default mode with inductor's C++ wrapper (the generated code calls its kernels from C++
    rather than Python: a dopri5 step of a small MLP costs about half as much). Each key
    gets its own copy of ``fn``'s code object, and with it its own budget of torch's
    ``recompile_limit`` (counted per code object): one solver's graphs (per f, shape, dtype
    and grad mode) do not push another's out to eager execution. With ``fullgraph=True``
    the function is wrapped in ``Direct``. ``key=None``: a copy of its own, not kept here
    (its caller keeps it). ``guard_filter``: torch.compile's ``guard_filter_fn`` (which of
    the guards its compiled code keeps).
    """
    entry = None if key is None else _COMPILED.get((fn, key))
    if entry is None:
        copy = types.FunctionType(
            fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__
        )
        options: dict[str, Any] = {} if guard_filter is None else {"guard_filter_fn": guard_filter}
        if backend is None:
            options["cpp_wrapper"] = True
            entry = torch.compile(copy, dynamic=dynamic, fullgraph=fullgraph, options=options)
        else:
            entry = torch.compile(
                copy, dynamic=dynamic, fullgraph=fullgraph, backend=backend, options=options
            )
        if fullgraph:
            entry = Direct(entry, copy)
        if key is not None:
            _COMPILED[(fn, key)] = entry
    return entry


class Direct:
    """A ``torch.compile(fullgraph=True)`` function, called as dynamo calls its cached code,
    without dynamo's frame hook.

    On a call torch.compile installs its frame hook, finds the newest compiled code of the
    function's code object whose guards pass on the arguments, runs it and removes the hook
    again. ``Direct`` checks the newest entry's guards itself (``guard_manager.check``: the
    same guards, the global state's included) and runs its code (the transformed bytecode,
    which calls the compiled graph) as a plain function: about 25 us less per call of a
    whole solve (whose guards it checks either way: ``_whole_plan`` keeps only those of f,
    the inputs and torch's state).
    Anything else goes through torch.compile as always: no entry yet, guards that fail
    (another shape, another f, changed parameters: a recompile or an older entry), a stance
    other than the default (``torch.compiler.set_stance``), tracing by an outer
    ``torch.compile``, ``torch.export``, FX or the JIT, and a torch without these
    (private, torch 2.13) hooks. With ``fullgraph=True`` the code has no graph breaks, so
    running it outside dynamo runs nothing uncompiled.
    """

    __slots__ = ("compiled", "code", "names", "globals", "functions")

    def __init__(self, compiled: Any, fn: types.FunctionType):
        self.compiled = compiled
        self.code = fn.__code__
        self.names = self.code.co_varnames[: self.code.co_argcount]
        self.globals = fn.__globals__
        self.functions: dict[types.CodeType, types.FunctionType] = {}  # by transformed code

    def __call__(self, *args: Any) -> Any:
        function = self._cached(args)
        if function is None:
            return self.compiled(*args)
        return function(*args)

    def _cached(self, args: tuple) -> types.FunctionType | None:
        """The newest compiled code as a function when its guards pass on ``args`` and
        nothing asks for dynamo's own handling; else ``None``."""
        try:
            from torch._dynamo import eval_frame
        except ImportError:  # (a torch without dynamo)
            return None
        stance = getattr(eval_frame, "_stance", None)
        get_entries = getattr(eval_frame, "_debug_get_cache_entry_list", None)
        if (
            stance is None
            or get_entries is None
            or stance.stance != "default"
            or stance.skip_guard_eval_unsafe
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
            or torch._C._is_tracing()
            or torch.fx._symbolic_trace.is_fx_symbolic_tracing()
            or len(args) != len(self.names)
        ):
            return None
        entries = get_entries(self.code)
        if not entries:
            return None
        entry = entries[0]
        try:
            passed = entry.guard_manager.check(dict(zip(self.names, args)))
        except Exception:  # (left to dynamo, which reports it)
            return None
        if not passed:
            return None
        function = self.functions.get(entry.code)
        if function is None:
            if entry.code.co_freevars:  # (a closure: dynamo's frame supplies it)
                return None
            function = types.FunctionType(entry.code, self.globals, self.code.co_name)
            self.functions = {entry.code: function}  # (only the newest: old code is dropped)
        return function
