"""Missing values (NaNs) in a time series, handled for every sample and channel at once.

Series run along the last dimension here, (..., channels, length): each (sample, channel)
pair is its own series with its own observed times. NaNs are replaced by zeros before any
arithmetic, so no NaN reaches a gradient through ``torch.where``.
"""

from __future__ import annotations

import torch

from ._spline import natural_pieces, shift_pieces


def _ends(observed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(positions, first observed index, last observed index), the indices (..., 1); a series
    with no observation gets first 0 and last length - 1 (so nothing is filled from them)."""
    length = observed.size(-1)
    positions = torch.arange(length, device=observed.device)
    any_observed = observed.any(-1, keepdim=True)
    first = torch.where(observed, positions, length).amin(-1, keepdim=True)
    last = torch.where(observed, positions, -1).amax(-1, keepdim=True)
    first = torch.where(any_observed, first, 0)
    last = torch.where(any_observed, last, length - 1)
    return positions, first, last


def fill_ends(x: torch.Tensor, version: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Impute the ends of each series from its first and last observations.

    Version 1 fills every leading NaN with the first observation and every trailing NaN with
    the last (torchcde's ``natural_cubic_coeffs``); version 0 fills only the very first and
    very last entries (``natural_cubic_spline_coeffs``, and the linear interpolation).

    Returns:
        (values without NaNs (missing entries zero), observed mask, whether any observed).
    """
    observed = ~torch.isnan(x)
    positions, first, last = _ends(observed)
    any_observed = observed.any(-1, keepdim=True)
    if version == 1:
        source = torch.maximum(torch.minimum(positions, last), first)
        filled = (positions < first) | (positions > last)
    else:
        source = torch.where(positions == 0, first, positions)
        source = torch.where(positions == x.size(-1) - 1, last, source)
        filled = ((positions == 0) | (positions == x.size(-1) - 1)) & any_observed
    clean = torch.where(observed, x, 0)
    values = clean.gather(-1, source)
    return values, observed | filled, any_observed


def natural_pieces_with_missing(
    t: torch.Tensor, x: torch.Tensor, version: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Natural cubic spline coefficients (a, b, 2c, 3d), (..., channels, length - 1), of series
    (..., channels, length) with NaNs: each series' spline runs through its observed points
    (after filling its ends), re-expanded about every grid time so the pieces sit on t's grid.

    Each series' observed points move to its front (a stable partition), the padding after
    them is uncoupled in the tridiagonal solve, and every grid interval reads the piece of the
    observed interval containing it. A series with no observation is zero.
    """
    length = x.size(-1)
    values, observed, _ = fill_ends(x, version)
    positions = torch.arange(length, device=x.device)
    order = torch.where(observed, positions, positions + length).argsort(dim=-1)
    count = observed.sum(-1)
    times = t.expand(x.shape).gather(-1, order)
    pieces = natural_pieces(times, values.gather(-1, order), count)
    # The grid interval [t_j, t_{j+1}] lies in observed piece (observations up to j) - 1.
    piece = (observed.cumsum(-1)[..., :-1] - 1).clamp(0, length - 2)
    a, b, two_c, three_d = (p.gather(-1, piece) for p in pieces)
    offset = times[..., :-1].gather(-1, piece) - t[:-1]
    return shift_pieces(a, b, two_c, three_d, offset)


def linear_fill(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Series (..., channels, length) with NaNs filled by linear interpolation in time between
    the neighbouring observations; leading and trailing NaNs take the first and last
    observation; a series with no observation is zero (torchcde's linear interpolation)."""
    length = x.size(-1)
    values, observed, any_observed = fill_ends(x, version=0)
    positions = torch.arange(length, device=x.device)
    previous = torch.where(observed, positions, -1).cummax(-1).values.clamp(min=0)
    following = torch.where(observed, positions, length).flip(-1).cummin(-1).values.flip(-1)
    following = following.clamp(max=length - 1)
    times = t.expand(x.shape)
    previous_time = times.gather(-1, previous)
    following_time = times.gather(-1, following)
    previous_value = values.gather(-1, previous)
    following_value = values.gather(-1, following)
    # Observed entries have previous == following: a zero denominator there is replaced,
    # not masked afterwards, so no NaN reaches the gradients.
    denominator = torch.where(observed, 1, following_time - previous_time)
    ratio = (times - previous_time) / denominator
    interpolated = previous_value + ratio * (following_value - previous_value)
    out = torch.where(observed, values, interpolated)
    return torch.where(any_observed, out, 0)


def forward_fill(x: torch.Tensor) -> torch.Tensor:
    """NaNs of x (..., length, channels) filled with the last observation before them along
    the length; leading NaNs stay."""
    observed = ~torch.isnan(x)
    positions = torch.arange(x.size(-2), device=x.device).unsqueeze(-1)
    source = torch.where(observed, positions, 0).cummax(-2).values
    return x.gather(-2, source)


def rectilinear_path(x: torch.Tensor, time_index: int) -> torch.Tensor:
    """The data (..., length, channels) as the (..., 2 length - 1, channels) path whose linear
    interpolation is the rectilinear one: forward filled, each observation held until the
    next time (time channel moves first), then the features jump."""
    filled = forward_fill(x)
    held = torch.cat(
        [
            filled[..., :-1, :time_index],
            filled[..., 1:, time_index : time_index + 1],
            filled[..., :-1, time_index + 1 :],
        ],
        dim=-1,
    )
    interleaved = torch.stack([filled[..., :-1, :], held], dim=-2)
    interleaved = interleaved.reshape(*x.shape[:-2], 2 * (x.size(-2) - 1), x.size(-1))
    return torch.cat([interleaved, filled[..., -1:, :]], dim=-2)
