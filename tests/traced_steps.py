"""The ``steps_traced_only`` fixture: compiled steps traced by dynamo without inductor.

Import it into a test module (``from traced_steps import steps_traced_only``) and request it
with ``@pytest.mark.usefixtures("steps_traced_only")``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytest


@pytest.fixture
def steps_traced_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The graphs of ``compile="step"`` (the standard loop's attempt, the PI controller's
    first evaluations, the per-sample attempt; also what ``compile=True`` falls back to)
    run by dynamo's ``"eager"`` backend instead of inductor: for tests of what dynamo
    captures and of the loop around it (the graphs made, the calls of f, the checks), which
    inductor's code generation does not change. The compiled copies are the test's own (one
    per function and key, as ``_compile.compiled`` keeps them), so no later test runs one."""
    from neuralode import _attempt, _compile, _loop
    from neuralode.controllers import pi

    made: dict[tuple[Callable, Hashable], Any] = {}

    def traced(fn: Callable, key: Hashable, **options: Any) -> Any:
        if (fn, key) not in made:
            made[fn, key] = _compile.compiled(fn, None, backend="eager", **options)
        return made[fn, key]

    for module in (_loop, _attempt, pi):
        monkeypatch.setattr(module, "compiled", traced)
