"""``_compile.Direct``: a whole graph's newest compiled code runs without dynamo's frame hook
only where its guards pass; everything else goes through torch.compile (and recompiles)."""

from __future__ import annotations

import sys

import torch

from neuralode._compile import Direct, compiled

SCALE = 2.0


def scaled(x: torch.Tensor) -> torch.Tensor:
    return x * SCALE + 1.0


class Counting:
    """Counts the calls that go through torch.compile."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args):
        self.calls += 1
        return self.fn(*args)


def test_direct_runs_the_cached_code_only_where_its_guards_pass(monkeypatch):
    direct = compiled(scaled, "test_compile_direct", dynamic=False, fullgraph=True, backend="eager")
    assert isinstance(direct, Direct)
    counting = Counting(direct.compiled)
    direct.compiled = counting
    x = torch.arange(4.0)
    assert torch.equal(direct(x), x * 2.0 + 1.0)  # compiled by torch.compile
    assert counting.calls == 1
    assert torch.equal(direct(x + 1), (x + 1) * 2.0 + 1.0)  # guards pass: direct
    assert counting.calls == 1
    monkeypatch.setattr(sys.modules[__name__], "SCALE", 3.0)  # a guarded global changed
    assert torch.equal(direct(x), x * 3.0 + 1.0)
    assert counting.calls == 2
    assert torch.equal(direct(x), x * 3.0 + 1.0)
    assert counting.calls == 2
    assert torch.equal(direct(torch.arange(5.0)), torch.arange(5.0) * 3.0 + 1.0)  # a new shape
    assert counting.calls == 3
    with torch.no_grad():  # the global state (grad mode) is guarded
        direct(x)
    assert counting.calls == 4
    with torch.compiler.set_stance("force_eager"):
        direct(x)
    assert counting.calls == 5
    torch._dynamo.reset()  # no cached code: torch.compile again
    assert torch.equal(direct(x), x * 3.0 + 1.0)
    assert counting.calls == 6


def test_step_functions_that_may_break_their_graph_are_not_wrapped():
    step = compiled(scaled, "test_compile_direct_step", dynamic=False, backend="eager")
    assert not isinstance(step, Direct)
