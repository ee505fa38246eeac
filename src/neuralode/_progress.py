"""Progress meters for long solves: how far a solve has come, shown while it runs.

A meter is an observer: it changes no step, no decision and no host read. The solve opens it
once (``ProgressMeter.start``), reports to it where its loop already is on the host, and
closes it once, also when the solve raises (``ProgressMeter.close`` with the error):

- the host loop (one problem; ``compile="step"`` too) reports after every step attempt,
  through the loop's callback hooks (``_Tracker.hooks``): a solve without a meter runs the
  loop unchanged;
- the device loop (``per_sample=True``, ``device_loop=True``, ``cuda_graph``) reports at its
  scheduled termination checks, from values stacked into the check's one read
  (``device_values``): no read is added;
- ``compile=True``'s whole-solve graph has no host step: it reports once, after the graph's
  one read (0 % until then, 100 % at the end).

Backsolve's backward solves have no meter; ``solve_dde`` reports its intervals' solves into
one meter over its whole span.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from ._args import count


@dataclass(frozen=True)
class Progress:
    """Where a solve is, as a meter receives it.

    Attributes:
        fraction: the fraction of the time span done, in [0, 1]: ``(t - t0) / (t1 - t0)``;
            per sample the least over the samples still running (the slowest sample, whose
            end is the solve's end; 1 when none runs). NaN when ``t1`` is infinite (an
            event search).
        t: the current time (per sample: the slowest running sample's).
        n_accepted: the accepted steps so far (per sample: summed over the samples).
        n_rejected: the rejected steps so far (per sample: summed over the samples).
    """

    fraction: float
    t: float
    n_accepted: int
    n_rejected: int


class ProgressMeter:
    """The protocol of a progress meter: subclass it and override ``update`` (and, if
    needed, ``start`` and ``close``) to show a solve's progress your own way.

    A solve calls ``start`` once before its first step, ``update`` as it goes (the host
    loop: after every step attempt; per-sample mode and the device loop: at their scheduled
    termination checks; ``compile=True``'s whole-solve graph: once, at its end) and
    ``close`` once at the end, with the error when the solve raises. A meter object may be
    given to many solves one after another (each opens and closes it), not to two at once.

    Example:
        ```python
        class Log(neuralode.ProgressMeter):
            def update(self, progress):
                print(f"{100 * progress.fraction:.0f}% t={progress.t:.3g}")

        neuralode.solve(f, y0, ts, progress_meter=Log())
        ```
    """

    def start(self, t0: float, t1: float) -> None:
        """Called once before the solve's first step.

        Arguments:
            t0: the initial time (per-sample spans: the earliest start).
            t1: the end time (per-sample spans: the latest end; ``inf`` for an event
                search).
        """

    def update(self, progress: Progress) -> None:
        """Called as the solve advances (see the class).

        Arguments:
            progress: where the solve is ([`Progress`][neuralode.Progress]).
        """
        raise NotImplementedError(f"{type(self).__name__} must define update(progress)")

    def close(self, error: BaseException | None) -> None:
        """Called once when the solve ends.

        Arguments:
            error: the exception the solve raises (``MaxStepsError``, ...), or ``None``
                when it returns (also with ``throw=False`` and failed samples, which
                ``Solution.status`` reports).
        """


class TqdmProgressMeter(ProgressMeter):
    """A tqdm bar of the fraction of the time span done, with the current ``t`` and the
    accepted and rejected steps (diffrax's ``TqdmProgressMeter``).

    Each solve it is given opens a new bar and closes it at its end, also when the solve
    raises (the bar then stays where the solve stopped). With an infinite end time (an
    event search) the bar shows ``t`` and the steps without a percentage.

    Arguments:
        desc: the text in front of the bar.
        refresh_steps: the bar is redrawn at most once per this many step attempts (and at
            most every ``mininterval`` seconds, tqdm's own limit, 0.1 by default); the end of
            the span always shows. A positive integer.
        file: where the bar is written (``None``: stderr); e.g. an ``io.StringIO``.
        leave: keep the finished bar on screen.
        **tqdm_kwargs: passed on to ``tqdm.tqdm`` (e.g. ``mininterval``, ``ncols``,
            ``disable``).

    Raises:
        ValueError: ``refresh_steps`` is not a positive integer, ``desc`` not a string.

    Example:
        ```python
        sol = neuralode.solve(f, y0, ts, progress_meter=neuralode.TqdmProgressMeter())
        # solve: 100%|██████████| [00:03<00:00, t=10, accepted=2113, rejected=57]
        ```
    """

    def __init__(
        self,
        desc: str = "solve",
        refresh_steps: int = 10,
        *,
        file: Any = None,
        leave: bool = True,
        **tqdm_kwargs: Any,
    ):
        if not isinstance(desc, str):
            raise ValueError(f"desc must be a string, got {desc!r}")
        try:
            self.refresh_steps = count("refresh_steps", refresh_steps)
        except ValueError:
            raise ValueError(
                f"refresh_steps must be a positive integer (redraw the bar every that many "
                f"steps), got {refresh_steps!r}"
            ) from None
        self.desc, self.file, self.leave, self.tqdm_kwargs = desc, file, leave, tqdm_kwargs
        self.bar: Any = None  # the open bar (``tqdm.tqdm``), between start and close
        self._drawn = 0  # the steps at the last redraw
        self._last: Progress | None = None  # the last update, drawn or not

    def start(self, t0: float, t1: float) -> None:
        """Opens the bar: a percentage over [``t0``, ``t1``], or ``t`` and the steps alone
        when ``t1`` is infinite.

        Arguments:
            t0: the initial time.
            t1: the end time (``inf`` for an event search).
        """
        from tqdm.auto import tqdm

        if math.isfinite(t1):
            total, form = 1.0, "{l_bar}{bar}| [{elapsed}<{remaining}{postfix}]"
        else:  # no span to measure against: t and the steps only
            total, form = None, "{desc}: [{elapsed}{postfix}]"
        kwargs = dict(bar_format=form, dynamic_ncols=True, **self.tqdm_kwargs)
        self.bar = tqdm(total=total, desc=self.desc, file=self.file, leave=self.leave, **kwargs)
        self._drawn, self._last = 0, None

    def update(self, progress: Progress) -> None:
        """Moves the bar to ``progress`` and shows its ``t`` and steps, at most once per
        ``refresh_steps`` attempts (the end of the span always).

        Arguments:
            progress: where the solve is ([`Progress`][neuralode.Progress]).
        """
        self._last = progress
        steps = progress.n_accepted + progress.n_rejected
        # (the end always shows; a NaN fraction, towards t = inf, is no end)
        if steps - self._drawn >= self.refresh_steps or progress.fraction >= 1:
            self._draw(progress)

    def _draw(self, progress: Progress) -> None:
        bar = self.bar
        if bar is None:
            return
        self._drawn = progress.n_accepted + progress.n_rejected
        counts = f"accepted={progress.n_accepted}, rejected={progress.n_rejected}"
        bar.set_postfix_str(f"t={progress.t:.6g}, {counts}", refresh=False)
        if bar.total is None or progress.fraction != progress.fraction:
            bar.refresh()
        else:  # (tqdm's update redraws at most every mininterval)
            bar.update(progress.fraction - bar.n)

    def close(self, error: BaseException | None) -> None:
        """Closes the bar where the solve stopped.

        Arguments:
            error: the exception the solve raises, or ``None``.
        """
        if self.bar is not None:
            last = self._last
            if last is not None and last.n_accepted + last.n_rejected != self._drawn:
                self._draw(last)  # where the solve stopped (tqdm's close shows it)
            self.bar.close()
            self.bar = None


class _Tracker:
    """The engine's side of a meter: the span it measures against and the calls in the
    loops' terms (``report``, ``hooks``)."""

    def __init__(self, meter: ProgressMeter, t0: float, t1: float):
        self.meter, self.t0, self.t1 = meter, t0, t1
        self.finite = math.isfinite(t1)
        self.n_accepted = self.n_rejected = 0  # (the host loop's counts)

    def __enter__(self) -> _Tracker:
        self.meter.start(self.t0, self.t1)
        return self

    def __exit__(self, kind: Any, error: BaseException | None, traceback: Any) -> None:
        self.meter.close(error)

    def report(self, fraction: float, t: float, n_accepted: int, n_rejected: int) -> None:
        """Send the meter where the solve is (NaN for the fraction of an infinite span)."""
        fraction = min(max(fraction, 0.0), 1.0) if self.finite else math.nan
        self.meter.update(Progress(fraction, t, int(n_accepted), int(n_rejected)))

    def hooks(self, callbacks: Any, t0: float, t1: float) -> _HostHooks:
        """The host loop's callback hooks: the user's ``callbacks`` (or ``None``), then a
        report after every attempt, measured on the loop's span [``t0``, ``t1``]."""
        self.n_accepted = self.n_rejected = 0
        return _HostHooks(self, callbacks, t0, t1)


class _HostHooks:
    """``_callbacks.Callbacks``' hooks for the host loop with a meter: the user's callbacks
    first, then the meter's report of the attempt."""

    def __init__(self, tracker: _Tracker, callbacks: Any, t0: float, t1: float):
        self.tracker, self.callbacks, self.t0 = tracker, callbacks, t0
        self.scale = 1.0 / (t1 - t0) if math.isfinite(t1) and t1 != t0 else 0.0

    def step(self, t: float, y: torch.Tensor, dt: float) -> None:
        if self.callbacks is not None:
            self.callbacks.step(t, y, dt)

    def accept(self, t: float, y: torch.Tensor, dt: float) -> None:
        if self.callbacks is not None:
            self.callbacks.accept(t, y, dt)
        tracker = self.tracker
        tracker.n_accepted += 1
        t1 = t + dt
        tracker.report((t1 - self.t0) * self.scale, t1, tracker.n_accepted, tracker.n_rejected)

    def reject(self, t: float, y: torch.Tensor, dt: float) -> None:
        if self.callbacks is not None:
            self.callbacks.reject(t, y, dt)
        tracker = self.tracker
        tracker.n_rejected += 1
        tracker.report((t - self.t0) * self.scale, t, tracker.n_accepted, tracker.n_rejected)


def device_values(
    t: torch.Tensor,
    t_start: torch.Tensor,
    t_stop: torch.Tensor,
    still: torch.Tensor,
    n_steps: torch.Tensor,
    n_accepted: torch.Tensor,
    sign: float,
) -> list[torch.Tensor]:
    """The device loop's progress as 0-dim tensors for its check's one read: the least
    fraction done over the running samples and that sample's t (when none runs: the sample
    with the latest t in the direction ``sign``, short of 1 where a terminal event stopped
    it), and the accepted and rejected steps of the batch."""
    span = t_stop - t_start
    done = torch.where(span != 0, (t - t_start) / torch.where(span != 0, span, 1.0), 1.0)
    key = torch.where(still, done, 2.0)
    shown = torch.where(still.any(), key.argmin(), (sign * t).argmax())
    accepted = n_accepted.sum()
    return [done[shown].clamp(max=1.0), t[shown], accepted, n_steps.sum() - accepted]


def tracker_of(meter: Any, times: list[float] | torch.Tensor) -> _Tracker | None:
    """The engine's tracker of ``solve``'s ``progress_meter`` over its output ``times``
    (floats, or per-sample times (batch, n)); ``None`` without a meter.

    Raises:
        TypeError: ``meter`` is not a ``ProgressMeter``.
    """
    if meter is None:
        return None
    if not isinstance(meter, ProgressMeter):
        raise TypeError(
            f"progress_meter must be a neuralode.ProgressMeter (e.g. "
            f"neuralode.TqdmProgressMeter(), or a subclass defining update(progress)), got "
            f"{meter!r}"
        )
    if isinstance(times, torch.Tensor):  # per-sample spans: the earliest start, latest end
        rising = bool(times[0, -1] > times[0, 0])
        pick = torch.amin if rising else torch.amax
        other = torch.amax if rising else torch.amin
        t0, t1 = float(pick(times[:, 0])), float(other(times[:, -1]))
    else:
        t0, t1 = float(times[0]), float(times[-1])
    return _Tracker(meter, t0, t1)
