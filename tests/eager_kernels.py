"""The ``aot_eager`` fixture: the library's compiled steps (``compile="step"``, and the
steps that ``compile=True`` compiles where it keeps no whole graph) with torch.compile's
``aot_eager`` backend, for tests of what dynamo and AOTAutograd decide (the same steps,
graphs, guards and gradients as the eager solve), which inductor's code generation does
not change."""

from __future__ import annotations

import pytest
import torch

import neuralode._compile as compile_cache


@pytest.fixture
def aot_eager(monkeypatch):
    """The library's compiled steps with torch.compile's ``aot_eager`` backend: dynamo's and
    AOTAutograd's graphs run with the eager kernels (the eager arithmetic)."""
    compile_fn = torch.compile

    def compile_aot_eager(fn, dynamic=None, fullgraph=False, options=None):
        return compile_fn(fn, backend="aot_eager", dynamic=dynamic, fullgraph=fullgraph)

    monkeypatch.setattr(compile_cache, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", compile_aot_eager)
