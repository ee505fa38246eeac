"""The formulas every Brownian motion of the package shares: the splitmix64 hash that turns
a place in a tree into a seed (``_mix``), the Brownian bridge of an increment and its
space-time Lévy area (``bridge``), their concatenation over adjacent intervals
(``concatenate``) and the Lévy area approximations (``levy_area``)."""

from __future__ import annotations

import math

import torch

from .settings import LEVY_AREA_APPROXIMATIONS

_MASK = (1 << 64) - 1
_RSQRT3 = 1 / math.sqrt(3)


def _mix(x: int) -> int:
    """splitmix64: a bijective 64-bit hash, so nearby keys give unrelated seeds."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


_LEFT_HALF, _RIGHT_HALF, _BOTH_HALVES = 0, 1, 2


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, float) else torch.sqrt(x)


def bridge(W, H, left, right, h, noise_w, noise_h, side=_BOTH_HALVES):  # noqa: N803
    """The Brownian bridge: the increment and space-time Lévy area ``(W, H)`` of the halves
    of an interval of length ``h`` split ``left`` after its start (``right = h - left``
    before its end), given the interval's ``W`` and ``H`` (``None``: no Lévy area) and two
    standard normal noises; ``side`` picks the left half, the right half or both (a pair).
    The lengths are floats (one split for every row) or tensors broadcasting against ``W``
    (each row its own split); the halves' ``W`` add up to the interval's. Every Brownian
    motion of the package (``BrownianInterval``, ``VirtualBrownianTree``) splits with it."""
    if H is None:
        left_w = (left / h) * W + _sqrt(left * right / h) * noise_w
        halves = ((left_w, None), (W - left_w, None))
        return halves if side == _BOTH_HALVES else halves[side]
    v = 0.5 * _sqrt(left * right / (left**3 + right**3))
    a = v * left**2 / h
    b = v * right**2 / h
    c = v * _RSQRT3
    third = 2 * (a * left + b * right) / h
    halves = []
    if side != _RIGHT_HALF:
        first = left / h
        second = 6 * first * right / h
        halves.append(
            (
                first * W + second * H + third * noise_w,
                first**2 * H - a * noise_w + c * right * noise_h,
            )
        )
    if side != _LEFT_HALF:
        first = right / h
        second = 6 * first * left / h
        halves.append(
            (
                first * W - second * H - third * noise_w,
                first**2 * H - b * noise_w - c * left * noise_h,
            )
        )
    return tuple(halves) if side == _BOTH_HALVES else halves[0]


def levy_area(W, H, h, noise, approximation: str):  # noqa: N803
    """Davie's (or Foster's) approximation of the Lévy area over an interval of length ``h``
    (a float, or a tensor broadcasting against (..., m, m)) from its ``W`` and ``H``, shape
    (..., m), and standard normal ``noise`` of shape (..., m, m).

    The Lévy area ``A_ij = 1/2 int (W_i dW_j - W_j dW_i)`` has variance ``h^2 / 4``; given
    ``W`` and ``H`` its mean is ``H_i W_j - W_i H_j`` (variance ``h^2 / 6``) and its variance
    ``h^2 / 20 + h (H_i^2 + H_j^2) / 5`` (Foster 2020), whose mean over ``H`` is ``h^2 / 12``.
    Davie's approximation adds to the mean a normal of variance ``h^2 / 12``, Foster's one of
    the conditional variance: both match the Lévy area's variance. (torchsde's add twice
    Davie's variance, and ``h^2 / 50`` for Foster's ``h^2 / 20``.)"""
    A = H.unsqueeze(-1) * W.unsqueeze(-2) - W.unsqueeze(-1) * H.unsqueeze(-2)  # noqa: N806
    noise = noise - noise.transpose(-1, -2)  # skew-symmetric, variance 2
    if approximation == LEVY_AREA_APPROXIMATIONS.foster:
        tenth = 0.1 * abs(h)  # (a row's interval may run backwards in time: h < 0)
        squared = H**2
        # variance 2 std^2 = h^2 / 20 + h (H_i^2 + H_j^2) / 5
        std = (tenth * (2.5 * tenth + squared.unsqueeze(-1) + squared.unsqueeze(-2))).sqrt()
    else:
        std = _sqrt(h**2 / 24)  # variance 2 std^2 = h^2 / 12
    return A + std * noise


def concatenate(W, H, A, Wi, Hi, Ai, s, u, t):  # noqa: N803
    """``(W, H, A)`` over [s, t] from those over [s, u] and [u, t] (``Wi``, ``Hi``, ``Ai``);
    ``H`` and ``A`` are ``None`` where they are not kept."""
    if H is not None:
        H = ((t - u) * (Hi + 0.5 * W) + (u - s) * (H - 0.5 * Wi)) / (t - s)  # noqa: N806
    if A is not None:
        cross = W.unsqueeze(-1) * Wi.unsqueeze(-2) - Wi.unsqueeze(-1) * W.unsqueeze(-2)
        A = A + Ai + 0.5 * cross  # noqa: N806
    return W + Wi, H, A
