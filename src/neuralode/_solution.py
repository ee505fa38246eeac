"""What a solve returns: the states at the requested times and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class SolveStats:
    """Work done by a solve.

    Attributes:
        nfe: evaluations of f in the forward pass (in per-sample mode: batched calls of f,
            what the solve cost).
        n_steps: step attempts of the forward pass.
        n_accepted: accepted steps.
        n_rejected: rejected steps.
        nfe_backward: evaluations of f in the backward pass (adjoint strategies), filled in by
            backward.
        n_steps_backward: steps of the backward pass.
        sample_nfe: per-sample mode only: each sample's evaluations of f, a (batch,) tensor.
            The totals above are then sums over the samples, except ``nfe``.
        sample_steps: per-sample mode only: each sample's step attempts, (batch,).
        sample_accepted: per-sample mode only: each sample's accepted steps, (batch,).
        sample_rejected: per-sample mode only: each sample's rejected steps, (batch,).
        rows_evaluated: per-sample mode only: sample rows f was evaluated on, summed over its
            calls (batch x ``nfe`` unless ``skip_finished`` left finished samples out).
        status: the [`Status`][neuralode.Status] codes of the forward solve (as
            ``Solution.status``).
    """

    nfe: int = 0
    n_steps: int = 0
    n_accepted: int = 0
    n_rejected: int = 0
    nfe_backward: int = 0
    n_steps_backward: int = 0
    sample_nfe: torch.Tensor | None = None
    sample_steps: torch.Tensor | None = None
    sample_accepted: torch.Tensor | None = None
    sample_rejected: torch.Tensor | None = None
    rows_evaluated: int | None = None
    status: torch.Tensor | None = None

    def as_dict(self) -> dict[str, Any]:
        """The statistics that are set, as a dict (for logging).

        Returns:
            ``{name: value}`` for every attribute that is not ``None``.
        """
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class Solution:
    """What [`solve`][neuralode.solve] returns.

    Attributes:
        ts: the output times (one problem with a terminal event: only those up to it, an
            output exactly at the located event time included); per-sample output times:
            the (batch, n) tensor given.
        ys: the states at ``ts``: the structure of ``y0`` with a leading dimension over ``ts``
            (per-sample output times: (n, batch, ...), ``ys[j, i]`` sample i at ``ts[i, j]``).
        stats: the work done, a [`SolveStats`][neuralode.SolveStats].
        event_t: with a terminal event: its time (0-dim), differentiable. Per-sample events:
            (batch,) times, NaN for samples without one.
        event_y: with a terminal event: the state there, differentiable. Per-sample events:
            (batch, ...) states, NaN for samples without one.
        event_ts: with an event: the times of every located crossing, in order (per-sample
            events: (batch, most events), NaN-padded).
        event_mask: per-sample terminal events: (batch,) bool, which samples had their event.
        status: the outcome as [`Status`][neuralode.Status] codes (int64): 0-dim for one
            problem, (batch,) in per-sample mode. With ``solve(..., throw=False)`` a failure
            shows here instead of raising, and the failed problem's or sample's outputs after
            the last output it reached are NaN.
        interpolation: with ``dense=True``: the kept steps that ``evaluate`` and
            ``derivative`` use (``None`` otherwise).
    """

    ts: torch.Tensor
    ys: Any
    stats: SolveStats = field(default_factory=SolveStats)
    event_t: torch.Tensor | None = None
    event_y: Any = None
    event_ts: torch.Tensor | None = None
    event_mask: torch.Tensor | None = None
    status: torch.Tensor | None = None
    interpolation: Any = field(default=None, repr=False)

    @property
    def succeeded(self) -> bool:
        """Whether the solve, and in per-sample mode every sample, succeeded: reached its
        last output time or its terminal event (``status`` SUCCESS or EVENT)."""
        if self.status is None:
            return True
        return bool(((self.status == 0) | (self.status == 4)).all())  # SUCCESS, EVENT

    def evaluate(self, t: Any) -> Any:
        """The solution at the times ``t``, on the method's own continuous extension.

        Arguments:
            t: times inside the solved span (forward or backward in time), a tensor of any
                shape; per sample, (batch,) (one time per sample) or (batch, n) (each
                sample its own times).

        Returns:
            The states: ``t.shape`` followed by ``y0``'s shape (per sample: by a sample's
            shape), in ``y0``'s structure; differentiable with respect to ``y0`` and the
            parameters of ``func``, and once with respect to a ``t`` that requires grad
            (its gradient is [`derivative`][neuralode.Solution.derivative]).

        Raises:
            ValueError: the solve did not keep its steps (``dense=True``), ``t`` outside the
                span, or of the wrong shape.
            TypeError: ``t`` is complex or bool (times are real).
            RuntimeError: in a backward pass with ``create_graph=True`` through the
                gradient with respect to ``t`` (its second derivative is not kept).
        """
        return self._dense("evaluate")(t)

    def derivative(self, t: Any) -> Any:
        """dy/dt at the times ``t``: the time derivative of the continuous extension that
        [`evaluate`][neuralode.Solution.evaluate] uses (of one order lower).

        Arguments:
            t: times inside the solved span, as for ``evaluate``.

        Returns:
            The derivatives, shaped as ``evaluate``'s states.

        Raises:
            ValueError: as ``evaluate``; or a ``t`` that requires grad (the second
                derivative is not kept): pass ``t.detach()``.
            TypeError: as ``evaluate``.
        """
        return self._dense("derivative")(t, derivative=True)

    def _dense(self, name: str) -> Any:
        if self.interpolation is None:
            raise ValueError(
                f"Solution.{name} needs the solve's steps: solve with dense=True (or "
                "saveat=no.SaveAt(dense=True))"
            )
        return self.interpolation
