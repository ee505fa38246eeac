"""f as the device loop calls it: one time per sample, on the (batch, d) state, with its
evaluations counted per call or, for a compiled or captured attempt, after it."""

from __future__ import annotations

import torch

from ._term import ODETerm


class BatchTerm:
    """Calls f with one time per sample, (batch,), on the (batch, d) state; with ``rows``
    set, only on those samples' rows (the others' derivatives are returned as zeros). With
    ``one_problem`` (``device_loop``: the whole state is one problem, a batch of one) f gets
    the time as a 0-dim tensor and the state in ``y0``'s shape, as in the standard loop."""

    def __init__(self, term: ODETerm, batch: int, one_problem: bool = False):
        self.term = term
        self.batch = batch
        self.one_problem = one_problem
        self.shape = tuple(int(n) for n in term.spec.shapes[0])
        # y.reshape(*ints) parses ~0.6 us faster than y.reshape(tuple); a 0-dim state takes ()
        self._reshape_args = self.shape or ((),)
        # the time's cast, skipped where the loop's float64 times are the time dtype already
        self._cast_time = term.time_dtype != torch.float64
        self.rows: torch.Tensor | None = None  # None: every sample
        self.rows_evaluated = 0  # sample rows f was called on, summed over calls

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term = self.term
        if term.counting:  # (an SDE's drift counts its own calls)
            term.nfe += 1
        rows = self.rows
        if rows is None:
            self.rows_evaluated += self.batch
            time = self._time(t)
            out = term.func(time, y.reshape(*self._reshape_args))
            if not term._checked:
                term._check(out, time)
            return out.reshape(self.batch, -1)
        n = rows.shape[0]
        self.rows_evaluated += n
        t_rows, y_rows = t.index_select(0, rows), y.index_select(0, rows)
        out = term.func(t_rows.to(term.time_dtype), y_rows.reshape(n, *self.shape[1:]))
        if tuple(out.shape) != (n, *self.shape[1:]):
            raise ValueError(
                f"with skip_finished=True func must return one row per sample it is given: "
                f"got shape {tuple(out.shape)} for {n} samples of shape {self.shape[1:]}"
            )
        return y.new_zeros(y.shape).index_copy(0, rows, out.reshape(n, -1))

    def uncounted(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f on every sample without the bookkeeping (for the compiled step; see ``count``)."""
        return self.term.func(self._time(t), y.reshape(*self._reshape_args)).reshape(self.batch, -1)

    def _time(self, t: torch.Tensor) -> torch.Tensor:
        """The (batch,) times as f receives them: a 0-dim tensor for ``one_problem``."""
        t = t.reshape(()) if self.one_problem else t
        return t.to(self.term.time_dtype) if self._cast_time else t

    def count(self, calls: int) -> None:
        """Record ``calls`` evaluations of f on every sample made by ``uncounted``."""
        self.term.nfe += calls
        self.rows_evaluated += calls * self.batch

    def keep(self, still: torch.Tensor, n_still: int) -> None:
        """Evaluate only the ``n_still`` samples marked in ``still`` from now on."""
        running = self.batch if self.rows is None else self.rows.shape[0]
        if n_still != running:
            self.rows = None if n_still == self.batch else still.nonzero().squeeze(1)
