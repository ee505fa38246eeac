"""Natural cubic spline algebra on the last dimension: the tridiagonal solve for the knot
derivatives and the per-piece coefficients (a, b, 2c, 3d), in torchcde's operation order so
the coefficients agree with torchcde's to the last bit where the inputs do.

The mathematics follows http://mathworld.wolfram.com/CubicSpline.html, with each piece
parameterised by the time since its left knot instead of by [0, 1].
"""

from __future__ import annotations

import torch


def tridiagonal_solve(
    rhs: torch.Tensor, off_diagonal: torch.Tensor, diagonal: torch.Tensor
) -> torch.Tensor:
    """Solve the symmetric tridiagonal systems A y = rhs along the last dimension (Thomas).

    ``diagonal`` (..., k) and ``off_diagonal`` (..., k - 1) broadcast against ``rhs`` (..., k);
    the loop runs over k, every batch and channel at once.
    """
    rhs_i = rhs.unbind(-1)
    diag_i = diagonal.unbind(-1)
    off_i = off_diagonal.unbind(-1)
    length = len(rhs_i)
    new_diagonal = [diag_i[0]]
    new_rhs = [rhs_i[0]]
    for i in range(1, length):
        w = off_i[i - 1] / new_diagonal[i - 1]
        new_diagonal.append(diag_i[i] - w * off_i[i - 1])
        new_rhs.append(rhs_i[i] - w * new_rhs[i - 1])
    out = [new_rhs[-1] / new_diagonal[-1]]
    for i in range(length - 2, -1, -1):
        out.append((new_rhs[i] - off_i[i] * out[-1]) / new_diagonal[i])
    out.reverse()
    out = torch.broadcast_tensors(*out)
    return torch.stack(out, dim=-1)


def _shift_right(values: torch.Tensor) -> torch.Tensor:
    """(..., k - 1) -> (..., k): ``values`` with a zero before them."""
    return torch.nn.functional.pad(values, (1, 0))


def _shift_left(values: torch.Tensor) -> torch.Tensor:
    """(..., k - 1) -> (..., k): ``values`` with a zero after them."""
    return torch.nn.functional.pad(values, (0, 1))


def natural_pieces(
    t: torch.Tensor, x: torch.Tensor, count: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The natural cubic spline through (t, x) along the last dimension, as the coefficients
    a, b, 2c, 3d of each piece a + b s + c s^2 + d s^3 (s the time since the piece's left knot).

    Arguments:
        t: knot times, (length,) or broadcastable against ``x``.
        x: knot values, (..., length), without NaNs.
        count: ``None`` when every knot counts, else (...,) integers: only the first
            ``count`` knots of each series count (a compacted series padded at the end); pieces
            past them come out zero, and a series with ``count`` 0 is zero throughout.

    Returns:
        a, b, 2c, 3d, each (..., length - 1).
    """
    length = x.size(-1)
    time_diffs = t[..., 1:] - t[..., :-1]
    path_diffs = x[..., 1:] - x[..., :-1]
    if count is not None:
        # Pieces between two counted knots. The padding's times are the remaining distinct
        # grid times, so its differences are nonzero and their reciprocals finite (masking
        # them after dividing keeps the gradients finite).
        piece_valid = torch.arange(1, length, device=x.device) < count.unsqueeze(-1)
        knot_valid = torch.arange(length, device=x.device) < count.unsqueeze(-1)
        reciprocal = torch.where(piece_valid, time_diffs.reciprocal(), 0)
        path_diffs = torch.where(piece_valid, path_diffs, 0)
    else:
        reciprocal = time_diffs.reciprocal()
    if length == 2 and count is None:
        zeros = torch.zeros_like(path_diffs)
        return x[..., :1], path_diffs / time_diffs, zeros, zeros

    reciprocal_squared = reciprocal**2
    three_path_diffs = 3 * path_diffs
    six_path_diffs = 2 * three_path_diffs
    path_diffs_scaled = three_path_diffs * reciprocal_squared

    diagonal = (_shift_left(reciprocal) + _shift_right(reciprocal)) * 2
    rhs = _shift_left(path_diffs_scaled) + _shift_right(path_diffs_scaled)
    if count is not None:
        # Padding rows are the identity with a zero right-hand side: zero knot derivatives,
        # uncoupled from the counted knots (their off-diagonals are zero).
        diagonal = torch.where(knot_valid, diagonal, 1)
    knot_derivatives = tridiagonal_solve(rhs, reciprocal, diagonal)

    a = x[..., :-1]
    b = knot_derivatives[..., :-1]
    two_c = (
        six_path_diffs * reciprocal - 4 * knot_derivatives[..., :-1] - 2 * knot_derivatives[..., 1:]
    ) * reciprocal
    three_d = (
        -six_path_diffs * reciprocal + 3 * (knot_derivatives[..., :-1] + knot_derivatives[..., 1:])
    ) * reciprocal_squared
    if count is not None:
        # A series of two knots is the straight line through them (torchcde's closed form,
        # exact where the tridiagonal solve rounds).
        two_knots = (count == 2).unsqueeze(-1)
        b = torch.where(two_knots, path_diffs / time_diffs, b)
        two_c = torch.where(two_knots, 0, two_c)
        three_d = torch.where(two_knots, 0, three_d)
    return a, b, two_c, three_d


def shift_pieces(
    a: torch.Tensor,
    b: torch.Tensor,
    two_c: torch.Tensor,
    three_d: torch.Tensor,
    offset: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Re-expand the cubics a + b s + c s^2 + d s^3 about s = -offset (torchcde's algebra).

    ``offset`` is (old left knot) - (new left knot), so zero leaves the coefficients exactly.
    """
    a_inner = (0.5 * two_c - three_d * offset / 3) * offset
    return (
        a + (a_inner - b) * offset,
        b + (three_d * offset - two_c) * offset,
        two_c - 2 * three_d * offset,
        three_d,
    )
