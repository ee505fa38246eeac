"""``solve`` under ``torch.func.vmap`` beneath another transform.

A transform inside ``vmap`` (``vmap(grad(loss))``, ``vmap(jvp(...))``, ``vmap(hessian(...))``,
``vmap(vmap(...))``) wraps the vmapped tensors in its own level, so ``solve`` sees one
problem, the problems of the batch hidden beneath; so does a vmap over tensors ``func``
captures alone. Each problem is solved with its own steps, as alone, in one of two ways:

- the adaptive explicit Runge-Kutta methods on a ``PIController`` run in the device loop
  (``device_loop``) on the transforms' tensors: every decision is a tensor merged with
  masks, so the transforms see ordinary operations, and each host read reduces over every
  vmapped problem (``_host``);
- the others (implicit and multistep methods, other controllers, nested states and the
  options the device loop lacks, a vmap over ``t``) solve the problems one after the
  other: ``_Select`` takes problem i out of the vmap level (an autograd.Function whose
  vmap rule selects the row, whose backward puts the cotangent back in that row and whose
  jvp selects the tangent), so the problem's solve runs on tensors no longer batched
  there and its host reads are its own; the outputs go back into the level by masks of
  each problem's index (``_Index``). Fixed explicit steps on shared times run the host
  loop as one problem (every problem the same grid).

What reads a vmapped value on the host regardless (events, dense output) is refused with
the fix, as ``refuse_under_transforms`` refuses ``Backsolve()`` and ``Checkpointed()``
(autograd.Functions without a functorch rule) under any transform.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._C import _functorch as functorch
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from ._event_gradient import SECOND_DERIVATIVES
from ._execution import _ALIASES
from ._host import dispatched, peeled
from ._solution import Solution, SolveStats
from ._tree import tree_spec
from ._vmap import _flat_outputs
from .adjoint.direct import Direct
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK

_INSIDE = (
    "under torch.func.vmap beneath another transform (vmap(grad(...)), vmap(jvp(...)), "
    "vmap(vmap(...))) or over func's captured tensors only"
)
_FIX = (
    "or make the vmap the innermost transform (torch.func.jacrev(torch.func.vmap(f)), "
    "torch.func.grad(lambda ys: torch.func.vmap(f)(ys).sum()))"
)
# torch's errors where code reads a vmapped value on the host (a tensor wrapped by
# torch.func: ``.item()``, a data pointer, an autograd.Function without a vmap rule)
_READ_VMAPPED = ("vmap: ", "doesn't have storage", "autograd.Function with functorch")
_CAPTURED = (
    "func captured a tensor batched by torch.func.vmap (e.g. a per-problem parameter) and "
    "{solver!r} solves the problems one by one {inside}: carry it in the state instead (as a "
    "constant channel with zero derivative), or use an adaptive explicit Runge-Kutta method"
)


def refuse_under_transforms(options: dict, vmapped: bool) -> None:
    """Under a ``torch.func`` transform (``transform_active``), refuse what it cannot
    differentiate or trace, naming the fix: a gradient other than ``Direct()`` (an
    autograd.Function without a functorch rule) and an event under nested derivatives
    (``hessian``, ``jacrev(jacrev)``: ``EventGradient``'s rules are first derivatives,
    which one ``grad``, ``vjp``, ``jacrev``, ``jvp`` or ``jacfwd`` takes) under any
    transform, and without a vmap (``grad``, ``jacrev``, ``jvp``, ``hessian`` over the
    solve) also dense output (its gradient is an autograd.Function without a functorch
    rule too) and ``compile`` (which cannot trace functorch's wrapped tensors). Under vmap
    the vmap paths refuse the rest with their own reasons.

    Raises:
        ValueError: naming the option and the fix.
    """
    gradient = options["gradient"]
    if gradient is not None and not isinstance(gradient, Direct):
        raise ValueError(
            f"gradient={type(gradient).__name__}() is not supported under torch.func "
            "transforms (vmap, grad, jacrev, jvp): its gradient is a torch.autograd.Function "
            "without a functorch rule. Use gradient=Direct() (the default; odeint instead of "
            "odeint_adjoint) under them, or the adjoint with torch.autograd.grad outside them"
        )
    if options.get("event") and _derivative_levels() > 1:  # (hessian: jacfwd's vmap above)
        raise ValueError(SECOND_DERIVATIVES)
    if vmapped:
        return
    given = [name for name in ("dense", "compile") if options.get(name)]
    given += [name for name in _ALIASES if options.get(name) and name != "device_loop"]
    if given:
        raise ValueError(
            f"{', '.join(given)} is not supported under torch.func's grad, jacrev, jvp or "
            "hessian: leave it out there, or differentiate with torch.autograd.grad outside "
            "torch.func"
        )


def _derivative_levels() -> int:
    """How many active ``torch.func`` transforms differentiate (grad, vjp, jvp; a vmap,
    jacrev's and jacfwd's too, does not)."""
    kinds = (functorch.TransformType.Grad, functorch.TransformType.Jvp)
    return sum(i.key() in kinds for i in retrieve_all_functorch_interpreters())


def solve_inside_vmap(
    solve: Callable[..., Any], func: Callable, y0: Any, ts: torch.Tensor, kwargs: dict
) -> Any:
    """``solve(func, y0, ts, **kwargs)`` under ``torch.func.vmap`` where ``y0`` and ``ts`` are
    not batched at the innermost transform (see the module).

    Raises:
        ValueError: what cannot run there, naming the fix.
    """
    extra, one_by_one, refusal = _route(ts, kwargs, nested=not tree_spec(y0, "y0")[0].is_leaf)
    if one_by_one:
        level = _lowest_level(y0, ts)
        if level is not None:
            return _solve_one_by_one(solve, func, y0, ts, level, kwargs)
        refusal = _CAPTURED.format(solver=kwargs["solver"], inside=_INSIDE)
    try:
        with peeled(*_levels()):  # the solve below runs as one problem
            return solve(func, y0, ts, **kwargs, **extra)
    except RuntimeError as error:
        if refusal is None or not any(sign in str(error) for sign in _READ_VMAPPED):
            raise
        raise ValueError(refusal) from error


def _route(ts: torch.Tensor, options: dict, nested: bool) -> tuple[dict, bool, str | None]:
    """How ``solve_inside_vmap`` runs the solve: the options that choose the device loop
    (``device_loop`` for the adaptive explicit Runge-Kutta methods on a ``PIController``
    and a one-tensor state, ``nested`` False), whether the problems are solved one by one,
    and why the solve cannot run where its loop reads a vmapped value on the host
    (``None``: nothing it runs reads one)."""
    solver, controller = options["solver"], options["controller"]  # (Direct: checked before)
    given = [name for name in ("event", "dense", "saveat", "compile") if options.get(name)]
    given += [name for name in _ALIASES if options.get(name) and name != "device_loop"]
    if options.get("per_sample") == "skip_finished":  # (rows f sees: a dynamic shape)
        given.append("per_sample='skip_finished' (per_sample=True runs there)")
    if given:
        return {}, False, f"{', '.join(given)} is not supported {_INSIDE}: leave it out, {_FIX}"
    if options.get("per_sample") or options.get("device_loop"):  # the device loop already
        return {}, False, None
    if isinstance(ts, torch.Tensor) and _batched_levels(ts) - dispatched():  # own times
        return {}, True, None
    if not isinstance(solver, ExplicitRK):  # Newton, multistep: each problem's own
        return {}, True, None
    if controller is None:
        controller = PIController() if solver.adaptive else FixedGrid()
    if isinstance(controller, FixedGrid):  # every problem the same steps: the host loop
        return {}, False, None
    used = (
        not isinstance(controller, PIController)
        or nested  # (the device loop takes one tensor; a nested state's norm is mixed)
        or options.get("norm") is not None
        or options.get("callbacks") is not None
        or bool(options.get("perturb"))
    )
    if used:  # what the device loop cannot run: one by one
        return {}, True, None
    return {"device_loop": True}, False, None


def _solve_one_by_one(
    solve: Callable[..., Any], func: Callable, y0: Any, ts: torch.Tensor, level: int, kwargs: dict
) -> Solution:
    """Each problem of vmap ``level`` solved alone (``_Select``), its outputs put back into
    the level by masks of its index; the statistics are summed over the problems."""
    batch = next(i.batch_size() for i in _interpreters() if i.level() == level)
    spec, leaves = tree_spec(y0, "y0")
    flat = spec.flatten(y0, "y0")
    anchor = flat if level in _batched_levels(flat) else ts
    index = _Index.apply(anchor, level)  # each problem's index, batched at ``level``

    def pick(x: torch.Tensor, mask: torch.Tensor, i: int) -> torch.Tensor:
        return _Select.apply(x, mask, i, level) if level in _batched_levels(x) else x

    def one(t: torch.Tensor, y: Any) -> Any:
        out = func(t, y)
        _, outs = tree_spec(out, "func's output")
        if any(level in _batched_levels(x) for x in outs):
            raise ValueError(_CAPTURED.format(solver=kwargs["solver"], inside=_INSIDE))
        return out

    ys = status = None
    stats = SolveStats()
    with peeled(level):  # the solves below: one problem each
        for i in range(batch):
            mask = index == i
            sol = solve(one, spec.unflatten(pick(flat, mask, i)), pick(ts, mask, i), **kwargs)
            out = _flat_outputs(spec, sol.ys)
            ys = out if ys is None else torch.where(mask, out, ys)
            status = sol.status if status is None else torch.where(mask, sol.status, status)
            for name in ("nfe", "n_steps", "n_accepted", "n_rejected"):
                setattr(stats, name, getattr(stats, name) + getattr(sol.stats, name))
    return Solution(ts=ts, ys=spec.unflatten(ys), stats=stats, status=status)


class _Select(torch.autograd.Function):
    """Problem ``i`` of vmap ``level`` taken out of it: under the level's vmap rule the row,
    no longer batched there (the rules of other vmap levels pass it on); the backward puts
    the cotangent in that problem's row (``mask``: the problems' ``index == i``), the jvp
    selects the tangent."""

    @staticmethod
    def forward(x: torch.Tensor, mask: torch.Tensor, i: int, level: int) -> torch.Tensor:
        raise RuntimeError("_Select runs under torch.func.vmap only")  # pragma: no cover

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.i, ctx.level = inputs[2], inputs[3]
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, mask: torch.Tensor, i: int, level: int):
        if _rule_level() != level:  # another vmap's rule: select beneath it
            return _Select.apply(x, mask, i, level), in_dims[0]
        if in_dims[0] is None:  # the same for every problem (e.g. a tangent jvp shares)
            return x, None
        return x.select(in_dims[0], i), None

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (mask,) = ctx.saved_tensors
        return torch.where(mask, grad, torch.zeros_like(grad)), None, None, None

    @staticmethod
    def jvp(ctx: Any, tangent: torch.Tensor, *_: Any) -> torch.Tensor:
        (mask,) = ctx.saved_tensors
        return _Select.apply(tangent, mask, ctx.i, ctx.level)


class _Index(torch.autograd.Function):
    """Each problem's index at vmap ``level`` (0, 1, ...; batched there), from a tensor
    ``x`` batched there; not differentiable."""

    @staticmethod
    def forward(x: torch.Tensor, level: int) -> torch.Tensor:
        raise RuntimeError("_Index runs under torch.func.vmap only")  # pragma: no cover

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.mark_non_differentiable(output)

    @staticmethod
    def vmap(info: Any, in_dims: tuple, x: torch.Tensor, level: int):
        if _rule_level() != level:  # another vmap's rule: the index is not batched there
            return _Index.apply(x, level), None
        return torch.arange(info.batch_size, device=x.device), 0

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        return None, None

    @staticmethod
    def jvp(ctx: Any, *_: Any) -> None:
        return None


def _rule_level() -> int:
    """The vmap level whose rule runs: the one above the current (levels are nested)."""
    return (functorch.maybe_current_level() or 0) + 1


def _interpreters() -> list:
    vmap = functorch.TransformType.Vmap
    return [i for i in retrieve_all_functorch_interpreters() if i.key() == vmap]


def _levels() -> list[int]:
    """The active vmap levels."""
    return [i.level() for i in _interpreters()]


def _batched_levels(x: torch.Tensor) -> set[int]:
    """The vmap levels ``x`` is batched at, beneath any other transform's wrapper."""
    levels = set()
    while functorch.is_functorch_wrapped_tensor(x):
        if functorch.is_batchedtensor(x):
            levels.add(functorch.maybe_get_level(x))
        x = functorch.get_unwrapped(x)
    return levels


def _lowest_level(y0: Any, ts: Any) -> int | None:
    """The lowest active vmap level (the outermost vmap) ``y0`` or ``ts`` is batched at that
    ``solve`` has not dispatched already (``_host.peeled``), or ``None``."""
    _, leaves = tree_spec(y0, "y0")
    if isinstance(ts, torch.Tensor):
        leaves = [*leaves, ts]
    batched = set().union(*(_batched_levels(x) for x in leaves)) - dispatched()
    candidates = [level for level in _levels() if level in batched]
    return min(candidates) if candidates else None
