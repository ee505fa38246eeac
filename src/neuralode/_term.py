"""Wraps the user's vector field f(t, y): structure, dtype of time, validation and NFE count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ._host import plain_factories
from ._tree import TreeSpec

# The time dtypes NumPy converts to exactly as torch does (round to nearest from a double).
_NUMPY_TIME = {torch.float64: np.float64, torch.float32: np.float32}


class StageBuffer(NamedTuple):
    """Scratch space of graph-free Runge-Kutta steps: ``stacked`` (stages, n), its ``rows``,
    ``columns[i]`` the transposed view of the first i rows (for one ``addmv`` per stage), and
    ``user_rows`` the rows viewed in the shape of a one-tensor state, or for a nested state
    each row's pieces viewed in the shapes of its tensors (f's output is copied into them
    without concatenating it first)."""

    stacked: torch.Tensor
    rows: tuple[torch.Tensor, ...]
    columns: list[torch.Tensor]
    user_rows: tuple[torch.Tensor, ...] | tuple[tuple[torch.Tensor, ...], ...]


# Stage buffers of finished solves, kept for the next solves of the same shape: making a
# buffer and its views costs ~50 us, as much as a few steps of a small problem. Only small
# buffers are kept (where that cost matters more than their memory), a few per shape.
_POOL: dict[tuple, list[StageBuffer]] = {}
_POOL_MAX_ELEMENTS = 1 << 14  # stages x state size of a pooled buffer
_POOL_MAX_SHAPES = 16
_POOL_PER_SHAPE = 2


class ODETerm:
    """The right-hand side of dy/dt = f(t, y), evaluated on the loop's flat state.

    ``f`` receives ``t`` as a 0-dim tensor of the state's real dtype (as torchdiffeq does) and
    ``y`` in the structure of ``y0``; it must return the same structure, shapes and dtype.
    ``nfe`` counts the evaluations.
    """

    def __init__(
        self, func: Callable[[torch.Tensor, Any], Any], spec: TreeSpec, like: torch.Tensor
    ):
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
        self.func = func
        self.spec = spec
        self.dtype = like.dtype
        self.device = like.device
        self.time_dtype = like.real.dtype if like.is_complex() else like.dtype
        self.nfe = 0
        self.counting = True  # False inside ``call_uncounted``
        self._checked = False
        # a tuple of ints, not a torch.Size: y.view(tuple) parses ~1.5 us faster per call
        self._leaf_shape = tuple(map(int, spec.shapes[0])) if spec.is_leaf else None
        # f's view of the flat state: y.view(*ints) parses ~0.6 us faster than y.view(tuple)
        # (a 0-dim state has no ints to unpack: its view takes the empty tuple)
        self._view_args = (self._leaf_shape or ((),)) if spec.is_leaf else None
        self._cpu = like.is_cpu  # (``device.type`` costs ~0.3 us)
        # the stage times by one NumPy conversion on CPU (~2.5 us faster than torch.tensor)
        self._numpy_time = _NUMPY_TIME.get(self.time_dtype) if self._cpu else None
        self._buffers: dict[tuple[int, int], Any] = {}

    def fresh(self) -> ODETerm:
        """A term of the same f, state structure, dtype and device as ``ODETerm`` makes it
        (nothing counted, f's output not checked yet, no buffers), without deriving its
        facts from the state again."""
        term = object.__new__(ODETerm)
        term.__dict__.update(self.__dict__)
        term.nfe, term.counting, term._checked, term._buffers = 0, True, False, {}
        return term

    def time(self, t: float | torch.Tensor, perturb: float = 0.0) -> torch.Tensor:
        """``t`` (a number or a 0-dim tensor) as a 0-dim tensor of the time dtype;
        ``perturb`` != 0 moves it one ulp towards ``t + perturb``."""
        if isinstance(t, torch.Tensor):
            tt = t.to(self.time_dtype)
        else:
            tt = torch.full((), t, dtype=self.time_dtype, device=self.device)
        if perturb:
            tt = torch.nextafter(tt, torch.full_like(tt, t + perturb))
        return tt

    def times(self, values: list[float]) -> tuple[torch.Tensor, ...] | None:
        """Several times as 0-dim tensors made by one conversion, on CPU; ``None`` elsewhere
        (a host-to-device copy would cost more than filling each on the device)."""
        if not self._cpu or torch.compiler.is_compiling():
            return None
        if self._numpy_time is not None:
            return torch.from_numpy(np.array(values, dtype=self._numpy_time)).unbind()
        return torch.tensor(values, dtype=self.time_dtype).unbind()

    def stage_buffer(self, stages: int, like: torch.Tensor) -> StageBuffer:
        """A (stages, n) scratch buffer for graph-free Runge-Kutta steps of this solve, with
        its views (made once per solve, or taken from an earlier solve's, and reused each
        step until ``release_buffers``)."""
        key = (stages, like.numel())
        buffer = self._buffers.get(key)
        if buffer is None:
            free = _POOL.get(self._pool_key(key))
            buffer = self._buffers[key] = free.pop() if free else self._new_buffer(stages, like)
        return buffer

    def _new_buffer(self, stages: int, like: torch.Tensor) -> StageBuffer:
        # plain tensors and views also under torch.inference_mode(): the pool hands them to
        # later solves, whose in-place writes outside inference mode an inference tensor (or
        # a view made in inference mode) refuses
        with plain_factories():
            stacked = like.new_empty(stages, like.numel())
            rows = stacked.unbind(0)
            shape, spec = self._leaf_shape, self.spec
            if shape is not None:
                user_rows: tuple = tuple(row.view(shape) for row in rows)
            else:
                user_rows = tuple(
                    tuple(p.view(s) for p, s in zip(row.split(spec.numels), spec.shapes))
                    for row in rows
                )
            columns = [stacked[:i].T for i in range(stages + 1)]
        return StageBuffer(stacked, rows, columns, user_rows)

    def _pool_key(self, key: tuple[int, int]) -> tuple:
        # (the state's structure: the buffer's views are made in its shapes)
        return (*key, self.dtype, self.device, self.spec.is_leaf, self.spec.shapes)

    def release_buffers(self) -> None:
        """End of a solve: small stage buffers go back to a pool for later solves (nothing of
        the solve's results lives in them)."""
        for key, buffer in self._buffers.items():
            if key[0] * key[1] > _POOL_MAX_ELEMENTS:
                continue
            if len(_POOL) >= _POOL_MAX_SHAPES and self._pool_key(key) not in _POOL:
                _POOL.clear()
            free = _POOL.setdefault(self._pool_key(key), [])
            if len(free) < _POOL_PER_SHAPE:
                free.append(buffer)
        self._buffers.clear()

    def into(self, t: torch.Tensor, y: torch.Tensor, buffer: StageBuffer, i: int) -> torch.Tensor:
        """f at the time tensor ``t`` written into row ``i`` of a stage buffer; returns the row.

        Graph-free steps only: f's output is copied into the row through a view in its own
        shape, which saves the reshape of ``at`` and a temporary per evaluation."""
        out = self._evaluate(t, y)
        if self._leaf_shape is not None:
            if out.shape != buffer.user_rows[i].shape:  # copy_ would broadcast
                self.spec.flatten(out, "func's output")  # raises the shape error
            buffer.user_rows[i].copy_(out)
        else:  # each tensor into its piece of the row (its shape checked: no broadcasting)
            for piece, leaf in zip(buffer.user_rows[i], self.spec.leaves(out, "func's output")):
                piece.copy_(leaf)
        return buffer.rows[i]

    def call_uncounted(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` without counting this term's evaluations, for a compiled graph that
        evaluates f: the caller adds them to ``nfe`` (an int attribute changed inside a
        torch.compile graph would be guarded on its value, recompiling as it changes)."""
        self.counting = False
        try:
            return fn(*args)
        finally:
            self.counting = True

    def __call__(self, t: float, y: torch.Tensor, perturb: float = 0.0) -> torch.Tensor:
        return self.at(self.time(t, perturb), y)

    def at(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """f at the time tensor ``t`` (0-dim, the term's time dtype) on the flat state ``y``."""
        out = self._evaluate(t, y)
        if self._leaf_shape is not None:
            return out.reshape(-1)
        return self.spec.flatten(out, "func's output")

    def _evaluate(self, t: torch.Tensor, y: torch.Tensor) -> Any:
        """f on the flat state ``y`` seen in the user's shape; counted, and checked once."""
        if self.counting:
            self.nfe += 1
        args = self._view_args
        out = self.func(t, y.view(*args) if args is not None else self.spec.unflatten(y))
        if not self._checked:
            self._check(out, t)
        return out

    def _check(self, out: Any, t: torch.Tensor) -> None:
        what = "func(t, y)"
        if self.spec.is_leaf and not isinstance(out, torch.Tensor):
            raise TypeError(f"{what} must return a tensor like y0, got {type(out).__name__}")
        try:
            flat = self.spec.flatten(out, f"{what} output")
        except ValueError as error:
            if isinstance(t, torch.Tensor) and t.ndim == 1:  # per sample: the common slip
                raise ValueError(
                    f"{error}. Per sample, t holds one time per sample, shape {tuple(t.shape)}: "
                    "broadcast it against y as t[:, None] (or t.view(-1, *[1] * (y.ndim - 1)))"
                ) from None
            raise
        if flat.dtype != self.dtype:
            raise TypeError(f"{what} returned dtype {flat.dtype}; the state has dtype {self.dtype}")
        if flat.device != self.device:
            raise ValueError(
                f"{what} returned a tensor on {flat.device}; the state is on {self.device}"
            )
        self._checked = True
