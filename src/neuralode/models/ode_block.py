"""ODEBlock: a layer that integrates its input through learned dynamics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from .._args import flag
from .._norms import seminorm
from .._solution import SolveStats
from .._solve import solve
from ..adjoint import GRADIENTS, GradientStrategy
from ..controllers import FixedGrid, PIController
from ..solvers import HyperSolver, PartitionedSolver, Solver, method_class, method_names
from .data_control import DataControlled
from .regularisers import (
    DerivativePenalty,
    RandomEndTime,
    RegularisedDynamics,
    Regulariser,
    detached_state,
    regulariser_list,
)


class ODEBlock(nn.Module):
    """Maps x to y(t1) where dy/dt = dynamics(t, y), y(t0) = x.

    ``nfe_forward`` / ``nfe_backward`` report the work of the last forward and backward pass;
    ``forward(x, ts)`` returns the whole trajectory at ``ts`` instead of the final state. After
    a forward pass in training mode ``regularisation`` is the weighted sum of the regularisers'
    integrals averaged over the batch (a differentiable scalar to add to the loss; zero without
    regularisers or in eval mode) and ``regularisation_terms`` maps each one's name to its
    unweighted batch mean. The regulariser channels are left out of the step-size error norm:
    steps are chosen for ``x`` alone, as without regularisers. With a
    [`DataControlled`][neuralode.models.DataControlled] field the solve starts at
    ``dynamics.initial_state(x)`` = (x, x), the field sees x throughout, and the block returns
    y alone. With ``end_time=RandomEndTime(b)`` (STEER) each training-mode ``forward(x)`` ends at
    a random time in [t1 - b, t1 + b) instead of t1; eval mode and ``forward(x, ts)`` solve
    to the times given.

    Arguments:
        dynamics: the vector field, a module called as ``dynamics(t, y)``.
        t0: the start of the integration interval.
        t1: its end.
        method: a method name of [`METHODS`][neuralode.solvers.METHODS] or
            [`PARTITIONED_METHODS`][neuralode.solvers.PARTITIONED_METHODS] (``"leapfrog"``,
            ..., on a nested state ``(q, p)``), or a
            [`Solver`][neuralode.solvers.Solver] (a hypersolver: ``HyperEuler(correction)``),
            whose modules (the correction network) become the block's submodules, so that
            its parameters train, save and move with the block's.
        rtol: the relative tolerance of adaptive methods.
        atol: the absolute tolerance of adaptive methods.
        step_size: the step of fixed-step methods (default: a single step from t0 to t1).
        gradient: ``"direct"`` (backpropagation), ``"adjoint"`` (O(1) memory),
            ``"checkpointed"`` or ``"reversible"`` (exact, O(1) memory; explicit Runge-Kutta
            methods), or a [`GradientStrategy`][neuralode.adjoint.GradientStrategy].
        regularisers: ``KineticEnergy``, ``JacobianFrobenius``, ``DerivativePenalty``:
            integrated alongside the state (batch, ...) over the solve, in training mode only;
            a 1-D state (n,) is one sample, its regularisation the integral over all of it.
        compile_step: run each solver step (the dynamics included) as one torch.compile graph
            (``solve(..., compile_step=True)``; explicit Runge-Kutta methods).
        end_time: a [`RandomEndTime`][neuralode.models.RandomEndTime] (STEER): in training
            mode ``forward(x)`` solves to an end time drawn uniformly from [t1 - b, t1 + b)
            (one per batch, or one per sample); ``None``: always to t1.

    Raises:
        ValueError: an unknown method or gradient, a bad tolerance or step size (as
            ``PIController``'s and ``FixedGrid``'s), ``DerivativePenalty`` with
            ``compile_step``, regularisers with a ``DataControlled`` field, a partitioned
            method (``"leapfrog"``, ...) or a hypersolver, an ``end_time``
            whose spread is not below |t1 - t0|, or a per-sample ``end_time`` with
            regularisers, a ``DataControlled`` field or the ``"checkpointed"`` or
            ``"reversible"`` gradient.
        TypeError: ``regularisers`` not a sequence of ``Regulariser`` instances (one
            regulariser goes in a list), ``end_time`` not a ``RandomEndTime``, or
            ``compile_step`` not a bool.
    """

    def __init__(
        self,
        dynamics: nn.Module,
        t0: float = 0.0,
        t1: float = 1.0,
        method: str | Solver = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        step_size: float | None = None,
        gradient: str | GradientStrategy = "adjoint",
        regularisers: Sequence[Regulariser] = (),
        compile_step: bool = False,
        end_time: RandomEndTime | None = None,
    ):
        super().__init__()
        if isinstance(method, Solver):
            # the solver's own networks (a hypersolver's correction) as submodules
            own = [m for m in vars(method).values() if isinstance(m, nn.Module)]
            self.solver_modules = nn.ModuleList(own)
        elif not isinstance(method, str) or method_class(method) is None:
            raise ValueError(
                f"unknown method {method!r}; available: {', '.join(method_names())}, or a Solver"
            )
        if isinstance(gradient, str) and gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {sorted(GRADIENTS)}, got {gradient!r}")
        PIController(rtol, atol)  # (refuses bad tolerances now, not at the first forward)
        if step_size is not None:
            FixedGrid(step_size=step_size)
        compile_step = flag("compile_step", compile_step)
        self.dynamics = dynamics
        self.t0, self.t1 = float(t0), float(t1)
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.step_size = step_size
        self.gradient = gradient
        self.last_stats = SolveStats()
        self.compile_step = compile_step
        self.regularisers = regulariser_list(regularisers)
        if self.regularisers and isinstance(dynamics, DataControlled):
            raise ValueError(
                "regularisers do not take a DataControlled field (its state is the pair "
                "(y, x)): leave them out of this block"
            )
        kind = type(method) if isinstance(method, Solver) else method_class(method)
        if self.regularisers and issubclass(kind, (PartitionedSolver, HyperSolver)):
            reads = (
                "reads as the pair (q, p) of a separable f"
                if issubclass(kind, PartitionedSolver)
                else "would hand to its correction network, which takes y"
            )
            raise ValueError(
                f"regularisers do not work with {kind.__name__}: they integrate alongside the "
                f"state as the tuple (y, r_1, ...), which {kind.__name__} {reads}; use a "
                "Runge-Kutta method (midpoint, rk4, dopri5, ...) for a regularised block, or "
                "leave the regularisers out"
            )
        for r in self.regularisers:
            if not isinstance(r, Regulariser):
                raise TypeError(f"regularisers must be Regulariser instances, got {r!r}")
            if compile_step and isinstance(r, DerivativePenalty):
                raise ValueError(
                    "compile_step=True does not work with DerivativePenalty: its "
                    "derivatives of f are differentiated again, which torch.compile does not "
                    "support (double backward)"
                )
        self.end_time = self._checked_end_time(end_time)
        self.regularisation = torch.zeros(())
        self.regularisation_terms: dict[str, torch.Tensor] = {}

    def _checked_end_time(self, end_time: object) -> RandomEndTime | None:
        if end_time is None:
            return None
        if not isinstance(end_time, RandomEndTime):
            raise TypeError(
                f"end_time must be a RandomEndTime or None, got {end_time!r}; for STEER with "
                f"spread b pass end_time=RandomEndTime(b)"
            )
        length = abs(self.t1 - self.t0)
        if not end_time.spread < length:
            raise ValueError(
                f"RandomEndTime's spread must be below |t1 - t0| = {length} (end times in "
                f"[t1 - spread, t1 + spread) stay on t1's side of t0), got {end_time.spread}; "
                "use a smaller spread"
            )
        if end_time.per_sample:
            refused = None
            if self.regularisers:
                refused = "regularisers (their channels make the state a tuple)"
            elif isinstance(self.dynamics, DataControlled):
                refused = "a DataControlled field (its state is the pair (y, x))"
            elif self.gradient in ("checkpointed", "reversible"):
                refused = f"gradient={self.gradient!r}"
            if refused is not None:
                raise ValueError(
                    f"RandomEndTime(per_sample=True) solves in per-sample mode, which does not "
                    f"take {refused}; use per_sample=False (one end time per batch), or "
                    "gradient='direct' or 'adjoint' without regularisers"
                )
        return end_time

    def __getstate__(self) -> dict:
        """The state for ``copy.deepcopy`` and pickling: the last regularisation detached from
        its graph (a copy after a training step keeps the values, not the graph)."""
        return detached_state(self, ("regularisation", "regularisation_terms"))

    def extra_repr(self) -> str:
        """The solve's settings, shown by ``repr`` and ``print`` beside the dynamics.

        Returns:
            The settings as ``name=value`` pairs.
        """
        parts = [f"t0={self.t0}, t1={self.t1}, method={self.method!r}"]
        if self._solver().adaptive:
            parts.append(f"rtol={self.rtol}, atol={self.atol}")
        else:
            parts.append(f"step_size={self.step_size}")
        parts.append(f"gradient={self.gradient!r}")
        if self.regularisers:
            parts.append(f"regularisers={self.regularisers!r}")
        if self.compile_step:
            parts.append("compile_step=True")
        if self.end_time is not None:
            parts.append(f"end_time={self.end_time!r}")
        return ", ".join(parts)

    def _solver(self) -> Solver:
        return self.method if isinstance(self.method, Solver) else method_class(self.method)()

    def _strategy(self) -> GradientStrategy:
        if isinstance(self.gradient, str):
            return GRADIENTS[self.gradient]()
        return self.gradient

    def forward(self, x: Any, ts: torch.Tensor | None = None) -> Any:
        """Solve from ``x`` and record the solve's statistics and regularisation.

        Arguments:
            x: the initial state y(t0): (batch, ...), or (n,) for one sample, when there are
                regularisers; or a nested state, a tuple, list or dict of tensors (such as
                ``(q, p)`` for the symplectic methods), without regularisers, per-sample
                ``end_time`` or ``DataControlled`` dynamics.
            ts: output times (``ts[0]`` the initial time), or ``None`` for ``[t0, t1]`` (in
                training mode with ``end_time``, ``[t0, a random end time]``).

        Returns:
            y(t1), of the shape (and structure) of ``x``; with ``ts``, the states at ``ts``
                stacked on a new dimension 0 of every tensor, (len(ts), *x.shape).

        Raises:
            ValueError: regularisers in training mode and a 0-dim state or an empty batch, or
                the same for a per-sample ``end_time``; a nested state with what it does not
                run with (above).
            TypeError: ``x`` neither a tensor nor a nested structure of tensors.
        """
        times, per_sample = ts, False
        nested = not isinstance(x, torch.Tensor)
        like = self._check_nested(x) if nested else x
        if times is None:
            t1 = torch.tensor(self.t1, dtype=torch.float64)
            if self.training and self.end_time is not None:
                per_sample = self.end_time.per_sample
                if per_sample and (x.ndim < 1 or x.shape[0] == 0):
                    raise ValueError(
                        "RandomEndTime(per_sample=True) needs states of shape (batch, ...), "
                        f"got {tuple(x.shape)}"
                    )
                # sampled, not learned: a constant of the solve (no gradient to it)
                t1 = self.end_time.draw(self.t1, x.shape[0] if per_sample else 1)
            # rounded from the float64 interval to x's dtype (a float32 tensor in between
            # would move a float64 solve's end to float32(t1), 1e-9 off for t1 = 0.1);
            # per sample: one row [t0, t1_i] per sample
            interval = torch.stack([torch.full_like(t1, self.t0), t1], dim=-1)
            times = interval.to(like.dtype).to(like.device)
        solver = self._solver()
        if solver.adaptive:
            controller = PIController(self.rtol, self.atol)
        else:
            controller = FixedGrid(step_size=self.step_size)
        regularisers = self.regularisers if self.training else []
        func, y0, norm = self.dynamics, x, None
        controlled = isinstance(self.dynamics, DataControlled)
        if controlled:
            y0 = self.dynamics.initial_state(x)
        if regularisers:
            if x.ndim < 1 or x.shape[0] == 0:
                raise ValueError(
                    "regularisers need states of shape (batch, ...) or (n,) (one sample), got "
                    f"{tuple(x.shape)}"
                )
            # a 1-D state is one sample (as nn.Linear reads it): one integral, of all of it
            samples = x[None] if x.ndim == 1 else x
            noises = [r.draw_noise(samples) for r in regularisers]
            func = RegularisedDynamics(self.dynamics, regularisers, noises)
            batch = samples.shape[0]
            y0 = (x, *(x.new_zeros(batch) for _ in regularisers))
            norm = seminorm([x.numel()] + [batch] * len(regularisers), 1)
        sol = solve(
            func,
            y0,
            times.to(like.dtype),
            solver=solver,
            controller=controller,
            norm=norm,
            gradient=self._strategy(),
            compile_step=self.compile_step,
            per_sample=per_sample,
        )
        self.last_stats = sol.stats
        ys = sol.ys
        self._record_regularisation(regularisers, ys, times, like)
        if regularisers or controlled:
            ys = ys[0]
        if ts is not None:
            return ys
        return tree_map(lambda y: y[-1], ys) if nested else ys[-1]

    def _check_nested(self, x: Any) -> torch.Tensor:
        """A nested state's first tensor (its dtype and device are the solve's), or a clear
        error for what a nested state cannot run here."""
        leaves = tree_leaves(x)
        if not leaves or not all(isinstance(leaf, torch.Tensor) for leaf in leaves):
            raise TypeError(
                "x must be a tensor or a tuple, list or dict of tensors (a nested state such "
                f"as (q, p)), got {type(x).__name__}"
            )
        per_sample_end = self.end_time is not None and self.end_time.per_sample
        if isinstance(self.dynamics, DataControlled) or (
            self.training and (self.regularisers or per_sample_end)
        ):
            raise ValueError(
                "a nested state (such as (q, p)) runs without regularisers, per-sample "
                "RandomEndTime and DataControlled dynamics, which take one (batch, ...) "
                "tensor: concatenate the parts into one tensor for them"
            )
        return leaves[0]

    def _record_regularisation(
        self, regularisers: list[Regulariser], ys: tuple, times: torch.Tensor, x: torch.Tensor
    ) -> None:
        self.regularisation_terms = {}
        total = x.new_zeros(())
        if regularisers:
            sign = 1.0 if float(times[-1]) >= float(times[0]) else -1.0
            for i, r in enumerate(regularisers, start=1):
                value = sign * ys[i][-1].mean()
                name, k = r.name, 2
                while name in self.regularisation_terms:
                    name, k = f"{r.name}_{k}", k + 1
                self.regularisation_terms[name] = value
                total = total + r.weight * value
        self.regularisation = total

    @property
    def nfe_forward(self) -> int:
        """Evaluations of the vector field by the last forward solve."""
        return self.last_stats.nfe

    @property
    def nfe_backward(self) -> int:
        """Evaluations by the last backward pass (the adjoint's, or 0 for backpropagation)."""
        return self.last_stats.nfe_backward
