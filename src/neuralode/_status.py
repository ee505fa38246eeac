"""What became of a solve, or of each sample of a per-sample solve: ``Status`` codes.

With ``solve(..., throw=False)`` a failure does not raise: the solve (one problem) or the
failing sample (per-sample mode) stops where it failed, its outputs after that are NaN, and
``Solution.status`` says why. The failures are the engine's errors (``_errors``), one code
each; the classification of a stalled sample is the one ``_errors.raise_stalled`` makes.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np
import torch

from ._errors import (
    MaxStepsError,
    NonFiniteError,
    SolverError,
    StepSizeUnderflowError,
    max_steps_error,
    raise_repeated,
    raise_stalled,
)
from ._host import plain, wrapped
from ._pending import _stalled as stalled
from .controllers._checks import check_overflow
from .controllers._ops import step_floor


class Status(enum.IntEnum):
    """The outcome of a solve, or of one sample of a per-sample solve
    ([`Solution.status`][neuralode.Solution] holds these codes as integers).

    Attributes:
        SUCCESS: reached the last output time.
        MAX_STEPS: stopped after ``max_steps`` step attempts (``MaxStepsError``).
        STEP_SIZE_UNDERFLOW: the step size fell below the smallest step the solve
            resolves, 4 float64 ulps of the larger of |t| and 2^-52 times the length of the
            time span (``StepSizeUnderflowError``: a blow-up, a discontinuity or stiffness).
        NON_FINITE: NaN or inf in the state or the step size (``NonFiniteError``).
        EVENT: stopped at its terminal event (a success).
    """

    SUCCESS = 0
    MAX_STEPS = 1
    STEP_SIZE_UNDERFLOW = 2
    NON_FINITE = 3
    EVENT = 4


#: the exception of each failure code, and the code of each exception
ERRORS = {
    Status.MAX_STEPS: MaxStepsError,
    Status.STEP_SIZE_UNDERFLOW: StepSizeUnderflowError,
    Status.NON_FINITE: NonFiniteError,
}
_WORDS = {
    Status.MAX_STEPS: "max_steps reached",
    Status.STEP_SIZE_UNDERFLOW: "step size underflow",
    Status.NON_FINITE: "non-finite",
}


def success(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``Status.SUCCESS`` codes of ``shape`` (``()``: one problem; ``(batch,)``) on ``like``'s
    device; on CPU through NumPy (~0.8 us instead of ~1.7 for ``torch.zeros``)."""
    if like.is_cpu:
        return torch.from_numpy(np.zeros(shape, dtype=np.int64))
    return torch.zeros(shape, dtype=torch.long, device=like.device)


def code_of(error: Exception) -> Status:
    """The status of a failure raised as ``error`` (one of the engine's three errors)."""
    for code, kind in ERRORS.items():
        if isinstance(error, kind):
            return code
    raise TypeError(f"no status for {type(error).__name__}")  # pragma: no cover


def failed(status: torch.Tensor) -> torch.Tensor:
    """Which entries of a status tensor are failures (neither SUCCESS nor EVENT)."""
    return (status != Status.SUCCESS) & (status != Status.EVENT)


def samples_failed(codes: torch.Tensor, error: Exception) -> Exception:
    """``error`` (the first failing sample's, from the engine's one message) followed by
    every failing sample of ``codes`` ((batch,) status codes), the first few by index."""
    indices = failed(codes).nonzero().squeeze(1).tolist()
    shown = ", ".join(f"{i} ({_WORDS[Status(int(codes[i]))]})" for i in indices[:5])
    more = f" and {len(indices) - 5} more" if len(indices) > 5 else ""
    message = (
        f"{error} Failed: {len(indices)} of {codes.shape[0]} samples: {shown}{more}; "
        "solve(..., throw=False) returns every sample's results up to where it stopped and "
        "a per-sample Solution.status."
    )
    return type(error)(message)


def mark_non_finite(status: torch.Tensor, ys: torch.Tensor, batch: int | None) -> torch.Tensor:
    """``status`` with NON_FINITE where a successful problem's (``batch`` None) or sample's
    outputs ``ys`` (len(ts), n) contain NaN or inf."""
    rows = ys.reshape(ys.shape[0], batch or 1, -1)
    bad = ~torch.isfinite(rows).all(2).all(0)
    bad = bad if batch is not None else bad[0]
    return torch.where(bad & (status == Status.SUCCESS), int(Status.NON_FINITE), status)


def sample_failures(
    iteration: int,
    still: torch.Tensor,
    t: torch.Tensor,
    proposal: torch.Tensor,
    t_stop: torch.Tensor,
    span: torch.Tensor,
    rejected: torch.Tensor,
    sign: float,
    y: torch.Tensor,
    config: Any,
    repeated: torch.Tensor | None = None,
) -> torch.Tensor:
    """A check of the per-sample loop found running samples that can no longer advance (or,
    ``repeated``, whose rejected step would be retried unchanged), or the solve used up
    max_steps (each running sample's own count: they have all made ``iteration`` attempts):
    each sample's ``Status`` code, (batch,), 0 for the others (``span``: the length of each
    sample's time span, the scale of its smallest step; ``rejected``: the samples whose last
    attempt was rejected). With ``config.throw`` raise the engine's error of the first
    failing sample, naming every failing one."""
    land = torch.minimum(proposal, t_stop) if sign > 0 else torch.maximum(proposal, t_stop)
    if iteration >= config.max_steps:
        codes = torch.where(still, int(Status.MAX_STEPS), 0)
    else:  # as ``raise_stalled`` and ``check_overflow`` classify a stall
        largest = torch.finfo(y.real.dtype).max
        bad = ~torch.isfinite(y).all(1) | ~torch.isfinite(land) | (y.abs().amax(1) > largest / 1024)
        code = torch.where(bad, int(Status.NON_FINITE), int(Status.STEP_SIZE_UNDERFLOW))
        halted = stalled(still, t, proposal, t_stop, span, rejected, sign, repeated)
        codes = torch.where(halted, code, 0)
    if not config.throw:
        return codes
    found = codes
    if wrapped(codes):  # under torch.func.vmap: every problem's rows (``_host``), as samples
        anchor = codes * 0  # batched like codes, which depends on all of them
        t, land, t_stop, span = (plain(x + anchor).reshape(-1) for x in (t, land, t_stop, span))
        y = plain(y + anchor[:, None]).reshape(t.shape[0], -1)
        if repeated is not None:
            repeated = plain(repeated | (anchor != 0)).reshape(-1)
        codes = plain(codes).reshape(-1).clone()
    failing = codes.nonzero()
    if not failing.numel():  # max_steps reached by the attempt that finished the last sample
        return found
    i = int(failing[0])
    several = config.per_sample or codes.shape[0] > 1  # (else one problem: a batch of one)
    sample = i if several else None
    try:
        if iteration >= config.max_steps:
            counts = (
                "per-sample mode counts each sample's steps"
                if several
                else (f"{iteration} step attempts")
            )
            raise max_steps_error(config.max_steps, float(t[i]), float(t_stop[i]), counts, sample)
        if bool(torch.isfinite(y[i]).all()):
            check_overflow(float(t[i]), y[i])
        if repeated is not None and bool(repeated[i]):
            raise_repeated(float(t[i]), float(land[i]), sample=sample)
        floor = step_floor(float(t[i]), float(span[i]))
        raise_stalled(float(t[i]), float(land[i] - t[i]), y[i], floor, sample=sample)
    except SolverError as error:
        codes[i] = code_of(error)
        if int((codes != 0).sum()) == 1 and codes.shape[0] == 1:
            raise
        raise samples_failed(codes, error) from None
    return codes  # pragma: no cover (raise_stalled raises)
