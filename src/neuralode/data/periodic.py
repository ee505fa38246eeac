"""Rubanova et al.'s periodic toy data set (2019): 1-D sinusoids with random frequency and
amplitude on one irregular grid of times, each series observed at a random subset of it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class PeriodicData:
    """The periodic data set (``make_periodic``).

    Attributes:
        ts: the irregular grid of times, (T,), 0 first, sorted.
        values: the noisy signals, (N, T, 1), zero where not observed.
        clean: the signals without noise, (N, T, 1), at every time.
        mask: 1 at the times each series is observed at, else 0, (N, T, 1).
        frequency: each series' frequency f, (N,).
        amplitude: each series' amplitude A, (N,).
        phase: each series' phase in radians, (N,).
    """

    ts: torch.Tensor
    values: torch.Tensor
    clean: torch.Tensor
    mask: torch.Tensor
    frequency: torch.Tensor
    amplitude: torch.Tensor
    phase: torch.Tensor


def make_periodic(
    n: int = 1000,
    n_times: int = 100,
    t_max: float = 5.0,
    n_obs: int | None = 50,
    frequency: tuple[float, float] = (0.2, 1.0),
    amplitude: tuple[float, float] = (0.5, 1.5),
    noise_std: float = 0.01,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> PeriodicData:
    """``n`` series ``A sin(2 pi f t + phase)`` on one irregular grid of times.

    Arguments:
        n: the number of series.
        n_times: the grid's size: 0 and ``n_times - 1`` uniform draws in [0, t_max), sorted.
        t_max: the end of the time span.
        n_obs: the random times of the grid each series is observed at (``None``: all).
        frequency: the range of the uniform frequency f.
        amplitude: the range of the uniform amplitude A.
        noise_std: the standard deviation of the Gaussian observation noise.
        seed: the seed of the draws.
        dtype: the dtype of the returned tensors (drawn in float64).

    Returns:
        The [`PeriodicData`][neuralode.data.PeriodicData]; the phase is uniform in
            [0, 2 pi).

    Raises:
        ValueError: ``n < 1``, ``n_times < 2``, ``t_max`` not positive and finite,
            ``n_obs`` out of [1, n_times], ``noise_std`` negative or not finite, or a
            ``frequency`` or ``amplitude`` range not finite with low <= high.
    """
    if n < 1 or n_times < 2 or not (math.isfinite(t_max) and t_max > 0):
        raise ValueError(
            f"need n >= 1, n_times >= 2, a finite t_max > 0; got {n}, {n_times}, {t_max}"
        )
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    for name, (low, high) in (("frequency", frequency), ("amplitude", amplitude)):
        if not (math.isfinite(low) and math.isfinite(high) and low <= high):
            raise ValueError(f"{name} must be a finite range (low, high), got {(low, high)}")
    if n_obs is not None and not 1 <= n_obs <= n_times:
        raise ValueError(f"n_obs must be in [1, n_times={n_times}] or None, got {n_obs}")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.rand(n_times - 1, generator=gen, dtype=torch.float64) * t_max
    ts = torch.cat([torch.zeros(1, dtype=torch.float64), draws.sort().values])
    if bool((torch.diff(ts) <= 0).any()):  # measure-zero ties: spread them
        ts = torch.linspace(0, t_max, n_times, dtype=torch.float64)

    def uniform(bounds: tuple[float, float]) -> torch.Tensor:
        low, high = bounds
        return low + (high - low) * torch.rand(n, generator=gen, dtype=torch.float64)

    freq, amp = uniform(frequency), uniform(amplitude)
    phase = uniform((0.0, 2 * math.pi))
    clean = amp[:, None] * torch.sin(2 * math.pi * freq[:, None] * ts + phase[:, None])
    values = clean + noise_std * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    mask = torch.ones(n, n_times, dtype=torch.float64)
    if n_obs is not None:
        mask = torch.zeros_like(mask)
        picks = torch.rand(n, n_times, generator=gen).argsort(-1)[:, :n_obs]
        mask.scatter_(1, picks, 1.0)
    return PeriodicData(
        ts.to(dtype),
        (values * mask)[..., None].to(dtype),
        clean[..., None].to(dtype),
        mask[..., None].to(dtype),
        freq.to(dtype),
        amp.to(dtype),
        phase.to(dtype),
    )
