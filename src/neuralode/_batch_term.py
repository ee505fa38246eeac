"""f as the device loop calls it: one time per sample, on the (batch, d) state, with its
evaluations counted per call or, for a compiled or captured attempt, after it. A nested
state (the pair (q, p) of the symplectic methods) is held as rows, each sample's part of
every tensor side by side (``_tree.flat_to_rows``), and given to f in its structure."""

from __future__ import annotations

import re

import torch

from ._term import ODETerm
from ._tree import rows_tree, tree_rows

# torch's messages for operands whose shapes do not broadcast
_BROADCAST_FAILURE = re.compile(r"must match the size of tensor|broadcast|shape .* is invalid")


class BatchTerm:
    """Calls f with one time per sample, (batch,), on the (batch, d) state; with ``rows``
    set, only on those samples' rows (the others' derivatives are returned as zeros). With
    ``one_problem`` (``device_loop``: the whole state is one problem, a batch of one) f gets
    the time as a 0-dim tensor and the state in ``y0``'s shape, as in the standard loop.
    A nested state's rows are given to f in its structure, each tensor (rows, ...), and f's
    output is taken back as rows. ``halves``: where f offers the halves of a separable field
    on a pair (``ODETerm.separable``), this term's ``dq_dt`` and ``dp_dt`` on rows."""

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
        self.nested = not term.spec.is_leaf  # (per sample only: a pair (q, p))

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        term = self.term
        if term.counting:  # (an SDE's drift counts its own calls)
            term.nfe += 1
        rows = self.rows
        if rows is None:
            self.rows_evaluated += self.batch
            time = self._time(t)
            if not term._checked:  # the first call: checked, f's own failure explained
                return self._first(time, y)
            if self.nested:
                out = term.func(time, rows_tree(term.spec, y))
                return tree_rows(term.spec, out, self.batch, "func(t, y)'s output")
            return term.func(time, y.reshape(*self._reshape_args)).reshape(self.batch, -1)
        n = rows.shape[0]
        self.rows_evaluated += n
        t_rows, y_rows = t.index_select(0, rows), y.index_select(0, rows)
        if self.nested:
            out = term.func(t_rows.to(term.time_dtype), rows_tree(term.spec, y_rows))
            out_rows = tree_rows(term.spec, out, n, "with skip_finished=True func(t, y)'s output")
            return y.new_zeros(y.shape).index_copy(0, rows, out_rows)
        out = term.func(t_rows.to(term.time_dtype), y_rows.reshape(n, *self.shape[1:]))
        if tuple(out.shape) != (n, *self.shape[1:]):
            raise ValueError(
                f"with skip_finished=True func must return one row per sample it is given: "
                f"got shape {tuple(out.shape)} for {n} samples of shape {self.shape[1:]}"
            )
        return y.new_zeros(y.shape).index_copy(0, rows, out.reshape(n, -1))

    def uncounted(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f on every sample without the bookkeeping (for the compiled step; see ``count``)."""
        if self.nested:
            out = self.term.func(self._time(t), rows_tree(self.term.spec, y))
            return tree_rows(self.term.spec, out, self.batch, "func(t, y)'s output")
        return self.term.func(self._time(t), y.reshape(*self._reshape_args)).reshape(self.batch, -1)

    def _first(self, time: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f's first call on every sample, its output checked (``ODETerm._check``); where f
        itself fails to broadcast one time per sample against the state (``t * y`` with t
        (batch,) and y (batch, d)), the error says how to."""
        term = self.term
        state = rows_tree(term.spec, y) if self.nested else y.reshape(*self._reshape_args)
        try:
            out = term.func(time, state)
        except RuntimeError as error:
            if time.ndim != 1 or not _BROADCAST_FAILURE.search(str(error)):
                raise
            raise RuntimeError(
                f"{error}. func(t, y) failed on the first call with one time per sample: per "
                f"sample, t has shape {tuple(time.shape)}; broadcast it against y as "
                "t[:, None] (or t.view(-1, *[1] * (y.ndim - 1)))"
            ) from error
        term._check(out, time)
        if self.nested:
            return tree_rows(term.spec, out, self.batch, "func(t, y)'s output")
        return out.reshape(self.batch, -1)

    @property
    def halves(self) -> BatchTerm | None:
        """This term, whose ``dq_dt`` and ``dp_dt`` evaluate f's halves on every sample's
        rows, where f offers them (``ODETerm.separable``) and every sample is evaluated;
        else ``None`` (f is evaluated whole)."""
        return self if self.term.separable and self.rows is None else None

    def dq_dt(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """f's ``dq_dt(t, p)`` half on every sample: ``t`` (batch,), ``p`` (batch, k);
        counted as one evaluation (``ODETerm.dq_dt``). Returns dq/dt as rows."""
        self.rows_evaluated += self.batch
        return self.term._half(0, self._time(t), p).reshape(self.batch, -1)

    def dp_dt(self, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """f's ``dp_dt(t, q)`` half on every sample, as ``dq_dt``. Returns dp/dt as rows."""
        self.rows_evaluated += self.batch
        return self.term._half(1, self._time(t), q).reshape(self.batch, -1)

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
