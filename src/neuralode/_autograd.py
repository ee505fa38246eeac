"""Vector-Jacobian products for loops that take one per step (the SDE adjoints' and
``Backsolve``'s backward passes).

``torch.autograd.grad`` builds its tuples of outputs and inputs from generators. CPython makes
such a tuple at its default guess of 10 items and shrinks it in place to the items there are
(``PySequence_Tuple``): the block comes from the free list of 10-tuples (or from malloc) and,
when the tuple dies, goes to the free list of its final size, where it stays (a free list holds
up to 2000 tuples of a size; a full ``gc.collect()`` empties them). So each call leaves two
tuples behind (none of 10 items), 48 to 128 bytes each, until 2000 calls have filled those lists:
0.3 KB a step of the stochastic adjoint's backward (BENCHMARKS.md). ``grad`` calls autograd's
engine as ``torch.autograd.grad`` does, on tuples made from lists at their final size, which
come from and go back to the same free list.

``FirstDerivativeOnly`` ties a derivative computed without a graph (an adjoint solve, the
implicit function theorem with constant partials) to what it depends on, so that a second
derivative through it raises instead of silently missing that dependence; ``FirstOrder``
marks a term of a graph whose derivative is right to first order only in the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import has_torch_function

try:  # the engine call of ``torch.autograd.grad`` (torch >= 2.3)
    from torch.autograd.graph import _engine_run_backward
except ImportError:  # pragma: no cover - older torch: torch.autograd.grad itself
    _engine_run_backward = None


def grad(
    outputs: Sequence[torch.Tensor],
    inputs: Sequence[torch.Tensor],
    grad_outputs: Sequence[torch.Tensor | None],
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, grad_outputs, allow_unused=True, ...)`` without
    its per-call growth of CPython's tuple free lists (see the module).

    Arguments:
        outputs: the tensors to differentiate.
        inputs: the tensors to differentiate with respect to.
        grad_outputs: one cotangent per output; ``None`` for a one-element output means 1.
        retain_graph: keep the graph (default: ``create_graph``).
        create_graph: build the graph of the result (for higher derivatives).

    Returns:
        The vector-Jacobian product with respect to each input (``None`` for an input the
        outputs do not depend on).

    Raises:
        RuntimeError: as ``torch.autograd.grad`` (an input that does not require grad, a
            ``None`` cotangent of an output of more than one element, ...).
    """
    outputs = tuple(outputs)
    inputs = tuple(inputs)
    cotangents = tuple(
        [
            torch.ones_like(out) if cot is None and out.numel() == 1 else cot
            for out, cot in zip(outputs, grad_outputs, strict=True)
        ]
    )
    if (
        _engine_run_backward is None
        or torch.compiler.is_compiling()
        or has_torch_function(outputs + inputs)
        or not all(
            isinstance(cot, torch.Tensor) and cot.shape == out.shape
            for out, cot in zip(outputs, cotangents)
        )
    ):
        # under torch.compile, tensor subclasses, a missing or mismatched cotangent (torch's
        # error): torch.autograd.grad itself
        return torch.autograd.grad(
            outputs,
            inputs,
            cotangents,
            retain_graph=retain_graph,
            create_graph=create_graph,
            allow_unused=True,
        )
    return _engine_run_backward(
        outputs,
        cotangents,
        create_graph if retain_graph is None else retain_graph,
        create_graph,
        inputs,
        True,  # allow_unused
        accumulate_grad=False,
    )


class FirstDerivativeOnly(torch.autograd.Function):
    """``value`` as it is (a first derivative computed without a graph), tied to ``anchor``
    (a tensor that depends on what the derivative depends on: y0, the parameters), with a
    backward that raises ``RuntimeError(message)``: a second derivative through ``value``
    would treat it as a constant. Apply it where ``torch.is_grad_enabled()`` in a backward
    pass (``create_graph=True``, ``torch.func``'s nested transforms)."""

    generate_vmap_rule = True  # (the forward is a copy)

    @staticmethod
    def forward(value: torch.Tensor, anchor: torch.Tensor, message: str) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.message = inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, None, None]:
        raise RuntimeError(ctx.message)


class FirstOrder(torch.autograd.Function):
    """``x`` as it is, with its first derivatives (reverse and forward mode) passed through
    and a second derivative through it raising ``RuntimeError(message)``
    (``FirstDerivativeOnly`` on its backward's result): for a term whose derivative is
    right only to first order."""

    generate_vmap_rule = True  # (the forward is a copy)

    @staticmethod
    def forward(x: torch.Tensor, message: str) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.message = inputs[1]
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if torch.is_grad_enabled():  # create_graph=True: tie the result to x
            grad = FirstDerivativeOnly.apply(grad, ctx.saved_tensors[0], ctx.message)
        return grad, None

    @staticmethod
    def jvp(ctx: Any, x_dot: torch.Tensor, _: None) -> torch.Tensor:
        return x_dot
