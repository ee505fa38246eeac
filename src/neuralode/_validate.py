"""The checks of ``solve``'s arguments and results: each names the problem and the fix."""

from __future__ import annotations

import cmath
import itertools
import warnings
from typing import Any

import torch

from ._autocast import autocast_dtype
from ._errors import Y0_NOT_FINITE, NonFiniteError, user_stacklevel
from ._events import Event
from ._host import across, plain, wrapped
from ._norms import LOW_PRECISION, l2_norm, max_norm, rms_norm
from ._tree import TreeSpec, leaf_spec, tree_spec
from .adjoint import GRADIENTS
from .adjoint.backsolve import Backsolve
from .adjoint.base import GradientStrategy
from .controllers.base import StepSizeController
from .solvers import method_class, method_names
from .solvers.base import Solver

_GRADIENTS: dict[str, type[GradientStrategy]] = {**GRADIENTS, "backsolve": Backsolve}
_NORMS = {"rms": rms_norm, "max": max_norm, "l2": l2_norm}


def coerce_strategies(solver: Any, controller: Any, gradient: Any, norm: Any) -> tuple[Any, ...]:
    """Accept the obvious other forms of the strategy arguments: a method name or a class
    for ``solver``, a class for ``controller`` and ``gradient``, a name for ``gradient``
    and ``norm``; anything else of a wrong type is a ``TypeError`` naming what is expected."""
    if isinstance(solver, str):
        solver_cls = method_class(solver)
        if solver_cls is None:
            raise ValueError(f"unknown solver {solver!r}; available: {', '.join(method_names())}")
        solver = solver_cls()
    solver = _instance("solver", solver, Solver, "a Solver such as no.Dopri5() or a name")
    controller = _instance(
        "controller", controller, StepSizeController, "a StepSizeController such as "
        "no.PIController(rtol, atol)"
    )  # fmt: skip
    if isinstance(gradient, str):
        if gradient.lower() not in _GRADIENTS:
            raise ValueError(f"unknown gradient {gradient!r}; available: {', '.join(_GRADIENTS)}")
        gradient = _GRADIENTS[gradient.lower()]()
    gradient = _instance(
        "gradient", gradient, GradientStrategy,
        "Direct(), Backsolve(), Checkpointed(), Reversible() or a name",
    )  # fmt: skip
    if isinstance(norm, str):
        if norm not in _NORMS:
            raise ValueError(
                f"unknown norm {norm!r}; available: {', '.join(_NORMS)} (the default is rms), "
                "or a callable taking the flat scaled error"
            )
        norm = _NORMS[norm]
    if norm is not None and not callable(norm):
        raise TypeError(
            f"norm must be a callable (flat tensor -> 0-dim tensor) or a name, got "
            f"{type(norm).__name__}"
        )
    return solver, controller, gradient, norm


def check_event(event: Any) -> None:
    """``event`` is ``None`` or an ``Event`` (a bare function is the common slip).

    Raises:
        TypeError: naming the argument and the fix.
    """
    if event is not None and not isinstance(event, Event):
        raise TypeError(
            f"event must be a neuralode.Event, got {type(event).__name__}: wrap the function, "
            "event=no.Event(fn) (terminal=True by default; direction=1 or -1 for one "
            "direction of crossing)"
        )


def _instance(name: str, value: Any, base: type, expected: str) -> Any:
    """``value`` (None, an instance of ``base``, or a subclass of it to instantiate)."""
    if isinstance(value, type) and issubclass(value, base):
        return value()
    if value is not None and not isinstance(value, base):
        shown = value.__name__ if isinstance(value, type) else type(value).__name__
        raise TypeError(f"{name} must be {expected}, got {shown}")
    return value


def check_state(y0: Any) -> tuple[TreeSpec, torch.Tensor]:
    """The spec of the initial state and the state as one flat tensor, checking that its
    tensors are floating point or complex, of one dtype, on one device, and finite."""
    if isinstance(y0, torch.Tensor):  # a bare tensor: one leaf, its spec made once per shape
        spec = leaf_spec(y0.shape)
        _check_dtype("y0", y0)
        flat = y0.reshape(-1)  # (it matches the spec made from it: no shape check to repeat)
    else:
        spec, leaves = tree_spec(y0, "y0")
        if not leaves:
            raise ValueError("y0 contains no tensors")
        first = leaves[0]
        for i, leaf in enumerate(leaves):
            where = f"y0 (tensor {i})"
            _check_dtype(where, leaf)
            if leaf.dtype != first.dtype:
                raise TypeError(f"{where} has dtype {leaf.dtype}; tensor 0 has {first.dtype}")
            if leaf.device != first.device:
                raise ValueError(f"{where} is on {leaf.device}; tensor 0 is on {first.device}")
        flat = spec.flatten(y0, "y0")
    if flat.is_meta:
        raise ValueError(
            "y0 is on the meta device, which holds shapes but no values: there is nothing to "
            "integrate. Create y0 (and func's parameters: module.to_empty(device=...), then "
            "initialise them) on a real device such as cpu or cuda"
        )
    if not all_finite(flat):
        raise NonFiniteError(Y0_NOT_FINITE)
    return spec, flat


#: the dtypes a state may have (complex32 and the float8 types lack the solvers' kernels)
STATE_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.complex64,
    torch.complex128,
)


def _check_dtype(where: str, leaf: torch.Tensor) -> None:
    if not (leaf.is_floating_point() or leaf.is_complex()):
        raise TypeError(
            f"{where} must be a floating point or complex tensor, got dtype {leaf.dtype}"
        )
    if leaf.dtype not in STATE_DTYPES:
        raise TypeError(
            f"{where} has dtype {leaf.dtype}, for which PyTorch lacks the solvers' operations: "
            "a state is float16, bfloat16, float32, float64, complex64 or complex128; "
            "convert it (e.g. .to(torch.float32), or .to(torch.complex64) for complex32)"
        )


def check_tolerances(controller: Any, y0: torch.Tensor, whose: str = "") -> bool:
    """Refuse tolerances below a tenth of a 16-bit state's resolution (eps), and warn about
    those below a hundredth of a wider one's, or below a tenth of the 16-bit dtype's in
    which f computes under ``torch.autocast``: the error cannot be measured that finely, so
    the solve would stall or return values far less accurate than asked. An ``atol`` above
    that level at y0's scale (1 for a zero y0) makes the tolerance reachable. ``whose``
    names the solve the tolerances are for (the forward solve's: unnamed); the warning
    points at the user's call.

    Returns:
        Whether the tolerances pass for every state of y0's dtype (``rtol`` alone clears the
        level, or the controller has none): no later solve of that dtype needs the check.
    """
    rtol, atol = getattr(controller, "rtol", None), getattr(controller, "atol", None)
    if rtol is None or atol is None:
        return True
    real, eps, low_precision, floor = _resolution(y0.dtype)
    lower = autocast_dtype(y0)  # f computing in 16 bits: its rounding is the floor
    if lower is not None:
        real, eps, _, floor = _resolution(lower)
    rtol_min = float(rtol.min()) if isinstance(rtol, torch.Tensor) else float(rtol)
    if rtol_min >= floor:
        return True
    atol_min = float(atol.min()) if isinstance(atol, torch.Tensor) else float(atol)
    # the state's magnitude, 1 for a zero y0 (whose solution leaves zero at some scale)
    scale = (float(y0.detach().abs().max()) if y0.numel() else 0.0) or 1.0
    if atol_min >= floor * scale:
        return False
    if lower is not None:
        message = (
            f"{whose}rtol={rtol_min:g} (with atol={atol_min:g}) is below the resolution of "
            f"{real} (eps {eps:.3g}), in which f computes under torch.autocast: its rounding "
            "limits the error, so the solve takes many more steps without getting more "
            f"accurate. Use rtol >= {floor:.2g} under autocast, or solve outside it"
        )
        warnings.warn(message, stacklevel=user_stacklevel())
        return False
    message = (
        f"{whose}rtol={rtol_min:g} (with atol={atol_min:g}) is below the resolution of y0's dtype "
        f"{real} (eps {eps:.3g}): the error cannot be controlled that finely. Use "
        f"rtol >= {floor:.2g}"
    )
    if low_precision:
        raise ValueError(message + " or a wider dtype (float32, float64) for the state")
    wider = "" if real == torch.float64 else " or float64 for the state"
    warnings.warn(message + wider, stacklevel=user_stacklevel())
    return False


def _resolution(dtype: torch.dtype) -> tuple[torch.dtype, float, bool, float]:
    """A state dtype's real dtype, its eps, whether it is 16-bit, and the lowest rtol
    ``check_tolerances`` lets pass alone (made once per dtype)."""
    found = _RESOLUTIONS.get(dtype)
    if found is None:
        real = dtype.to_real() if dtype.is_complex else dtype
        eps = torch.finfo(real).eps
        low_precision = real in LOW_PRECISION
        floor = eps / 10 if low_precision else eps / 100
        found = _RESOLUTIONS[dtype] = (real, eps, low_precision, floor)
    return found


_RESOLUTIONS: dict[torch.dtype, tuple[torch.dtype, float, bool, float]] = {}


def check_stage_reach(
    solver: Solver, jump_t: tuple[float, ...], perturb: bool, where: str = ""
) -> None:
    """Refuse ``jump_t`` and ``perturb`` with a method whose stages sample f outside a step
    (``Solver.stage_reach`` above 1: ``kvaerno4``, ``kvaerno5``, ``yoshida4``): a step
    landing on a jump would evaluate f on its far side, and the step would be of order 1
    there.

    Arguments:
        solver: the method.
        jump_t: the discontinuities of f (checked by ``check_grid_times``).
        perturb: whether f is discontinuous at the steps' ends.
        where: the solve this is, for the message (e.g. ``"Backsolve's backward solve: "``).

    Raises:
        ValueError: naming the method, how far its stages reach and the fix.
    """
    reach = solver.stage_reach
    if reach <= 1 or not (jump_t or perturb):
        return
    given = "jump_t" if jump_t else "perturb=True"
    raise ValueError(
        f"{where}{solver.name} evaluates f outside its steps, up to {reach - 1:.3g} of a step "
        f"beyond their ends, so with {given} it would sample f on the far side of the "
        f"discontinuity a step lands on. Use a method whose stages stay inside the step "
        f"(kvaerno3 or radau in place of kvaerno4/5, leapfrog in place of yoshida4), or drop "
        f"{given} where f is smooth"
    )


def all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite, with one reduction in the common case: a NaN or inf
    entry makes the sum non-finite (a finite sum proves all entries finite; an overflowing
    sum of finite entries falls back to the exact elementwise test). A few entries on the CPU
    are summed in Python (one read instead of a reduction and a read)."""
    if x.numel() <= _FEW and x.is_cpu and not wrapped(x):
        if cmath.isfinite(_python_sum(x)):
            return True
        return bool(torch.isfinite(x).all())
    total = x.sum()
    if wrapped(total):  # every vmapped problem's
        total = plain(total).sum()
    if cmath.isfinite(total.item()):
        return True
    return bool(across(torch.isfinite(x).all(), torch.all))


_FEW = 64  # (summing more entries in Python costs more than a reduction)


def _python_sum(x: torch.Tensor) -> Any:
    """The sum of a CPU tensor's entries as a Python number, from one ``tolist``."""
    dims = x.dim()
    if dims == 0:
        return x.item()
    values = x.tolist()
    if dims == 1:
        return sum(values)
    for _ in range(dims - 2):  # (rows of rows: one level of lists each)
        values = itertools.chain.from_iterable(values)
    return sum(map(sum, values))


def check_finite(ys: torch.Tensor, times: list[float] | torch.Tensor) -> None:
    if all_finite(ys):
        return
    ys = plain(ys)  # every vmapped problem's outputs, (*vmapped, len(ts), n)
    ys = ys.reshape(-1, *ys.shape[-2:]).transpose(0, 1)
    finite = torch.isfinite(ys).flatten(1).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        # per-sample times: the earliest of output i's
        t = float(times[:, i].min()) if isinstance(times, torch.Tensor) else times[i]
        if not bool(torch.isnan(ys[i]).any()):
            largest = torch.finfo(ys.real.dtype).max
            raise NonFiniteError(
                f"the solution overflows {ys.real.dtype} to inf by t={t:.6g} (output "
                f"{i}): its values exceed the largest {ys.real.dtype} value {largest:.3g}. The "
                "solution grows without bound, or the step size is too large for stability"
            )
        # an overflow shows as NaN once inf meets inf in a step's sums (inf - inf)
        grown = ""
        if i > 0:
            size = float(ys[i - 1].abs().max())
            if size > torch.finfo(ys.real.dtype).max ** 0.5:
                t_before = (
                    float(times[:, i - 1].min())
                    if isinstance(times, torch.Tensor)
                    else times[i - 1]
                )
                grown = f"|y| was already {size:.3g} at t={t_before:.6g}; "
        wider = "use float64, " if ys.real.dtype != torch.float64 else ""
        raise NonFiniteError(
            f"the solution contains NaN or inf at t={t:.6g} (output {i}); "
            "the step size may be too large for this problem, the solution may overflow "
            f"{ys.real.dtype} ({grown}{wider}rescale the state or take a shorter time "
            "span), or f is non-finite there"
        )
