"""2-D toy densities: shapes, determinism, and 8gaussians' entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuralode.data.toy2d import (
    TOY_DENSITIES,
    entropy_8gaussians,
    log_density_8gaussians,
    sample_toy,
)


@pytest.mark.parametrize("name", sorted(TOY_DENSITIES))
def test_samplers_are_seeded_with_the_right_shape(name: str) -> None:
    a = sample_toy(name, 301, seed=3)
    assert a.shape == (301, 2) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, sample_toy(name, 301, seed=3))
    assert not np.array_equal(a, sample_toy(name, 301, seed=4))
    assert 0.5 < float(np.abs(a).max()) < 8.0  # FFJORD's plotting box is [-4, 4]^2


@pytest.mark.parametrize("n", [1, 2, 5, 301])
def test_2spirals_draws_exactly_n_distinct_points(n: int) -> None:
    """n points for every n, 1 and odd n included, none a copy of another."""
    x = sample_toy("2spirals", n, seed=0)
    assert x.shape == (n, 2) and len(np.unique(x, axis=0)) == n


def test_unknown_density_and_bad_sizes_are_named() -> None:
    with pytest.raises(ValueError, match="unknown toy density 'blobs'"):
        sample_toy("blobs", 10)
    for n in (0, 2.5, True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            sample_toy("moons", n)
    # a NumPy integer (a size read from an array) is an integer
    np.testing.assert_array_equal(sample_toy("moons", np.int64(7)), sample_toy("moons", 7))


def test_8gaussians_density_and_entropy() -> None:
    x = sample_toy("8gaussians", 50_000, seed=0).astype(np.float64)
    log_p = log_density_8gaussians(x)
    monte_carlo, stderr = -log_p.mean(), log_p.std() / math.sqrt(len(log_p))
    entropy = entropy_8gaussians()
    assert abs(monte_carlo - entropy) < 4 * stderr
    # nearly separated modes: close to log 8 + the entropy of one Gaussian, slightly below it
    separated = math.log(8) + math.log(2 * math.pi * math.e * (0.5 / 1.414) ** 2)
    assert 0 < separated - entropy < 0.02
    # the density integrates to one
    axis = np.linspace(-5, 5, 401)
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    mass = np.exp(log_density_8gaussians(np.stack([xx, yy], -1))).sum() * (axis[1] - axis[0]) ** 2
    assert abs(mass - 1) < 1e-6
