"""The arithmetic of ``VirtualBrownianTree``: counter-based normal noise (splitmix64 on int64
tensors, Box-Muller) and the bisection's splits at every level solved at once (``_Splits``)."""

from __future__ import annotations

import math

import torch

from ._bridge import bridge


def _signed(c: int) -> int:
    """A 64-bit constant as the int64 with the same bits."""
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)
_SALT_U2 = _signed(0xD1B54A32D192ED03)  # the second uniform of a Box-Muller pair
_SALT_AREA = _signed(0x8CB92BA72F3D8DD7)  # the Lévy area's noise
_MAX_LEVELS = 60  # node numbers 2**level + k stay in int64


def mix(x: torch.Tensor) -> torch.Tensor:
    """splitmix64 on int64 tensors (wrapping arithmetic), bit for bit ``_bridge._mix``."""
    x = x + _GOLDEN  # a fresh tensor: the rest runs in place on it
    for shift, mul in ((30, _MUL1), (27, _MUL2), (31, None)):
        x ^= (x >> shift) & ((1 << (64 - shift)) - 1)  # a logical shift
        if mul is not None:
            x *= mul
    return x


def _uniform(x: torch.Tensor) -> torch.Tensor:
    """The top 53 bits of hashes as float64 uniforms in (0, 1] (``x`` is overwritten)."""
    x >>= 11
    x &= (1 << 53) - 1
    x += 1
    return x.to(torch.float64).mul_(2.0**-53)


def normal_pair(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals (float64) for each int64 key (Box-Muller)."""
    u = _uniform(mix(torch.stack([key, key ^ _SALT_U2])))
    radius = u[0].log_().mul_(-2).sqrt_()
    angle = u[1].mul_(2 * math.pi)
    return torch.cos(angle).mul_(radius), angle.sin_().mul_(radius)


class _Splits:
    """The bisection's splits at every level of a tree, solved for all levels at once.

    Splitting an interval at its midpoint is linear (``bridge``): the left half's
    ``(W', H')`` is ``W' = pW W + pH H + pN nw`` and ``H' = qH H + qN nw + qM nh``, with
    coefficients that depend on the level only; the right half is the left half of the
    time-reversed interval (``H``, ``nw`` and ``nh`` change sign; ``W`` and ``H'``'s ``nw``
    term do not), so the half taken has the left half's coefficients with the sign ``s`` of
    the side on ``pH``, ``pN`` and ``qM``. The coefficients are ``bridge``'s own, read off by
    splitting the unit vectors once per tree (and checked to have this form). With ``pW``
    and ``qH`` the same at every split, the levels' values follow from cumulative sums:
    ``H_l = G_l (H_0 + sum_{k <= l} d_k / G_k)`` with ``G_l`` the product of the ``qH``
    (powers of two: exact), and the same for ``W``. The sums grow geometrically, so their
    round-off is that of their last terms. Tensors hold the levels in their last dimension
    (a cumulative sum along contiguous memory)."""

    def __init__(self, span: float, levels: int, have_H: bool, device: torch.device):  # noqa: N803
        self.have_H = have_H
        f64 = dict(dtype=torch.float64, device=device)
        self.half = span * 2.0 ** -torch.arange(1, levels + 1, **f64)
        unit = torch.eye(4, **f64)[:, :, None]  # W, H, noise_w, noise_h; (4, 4, 1)
        half = self.half[None, :]
        (w_left, h_left), (w_right, h_right) = bridge(
            unit[0], unit[1] if have_H else None, half, half, 2 * half, unit[2],
            unit[3] if have_H else None,
        )  # fmt: skip
        reflect = torch.tensor([1.0, -1.0, -1.0, 1.0], **f64)[:, None]  # W, H, nw, nh
        if not (torch.equal(w_right, w_left * reflect) and w_left[3].eq(0).all()):
            raise AssertionError("the bridge's W of a half is not pW W + s (pH H + pN nw)")
        # the terms of the sums carry the inverse products (powers of two: the same bits)
        self.p_w = self._products(w_left[0])
        self.p_h, self.p_n = w_left[1] * self.p_w[1][1:], w_left[2] * self.p_w[1][1:]
        if have_H:
            if not (torch.equal(h_right, -h_left * reflect) and h_left[0].eq(0).all()):
                raise AssertionError("the bridge's H of a half is not qH H + qN nw + s qM nh")
            self.q_h, self.q_n, self.q_m = h_left[1], h_left[2], h_left[3]
            self.q = self._products(h_left[1])

    @staticmethod
    def _products(factor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The products of the factors of the first l levels, l = 0..levels, and inverses."""
        product = torch.cat([factor.new_ones(1), factor.cumprod(0)])
        return product, 1 / product

    @staticmethod
    def _solve(x0: torch.Tensor, scaled: torch.Tensor, products: tuple) -> torch.Tensor:
        """``x_l = c_l x_{l-1} + terms_l``, l = 1..levels, from ``x0`` (..., ) with the terms
        divided by the products, (..., levels): all ``x_l``, l = 0..levels, (..., levels + 1)."""
        return torch.cat([x0[..., None], scaled], -1).cumsum(-1).mul_(products[0])

    def descend(self, W, H, right, noise_w, noise_h):  # noqa: N803
        """From the root's ``W`` and ``H`` (``None``: no Lévy area), (q, b, e), down the
        halves ``right`` (q, b, 1, levels) with each level's noise (q, b, e, levels): the
        last interval's ``W`` and ``H``, and ``W`` and ``I`` at its start."""
        if not right.shape[-1]:  # the root is the last interval
            zero = torch.zeros_like(W)
            return W, H, zero, None if H is None else zero
        taken = right.to(torch.float64)  # 1 where the path goes right
        sign = 1 - 2 * taken  # the left half's coefficients, reflected on the right
        if self.have_H:
            from_w, from_h = self.q_n * noise_w, self.q_m * noise_h
            d = torch.addcmul(from_w, sign, from_h).mul_(self.q[1][1:])
            hs = self._solve(H, d, self.q)
            h_before = hs[..., :-1]
            e = (self.p_h * h_before).add_(self.p_n * noise_w).mul_(sign)
        else:
            e = (self.p_n * noise_w).mul_(sign)
        ws = self._solve(W, e, self.p_w)
        w_left = ws[..., :-1] - ws[..., 1:]  # the left half where the path goes right
        passed = taken * w_left  # W of the left halves passed on the way
        w_sums = passed.cumsum(-1)
        if not self.have_H:
            return ws[..., -1], None, w_sums[..., -1], None
        h_left = (self.q_h * h_before).add_(from_w).add_(from_h)
        # I at a passed midpoint: I at the start + W at the start times the half + U of the
        # left half
        gained = (w_sums - passed).add_(0.5 * w_left).add_(h_left).mul_(self.half * taken)
        return ws[..., -1], hs[..., -1], w_sums[..., -1], gained.sum(-1)
