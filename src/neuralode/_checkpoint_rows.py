"""``Checkpointed()`` in the device loop (per sample, or ``device_loop``): each step attempt
and each evaluation of f outside one is recorded for autograd as a checkpoint
(``torch.utils.checkpoint``, non-reentrant). The graph keeps what they were given (the rows'
times, states, f0 and decisions) instead of f's activations, and the backward pass computes
each again, in reverse, to differentiate it: the gradient of the discrete solve, as
``Direct()``'s, with memory O(steps x state) besides the stages of the steps that write
outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from torch.utils.checkpoint import checkpoint


class Recomputed:
    """``fn`` whose calls are checkpoints; their recomputations in the backward pass add
    f's evaluations to ``stats.nfe_backward`` (and, for ``attempts``, a step to
    ``stats.n_steps_backward``), leaving the forward counts of ``f`` (a ``BatchTerm``) as
    they were."""

    def __init__(self, fn: Callable[..., Any], f: Any, stats: Any, attempts: bool):
        self.fn, self.f, self.stats, self.attempts = fn, f, stats, attempts

    def __call__(self, *args: Any) -> Any:
        return checkpoint(self.fn, *args, use_reentrant=False, context_fn=self._contexts)

    def _contexts(self) -> tuple[contextlib.AbstractContextManager, ...]:
        return contextlib.nullcontext(), _Counted(self)


class _Counted:
    """The recomputation's context: counts its evaluations of f as the backward pass's. A
    class, not a generator: a graph kept for a second backward pass (``retain_graph``, a
    Jacobian, ``gradcheck``) enters it again."""

    def __init__(self, owner: Recomputed):
        self.owner = owner
        self._saved: list[tuple[int, Any]] = []

    def __enter__(self) -> None:
        f = self.owner.f
        self._saved.append((f.term.nfe, f.rows_evaluated))

    def __exit__(self, *exc: Any) -> None:
        owner = self.owner
        nfe, rows = self._saved.pop()
        owner.stats.nfe_backward += owner.f.term.nfe - nfe
        owner.stats.n_steps_backward += int(owner.attempts)
        owner.f.term.nfe, owner.f.rows_evaluated = nfe, rows
