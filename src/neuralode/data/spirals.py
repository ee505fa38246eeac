"""The Neural ODE paper's spirals (section 5.1): 2-D spirals, half clockwise, with noise,
observed at a few random times of a window, and the points after it to extrapolate.

After the generator of the paper's official example (torchdiffeq's ``latent_ode.py``):
``ntotal`` points of the angle theta in [0, 6 pi]; counter-clockwise spirals are the
Archimedean ``r = a + b theta`` around (5, 0), clockwise ones its mirror image around (-5, 0)
(theta decreasing in time: the official code uses ``r = a + 50 b / theta`` there); each
spiral starts at a random point away from both ends; the model's time axis is
``theta - theta_start`` (the official ``samp_ts``); Gaussian noise of std ``noise_std``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._args import count


@dataclass
class SpiralData:
    """The spirals data set (``make_spirals``).

    Attributes:
        ts: the times of the observation window and the extrapolation window after it,
            (W + E,), from 0.
        trajectories: the noise-free spirals, (N, W + E, 2).
        noisy: the spirals with Gaussian noise, (N, W + E, 2).
        observed: the random times of the window each spiral is observed at (never in the
            extrapolation window), boolean (N, W + E).
        clockwise: which spirals turn clockwise, boolean (N,).
        n_window: W, the number of points of the observation window.
    """

    ts: torch.Tensor
    trajectories: torch.Tensor
    noisy: torch.Tensor
    observed: torch.Tensor
    clockwise: torch.Tensor
    n_window: int

    def __len__(self) -> int:
        return self.trajectories.shape[0]

    def subset(self, index: torch.Tensor | slice) -> SpiralData:
        """The spirals selected by ``index``, on the same times.

        Arguments:
            index: an index of dimension 0 (a slice, indices or a boolean mask).

        Returns:
            A ``SpiralData`` of the selected spirals.
        """
        return SpiralData(
            self.ts,
            self.trajectories[index],
            self.noisy[index],
            self.observed[index],
            self.clockwise[index],
            self.n_window,
        )


def make_spirals(
    n: int = 1000,
    n_obs: int = 30,
    n_window: int = 100,
    n_extrap: int = 100,
    ntotal: int = 1000,
    noise_std: float = 0.3,
    a: float = 0.0,
    b: float = 0.3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> SpiralData:
    """``n`` spirals (alternately counter-clockwise and clockwise), each observed at
    ``n_obs`` random times (without replacement) of a ``n_window``-point window, followed by
    ``n_extrap`` points to extrapolate.

    The spirals are Archimedean, radius ``a + b theta`` for theta in [0, 6 pi] sampled at
    ``ntotal`` points (the time is theta), centred at x = +5 (counter-clockwise) and its
    mirror image at x = -5 (clockwise); each window starts at a random point.

    Arguments:
        n: the number of spirals.
        n_obs: the observed times of each window, at most ``n_window``.
        n_window: W, the points of the observation window.
        n_extrap: E, the points of the extrapolation window after it.
        ntotal: the points of the whole spiral, at least ``n_window + n_extrap + 2 n_window``.
        noise_std: the standard deviation of the Gaussian noise of ``noisy``.
        a: the spiral's radius at theta = 0.
        b: the radius' growth per radian.
        seed: the seed of the draws.
        dtype: the dtype of the tensors.

    Returns:
        The [`SpiralData`][neuralode.data.SpiralData].

    Raises:
        ValueError: a count not an integer (``n``, ``n_obs``, ``n_window``, ``ntotal`` at
            least 1, ``n_extrap`` at least 0), ``n_obs`` above ``n_window``, ``ntotal`` too
            short, a negative or non-finite ``noise_std``, or a non-finite ``a`` or ``b``.
    """
    n, n_obs, n_window = count("n", n), count("n_obs", n_obs), count("n_window", n_window)
    n_extrap, ntotal = count("n_extrap", n_extrap, minimum=0), count("ntotal", ntotal)
    length = n_window + n_extrap
    if not 1 <= n_obs <= n_window:
        raise ValueError(f"n_obs must be in [1, n_window={n_window}], got {n_obs}")
    if ntotal < length + 2 * n_window:
        raise ValueError(f"ntotal={ntotal} is too short for windows of {length} points")
    if n < 1 or not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(
            f"need n >= 1 and a finite noise_std >= 0, got n={n}, noise_std={noise_std}"
        )
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"the radius a + b theta needs finite a and b, got a={a}, b={b}")
    gen = torch.Generator().manual_seed(seed)
    theta = torch.linspace(0, 6 * math.pi, ntotal, dtype=torch.float64)
    radius = a + b * theta
    counter = torch.stack([radius * torch.cos(theta) + 5, radius * torch.sin(theta)], -1)
    # the mirror image x -> -x: its polar angle is pi - theta, decreasing in time (clockwise)
    clockwise_spiral = torch.stack([-radius * torch.cos(theta) - 5, radius * torch.sin(theta)], -1)
    clockwise = torch.arange(n) % 2 == 1
    starts = torch.randint(n_window, ntotal - length - n_window + 1, (n,), generator=gen)
    index = starts[:, None] + torch.arange(length)
    trajectories = torch.where(
        clockwise[:, None, None], clockwise_spiral[index], counter[index]
    ).to(dtype)
    noisy = trajectories + noise_std * torch.randn(trajectories.shape, generator=gen, dtype=dtype)
    observed = torch.zeros(n, length, dtype=torch.bool)
    picks = torch.rand(n, n_window, generator=gen).argsort(-1)[:, :n_obs]
    observed.scatter_(1, picks, True)
    ts = (theta[:length] - theta[0]).to(dtype)
    return SpiralData(ts, trajectories, noisy, observed, clockwise, n_window)
