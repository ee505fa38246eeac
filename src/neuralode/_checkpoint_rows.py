"""``Checkpointed()`` in the device loop (per sample, or ``device_loop``): each step attempt
and each evaluation of f outside one is recorded for autograd as a checkpoint
(``torch.utils.checkpoint``, non-reentrant). The graph keeps what they were given (the rows'
times, states, f0 and decisions) instead of f's activations, and the backward pass computes
each again, in reverse, to differentiate it: the gradient of the discrete solve, as
``Direct()``'s, with memory O(steps x state) besides the stages of the steps that write
outputs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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
        return contextlib.nullcontext(), self._counted()

    @contextlib.contextmanager
    def _counted(self) -> Iterator[None]:
        term = self.f.term
        nfe, rows = term.nfe, self.f.rows_evaluated
        try:
            yield
        finally:
            self.stats.nfe_backward += term.nfe - nfe
            self.stats.n_steps_backward += int(self.attempts)
            term.nfe, self.f.rows_evaluated = nfe, rows
