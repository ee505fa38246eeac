"""2-D toy densities of FFJORD's ``toy_data.py`` (numpy only, seeded), and 8gaussians' entropy.

``sample_toy(name, n, seed)`` returns an (n, 2) float32 array. The samplers follow FFJORD's
definitions (scikit-learn's moons/circles/swiss roll re-written in numpy). ``8gaussians`` is
the one with a closed-form density: an equal mixture of 8 isotropic Gaussians (std 0.5/1.414)
with centres on a circle of radius 4/1.414, so its differential entropy is known to quadrature
accuracy (``entropy_8gaussians``), the floor of any model's expected held-out NLL.
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache

import numpy as np

SQRT2_FFJORD = 1.414  # FFJORD divides 8gaussians by 1.414, not sqrt(2)
_8G_SCALE = 4.0 / SQRT2_FFJORD
_8G_STD = 0.5 / SQRT2_FFJORD


def _eight_centres() -> np.ndarray:
    s = 1.0 / math.sqrt(2)
    unit = [(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)]
    return np.array(unit, dtype=np.float64) * _8G_SCALE


def _eight_gaussians(rng: np.random.Generator, n: int) -> np.ndarray:
    centres = _eight_centres()
    return centres[rng.integers(0, 8, n)] + rng.standard_normal((n, 2)) * _8G_STD


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    x1 = rng.random(n) * 4 - 2
    x2 = rng.random(n) - rng.integers(0, 2, n) * 2 + np.floor(x1) % 2
    return np.stack([x1, x2], 1) * 2


def _pinwheel(rng: np.random.Generator, n: int) -> np.ndarray:
    classes, radial_std, tangential_std, rate = 5, 0.3, 0.1, 0.25
    labels = np.arange(n) % classes
    features = rng.standard_normal((n, 2)) * np.array([radial_std, tangential_std])
    features[:, 0] += 1.0
    angles = np.linspace(0, 2 * np.pi, classes, endpoint=False)[labels]
    angles = angles + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angles), np.sin(angles)
    rotated = np.stack(
        [features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos],
        1,
    )
    return 2 * rng.permutation(rotated)


def _two_spirals(rng: np.random.Generator, n: int) -> np.ndarray:
    first = n - n // 2  # odd n: the first spiral has one point more
    m = np.sqrt(rng.random((first, 1))) * 540 * (2 * np.pi) / 360
    d1x = -np.cos(m) * m + rng.random((first, 1)) * 0.5
    d1y = np.sin(m) * m + rng.random((first, 1)) * 0.5
    d1 = np.hstack([d1x, d1y])
    x = np.vstack([d1, -d1[: n // 2]]) / 3  # the second spiral mirrors the first's points
    x = x + rng.standard_normal(x.shape) * 0.1
    return rng.permutation(x)


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
    n_out = n // 2
    n_in = n - n_out
    outer = np.linspace(0, np.pi, n_out)
    inner = np.linspace(0, np.pi, n_in)
    x = np.concatenate([np.cos(outer), 1 - np.cos(inner)])
    y = np.concatenate([np.sin(outer), 1 - np.sin(inner) - 0.5])
    data = np.stack([x, y], 1) + rng.standard_normal((n, 2)) * 0.1
    return rng.permutation(data * 2 + np.array([-1, -0.2]))


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
    per = n // 4
    counts = [n - 3 * per, per, per, per]
    radii = [0.25, 0.5, 0.75, 1.0]
    pieces = []
    for count, radius in zip(counts, radii):
        angle = np.linspace(0, 2 * np.pi, count, endpoint=False)
        pieces.append(np.stack([np.cos(angle), np.sin(angle)], 1) * radius)
    data = np.concatenate(pieces) * 3.0
    return rng.permutation(data) + rng.normal(scale=0.08, size=(n, 2))


def _circles(rng: np.random.Generator, n: int) -> np.ndarray:
    n_out = n // 2
    n_in = n - n_out
    outer = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    inner = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    x = np.concatenate([np.cos(outer), 0.5 * np.cos(inner)])
    y = np.concatenate([np.sin(outer), 0.5 * np.sin(inner)])
    data = np.stack([x, y], 1) + rng.standard_normal((n, 2)) * 0.08
    return rng.permutation(data) * 3


def _swissroll(rng: np.random.Generator, n: int) -> np.ndarray:
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    data = np.stack([t * np.cos(t), t * np.sin(t)], 1) + rng.standard_normal((n, 2)) * 1.0
    return data / 5


TOY_DENSITIES = {
    "8gaussians": _eight_gaussians,
    "checkerboard": _checkerboard,
    "pinwheel": _pinwheel,
    "2spirals": _two_spirals,
    "moons": _moons,
    "rings": _rings,
    "circles": _circles,
    "swissroll": _swissroll,
}


def sample_toy(name: str, n: int, seed: int | np.random.Generator = 0) -> np.ndarray:
    """n samples (float32, shape (n, 2)) of the toy density ``name``; same seed, same data."""
    if name not in TOY_DENSITIES:
        raise ValueError(f"unknown toy density {name!r}; available: {', '.join(TOY_DENSITIES)}")
    try:  # any integer type: Python's, NumPy's (a size read from an array), a 0-dim tensor
        count = operator.index(n)
    except TypeError:
        count = 0
    if isinstance(n, bool) or count < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return TOY_DENSITIES[name](rng, count).astype(np.float32)


def log_density_8gaussians(x: np.ndarray) -> np.ndarray:
    """The exact log-density of ``8gaussians`` at points x (..., 2)."""
    x = np.asarray(x, dtype=np.float64)
    diff = x[..., None, :] - _eight_centres()
    log_comp = -0.5 * (diff**2).sum(-1) / _8G_STD**2 - math.log(2 * math.pi * _8G_STD**2)
    top = log_comp.max(-1, keepdims=True)
    return (top + np.log(np.exp(log_comp - top).sum(-1, keepdims=True)))[..., 0] - math.log(8)


@lru_cache(maxsize=1)
def entropy_8gaussians(points: int = 1601) -> float:
    """Differential entropy -int p log p of ``8gaussians`` in nats, by the trapezoid rule on
    [-4.7, 4.7]^2 (the density there is below 1e-30 at the border); error < 1e-6."""
    grid = np.linspace(-4.7, 4.7, points)
    h = grid[1] - grid[0]
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    log_p = log_density_8gaussians(np.stack([xx, yy], -1))
    integrand = -np.exp(log_p) * log_p
    weights = np.ones(points)
    weights[[0, -1]] = 0.5
    return float(h * h * weights @ integrand @ weights)
