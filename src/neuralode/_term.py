"""Wraps the user's vector field f(t, y): structure, dtype of time, validation and NFE count;
for a separable field on a pair ``(q, p)``, its halves (``SEPARABLE_HALVES``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from ._autocast import AutocastField, autocast_dtype
from ._host import plain_factories
from ._tree import TreeSpec

# torch's errors for operands of two dtypes (a float32 module on a float64 state)
_DTYPE_MISMATCH = re.compile(r"same dtype|type \(\w+\) and \w+ type \(\w+\) should be the same")

#: The methods by which a vector field on a pair ``(q, p)`` offers its two halves:
#: ``dq_dt(t, p)`` returns dq/dt (shaped like ``q``) from ``p`` alone, ``dp_dt(t, q)`` returns
#: dp/dt (shaped like ``p``) from ``q`` alone, each equal to that part of ``f(t, (q, p))``.
#: The symplectic methods call only the half each kick or drift needs (``ODETerm.dq_dt``).
SEPARABLE_HALVES = ("dq_dt", "dp_dt")

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
    ``nfe`` counts the evaluations: each call of f, or of one of its halves (``dq_dt``,
    ``dp_dt``, for a separable field on a pair; ``separable``), counts one.
    """

    def __init__(
        self, func: Callable[[torch.Tensor, Any], Any], spec: TreeSpec, like: torch.Tensor
    ):
        if not callable(func):
            raise TypeError(f"func must be callable as func(t, y), got {type(func).__name__}")
        lower = autocast_dtype(like)
        self.func = (
            func if lower is None else AutocastField(func, like.device.type, lower, like.dtype)
        )
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
        self._halves = separable_halves(self.func) if _is_pair(spec) else None
        self._halves_checked = [False, False]

    def fresh(self) -> ODETerm:
        """A term of the same f, state structure, dtype and device as ``ODETerm`` makes it
        (nothing counted, f's output not checked yet, no buffers), without deriving its
        facts from the state again."""
        term = object.__new__(ODETerm)
        term.__dict__.update(self.__dict__)
        term.nfe, term.counting, term._checked, term._buffers = 0, True, False, {}
        term._halves_checked = [False, False]
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
        try:
            out = self.func(t, y.view(*args) if args is not None else self.spec.unflatten(y))
        except RuntimeError as error:
            if self._checked or not _DTYPE_MISMATCH.search(str(error)):
                raise
            raise RuntimeError(
                f"{error}. func(t, y) failed on its first call with the state in {y.dtype}: "
                "its tensors (a module's parameters) are probably in another dtype; convert "
                f"one to the other (module.to({y.dtype}), or y0 to the parameters' dtype)"
            ) from error
        if not self._checked:
            self._check(out, t)
        return out

    @property
    def separable(self) -> bool:
        """Whether f offers its halves (``SEPARABLE_HALVES``) on a state that is a pair
        ``(q, p)`` of tensors: then ``dq_dt`` and ``dp_dt`` evaluate one half alone."""
        return self._halves is not None

    def dq_dt(self, t: float | torch.Tensor, p: torch.Tensor, perturb: float = 0.0) -> torch.Tensor:
        """f's ``dq_dt(t, p)`` half on the flat ``p``, the time as in ``__call__``; the flat
        dq/dt. Counted as one evaluation; only where ``separable``."""
        return self._half(0, self.time(t, perturb), p)

    def dp_dt(self, t: float | torch.Tensor, q: torch.Tensor, perturb: float = 0.0) -> torch.Tensor:
        """f's ``dp_dt(t, q)`` half on the flat ``q``, the time as in ``__call__``; the flat
        dp/dt. Counted as one evaluation; only where ``separable``."""
        return self._half(1, self.time(t, perturb), q)

    def _half(self, which: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Half ``which`` (0: dq/dt from p, 1: dp/dt from q) on the flat ``x`` seen in its
        tensor's shape; its output's shape is checked every call (a reshape would hide a
        wrong one of the right size), its dtype and device once."""
        if self.counting:
            self.nfe += 1
        shapes = self.spec.shapes
        out = self._halves[which](t, x.reshape(shapes[1 - which]))  # type: ignore[index]
        if not isinstance(out, torch.Tensor) or out.shape != shapes[which]:
            self._refuse_half(which, out)
        if not self._halves_checked[which]:
            self._check_half(which, out)
        return out.reshape(-1)

    def _refuse_half(self, which: int, out: Any) -> None:
        name, variable = SEPARABLE_HALVES[which], "qp"[which]
        what = f"func.{name}(t, {'pq'[which]})"
        expected = tuple(self.spec.shapes[which])
        got = f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(
            f"{what} returned {got}; it must return d{variable}/dt as a tensor of {variable}'s "
            f"shape {expected} (the part of func(t, (q, p)) for {variable})"
        )

    def _check_half(self, which: int, out: torch.Tensor) -> None:
        what = f"func.{SEPARABLE_HALVES[which]}(t, {'pq'[which]})"
        if out.dtype != self.dtype:
            raise TypeError(f"{what} returned dtype {out.dtype}; the state has dtype {self.dtype}")
        if out.device != self.device:
            raise ValueError(
                f"{what} returned a tensor on {out.device}; the state is on {self.device}"
            )
        self._halves_checked[which] = True

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
            raise TypeError(
                f"{what} returned dtype {flat.dtype}; the state has dtype {self.dtype}: return "
                "it in the state's dtype (e.g. .to(y.dtype))"
                + (f", or give y0 in {flat.dtype}" if flat.is_floating_point() else "")
            )
        if flat.device != self.device:
            raise ValueError(
                f"{what} returned a tensor on {flat.device}; the state is on {self.device}"
            )
        self._checked = True


def separable_halves(func: Any) -> tuple[Callable, Callable] | None:
    """``func``'s halves (the methods ``SEPARABLE_HALVES``) where it has both, callable,
    else ``None`` (f is evaluated whole).

    Arguments:
        func: the vector field.

    Returns:
        ``(func.dq_dt, func.dp_dt)``, or ``None``.
    """
    halves = tuple(getattr(func, name, None) for name in SEPARABLE_HALVES)
    if not all(callable(half) for half in halves):
        return None
    return halves  # type: ignore[return-value]


def _is_pair(spec: TreeSpec) -> bool:
    """Whether the state is a tuple or list of two tensors (what the halves split)."""
    structure = spec.structure
    return isinstance(structure, (tuple, list)) and list(structure) == [None, None]
