"""Exceptions raised by the solvers; each message names the problem and the offending value."""

from __future__ import annotations

import math
import os
import sys

import torch


class SolverError(RuntimeError):
    """A solve could not be completed."""


class MaxStepsError(SolverError, AssertionError):
    """The solver took more steps than ``max_steps`` allows. Also an ``AssertionError``, as
    torchdiffeq's "max_num_steps exceeded" is, so that code written for torchdiffeq that
    catches it catches this."""


class StepSizeUnderflowError(SolverError):
    """The step size became too small to make progress in time."""


class NonFiniteError(SolverError):
    """NaN or infinity appeared in the state."""


Y0_NOT_FINITE = "y0 contains NaN or inf"  # (checked on the host, or in the whole-solve graph)


def f0_not_finite(where: str, end: str = "") -> NonFiniteError:
    """The error of a first step whose rule finds the scaled norm of f(t0, y0) non-finite
    (``where``: " at t0=..." or " for sample i"; ``end``: the message's last character): f0
    has NaN or inf, or finite values too large for the tolerances (divided by atol + rtol
    |y0| they overflow the dtype)."""
    return NonFiniteError(
        f"f(t0, y0) contains NaN or inf{where}, or values so large (or atol + rtol * |y0| so "
        "small: atol = 0 with a tiny state) that divided by atol + rtol * |y0| they overflow "
        "the state's dtype: check f at t0, rescale the problem or raise atol, or give the "
        f"first step (PIController(first_step=...)){end}"
    )


def raise_stalled(
    t: float,
    dt: float,
    y: torch.Tensor,
    floor: float,
    last_y1: torch.Tensor | None = None,
    sample: int | None = None,
    hint: str = "",
) -> None:
    """The error of a solve (or of one ``sample`` of a per-sample solve) whose next step
    from ``(t, y)``, of size ``dt``, cannot make progress: a non-finite state, steps that
    only produce non-finite values (the last one ``last_y1``), a non-finite step size, or a
    step below ``floor``, the smallest step the solve resolves at t
    (``controllers._ops.step_floor``). One message for every mode; ``hint`` (the solver's
    ``failure_hint``, e.g. Newton failures of an implicit method) ends the messages of
    failing steps.

    Raises:
        NonFiniteError: the state or the steps are non-finite.
        StepSizeUnderflowError: the step underflows.
    """
    of = "" if sample is None else f" of sample {sample}"
    inside = "" if sample is None else f" in sample {sample}"
    if not bool(torch.isfinite(y).all()):
        raise NonFiniteError(f"the state{of} became non-finite (NaN or inf) at t={t:.6g}")
    if last_y1 is not None and not bool(torch.isfinite(last_y1).all()):
        raise NonFiniteError(
            f"NaN or inf in the state{of}: every step from t={t:.6g} produced non-finite "
            f"values, down to dt={dt:.3g}. f(t, y) is probably non-finite there or the "
            f"solution blows up.{_sentence(hint)}"
        )
    if not math.isfinite(dt):
        raise NonFiniteError(f"non-finite step size proposed{inside} at t={t:.6g}")
    raise StepSizeUnderflowError(
        f"step size underflow{inside} at t={t:.10g}: the next step (dt={dt:.3g}) is below "
        f"the smallest step the solve resolves there, {floor:.3g} (4 float64 ulps of the "
        "larger of |t| and 2^-52 times the length of the time span). The solution may blow "
        "up, f may be non-finite or discontinuous near this time (declare discontinuities "
        f"with jump_t), or the problem may be stiff.{_sentence(hint)}"
    )


def raise_repeated(t: float, t1: float, hint: str = "", sample: int | None = None) -> None:
    """The error of a solve (or of one ``sample`` of a per-sample solve) whose rejected step
    from ``t`` to ``t1`` would be retried unchanged: its error was non-finite (a step at
    ``min_step`` with any finite error is accepted) and the step size cannot shrink below
    ``min_step``. ``hint``: the solver's ``failure_hint``.

    Raises:
        StepSizeUnderflowError: the step, and the fixes.
    """
    of = "" if sample is None else f" of sample {sample}"
    raise StepSizeUnderflowError(
        f"the step{of} from t={t:.10g} to t={t1:.10g} failed (a non-finite error estimate: NaN or "
        "inf in the step, or a failed implicit solve) and cannot be retried shorter: its "
        "size is held at the controller's min_step. Lower min_step (dt_min), or check f "
        f"near this time.{_sentence(hint)}"
    )


def max_steps_error(
    max_steps: int,
    t: float,
    t_end: float,
    counts: str,
    sample: int | None = None,
    hint: str = "",
) -> MaxStepsError:
    """The error of a solve that used up ``max_steps`` at ``t`` before ``t_end``; ``counts``
    says whose steps (e.g. "3 accepted, 1 rejected steps" or "sample 2's steps"). One
    message for every mode. ``hint``, the solver's ``failure_hint`` (an implicit method's
    Newton failures), replaces the advice to use a stiff method, which that solver is."""
    who = "" if sample is None else f"sample {sample} "
    advice = (
        " or loosen the tolerances." + _sentence(hint)
        if hint
        else ", loosen the tolerances, or, if the problem is stiff, use a stiff method (radau)."
    )
    return MaxStepsError(
        f"{who}reached max_steps={max_steps} at t={t:.6g} before t={t_end:.6g} ({counts}). Raise "
        f"max_steps (options max_num_steps){advice}"
    )


def _sentence(hint: str) -> str:
    """``hint``, a sentence, to append to a message ("" stays "")."""
    return f" {hint}" if hint else ""


def user_stacklevel() -> int:
    """The ``stacklevel`` of a warning raised by the caller that points at the first frame
    outside neuralode (the user's line), however deep the call into the package."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level
