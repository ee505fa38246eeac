"""Residual fitting of a hypersolver's correction (Poli et al., NeurIPS 2020): the correction
regresses the base method's scaled local truncation error along reference trajectories."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .._solve import solve
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..solvers.dopri5 import Dopri5
from ..solvers.hyper import HyperSolver
from .progress import progress_bar


def fit_hypersolver(
    hypersolver: HyperSolver,
    func: Callable[[torch.Tensor, Any], Any],
    y0: torch.Tensor,
    t0: float,
    t1: float,
    dt: float,
    *,
    steps: int = 1000,
    lr: float = 1e-3,
    time_batch: int | None = None,
    batch_size: int | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Fit the correction of ``hypersolver`` to the local truncation error of its base
    method along the trajectories of ``func`` from ``y0`` (residual fitting).

    The trajectories are solved with ``dopri5`` at tight tolerances and sampled every ``dt``
    from ``t0`` to ``t1``: the states y_n at t_n = t0 + n dt. Each state's target is the
    correction that makes the base method's step from it exact,

        g*_n = (y_ref(t_n + dt) - y_n - dt psi(t_n, y_n, dt)) / dt^(p+1),

    with ``dt psi`` the base method's step (a one-step solve of it) and p its order. Adam
    then minimises the mean of (correction(t_n, y_n, f(t_n, y_n), dt) - g*_n)^2 over the
    states, ``steps`` times; the states, f and the targets are computed once, so each
    iteration calls only the correction, once per time t_n it draws (``time_batch``), on
    the whole batch or on ``batch_size`` of its samples (dimension 0 of ``y0``; a
    mini-batch for a batch too large to regress on at once, e.g. an image classifier's
    training set). Fit at the ``dt`` the hypersolver will step with. ``func`` itself is not
    trained (its parameters receive no gradient).

    Arguments:
        hypersolver: the hypersolver whose correction (``hypersolver.parameters()``) is
            fitted in place.
        func: the vector field ``func(t, y)``.
        y0: the initial states, one tensor (a batch, ``(batch, ...)``, that ``func``
            takes as one state).
        t0: the start of the trajectories.
        t1: their end: the states are sampled at t0 + n dt up to the last one from which a
            step of ``dt`` stays within ``t1`` (up to round-off).
        dt: the step size.
        steps: the number of Adam iterations.
        lr: Adam's learning rate.
        time_batch: the number of times t_n each iteration draws at random (without
            replacement), each a call of the correction on the states at that time;
            ``None`` (the default) takes every time, the full loss each iteration.
        batch_size: the number of samples (along dimension 0 of ``y0``) each iteration
            draws at random (without replacement, the same ones at each time it draws); the
            correction must then treat the samples independently, as a network on a batch
            does. ``None`` (the default) takes the whole batch.
        rtol: the reference solve's relative tolerance; by default 1e-9, or 10 times the
            dtype's eps where that is larger (float32: 1.2e-6).
        atol: its absolute tolerance; by default ``rtol``'s default.
        progress: show a tqdm progress bar on stderr with the current loss.
        generator: the random number generator of the draws of ``time_batch`` and
            ``batch_size`` (default: torch's global one).

    Returns:
        The loss of each iteration, before its update (over the times it drew).

    Raises:
        TypeError: ``hypersolver`` is not a ``HyperSolver``, or ``y0`` is not a tensor.
        ValueError: the correction has no parameters that require grad, ``dt``, ``steps``,
            ``time_batch`` or ``batch_size`` is not positive, ``batch_size`` is given for a
            0-dim ``y0``, or the span from ``t0`` to ``t1`` is shorter than ``dt``.
    """
    if not isinstance(hypersolver, HyperSolver):
        raise TypeError(
            f"fit_hypersolver fits a HyperSolver's correction, got {type(hypersolver).__name__}"
        )
    if not isinstance(y0, torch.Tensor):
        raise TypeError(f"y0 must be one tensor (a batch of states), got {type(y0).__name__}")
    params = [p for p in hypersolver.parameters() if p.requires_grad]
    if not params:
        raise ValueError(
            f"{hypersolver!r}: its correction has no parameters that require grad; give it "
            "an nn.Module correction to fit"
        )
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive finite number, got {dt!r}")
    if not (isinstance(steps, int) and steps > 0):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if time_batch is not None and not (isinstance(time_batch, int) and time_batch > 0):
        raise ValueError(f"time_batch must be a positive integer or None, got {time_batch!r}")
    if batch_size is not None:
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if y0.ndim == 0:
            raise ValueError(
                "batch_size draws samples along dimension 0 of y0, which is 0-dim here: give "
                "y0 a batch dimension or leave batch_size out"
            )
    n = math.floor((t1 - t0) / dt * (1 + 1e-12))
    if n < 1:
        raise ValueError(
            f"the span from t0={t0} to t1={t1} is shorter than one step of dt={dt}: give "
            "t1 >= t0 + dt"
        )
    real = y0.real.dtype if y0.is_complex() else y0.dtype
    default = max(1e-9, 10 * torch.finfo(real).eps)
    rtol = default if rtol is None else rtol
    atol = default if atol is None else atol
    y0 = y0.detach()
    ts = t0 + dt * torch.arange(n + 1, dtype=torch.float64)
    times = [torch.full((), float(t), dtype=real, device=y0.device) for t in ts]
    p = hypersolver.order
    with torch.no_grad():
        reference = solve(
            func,
            y0,
            ts.to(device=y0.device, dtype=real),
            solver=Dopri5(),
            controller=PIController(rtol=rtol, atol=atol),
        ).ys
        samples = []
        for k in range(n):
            y, span = reference[k], torch.stack([times[k], times[k + 1]])
            base = solve(func, y, span, solver=hypersolver.base, controller=FixedGrid()).ys[1]
            # the step size as the solve takes it: the difference of the times as floats
            h = float(times[k + 1]) - float(times[k])
            target = (reference[k + 1] - base) / h ** (p + 1)
            dt_k = torch.full((), h, dtype=real, device=y0.device)
            samples.append((times[k], y, func(times[k], y), dt_k, target))
    optimizer = torch.optim.Adam(params, lr=lr)
    bar = progress_bar(steps, "fit_hypersolver", enabled=progress)
    losses: list[float] = []
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            drawn = samples
            if time_batch is not None and time_batch < n:
                order = torch.randperm(n, generator=generator)[:time_batch].tolist()
                drawn = [samples[k] for k in order]
            if batch_size is not None and batch_size < y0.shape[0]:
                rows = torch.randperm(y0.shape[0], generator=generator)[:batch_size]
                rows = rows.to(y0.device)
                drawn = [(t, y[rows], dy[rows], h, target[rows]) for t, y, dy, h, target in drawn]
            loss = sum(
                (hypersolver.correction(t, y, dy, h) - target).abs().pow(2).mean()
                for t, y, dy, h, target in drawn
            ) / len(drawn)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3g}", refresh=False)
    finally:
        bar.close()
    return losses
