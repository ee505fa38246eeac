"""Multiple-shooting training loss: the observation times cut into overlapping groups, every
group solved from its own initial state as one batch of independent problems (per-sample mode),
the data misfit of every group plus a continuity penalty between neighbouring groups.

Fitting a neural ODE to one long oscillatory trajectory by single shooting (one solve from the
first observation) tends to stall in local minima (the mean, a damped oscillation); short
groups from their own initial states keep every solve short, and the continuity penalty joins
them into one trajectory (DiffEqFlux's ``multiple_shoot``; Turan & Jäschke 2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._args import is_int
from .._solution import SolveStats
from .._solve import solve

__all__ = [
    "MultipleShooting",
    "ShootingLoss",
    "multiple_shooting_loss",
    "shooting_groups",
    "single_shooting",
]

# Options that would change which outputs the solve returns: the groups need exactly their
# observation times.
_REFUSED = ("event", "saveat", "dense")

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (prediction - target).pow(2).mean()


def shooting_groups(
    n: int, *, group_size: int | None = None, segments: int | None = None
) -> torch.Tensor:
    """The observation indices of every group: K groups of the same length L covering 0..n-1.

    Neighbouring groups share at least their boundary observation. Give ``group_size`` (L; then
    K = ceil((n - 1) / (L - 1))) or ``segments`` (K; then L = ceil((n - 1) / K) + 1). The
    starts are spread evenly over 0..n-L (rounded), so when L - 1 divides n - 1 every group
    starts where the previous one ends; otherwise some neighbours overlap by a few more
    observations (all groups have one length, as one per-sample solve needs).

    Arguments:
        n: the number of observations.
        group_size: observations per group (at least 2, at most ``n``).
        segments: the number of groups (at least 1, at most ``n - 1``).

    Returns:
        A (K, L) integer tensor; row k holds group k's consecutive observation indices.

    Raises:
        ValueError: if neither or both of ``group_size`` and ``segments`` are given, or the one
            given does not fit ``n`` observations.
    """
    if (group_size is None) == (segments is None):
        raise ValueError(
            "give exactly one of group_size= (observations per group) and segments= (the "
            f"number of groups), got group_size={group_size}, segments={segments}"
        )
    if n < 2:
        raise ValueError(f"multiple shooting needs at least 2 observations, got {n}")
    if group_size is not None:
        if not is_int(group_size) or group_size < 2:
            raise ValueError(
                f"group_size must be an integer of at least 2 (a group is solved from its "
                f"first observation to its last), got {group_size!r}"
            )
        if group_size > n:
            raise ValueError(
                f"group_size={group_size} is more than the {n} observations: use at most "
                f"group_size={n} (one group: single shooting)"
            )
        group_size = int(group_size)
        length, count = group_size, math.ceil((n - 1) / (group_size - 1))
    else:
        if not is_int(segments) or segments < 1:
            raise ValueError(f"segments must be a positive integer, got {segments!r}")
        segments = int(segments)
        if segments > n - 1:
            raise ValueError(
                f"segments={segments} groups need at least {segments + 1} observations (2 "
                f"per group, neighbours sharing one), got {n}: use at most segments={n - 1}"
            )
        length, count = math.ceil((n - 1) / segments) + 1, segments
    if count == 1:
        starts = torch.zeros(1, dtype=torch.long)
    else:  # round(k (n - L) / (K - 1)) in integers
        k = torch.arange(count)
        starts = (2 * k * (n - length) + (count - 1)) // (2 * (count - 1))
    return starts[:, None] + torch.arange(length)


@dataclass(frozen=True)
class ShootingLoss:
    """The multiple-shooting loss of one evaluation and what it was made of.

    Attributes:
        loss: ``misfit + continuity * penalty``, the scalar to minimise.
        misfit: the data misfit, ``loss_fn(predictions, targets)`` over all groups at once.
        penalty: the unweighted continuity penalty: the mean squared difference between each
            group's state at the next group's first time and the next group's initial state
            (0 with one group).
        predictions: (L, K, *batch, d): ``predictions[j, k]`` is group k's solution at its
            j-th observation time.
        targets: the observations in the same layout as ``predictions``.
        y0s: (K, *batch, d): the initial state of every group.
        groups: the (K, L) observation indices of the groups (see `shooting_groups`).
        stats: the statistics of the one batched solve (``sample_steps`` per row; rows are
            group-major: row ``k * batch + b``).
    """

    loss: torch.Tensor
    misfit: torch.Tensor
    penalty: torch.Tensor
    predictions: torch.Tensor
    targets: torch.Tensor
    y0s: torch.Tensor
    groups: torch.Tensor
    stats: SolveStats


def _check_options(options: dict[str, Any]) -> dict[str, Any]:
    refused = [name for name in _REFUSED if name in options]
    if refused:
        raise TypeError(
            f"multiple shooting solves at the observation times only: {', '.join(refused)} "
            "cannot be passed; call neuralode.solve for those"
        )
    per_sample = options.pop("per_sample", True)
    if per_sample not in (True, "skip_finished"):
        raise ValueError(
            "multiple shooting solves its groups as independent problems: per_sample must be "
            f'True or "skip_finished", got {per_sample!r}'
        )
    return dict(options, per_sample=per_sample)


def _check_data(ts: torch.Tensor, ys: torch.Tensor) -> None:
    if not isinstance(ys, torch.Tensor) or ys.ndim not in (2, 3):
        shape = tuple(ys.shape) if isinstance(ys, torch.Tensor) else type(ys).__name__
        raise ValueError(
            "ys must be the observations as a tensor of shape (n, d) (one trajectory) or "
            f"(n, batch, d) (several), got {shape}"
        )
    n = ys.shape[0]
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"ts must be a tensor of observation times, got {type(ts).__name__}")
    shared = ts.shape == (n,)
    own = ys.ndim == 3 and ts.shape == (ys.shape[1], n)
    if not (shared or own):
        expected = f"({n},)" + (f" or (batch, n) = ({ys.shape[1]}, {n})" if ys.ndim == 3 else "")
        raise ValueError(
            f"ts of shape {tuple(ts.shape)} does not match ys of shape {tuple(ys.shape)}: "
            f"expected {expected}, one time per observation"
        )


def multiple_shooting_loss(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ts: torch.Tensor,
    ys: torch.Tensor,
    *,
    group_size: int | None = None,
    segments: int | None = None,
    continuity: float | torch.Tensor = 1.0,
    y0s: torch.Tensor | None = None,
    loss: LossFn | None = None,
    **solve_options: Any,
) -> ShootingLoss:
    """The multiple-shooting loss of ``func`` on observations ``ys`` at times ``ts``.

    The observation times are cut into K overlapping groups of L observations
    (`shooting_groups`); group k is solved from its initial state ``y0s[k]`` over its own
    times, all groups (and trajectories) in ONE per-sample solve of independent problems.
    The loss is ``loss(predictions, targets) + continuity * penalty``, the penalty being the
    mean squared mismatch between group k's state at group k+1's first time and
    ``y0s[k + 1]``. With one group (``group_size=n``) it is the single-shooting loss.

    ``func(t, y)`` is called as in per-sample mode: ``y`` of shape (rows, d) with one row per
    group and trajectory, and ``t`` of shape (rows,), each row's own time.

    Arguments:
        func: the vector field, ``func(t, y)`` on a batch of rows (see above).
        ts: the observation times: (n,) shared, or (batch, n) one row per trajectory when
            ``ys`` is (n, batch, d). Strictly monotonic; irregular spacing is fine.
        ys: the observations: (n, d) for one trajectory or (n, batch, d) for several.
        group_size: observations per group (at least 2); or give ``segments``.
        segments: the number of groups; or give ``group_size``.
        continuity: the weight of the continuity penalty (non-negative).
        y0s: the initial states of the groups, (K, *batch, d), typically trainable free
            states; ``None`` starts each group from its first observation.
        loss: the data misfit ``loss(predictions, targets)`` on tensors of shape
            (L, K, *batch, d); defaults to the mean squared error.
        **solve_options: passed to [`neuralode.solve`][neuralode.solve]: ``solver``,
            ``controller``, ``gradient`` (``Direct()`` or ``Backsolve()``), ``max_steps``,
            ``per_sample="skip_finished"``, ... The solver must be an explicit Runge-Kutta
            method (what per-sample mode supports): adaptive, or on fixed steps
            (``solver="rk4", controller=FixedGrid(step_size=h)``: each group steps from its
            own first time), where a hypersolver (``HyperEuler(correction)``) runs too.

    Returns:
        A [`ShootingLoss`][neuralode.shooting.ShootingLoss]: the loss, its two terms, the
        predictions and targets of the groups, their initial states and the solve's statistics.

    Raises:
        ValueError: for observations, times, group sizes or ``y0s`` of the wrong shape, a
            negative ``continuity``, or ``per_sample`` other than True/"skip_finished".
        TypeError: for ``event``, ``saveat`` or ``dense`` among the solve options.
    """
    _check_data(ts, ys)
    options = _check_options(dict(solve_options))
    if isinstance(continuity, torch.Tensor):
        negative = bool((continuity < 0).any())
    else:
        negative = continuity < 0
    if negative:
        raise ValueError(f"continuity is a penalty weight and must be >= 0, got {continuity}")
    groups = shooting_groups(ys.shape[0], group_size=group_size, segments=segments).to(ys.device)
    count, length = groups.shape
    state_shape = ys.shape[1:]  # (*batch, d)
    starts = groups[:, 0]
    if y0s is None:
        y0s = ys[starts]
    elif not isinstance(y0s, torch.Tensor) or y0s.shape != (count, *state_shape):
        shape = tuple(y0s.shape) if isinstance(y0s, torch.Tensor) else type(y0s).__name__
        raise ValueError(
            f"y0s must hold one initial state per group, shape (K, *batch, d) = "
            f"{(count, *state_shape)} for these {count} groups, got {shape}"
        )
    if ts.ndim == 1:
        group_ts = ts[groups]  # (K, L)
        if ys.ndim == 3:
            group_ts = group_ts[:, None].expand(count, ys.shape[1], length)
    else:
        group_ts = ts[:, groups].transpose(0, 1)  # (K, batch, L)
    rows = y0s.reshape(-1, state_shape[-1])
    solution = solve(func, rows, group_ts.reshape(-1, length), **options)
    predictions = solution.ys.reshape(length, count, *state_shape)
    targets = ys[groups.T]
    misfit = (loss or _mse)(predictions, targets)
    if count > 1:
        # group k's state where group k+1 starts: its (starts[k+1] - starts[k])-th output
        at = starts[1:] - starts[:-1]
        ends = predictions[at, torch.arange(count - 1, device=ys.device)]
        penalty = (ends - y0s[1:]).pow(2).mean()
    else:
        penalty = misfit.new_zeros(())
    return ShootingLoss(
        loss=misfit + continuity * penalty,
        misfit=misfit,
        penalty=penalty,
        predictions=predictions,
        targets=targets,
        y0s=y0s,
        groups=groups,
        stats=solution.stats,
    )


def single_shooting(
    func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    ts: torch.Tensor,
    y0: torch.Tensor,
    **solve_options: Any,
) -> torch.Tensor:
    """The whole trajectory solved in one piece from ``y0``: the single-shooting prediction.

    ``func`` is called as in `multiple_shooting_loss` (per-sample rows, one per trajectory),
    so the same vector field serves both, and a one-group multiple-shooting loss equals the
    loss of this prediction exactly.

    Arguments:
        func: the vector field, ``func(t, y)`` with ``y`` of shape (rows, d), ``t`` (rows,).
        ts: the output times: (n,) shared, or (batch, n) one row per trajectory.
        y0: the initial state: (d,) for one trajectory or (batch, d) for several.
        **solve_options: passed to [`neuralode.solve`][neuralode.solve] (as in
            `multiple_shooting_loss`).

    Returns:
        The solution at ``ts``: (n, d), or (n, batch, d) for a (batch, d) ``y0``.

    Raises:
        ValueError: if ``y0`` is not (d,) or (batch, d), or ``ts`` does not match it.
        TypeError: a ``ts`` that is not a tensor, or ``event``, ``saveat`` or ``dense`` among
            the solve options.
    """
    options = _check_options(dict(solve_options))
    if not isinstance(ts, torch.Tensor):
        raise TypeError(f"ts must be a tensor of times, got {type(ts).__name__}")
    if not isinstance(y0, torch.Tensor) or y0.ndim not in (1, 2):
        shape = tuple(y0.shape) if isinstance(y0, torch.Tensor) else type(y0).__name__
        raise ValueError(f"y0 must be (d,) or (batch, d), got {shape}")
    rows = y0.reshape(-1, y0.shape[-1])
    if ts.ndim == 1:
        row_ts = ts.expand(rows.shape[0], ts.shape[0])
    elif y0.ndim == 2 and ts.ndim == 2 and ts.shape[0] == y0.shape[0]:
        row_ts = ts
    else:
        raise ValueError(
            f"ts of shape {tuple(ts.shape)} does not match y0 of shape {tuple(y0.shape)}: "
            "expected (n,), or (batch, n) with a (batch, d) y0"
        )
    ys = solve(func, rows, row_ts, **options).ys
    return ys[:, 0] if y0.ndim == 1 else ys


class MultipleShooting(nn.Module):
    """Multiple-shooting training of a vector field, with the groups' initial states as free
    parameters.

    Holds ``func`` (registered as a submodule when it is an ``nn.Module``), the observations,
    and ``y0s``, one trainable initial state per group initialised at the group's first
    observation, so ``torch.optim.Adam(shooting.parameters())`` trains both. Calling the
    module returns the `multiple_shooting_loss` with those states.

    Arguments:
        func: the vector field, ``func(t, y)`` on per-sample rows (see
            `multiple_shooting_loss`).
        ts: the observation times, (n,) or (batch, n).
        ys: the observations, (n, d) or (n, batch, d).
        group_size: observations per group; or give ``segments``.
        segments: the number of groups; or give ``group_size``.
        continuity: the weight of the continuity penalty.
        loss: the data misfit on (L, K, *batch, d) tensors; defaults to the mean squared error.
        free_states: train the groups' initial states (``y0s``, an ``nn.Parameter``); with
            ``False`` each group starts from its first observation and ``y0s`` is ``None``.
        **solve_options: passed to [`neuralode.solve`][neuralode.solve] by the loss and by
            `predict`.

    Raises:
        ValueError: as `multiple_shooting_loss` for data or groups that do not fit.
        TypeError: as `multiple_shooting_loss` for refused solve options.
    """

    def __init__(
        self,
        func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        ts: torch.Tensor,
        ys: torch.Tensor,
        *,
        group_size: int | None = None,
        segments: int | None = None,
        continuity: float = 1.0,
        loss: LossFn | None = None,
        free_states: bool = True,
        **solve_options: Any,
    ):
        super().__init__()
        _check_data(ts, ys)
        _check_options(dict(solve_options))
        self.func = func
        self.register_buffer("ts", ts, persistent=False)
        self.register_buffer("ys", ys, persistent=False)
        groups = shooting_groups(ys.shape[0], group_size=group_size, segments=segments)
        self.grouping = dict(group_size=group_size, segments=segments)
        self.continuity = continuity
        self.loss_fn = loss
        self.solve_options = solve_options
        self.y0s = nn.Parameter(ys[groups[:, 0]].detach().clone()) if free_states else None

    def forward(self) -> ShootingLoss:
        """The multiple-shooting loss of the current ``func`` and ``y0s``.

        Returns:
            A [`ShootingLoss`][neuralode.shooting.ShootingLoss].
        """
        return multiple_shooting_loss(
            self.func,
            self.ts,
            self.ys,
            **self.grouping,
            continuity=self.continuity,
            y0s=self.y0s,
            loss=self.loss_fn,
            **self.solve_options,
        )

    def predict(
        self, ts: torch.Tensor | None = None, y0: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The single-shooting prediction of the whole trajectory, for evaluation.

        Arguments:
            ts: the output times; defaults to the observation times.
            y0: the initial state; defaults to the first observation (``ys[0]``). Pass
                ``shooting.y0s[0]`` for the first group's trained state.

        Returns:
            (n, d) or (n, batch, d), as `single_shooting`.
        """
        return single_shooting(
            self.func,
            self.ts if ts is None else ts,
            self.ys[0] if y0 is None else y0,
            **self.solve_options,
        )
