"""Signatures, log-signatures and the log-ODE method (torchcde's, without signatory).

The log-ODE method (Morrill et al., "Neural rough differential equations for long time
series", 2021) replaces a long series by the log-signatures of its windows: a window's
depth-N log-signature summarises the path over the window (its increment at depth 1, its
Lévy areas at depth 2, ...), so a CDE driven by the cumulative sum of these summaries takes
one solver step per window instead of one per observation.

Signatures are computed by Chen's identity, the product of the truncated tensor exponentials
of the piecewise-linear path's increments (``_tensor_algebra``), and log-signatures by the
truncated logarithm series, all in torch: differentiable, in float32 or float64, on any
device. The log-signature is given as the coefficients of the Lyndon words in the expanded
(tensor-algebra) logarithm of the signature, the Lyndon words ordered by length and then
lexicographically (``lyndon_words``). This is the basis of signatory's default "words" mode
to the best of our knowledge; signatory is not installable alongside this library's torch,
so the order is this library's own and is not checked against it.
"""

from __future__ import annotations

import math

import torch

from .._args import count as _count
from . import _tensor_algebra as ta
from .interpolation import _check_path, linear_interpolation_coeffs


def _check_depth(depth: object) -> int:
    # a plain int: NumPy integers pass, bools and floats do not
    try:
        return _count("depth", depth)
    except ValueError:
        raise ValueError(
            f"depth must be an int of at least 1 (1 keeps only the increments), got {depth!r}"
        ) from None


def _check_channels(channels: object) -> int:
    try:
        return _count("channels", channels)
    except ValueError:
        raise ValueError(f"channels must be an int of at least 1, got {channels!r}") from None


def lyndon_words(channels: int, depth: int) -> list[tuple[int, ...]]:
    """The Lyndon words indexing ``logsignature``'s output, in its order.

    Arguments:
        channels: the number of letters (the path's channels), letters 0, ..., channels - 1.
        depth: the longest word.

    Returns:
        The Lyndon words of length 1, ..., depth as tuples of letters, grouped by length
        (shortest first) and lexicographic within a length: for 2 channels and depth 3,
        (0,), (1,), (0, 1), (0, 0, 1), (0, 1, 1).

    Raises:
        ValueError: channels or depth not an int of at least 1.
    """
    return list(ta.lyndon_words(_check_channels(channels), _check_depth(depth)))


def logsignature_channels(channels: int, depth: int) -> int:
    """Number of log-signature terms: Lyndon words of length <= depth (Witt's formula).

    Arguments:
        channels: the path's channels d.
        depth: the truncation depth N.

    Returns:
        sum over k = 1, ..., N of (1 / k) sum over m dividing k of mu(m) d^(k / m), mu the
        Möbius function; e.g. 3 for (2, 2), 5 for (2, 3), 14 for (3, 3).

    Raises:
        ValueError: channels or depth not an int of at least 1.
    """
    channels, depth = _check_channels(channels), _check_depth(depth)

    return ta.witt(channels, depth)


def _check_stream(path: object, depth: object, what: str) -> int:
    depth = _check_depth(depth)
    if not isinstance(path, torch.Tensor) or not path.is_floating_point():
        raise ValueError(
            f"{what} must be a floating-point torch.Tensor (..., length, channels), "
            f"got {path!r:.80}"
        )
    if path.dim() < 2 or path.size(-2) < 1 or path.size(-1) < 1:
        raise ValueError(
            f"{what} must have shape (..., length, channels), length and channels at least 1, "
            f"got shape {tuple(path.shape)}; for a single channel use {what}.unsqueeze(-1)"
        )
    return depth


def _signature_levels(path: torch.Tensor, depth: int) -> ta.Levels:
    return ta.reduce_product(ta.exp_increments(path[..., 1:, :] - path[..., :-1, :], depth))


def signature(path: torch.Tensor, depth: int) -> torch.Tensor:
    """Depth-``depth`` signature of piecewise-linear paths, by Chen's identity.

    The tensor exponentials of all increments are multiplied pairwise in vectorised rounds,
    so memory grows as length * (channels + ... + channels^depth) per path.

    Arguments:
        path: (..., length, channels) floating point: the paths through ``length`` points,
            linear in between (time is not a channel unless you add it).
        depth: the truncation depth, at least 1.

    Returns:
        (..., channels + channels^2 + ... + channels^depth): levels 1, ..., depth of the
        signature (level 0, always 1, left out), each level's words (i_1, ..., i_k) in
        row-major order. A path of one point has signature zero at every level.

    Raises:
        ValueError: path not a floating-point tensor of shape (..., length, channels) with
            length and channels at least 1; depth not an int of at least 1.
    """
    depth = _check_stream(path, depth, "path")
    return torch.cat(_signature_levels(path, depth), -1)


def logsignature(path: torch.Tensor, depth: int) -> torch.Tensor:
    """Depth-``depth`` log-signature of piecewise-linear paths in the Lyndon-word basis.

    The truncated logarithm of the signature, log S = sum_n (-1)^(n+1) (S - 1)^n / n, is a
    Lie series; its coefficients on the Lyndon words determine it. The output is those
    coefficients (the "expanded" log-signature read at the Lyndon words), in
    ``lyndon_words(channels, depth)``'s order: grouped by word length, lexicographic within a
    length. At depth 1 it is the increment; at depth 2 it adds, for each pair i < j, the Lévy
    area 0.5 * (int x^i dx^j - int x^j dx^i). This order is this library's own (signatory's
    "words" mode is believed to use the same one but is not checked).

    Arguments:
        path: (..., length, channels) floating point: the paths through ``length`` points.
        depth: the truncation depth, at least 1.

    Returns:
        (..., logsignature_channels(channels, depth)).

    Raises:
        ValueError: path not a floating-point tensor of shape (..., length, channels) with
            length and channels at least 1; depth not an int of at least 1.
    """
    depth = _check_stream(path, depth, "path")
    return ta.lyndon_coefficients(ta.log(_signature_levels(path, depth)))


def _window_times(
    t: torch.Tensor, window_length: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchcde's windows: their ends new_t, the index of each end among the observation times
    merged with the ends not close to an observation, and those merged times."""
    timespan = t[-1] - t[0]
    num_pieces = int((timespan / window_length).ceil().item())
    end_t = t[0] + num_pieces * window_length
    new_t = torch.linspace(
        t[0].item(), end_t.item(), num_pieces + 1, dtype=t.dtype, device=t.device
    )
    new_t = torch.min(new_t, t.max())
    # Each end belongs to the first observation it is <= to or close to (torch.allclose's
    # tolerances). A close observation lies within atol + rtol * max|t| below the end, so
    # only the observations from there to the first one >= the end are candidates.
    atol, rtol = 1e-8, 1e-5
    first_geq = torch.searchsorted(t, new_t)
    lowest = torch.searchsorted(t, new_t - (atol + rtol * t.abs().max()))
    span = int((first_geq - lowest).max().item()) + 1
    candidates = (lowest.unsqueeze(-1) + torch.arange(span, device=t.device)).clamp(
        max=t.size(0) - 1
    )
    times = t[candidates]
    hit = (new_t.unsqueeze(-1) <= times) | torch.isclose(
        new_t.unsqueeze(-1), times, rtol=rtol, atol=atol
    )
    t_index = candidates.gather(-1, hit.int().argmax(-1, keepdim=True)).squeeze(-1)
    unique = ~torch.isclose(new_t, t[t_index], rtol=rtol, atol=atol)
    indices = t_index + unique.cumsum(0) - unique.long()
    merged = torch.cat([t, new_t[unique]]).sort() if bool(unique.any()) else (t, None)
    return new_t, indices, merged


def _logsignature_windows(
    x: torch.Tensor, depth: int, window_length: float, t: torch.Tensor | None, version: int
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    depth = _check_depth(depth)
    t = _check_path(x, t)
    if isinstance(window_length, torch.Tensor) and window_length.numel() == 1:
        window_length = window_length.item()
    if isinstance(window_length, bool) or not isinstance(window_length, (int, float)):
        raise ValueError(f"window_length must be a positive number, got {window_length!r:.80}")
    if not math.isfinite(window_length) or window_length <= 0:
        raise ValueError(
            f"window_length must be positive and finite (a time interval), got {window_length}"
        )
    new_t, indices, (merged_t, order) = _window_times(t, window_length)
    if order is not None:
        # The window ends that are not observations join x as missing values, filled below.
        missing = x.new_full((*x.shape[:-2], 1, x.size(-1)), float("nan"))
        x = torch.cat([x, missing], -2)[..., order.clamp(0, x.size(-2)), :]
    x = linear_interpolation_coeffs(x, merged_t)

    channels = x.size(-1)
    dx = x[..., 1:, :] - x[..., :-1, :]
    starts, counts = indices[:-1], indices[1:] - indices[:-1]
    pieces, positions = [], []
    # Windows holding equal numbers of segments are computed together, as one batch.
    for count in counts.unique().tolist():
        which = (counts == count).nonzero().squeeze(-1)
        segments = starts[which].unsqueeze(-1) + torch.arange(count, device=x.device)
        increments = dx[..., segments.flatten(), :].unflatten(-2, (which.numel(), count))
        levels = ta.reduce_product(ta.exp_increments(increments, depth))
        pieces.append(ta.lyndon_coefficients(ta.log(levels)))
        positions.append(which)
    logsignatures = torch.cat(pieces, -2)[..., torch.cat(positions).argsort(), :]
    if version == 0:
        logsignatures = logsignatures * (new_t[1:] - new_t[:-1]).unsqueeze(-1)
    width = logsignatures.size(-1)
    first = torch.cat([x[..., 0, :], x.new_zeros(*x.shape[:-2], width - channels)], -1)
    out = torch.cat([first.unsqueeze(-2), logsignatures], -2).cumsum(-2)
    return (out, new_t) if version == 0 else out


def logsignature_windows(
    x: torch.Tensor, depth: int, window_length: float, t: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-signatures over windows, as in the log-ODE method (deprecated; torchcde's).

    Kept for compatibility with torchcde: new code should use ``logsig_windows``, whose
    scaling is corrected. This one multiplies each window's log-signature by the window's
    length in time and returns the windows' times with the values.

    Arguments:
        x: tensor of values, of shape (..., length, input_channels), where ... is some number of
            batch dimensions: a (batch of) paths in an input_channels-dimensional space with
            length-many observations. Missing values are supported, as NaNs.
        depth: the depth to compute the log-signatures to.
        window_length: how long a time interval each log-signature covers.
        t: optional one-dimensional tensor of times, strictly increasing; default
            tensor([0., 1., ..., length - 1]).

    Returns:
        A tuple (values, times): values (..., num_windows + 1,
        logsignature_channels(input_channels, depth)), the cumulative sum of the windows'
        scaled log-signatures after a first row holding x's first value in the first
        input_channels entries and zeros elsewhere; times (num_windows + 1,) the windows' ends.

    Raises:
        ValueError: depth not an int of at least 1; window_length not a positive finite
            number; x or t of the wrong type or shape, t not strictly increasing.
    """
    return _logsignature_windows(x, depth, window_length, t, version=0)


def logsig_windows(
    x: torch.Tensor, depth: int, window_length: float, t: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-signatures over windows, as in the log-ODE method (torchcde's).

    A transform of the time series, applied before one of the interpolation schemes: the
    windows [t_0, t_0 + w], [t_0 + w, t_0 + 2w], ... (the last one cut at the final time)
    each become one step of the new path, their depth-``depth`` log-signature (of the
    piecewise-linear path through the observations, NaNs filled by linear interpolation,
    and the path's values at the windows' ends).

    Arguments:
        x: tensor of values, of shape (..., length, input_channels), where ... is some number of
            batch dimensions: a (batch of) paths in an `input_channels`-dimensional space with
            `length`-many observations. Missing values are supported, as NaNs.
        depth: the depth to compute the log-signatures to.
        window_length: how long a time interval each log-signature covers.
        t: optional one-dimensional tensor of times, strictly increasing; default
            `tensor([0., 1., ..., length - 1])`.

    Returns:
        The values of the transformed path, (..., num_windows + 1,
        logsignature_channels(input_channels, depth)): a first row holding x's first value in
        the first input_channels entries and zeros elsewhere, then the cumulative sum of the
        windows' log-signatures. Times are not returned: the path is meant for the times
        `tensor([0., 1., ..., num_windows])`, one unit per window.

    Raises:
        ValueError: depth not an int of at least 1; window_length not a positive finite
            number; x or t of the wrong type or shape, t not strictly increasing.
    """
    return _logsignature_windows(x, depth, window_length, t, version=1)
