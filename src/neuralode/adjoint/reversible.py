"""Reversible gradients: any explicit Runge-Kutta method made algebraically reversible
(McCallum & Foster 2024, "Efficient, accurate and stable gradients for neural ODEs",
arXiv:2410.11648), so that the backward pass reconstructs each step's start from its end.

With F(x) the base method's step from t_n to t_{n+1}, B(x) its step back from t_{n+1} to
t_n, and the coupling lambda in (0, 1], the method carries a pair (y, z), z_0 = y_0:

    y_{n+1} = lambda y_n + (1 - lambda) z_n + (F(z_n) - z_n)
    z_{n+1} = z_n + (y_{n+1} - B(y_{n+1}))

and inverts exactly (up to round-off) as

    z_n = z_{n+1} - (y_{n+1} - B(y_{n+1}))
    y_n = (y_{n+1} - (1 - lambda) z_n - (F(z_n) - z_n)) / lambda

(z moves by the increment y_{n+1} - B(y_{n+1}), about y_{n+1} - y_n, so z follows y.)

The forward solve is the host loop's ``integrate`` on the flat pair [y; z] with the method
``ReversibleRK``, its steps landing on the output times, recording each step's times and
flags but no state. The backward pass walks the records in reverse from (y_N, z_N).
"""

from __future__ import annotations

import numbers
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from .._loop import LoopConfig, StepRecord
from ..solvers.explicit_rk import ExplicitRK
from ._recompute import accumulate, step_vjp
from ._reversible_pair import PairSolve, ReversibleRK
from .base import GradientStrategy, Problem, first_order
from .params import keep_params, resolve_params


class Reversible(GradientStrategy):
    """Exactly the gradient of the discrete forward solve, in memory independent of the
    number of steps: the base explicit Runge-Kutta method made algebraically reversible
    (McCallum & Foster 2024, arXiv:2410.11648).

    The solve carries a pair (y, z), z_0 = y_0; each step takes the base method's step
    forwards from z and its step backwards from the new y::

        y_{n+1} = c y_n + (1 - c) z_n + (F(z_n) - z_n)
        z_{n+1} = z_n + (y_{n+1} - B(y_{n+1}))

    with ``c`` the coupling. The outputs are the y half, of the base method's order. Each
    step costs two base steps, forwards and backwards alike; the steps land on the output
    times (no interpolation), and an adaptive step's error estimate is both base steps'
    embedded estimates, one for each half of the pair, each half measured by the solve's
    norm and the larger taken. The forward pass keeps each accepted step's times and flags
    but no state; the backward pass reconstructs (y_n, z_n) from (y_{n+1}, z_{n+1}) by
    inverting the step, recomputing the two base steps with autograd as it goes, so the
    gradients equal backpropagation's through the same reversible solve up to round-off.
    A coupling below 1 damps the difference between y and z, which ``c = 1`` leaves
    undamped (the method is then only weakly stable); the inverse divides by ``c``, so the
    reconstruction's round-off grows by about ``1 / c`` a step and a coupling close to 1
    keeps it small. Where the dynamics decay by more than about ``1 - c`` a step (stiff or
    strongly dissipative f) the difference grows instead, like the flow backwards in time:
    a solve whose halves part by more than a tenth of their size warns, and so does a
    backward pass whose reconstruction of ``y0`` misses it by more than the square root of
    the dtype's eps; ``Checkpointed`` suits such problems.

    Explicit Runge-Kutta methods only, on the host loop (not per sample, the device loop,
    compiled or CUDA graphs), without events. First-order: its gradients carry no graph (a
    backward pass with ``create_graph=True`` warns); ``Direct`` gives higher derivatives.

    Arguments:
        coupling: the coupling ``c`` in (0, 1].
        params: the tensors to differentiate with respect to; defaults to ``func.parameters()``
            when ``func`` is an ``nn.Module``.

    Raises:
        TypeError: ``coupling`` is not a real number (a bool, a string).
        ValueError: ``coupling`` is outside (0, 1] or NaN.
    """

    supports_events = False

    def __init__(self, coupling: float = 0.999, params: Sequence[torch.Tensor] | None = None):
        if isinstance(coupling, torch.Tensor) and coupling.numel() == 1:
            coupling = coupling.item()
        if isinstance(coupling, bool) or not isinstance(coupling, numbers.Real):
            # (not the value's repr: a list of parameters given first would print them all)
            raise TypeError(
                "Reversible's first argument is the coupling, a real number in (0, 1], got a "
                f"{type(coupling).__name__}; the parameters go by name: Reversible(params=...) "
                "(the default coupling 0.999 suits most problems)"
            )
        value = float(coupling)
        if not (0.0 < value <= 1.0):  # (NaN fails too)
            raise ValueError(
                f"Reversible coupling must be in (0, 1], got {coupling!r}: 0 makes the step "
                "irreversible (its inverse divides by the coupling); use a value close to "
                "1, such as the default 0.999"
            )
        self.coupling = value
        self.params = keep_params(params)

    def __repr__(self) -> str:
        return f"Reversible(coupling={self.coupling!r})"

    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` with the reversible method; the backward pass reconstructs the
        steps from the last state.

        Arguments:
            problem: the validated problem.

        Returns:
            The flat outputs, (len(ts), n): the y half of the pair, differentiable with
                respect to ``y0`` and ``params``.

        Raises:
            ValueError: the solver is not an explicit Runge-Kutta method, or the solve is
                compiled, per sample, in the device loop or on CUDA graphs.
        """
        check_reversible(problem.config)
        params = resolve_params(problem.func, self.params)
        return _ReversibleSolve.apply(self, problem, problem.y0, *params)


def check_reversible(config: LoopConfig) -> None:
    """Refuse what the reversible method cannot run, naming the fix.

    Arguments:
        config: the loop's settings (solver and execution mode).

    Raises:
        ValueError: a solver that is not an explicit Runge-Kutta method; a compiled,
            per-sample, device-loop or CUDA-graph solve.
    """
    solver = config.solver
    if not isinstance(solver, ExplicitRK):
        kind = "a multistep method" if solver.multistep else "not an explicit Runge-Kutta method"
        raise ValueError(
            f"gradient=Reversible() needs an explicit Runge-Kutta method (dopri5, tsit5, "
            f"bosh3, rk4, midpoint, ...); {solver.name} is {kind}. Use such a method, or "
            "gradient=Checkpointed() (exact, memory O(steps x state)) with this one"
            + ("" if any(p.requires_grad for p in solver.parameters()) else " or Backsolve()")
        )
    execution = config.execution
    modes = {
        "per_sample=True": execution.per_sample,
        "device_loop=True": execution.device_loop,
        "cuda_graph=True": execution.cuda_graph,
        "compile": execution.compile is not None,
    }
    given = [name for name, on in modes.items() if on]
    if given:
        raise ValueError(
            f"gradient=Reversible() runs on the eager host loop and does not support "
            f"{', '.join(given)}: leave it out, or use gradient=Direct() or Backsolve() there"
        )


def check_split(pair: torch.Tensor, n: int, controller: Any, coupling: float) -> None:
    """Warn when the halves y and z of the last state have parted by more than a tenth of
    their size (plus ``atol``): the pair's parasitic mode has grown, and the outputs and
    gradients are not the ODE's.

    The pair method damps the difference between y and z only where the dynamics' damping
    over a step is below about ``1 - coupling``; faster decay (stiff or strongly dissipative
    dynamics) makes it grow like the backward-in-time flow.

    Arguments:
        pair: the last state [y_N; z_N].
        n: the size of one half.
        controller: the solve's controller (its ``atol``, if any).
        coupling: the coupling.
    """
    atol = getattr(controller, "atol", 0.0)
    atol = float(atol.max()) if isinstance(atol, torch.Tensor) else float(atol or 0.0)
    y, z = pair[:n], pair[n:]
    scale = float(torch.maximum(y.abs(), z.abs()).max()) if n else 0.0
    split = float((y - z).abs().max()) if n else 0.0
    if not split <= 0.1 * scale + atol:  # (NaN too)
        warnings.warn(
            f"Reversible(coupling={coupling:g}): the solve's two halves y and z parted by "
            f"{split:.3g} at the end (the state's size: {scale:.3g}), so its outputs and "
            "gradients are not to be trusted. The reversible method is unstable where the "
            "dynamics decay fast (stiff or strongly dissipative f). Use gradient="
            "Checkpointed() (exact, memory O(steps x state)) or Direct() for this problem",
            stacklevel=2,
        )


def check_reconstruction(
    y0: torch.Tensor, y: torch.Tensor, z: torch.Tensor, coupling: float, steps: int
) -> None:
    """Warn when the backward walk's reconstruction of the start (y_0, z_0) misses ``y0`` by
    more than the square root of its dtype's eps (relative to its size, at least 1): the
    inverse divides by the coupling each step, so round-off grows like
    ``coupling ** -steps`` (and faster where the pair was unstable), and the gradients
    were computed at states that far from the forward solve's.

    Arguments:
        y0: the initial state.
        y: the reconstructed y_0.
        z: the reconstructed z_0.
        coupling: the coupling.
        steps: the number of steps walked.
    """
    if y0.numel() == 0:
        return
    miss = float(torch.maximum((y - y0).abs().max(), (z - y0).abs().max()))
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    bound = torch.finfo(real).eps ** 0.5 * max(float(y0.abs().max()), 1.0)
    if not miss <= bound:  # (NaN too)
        warnings.warn(
            f"Reversible(coupling={coupling:g}): the backward pass reconstructed the initial "
            f"state {miss:.3g} away from y0 after {steps} steps, so the gradients lost that "
            "much accuracy (round-off grows like coupling^-steps, faster where the dynamics "
            "decay fast). Use a coupling closer to 1, or gradient=Checkpointed() (exact, "
            "memory O(steps x state)) for this problem",
            stacklevel=2,
        )


class _ReversibleSolve(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any, strategy: Reversible, problem: Problem, y0: torch.Tensor, *params: torch.Tensor
    ):
        solve = PairSolve(problem, strategy.coupling)
        records: list[StepRecord] = []
        pairs = solve.run(y0, problem.times, problem.stats, records)
        ctx.problem, ctx.solver, ctx.records, ctx.params = problem, solve.solver, records, params
        ctx.y0 = y0  # (the input itself: the backward pass checks its reconstruction)
        ctx.last = pairs[-1].clone()  # (y_N, z_N): where the backward pass starts
        if not bool(problem.stats.status):  # (a failed solve, throw=False: its status says so)
            check_split(ctx.last, solve.n, problem.config.controller, strategy.coupling)
        return pairs[:, : solve.n].clone()

    @staticmethod
    @first_order("Reversible")
    @once_differentiable
    def backward(ctx: Any, grad_ys: torch.Tensor):
        problem: Problem = ctx.problem
        solver: ReversibleRK = ctx.solver
        params: tuple[torch.Tensor, ...] = ctx.params
        base, term, c, n = solver.base, solver.term, solver.coupling, solver.n
        nfe_before = term.nfe
        y, z = ctx.last[:n], ctx.last[n:]
        grad_y, grad_z = torch.zeros_like(grad_ys[0]), torch.zeros_like(grad_ys[0])
        param_grads = [torch.zeros_like(p) for p in params]
        for rec in reversed(ctx.records):
            if rec.outputs:  # (the steps land on the output times: one, at the step's end)
                grad_y = grad_y + grad_ys[rec.outputs[-1]]
            perturb = solver.perturbed(rec.t0, rec.perturb)
            # z_{n+1} = z_n + y_{n+1} - B(y_{n+1}): B recomputed at y_{n+1} gives z_n and
            # the gradient reaching y_{n+1} (and the parameters) through it
            back = step_vjp(base, term, rec.t1, rec.t0, y, perturb, -grad_z, params)
            grad_y1 = grad_y + grad_z + back.grad_y0
            z_start = z - (y - back.y1)
            # y_{n+1} = c y_n + (1 - c) z_n + F(z_n) - z_n: F recomputed at z_n gives y_n
            fwd = step_vjp(base, term, rec.t0, rec.t1, z_start, perturb, grad_y1, params)
            y_start = y - (1.0 - c) * z_start - (fwd.y1 - z_start)
            y = y_start / c if c != 1.0 else y_start
            z = z_start
            grad_z = grad_z + (1.0 - c) * grad_y1 + fwd.grad_y0 - grad_y1
            grad_y = c * grad_y1
            param_grads = accumulate(param_grads, back.grad_params)
            param_grads = accumulate(param_grads, fwd.grad_params)
        ctx.reconstructed = (y, z)  # (y_0, z_0), for checks of the inverse
        check_reconstruction(ctx.y0, y, z, c, len(ctx.records))
        grad_y = grad_y + grad_ys[0]
        problem.stats.nfe_backward += term.nfe - nfe_before
        problem.stats.n_steps_backward += len(ctx.records)
        return (None, None, grad_y + grad_z, *param_grads)
