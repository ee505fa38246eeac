"""Interpolations that turn a time series into a continuous control X (torchcde's).

A neural CDE reads its data through a path X(t) with a derivative: the data x, shape
(..., length, channels) at increasing times t (default 0, 1, ..., length - 1), irregular
sampling and missing values (NaNs) included, becomes coefficients (compute them once, e.g. when
building the dataset, and batch them like data) and the coefficients become a module with
``evaluate(t)`` and ``derivative(t)``:

    coeffs = hermite_cubic_coefficients_with_backward_differences(x)
    X = CubicSpline(coeffs)

The schemes, and when to use which:

- **Natural cubic spline** (``natural_cubic_coeffs``, read by ``CubicSpline``): the C2 cubic
  spline through the observations with zero second derivative at both ends. The smoothest
  path, but not causal: each piece depends on every observation (a tridiagonal solve), so
  the CDE's state at time t has seen the future. Use it for offline tasks (classifying
  whole series). Missing values: each channel's spline runs through that channel's observed
  points, NaNs at the start (end) taking the first (last) observation.
  ``natural_cubic_spline_coeffs`` is the deprecated variant that imputes only the very first
  and very last entries, so its ends extrapolate a cubic.
- **Hermite cubic with backward differences**
  (``hermite_cubic_coefficients_with_backward_differences``, read by ``CubicSpline``): on
  [t_k, t_{k+1}] the cubic through x_k and x_{k+1} whose derivatives at t_k and t_{k+1} are
  the backward differences (x_k - x_{k-1}) / (t_k - t_{k-1}) and
  (x_{k+1} - x_k) / (t_{k+1} - t_k) (the first piece uses its own difference at both ends).
  C1, and causal: the path up to t_{k+1} depends only on x_0, ..., x_{k+1}, so the CDE's
  state at each observation time has seen no later data. torchcde recommends it for online
  use and as the default. Its derivative is continuous, its second derivative jumps at the
  knots: adaptive solvers stop there (``jump_t=X.grid_points``, as ``cdeint`` explains and
  ``NeuralCDE`` does) to keep their order. Missing values are filled by linear
  interpolation first.
- **Linear** (``linear_interpolation_coeffs``, read by ``LinearInterpolation``): straight
  lines between observations; causal at the observation times, with a derivative that
  jumps at every knot, so give adaptive solvers the knots (``jump_t=X.grid_points``) or use
  a fixed grid on them. Missing values are filled by linear interpolation in time.
- **Rectilinear** (``linear_interpolation_coeffs(x, rectilinear=time_channel)``): linear
  interpolation of the path that first moves the time channel (holding the last
  observation, forward filling NaNs) and then jumps the features at the observation time.
  Causal at every time, not just at the observations; the data must carry time as a channel
  and the path has 2 length - 1 knots on the default grid.

Coefficients have torchcde's layout: cubic ones are (..., length - 1, 4 channels), the
concatenation [a, b, 2c, 3d] of each piece a + b s + c s^2 + d s^3 with s the time since the
piece's left knot; linear ones are the filled knot values (..., length, channels). The
modules keep torchcde's buffer names, so coefficients and state dicts move between the two.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from ._base import InterpolationBase
from ._missing import linear_fill, natural_pieces_with_missing, rectilinear_path
from ._spline import natural_pieces

TimeLike = float | torch.Tensor


def _check_times(t: object, length: int, what: str) -> torch.Tensor:
    """Validate knot times for ``length`` knots described by ``what``."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(
            f"t must be a torch.Tensor of times, got {type(t).__name__}; pass "
            "torch.tensor(times, dtype=x.dtype) or leave t out for 0, 1, ..., length - 1"
        )
    if not t.is_floating_point():
        raise ValueError(
            f"t must be a floating-point tensor, got dtype {t.dtype}; convert it with t.to(x.dtype)"
        )
    if t.dim() != 1:
        raise ValueError(
            f"t must be one-dimensional (one time per knot), got shape {tuple(t.shape)}; the "
            "times are shared by the whole batch, so pass a single (length,) tensor"
        )
    if t.size(0) != length:
        raise ValueError(f"t has {t.size(0)} times but {what} has {length}; pass one time per knot")
    if length < 2:
        raise ValueError(
            f"t has {length} time(s); an interpolation needs at least 2 knots, so pass a "
            "series of length 2 or more"
        )
    if torch.isnan(t).any():
        raise ValueError("t contains NaN; every knot needs a time, so remove or fill them")
    if not bool((t[1:] > t[:-1]).all()):
        raise ValueError(
            "t must be strictly increasing; sort the observations by time and merge repeated times"
        )
    return t


def _check_path(x: object, t: torch.Tensor | None) -> torch.Tensor:
    """Validate data x (..., length, channels) and its times; returns the times."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"x must be a floating-point tensor, got dtype {x.dtype}; convert it with "
            "x.float() or x.double() (missing values are NaNs)"
        )
    if x.dim() < 2:
        raise ValueError(
            f"x must have at least two dimensions (..., length, channels), got shape "
            f"{tuple(x.shape)}; for a single channel use x.unsqueeze(-1)"
        )
    length = x.size(-2)
    if t is None:
        if length < 2:
            raise ValueError(
                f"x has {length} time(s) (shape {tuple(x.shape)}); an interpolation needs at "
                "least 2, so pass a series of length 2 or more"
            )
        return torch.linspace(0, length - 1, length, dtype=x.dtype, device=x.device)
    return _check_times(t, length, f"x (shape {tuple(x.shape)}, length dimension -2)")


def _natural_cubic(x: torch.Tensor, t: torch.Tensor | None, version: int) -> torch.Tensor:
    t = _check_path(x, t)
    series = x.transpose(-1, -2)  # (..., channels, length): channels are independent series
    if torch.isnan(series).any():
        pieces = natural_pieces_with_missing(t, series, version)
    else:
        pieces = natural_pieces(t, series)
    return torch.cat([p.transpose(-1, -2) for p in pieces], dim=-1)


def natural_cubic_coeffs(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Coefficients of the natural cubic spline through the data (torchcde's).

    Each channel of each sample is its own spline through its observed points; NaNs before
    the first (after the last) observation take the first (last) observed value, so the
    path is flat there.

    Arguments:
        x: the data, (..., length, channels) floating point, any number of batch dimensions;
            missing values are NaNs (each channel of each sample may miss different times).
        t: the observation times, a strictly increasing (length,) tensor shared by the batch;
            default 0, 1, ..., length - 1 (for neural CDEs the default is enough).

    Returns:
        Coefficients (..., length - 1, 4 * channels), [a, b, 2c, 3d] per piece, for
        ``CubicSpline(coeffs, t)``.

    Raises:
        ValueError: x not a floating-point tensor of at least two dimensions; t not a
            one-dimensional floating-point tensor of x's length (at least 2), strictly
            increasing and without NaNs.
    """
    return _natural_cubic(x, t, version=1)


def natural_cubic_spline_coeffs(x: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
    """Coefficients of the natural cubic spline through the data (deprecated, torchcde's).

    Kept for coefficients made with it; use ``natural_cubic_coeffs``. The two differ only
    with missing values at the ends: here only the very first (last) entry takes the first
    (last) observation, and the spline runs through that, so it can swing between them.

    Arguments:
        x: the data, (..., length, channels) floating point, any number of batch dimensions;
            missing values are NaNs (each channel of each sample may miss different times).
        t: the observation times, a strictly increasing (length,) tensor shared by the batch;
            default 0, 1, ..., length - 1 (for neural CDEs the default is enough).

    Returns:
        Coefficients (..., length - 1, 4 * channels), [a, b, 2c, 3d] per piece, for
        ``CubicSpline(coeffs, t)``.

    Raises:
        ValueError: x not a floating-point tensor of at least two dimensions; t not a
            one-dimensional floating-point tensor of x's length (at least 2), strictly
            increasing and without NaNs.
    """
    return _natural_cubic(x, t, version=0)


def linear_interpolation_coeffs(
    x: torch.Tensor, t: torch.Tensor | None = None, rectilinear: int | None = None
) -> torch.Tensor:
    """Knots of the linear (or rectilinear) interpolation of the data (torchcde's).

    Missing values are filled by linear interpolation in time between a channel's
    neighbouring observations (leading and trailing ones by the first and last observation;
    a channel with none is zero).

    Arguments:
        x: the data, (..., length, channels) floating point; missing values are NaNs.
        t: strictly increasing (length,) times, default 0, 1, ..., length - 1. With
            ``rectilinear`` the knots number 2 length - 1, and so must t's times.
        rectilinear: ``None`` for linear interpolation, or the index of x's channel holding
            time (no NaNs there) for rectilinear interpolation: the path moves in time first,
            holding the last observation (NaNs forward filled), then jumps the features.

    Returns:
        Knots (..., length, channels), or (..., 2 length - 1, channels) with
        ``rectilinear``, for ``LinearInterpolation(coeffs, t)``.

    Raises:
        ValueError: x not a floating-point tensor of at least two dimensions; t not a
            one-dimensional floating-point tensor of the knots' length (at least 2), strictly
            increasing and without NaNs; ``rectilinear`` not a channel index of x, or its
            channel holds NaNs.

    Warns:
        UserWarning: ``rectilinear`` with NaNs at the first time (backward filling them is not
            causal).
    """
    if rectilinear is not None:
        _check_path(x, None)
        channels = x.size(-1)
        if isinstance(rectilinear, bool) or not isinstance(rectilinear, int):
            raise ValueError(
                f"rectilinear must be None or an int, the index of x's time channel in "
                f"[0, {channels - 1}], got {rectilinear!r}"
            )
        if not 0 <= rectilinear < channels:
            raise ValueError(
                f"rectilinear={rectilinear} is out of range: x has {channels} channels, so "
                f"pass the time channel's index in [0, {channels - 1}]"
            )
        if torch.isnan(x[..., rectilinear]).any():
            raise ValueError(
                f"x's time channel (rectilinear={rectilinear}) contains NaN; every "
                "observation needs its time (for padding after the final time, forward fill "
                "the last time)"
            )
        if torch.isnan(x[..., 0, :]).any():
            warnings.warn(
                "x begins with missing values in some channels; the rectilinear path fills "
                "them backward from the first observation, which is not causal. Fill the "
                "first value of each channel yourself (e.g. with the channel's mean) if you "
                "need causality.",
                stacklevel=2,
            )
        x = rectilinear_path(x, rectilinear)
    t = _check_path(x, t)
    if torch.isnan(x).any():
        x = linear_fill(t, x.transpose(-1, -2)).transpose(-1, -2)
    return x


def hermite_cubic_coefficients_with_backward_differences(
    x: torch.Tensor, t: torch.Tensor | None = None
) -> torch.Tensor:
    """Coefficients of the Hermite cubic spline with backward differences (torchcde's).

    On [t_k, t_{k+1}] the cubic through x_k and x_{k+1} whose derivatives at the two knots
    are the backward differences there (the first piece takes its own difference at both
    ends): C1, and causal at the observation times. Missing values are first filled as by
    ``linear_interpolation_coeffs``.

    Arguments:
        x: the data, (..., length, channels) floating point, any number of batch dimensions;
            missing values are NaNs (each channel of each sample may miss different times).
        t: the observation times, a strictly increasing (length,) tensor shared by the batch;
            default 0, 1, ..., length - 1 (for neural CDEs the default is enough).

    Returns:
        Coefficients (..., length - 1, 4 * channels), [a, b, 2c, 3d] per piece, for
        ``CubicSpline(coeffs, t)``.

    Raises:
        ValueError: x not a floating-point tensor of at least two dimensions; t not a
            one-dimensional floating-point tensor of x's length (at least 2), strictly
            increasing and without NaNs.
    """
    knots = linear_interpolation_coeffs(x, t)
    if t is None:
        t = torch.linspace(0, knots.size(-2) - 1, knots.size(-2), dtype=x.dtype, device=x.device)
    t_diff = (t[1:] - t[:-1]).unsqueeze(-1)
    x_prev = knots[..., :-1, :]
    x_diff = knots[..., 1:, :] - x_prev
    derivs_next = x_diff / t_diff
    # The derivative before the first knot is taken equal to the first difference.
    derivs_prev = torch.cat([derivs_next[..., :1, :], derivs_next[..., :-1, :]], dim=-2)
    b = derivs_prev
    two_c = 2 * (3 * (x_diff / t_diff - b) - derivs_next + derivs_prev) / t_diff
    three_d = (1 / t_diff**2) * (derivs_next - b) - two_c / t_diff
    return torch.cat([x_prev, b, two_c, three_d], dim=-1)


def _check_coeffs(coeffs: object, name: str) -> torch.Tensor:
    if not isinstance(coeffs, torch.Tensor):
        raise ValueError(f"coeffs must be a torch.Tensor made by {name}, got {type(coeffs)}")
    if not coeffs.is_floating_point():
        raise ValueError(f"coeffs must be floating point, got dtype {coeffs.dtype}")
    if coeffs.dim() < 2:
        raise ValueError(
            f"coeffs must have at least two dimensions (..., length, channels), got shape "
            f"{tuple(coeffs.shape)}; pass the tensor {name} returned"
        )
    return coeffs


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[..., index, :]`` by ``index_select``, which torch.compile traces with the
    index a tensor (plain indexing by a 0-dim tensor asks for its value as an int: a graph
    break, and no whole-solve graph)."""
    taken = torch.index_select(values, -2, index.reshape(-1))
    return taken.reshape(*values.shape[:-2], *index.shape, values.shape[-1])


def _take_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[i, ..., index[i], :]`` for every row i of the first dimension: one piece per
    series (a per-sample solve's own times) by ``gather``, (rows, ..., channels)."""
    expanded = index.reshape(-1, *(1,) * (values.dim() - 1))
    expanded = expanded.expand(*values.shape[:-2], 1, values.shape[-1])
    return torch.gather(values, -2, expanded).squeeze(-2)


class _Interpolation(InterpolationBase):
    """The shared interface: knots ``_t``, ``grid_points``, ``interval``, and the lookup of
    the piece holding a time (the left piece at a knot, clamped beyond the ends).

    ``_locate`` serves both readings of a tensor of times: ``evaluate``/``derivative``
    broadcast every time over every series (torchcde's), while ``evaluate_rows`` and
    ``derivative_rows`` read series i at time t[i] (a per-sample solve's times).
    """

    _t: torch.Tensor

    @property
    def grid_points(self) -> torch.Tensor:
        """The knot times, (length,): where the derivative may jump."""
        return self._t

    @property
    def interval(self) -> torch.Tensor:
        """``tensor([t_first, t_last])``, the interval the data covers."""
        return torch.stack([self._t[0], self._t[-1]])

    def _interpret_t(
        self, t: TimeLike, reference: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=reference.dtype, device=reference.device)
        last_piece = self._t.size(0) - 2
        # Times outside [t_first, t_last] extrapolate the first or last piece.
        index = (
            torch.bucketize(t.detach().contiguous(), self._t.detach()).sub(1).clamp(0, last_piece)
        )
        return t - _take(self._t[:, None], index)[..., 0], index

    def _locate(
        self, t: TimeLike, reference: torch.Tensor, rows: bool
    ) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
        """(time since the piece's left knot, the piece's index, a lookup of a per-piece
        buffer), the first two shaped to broadcast against the lookup's result."""
        if not rows:
            fractional, index = self._interpret_t(t, reference)
            return fractional.unsqueeze(-1), index.unsqueeze(-1), lambda v: _take(v, index)
        t = torch.as_tensor(t, dtype=reference.dtype, device=reference.device)
        if t.dim() != 1 or t.size(0) != reference.size(0) or reference.dim() < 3:
            raise ValueError(
                f"per-series times t must be one time per series: shape ({reference.size(0)},) "
                f"for coefficients of shape {tuple(reference.shape)} (series along the first "
                f"dimension), got shape {tuple(t.shape)}"
            )
        fractional, index = self._interpret_t(t, reference)
        shape = (-1, *(1,) * (reference.dim() - 2))
        return (
            fractional.reshape(shape),
            index.reshape(shape),
            lambda v: _take_rows(v, index),
        )

    def evaluate_rows(self, t: torch.Tensor) -> torch.Tensor:
        """X of each series at its own time: series i (the coefficients' first dimension) at
        t[i], as a per-sample solve asks (``cdeint(..., options=dict(per_sample=True))``).

        Arguments:
            t: (series,), one time per series. Differentiable.

        Returns:
            (series, ..., channels): ``evaluate(t[i])[i]`` for every i.

        Raises:
            ValueError: t is not one time per series, or the coefficients have no batch
                dimension.
        """
        return self._evaluate(*self._locate(t, self._reference(), rows=True))

    def derivative_rows(self, t: torch.Tensor) -> torch.Tensor:
        """dX/dt of each series at its own time: ``derivative(t[i])[i]`` for every i.

        Arguments:
            t: (series,), one time per series. Differentiable.

        Returns:
            (series, ..., channels).

        Raises:
            ValueError: t is not one time per series, or the coefficients have no batch
                dimension.
        """
        return self._derivative(*self._locate(t, self._reference(), rows=True))

    def evaluate(self, t: TimeLike) -> torch.Tensor:
        """X(t).

        Arguments:
            t: a time (float or 0-dim tensor), or a tensor of times of any shape S; outside
                the interval the first or last piece extends, and at a knot the piece
                to its left is used. Differentiable.

        Returns:
            (..., channels) for a single time, (..., *S, channels) for times of shape S,
            with ``...`` the coefficients' batch dimensions.
        """
        return self._evaluate(*self._locate(t, self._reference(), rows=False))

    def derivative(self, t: TimeLike) -> torch.Tensor:
        """The derivative dX/dt(t).

        Arguments:
            t: a time (float or 0-dim tensor), or a tensor of times of any shape S; outside
                the interval the first or last piece extends, and at a knot the piece
                to its left is used. Differentiable.

        Returns:
            (..., channels) for a single time, (..., *S, channels) for times of shape S,
            with ``...`` the coefficients' batch dimensions.
        """
        return self._derivative(*self._locate(t, self._reference(), rows=False))

    def _reference(self) -> torch.Tensor:
        """A per-piece buffer (..., pieces, channels): the dtype, device and batch shape."""
        raise NotImplementedError

    def _evaluate(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        raise NotImplementedError

    def _derivative(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        raise NotImplementedError


class CubicSpline(_Interpolation):
    """A cubic spline control, from ``natural_cubic_coeffs`` or
    ``hermite_cubic_coefficients_with_backward_differences`` (torchcde's).

    The coefficients are buffers (``_a``, ``_b``, ``_two_c``, ``_three_d``, ``_t``, as in
    torchcde), so the module moves with ``.to(device)`` and gradients flow from its outputs
    to them and to whatever made them.

    Arguments:
        coeffs: (..., length - 1, 4 * channels), as returned by the coefficient functions.
        t: the times given to the coefficient function, if any; default 0, 1, ...,
            length - 1.

    Raises:
        ValueError: coeffs not a floating-point tensor of at least two dimensions whose last
            dimension is a multiple of 4; t not a strictly increasing one-dimensional
            floating-point tensor of length coeffs.size(-2) + 1.

    Example:
        >>> x = torch.rand(2, 7, 3)
        >>> X = CubicSpline(natural_cubic_coeffs(x))
        >>> X.derivative(torch.tensor(0.4)).shape
        torch.Size([2, 3])
    """

    def __init__(self, coeffs: torch.Tensor, t: torch.Tensor | None = None):
        super().__init__()
        coeffs = _check_coeffs(coeffs, "natural_cubic_coeffs")
        pieces = coeffs.size(-2)
        if coeffs.size(-1) % 4 != 0 or coeffs.size(-1) == 0:
            raise ValueError(
                f"cubic coeffs have 4 blocks (a, b, 2c, 3d) along the last dimension, but it "
                f"has size {coeffs.size(-1)} (shape {tuple(coeffs.shape)}), not a positive "
                "multiple of 4; pass coefficients from natural_cubic_coeffs or "
                "hermite_cubic_coefficients_with_backward_differences (linear ones go to "
                "LinearInterpolation)"
            )
        if t is None:
            t = torch.linspace(0, pieces, pieces + 1, dtype=coeffs.dtype, device=coeffs.device)
        else:
            t = _check_times(t, pieces + 1, f"coeffs (shape {tuple(coeffs.shape)}, plus one)")
        channels = coeffs.size(-1) // 4
        self.register_buffer("_t", t)
        # the four blocks as tensors of their own (copies, differentiable to coeffs): views of
        # one tensor would alias each other inside compile=True's while_loop, which refuses it
        a, b, two_c, three_d = (block.clone() for block in coeffs.split(channels, dim=-1))
        self.register_buffer("_a", a)
        self.register_buffer("_b", b)
        # (kept as 2c and 3d, the multiples the derivative uses)
        self.register_buffer("_two_c", two_c)
        self.register_buffer("_three_d", three_d)

    def _reference(self) -> torch.Tensor:
        return self._b

    def _evaluate(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        inner = 0.5 * take(self._two_c) + take(self._three_d) * fractional / 3
        inner = take(self._b) + inner * fractional
        return take(self._a) + inner * fractional

    def _derivative(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        inner = take(self._two_c) + take(self._three_d) * fractional
        return take(self._b) + inner * fractional


class NaturalCubicSpline(CubicSpline):
    """The name of ``CubicSpline`` in torchcde before 0.2 (torchcde 0.2 has only
    ``CubicSpline``, which reads any cubic coefficients): a deprecated alias.

    Arguments:
        coeffs: as for ``CubicSpline``.
        t: as for ``CubicSpline``.

    Raises:
        ValueError: as ``CubicSpline``.
    """


class LinearInterpolation(_Interpolation):
    """A piecewise linear control, from ``linear_interpolation_coeffs`` (torchcde's).

    Its derivative jumps at the knots: give adaptive solvers ``grid_points`` as jump times
    (or step on them). Buffers ``_t``, ``_coeffs`` and ``_derivs`` as in torchcde.

    Arguments:
        coeffs: the knots (..., length, channels) returned by ``linear_interpolation_coeffs``.
        t: the times given to it, if any; default 0, 1, ..., length - 1.

    Raises:
        ValueError: coeffs not a floating-point tensor of at least two dimensions; t not a
            strictly increasing one-dimensional floating-point tensor of length
            coeffs.size(-2) (at least 2).
    """

    def __init__(self, coeffs: torch.Tensor, t: torch.Tensor | None = None):
        super().__init__()
        coeffs = _check_coeffs(coeffs, "linear_interpolation_coeffs")
        length = coeffs.size(-2)
        if t is None:
            if length < 2:
                raise ValueError(
                    f"coeffs have {length} knot(s) (shape {tuple(coeffs.shape)}); linear "
                    "interpolation needs at least 2"
                )
            t = torch.linspace(0, length - 1, length, dtype=coeffs.dtype, device=coeffs.device)
        else:
            t = _check_times(t, length, f"coeffs (shape {tuple(coeffs.shape)})")
        derivs = (coeffs[..., 1:, :] - coeffs[..., :-1, :]) / (t[1:] - t[:-1]).unsqueeze(-1)
        self.register_buffer("_t", t)
        self.register_buffer("_coeffs", coeffs)
        self.register_buffer("_derivs", derivs)

    def _reference(self) -> torch.Tensor:
        return self._derivs

    def _evaluate(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        prev_coeff = take(self._coeffs)
        next_coeff = take(self._coeffs[..., 1:, :])  # the knot after the piece's
        diff_t = torch.take(self._t, index + 1) - torch.take(self._t, index)
        return prev_coeff + fractional * (next_coeff - prev_coeff) / diff_t

    def _derivative(
        self, fractional: torch.Tensor, index: torch.Tensor, take: Callable
    ) -> torch.Tensor:
        return take(self._derivs)
