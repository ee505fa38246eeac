"""How gradients flow through a solve: the strategy interface and the problem it receives."""

from __future__ import annotations

import abc
import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._autocast import full_precision
from .._host import forward_level_active, forward_mode
from .._loop import LoopConfig
from .._solution import SolveStats
from .._term import ODETerm
from .._tree import TreeSpec


@dataclass
class Problem:
    """A validated initial value problem, ready for the loop (what a strategy's ``run`` gets).

    Attributes:
        func: the user's vector field.
        term: ``func`` on the flat state, counting evaluations.
        spec: the structure of the user's state (to unflatten).
        y0: the flat initial state.
        ts: the user's tensor of output times.
        times: the output times as floats.
        config: the loop's settings (solver, controller, norm, limits).
        stats: the statistics the solve fills in.
    """

    func: Callable[[torch.Tensor, Any], Any]
    term: ODETerm
    spec: TreeSpec
    y0: torch.Tensor  # flat
    ts: torch.Tensor  # the user's tensor of output times
    times: list[float]
    config: LoopConfig
    stats: SolveStats


class GradientStrategy(abc.ABC):
    """Computes the flat outputs (len(ts), n) of a problem, differentiably in its own way."""

    #: whether the strategy computes gradients with respect to ``ts`` itself
    handles_time_gradients: bool = False
    #: whether ``solve`` may run the strategy with an event (located in a graph-free solve
    #: of the same method, then solved up to with the strategy)
    supports_events: bool = True
    #: whether the strategy propagates forward-mode tangents (``torch.autograd.forward_ad``
    #: dual tensors) through the solve; ``solve`` refuses them for the others
    supports_forward_mode: bool = False

    @abc.abstractmethod
    def run(self, problem: Problem) -> torch.Tensor:
        """Solve ``problem`` and return its outputs.

        Arguments:
            problem: the validated problem.

        Returns:
            The flat outputs, (len(ts), n), differentiable in the strategy's own way.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def time_derivative_inputs(problem: Problem) -> bool:
    """Whether derivatives with respect to the output times are wanted: by backpropagation,
    or forward mode (``torch.func.jvp``, ``jacfwd``, a dual tensor of ``forward_ad``)."""
    ts = problem.ts
    if not isinstance(ts, torch.Tensor):
        return False
    return (torch.is_grad_enabled() and ts.requires_grad) or forward_mode(ts)


def check_forward_mode(gradient: GradientStrategy, problem: Problem) -> None:
    """Refuse forward-mode differentiation through a strategy that cannot propagate it,
    before any step: its outputs come from an ``autograd.Function`` with a backward pass
    only, so a ``torch.autograd.forward_ad`` dual tensor reaching the solve would fail in
    torch ("must implement the jvp function") or, captured by f, lose its tangent.

    Inside a dual level the tangents are looked for in ``y0``, ``ts`` and, by one uncounted
    evaluation of f at the first output time, whatever f reads (its parameters, captured
    tensors); the random number generators (CPU, and the state's CUDA device) are restored
    after that evaluation, so an f that draws from them solves as outside a dual level.
    ``torch.func.jvp`` and ``jacfwd`` are refused earlier, with every ``torch.func``
    transform. Outside a dual level this costs one check.

    Arguments:
        gradient: the strategy.
        problem: the validated problem.

    Raises:
        ValueError: a dual tensor reaches the solve of a strategy without forward mode.
    """
    if gradient.supports_forward_mode or not forward_level_active():
        return
    if forward_mode(problem.y0):
        where = "y0"
    elif isinstance(problem.ts, torch.Tensor) and forward_mode(problem.ts):
        where = "ts"
    else:
        ts, term = problem.ts, problem.term
        t0 = ts.detach().reshape(-1)[0] if isinstance(ts, torch.Tensor) else problem.times[0]
        # the random number generators are restored after it, so a solve of an f that
        # draws from them (dropout, noise) inside a dual level equals the solve outside one
        devices = [] if problem.y0.device.type != "cuda" else [problem.y0.device]
        with torch.no_grad(), torch.random.fork_rng(devices):
            f0 = term.call_uncounted(term, t0, problem.y0.detach())
        if not forward_mode(f0):
            return
        where = "func's output (its parameters or the tensors it captures)"
    name = type(gradient).__name__
    raise ValueError(
        f"gradient={name}() does not support forward-mode differentiation: a dual tensor of "
        f"torch.autograd.forward_ad reaches the solve through {where}, and {name}'s "
        "derivatives come from a backward pass only. Use gradient=Direct() (odeint instead "
        "of odeint_adjoint), which carries the tangents through the solver's operations, or "
        f"keep {name}() and differentiate in reverse mode (backward(), torch.autograd.grad)"
    )


def first_order(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark an ``autograd.Function.backward`` (under ``once_differentiable``) as first-order
    only: a backward pass with ``create_graph=True`` (grad mode on inside it) warns that the
    gradients through this solve carry no graph, instead of the higher derivatives going
    missing without a word."""

    def wrap(backward: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(backward)
        def checked(ctx: Any, *grads: Any) -> Any:
            if torch.is_grad_enabled():  # (backward's grad mode is create_graph)
                warnings.warn(
                    f"gradient={name}() is first-order only: with create_graph=True (a "
                    "Hessian, a gradient penalty) its gradients carry no graph, so higher "
                    "derivatives through this solve are missing; use gradient=Direct() for "
                    "them",
                    stacklevel=2,
                )
            with full_precision():  # (the backward solve's arithmetic, as the forward's)
                return backward(ctx, *grads)

        return checked

    return wrap
