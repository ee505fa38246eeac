"""SDEs with known solutions for the SDE tests: the exact solution as a function of the
Brownian motion's value at the final time."""

from __future__ import annotations

import math

import torch
from torch import nn


class GBM(nn.Module):
    """Geometric Brownian motion dY = mu Y dt + sigma Y dW (diagonal noise, d channels).
    Itô: Y_T = Y_0 exp((mu - sigma^2/2) T + sigma W_T); as a Stratonovich SDE with the same
    coefficients: Y_T = Y_0 exp(mu T + sigma W_T)."""

    noise_type = "diagonal"

    def __init__(self, sde_type: str = "ito", mu: float = 0.5, sigma: float = 0.6):
        super().__init__()
        self.sde_type = sde_type
        self.mu = nn.Parameter(torch.tensor(mu, dtype=torch.float64))
        self.sigma = nn.Parameter(torch.tensor(sigma, dtype=torch.float64))

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return self.sigma * y

    def exact(self, y0, w, t):
        drift = self.mu - (0.5 * self.sigma**2 if self.sde_type == "ito" else 0.0)
        return y0 * torch.exp(drift * t + self.sigma * w)


class ScalarGBM(GBM):
    """GBM of d channels driven by one Brownian motion (scalar noise)."""

    noise_type = "scalar"

    def g(self, t, y):
        return (self.sigma * y).unsqueeze(-1)


class GeneralLinear(nn.Module):
    """dY = mu Y dt + sum_j B_j Y dW_j with diagonal (commuting) B_j, general noise (batch, d, m):
    Itô solution Y_T = Y_0 exp((mu - sum_j B_j^2 / 2) T + sum_j B_j W_j)."""

    noise_type = "general"

    def __init__(self, sde_type: str = "ito", d: int = 2, m: int = 3):
        super().__init__()
        self.sde_type = sde_type
        gen = torch.Generator().manual_seed(0)
        self.mu = 0.3
        self.b = nn.Parameter(0.3 * torch.rand(d, m, generator=gen, dtype=torch.float64) + 0.1)

    def f(self, t, y):
        return self.mu * y

    def g(self, t, y):
        return y.unsqueeze(-1) * self.b

    def exact(self, y0, w, t):
        correction = 0.5 * (self.b**2).sum(-1) if self.sde_type == "ito" else 0.0
        return y0 * torch.exp((self.mu - correction) * t + w @ self.b.T)


class OU(nn.Module):
    """Ornstein-Uhlenbeck dY = -theta Y dt + sigma dW (additive noise, d = m). The exact
    solution needs the whole path; the tests use a fine reference solve instead."""

    noise_type = "additive"

    def __init__(self, sde_type: str = "ito", theta: float = 1.5, sigma: float = 0.8):
        super().__init__()
        self.sde_type = sde_type
        self.theta = theta
        self.sigma = sigma

    def f(self, t, y):
        return -self.theta * y + torch.sin(3 * t)

    def g(self, t, y):
        eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
        return self.sigma * eye.expand(y.shape[0], -1, -1)


class RowsOU(nn.Module):
    """dY = -theta_i (Y - sin t) dt + sigma dW with each row's own theta (additive noise)."""

    noise_type, sde_type = "additive", "ito"

    def __init__(self, theta: torch.Tensor, sigma: float = 0.5):
        super().__init__()
        self.theta, self.sigma = theta, sigma

    def f(self, t, y):
        t = t[:, None] if t.ndim else t
        return -self.theta * (y - torch.sin(t))

    def g(self, t, y):
        eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
        return self.sigma * eye.expand(y.shape[0], -1, -1)


def slope(xs, ys) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
