"""The virtual Brownian tree against the mathematics of Brownian motion: increment and bridge
statistics, additivity, the space-time Lévy area's law, reproducibility in any query order,
independent rows, per-row query times and row selection, and an SDE method's strong order."""

from __future__ import annotations

import math
import random
import warnings

import pytest
import torch
from sde_problems import GBM, slope

from neuralode import sde as nsde
from neuralode.sde._bridge import _mix, bridge
from neuralode.sde._virtual import mix

F64 = torch.float64


def vbt(n, m=1, levy="none", entropy=3, **kwargs):
    return nsde.VirtualBrownianTree(
        0.0, 2.0, size=(n, m), dtype=F64, entropy=entropy, levy_area_approximation=levy, **kwargs
    )


def test_tensor_hash_is_splitmix64_bit_for_bit():
    values = [0, 1, 7, 2**40 + 3, 2**62, 2**63 + 5, 2**64 - 1]
    signed = [v - 2**64 if v >= 2**63 else v for v in values]
    expected = [_mix(v) for v in values]
    expected = [v - 2**64 if v >= 2**63 else v for v in expected]
    assert mix(torch.tensor(signed)).tolist() == expected


def test_increments_and_bridge_statistics():
    n = 40000
    bm = vbt(n)
    w1, w2, inside = bm(0.0, 1.5)[:, 0], bm(1.5, 2.0)[:, 0], bm(0.3, 0.8)[:, 0]
    for x, var in ((w1, 1.5), (w2, 0.5), (inside, 0.5)):
        assert abs(x.mean().item()) < 4 * math.sqrt(var / n)
        assert x.var().item() == pytest.approx(var, rel=0.04)
    assert abs(torch.corrcoef(torch.stack([w1, w2]))[0, 1].item()) < 0.03  # independent
    # covariance of the path: E[W(s) W(t)] = min(s, t)
    assert (bm(0.3) * bm(1.1)).mean().item() == pytest.approx(0.3, abs=0.02)
    # bridge: W(0, s) given W(0, 2) has mean s/2 W(0, 2) and variance s (2 - s) / 2
    total = bm(0.0, 2.0)[:, 0]
    residual = bm(0.0, 0.3)[:, 0] - 0.15 * total
    assert residual.var().item() == pytest.approx(0.3 * 1.7 / 2, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([residual, total]))[0, 1].item()) < 0.03


def test_per_row_times_have_each_row_its_own_law():
    n = 40000
    gen = torch.Generator().manual_seed(0)
    a = 2 * torch.rand(n, generator=gen, dtype=F64)
    b = 2 * torch.rand(n, generator=gen, dtype=F64)
    ta, tb = torch.minimum(a, b), torch.maximum(a, b)
    w = vbt(n)(ta, tb)[:, 0]
    z = w / (tb - ta).sqrt()  # standard normal if row i's increment has variance tb - ta
    assert abs(z.mean().item()) < 0.02
    assert z.var().item() == pytest.approx(1.0, rel=0.04)


def test_additive_over_adjacent_intervals_to_round_off():
    n = 500
    gen = torch.Generator().manual_seed(1)
    t = (2 * torch.rand(3, n, generator=gen, dtype=F64)).sort(0).values
    bm = vbt(n, 3, "space-time")
    (w_ab, u_ab), (w_bc, u_bc) = bm(t[0], t[1], return_U=True), bm(t[1], t[2], return_U=True)
    w_ac, u_ac = bm(t[0], t[2], return_U=True)
    assert (w_ab + w_bc - w_ac).abs().max() < 1e-13
    # U over [a, c] = U over [a, b] + U over [b, c] + (c - b) W(a, b)
    u_sum = u_ab + u_bc + (t[2] - t[1])[:, None] * w_ab
    assert (u_sum - u_ac).abs().max() < 1e-13
    assert bm(t[1], t[1]).abs().max() == 0  # an empty interval
    assert torch.equal(bm(t[1], t[0]), -bm(t[0], t[1]))  # reversed: minus the increment


def test_reproducible_in_any_query_order_and_depends_on_entropy():
    times = [random.Random(2).uniform(0, 2) for _ in range(40)]
    pairs = sorted(zip(times[::2], times[1::2]))
    first = vbt(8, 2, "space-time", entropy=5)
    second = vbt(8, 2, "space-time", entropy=5)
    forward = [first(min(p), max(p), return_U=True) for p in pairs]
    backward = [second(min(p), max(p), return_U=True) for p in reversed(pairs)][::-1]
    for (w1, u1), (w2, u2) in zip(forward, backward, strict=True):
        assert torch.equal(w1, w2) and torch.equal(u1, u2)
    # the path at several times in one bisection gives the same increments
    ta, tm, tb = (torch.full((8,), x, dtype=F64) for x in (0.2, 0.5, 1.1))
    a, m, b = first.points([ta, tm, tb])
    for (s, e), (x, y) in (((ta, tb), (a, b)), ((tm, tb), (m, b))):
        w, u = first.between(s, e, x, y, return_U=True)
        w_direct, u_direct = first(s, e, return_U=True)
        assert torch.equal(w, w_direct) and torch.equal(u, u_direct)
    other = vbt(8, 2, "space-time", entropy=6)
    assert not torch.allclose(other(0.1, 0.9), first(0.1, 0.9))


def test_rows_are_independent_and_row_selection_keeps_their_paths():
    n = 20000
    bm = vbt(n, 2)
    w = bm(0.2, 1.7)
    # neighbouring rows, and the channels of a row, are uncorrelated
    assert abs(torch.corrcoef(torch.stack([w[::2, 0], w[1::2, 0]]))[0, 1].item()) < 0.03
    assert abs(torch.corrcoef(w.T)[0, 1].item()) < 0.03
    gen = torch.Generator().manual_seed(3)
    ta = torch.rand(n, generator=gen, dtype=F64)
    tb = ta + torch.rand(n, generator=gen, dtype=F64)
    rows = [17, 3, 19999]
    full = vbt(n, 2, "davie")
    w_full, u_full, a_full = full(ta, tb, return_U=True, return_A=True)
    picked = full.rows(rows)
    assert picked.shape == (3, 2)
    w_rows, u_rows, a_rows = picked(ta[rows], tb[rows], return_U=True, return_A=True)
    assert torch.equal(w_rows, w_full[rows])
    assert torch.equal(u_rows, u_full[rows])
    assert torch.equal(a_rows, a_full[rows])
    assert torch.equal(full.rows(4)(0.5, 1.0), full(0.5, 1.0)[4:5])
    assert torch.equal(full.rows(slice(2, 5)).rows([1])(0.5, 1.0), full(0.5, 1.0)[3:4])


def test_space_time_levy_area_statistics():
    n = 40000
    bm = vbt(n, 1, "space-time", entropy=4)
    w, u = bm(0.2, 0.7, return_U=True)
    h = u / 0.5 - 0.5 * w  # U = h (W / 2 + H)
    assert h.var().item() == pytest.approx(0.5 / 12, rel=0.05)
    assert abs(torch.corrcoef(torch.stack([w[:, 0], h[:, 0]]))[0, 1].item()) < 0.03
    # across a level of the tree (0.7 to 1.3 is split at 1.0) and below the resolution
    for ta, tb in ((0.7, 1.3), (0.3, 0.3 + 1e-4)):
        w, u = bm(ta, tb, return_U=True)
        h = u / (tb - ta) - 0.5 * w
        assert h.var().item() == pytest.approx((tb - ta) / 12, rel=0.05)
    _, a = vbt(8, 3, "foster")(0.0, 0.5, return_A=True)
    assert a.shape == (8, 3, 3) and torch.allclose(a, -a.transpose(-1, -2))


def _bisect(bm, t):
    """W(t) and I(t) by bisection one level at a time with the bridge (the reference)."""
    span, levels = bm.t1 - bm.t0, bm._levels
    width = span * 2.0**-levels
    last = ((t - bm.t0) / width).floor().long().clamp(0, (1 << levels) - 1)
    nodes = [torch.zeros_like(last)] + [(1 << d) + (last >> (levels - d)) for d in range(levels)]
    noise_w, noise_h = bm._noise(torch.stack([*nodes, last + (1 << levels)], -1))
    W, H = noise_w[..., 0] * math.sqrt(span), noise_h[..., 0] * math.sqrt(span / 12)  # noqa: N806
    w_start, i_start = torch.zeros_like(W), torch.zeros_like(W)
    for level in range(levels):
        half = span * 2.0 ** -(level + 1)
        (w_left, h_left), (w_right, h_right) = bridge(
            W, H, half, half, 2 * half, noise_w[..., level + 1], noise_h[..., level + 1]
        )
        right = ((last >> (levels - 1 - level)) & 1).bool()[..., None]
        W, H = torch.where(right, w_right, w_left), torch.where(right, h_right, h_left)  # noqa: N806
        crossed = i_start + half * w_start + half * (0.5 * w_left + h_left)
        i_start = torch.where(right, crossed, i_start)
        w_start = torch.where(right, w_start + w_left, w_start)
    left = (t - (bm.t0 + last.to(F64) * width))[..., None]
    w_part, h_part = bridge(W, H, left, width - left, width, noise_w[..., -1], noise_h[..., -1])[0]
    return w_start + w_part, i_start + left * w_start + left * (0.5 * w_part + h_part)


@pytest.mark.parametrize("tol", [None, 0.3, 1e-9, 5.0])
def test_levels_at_once_equal_a_bisection_level_by_level(tol):
    bm = vbt(300, 3, "space-time", entropy=8, tol=tol)
    t = 2 * torch.rand(2, 300, generator=torch.Generator().manual_seed(3), dtype=F64)
    t[0, :5] = torch.tensor([0.0, 2.0, 1.0, 0.5, 1.5], dtype=F64)  # ends and midpoints
    (w, i), (w_ref, i_ref) = bm._points(t), _bisect(bm, t)
    assert (w - w_ref).abs().max() < 1e-14 * w_ref.abs().max()
    assert (i - i_ref).abs().max() < 1e-14 * i_ref.abs().max()


def test_resolution_below_tol_is_a_bridge_of_one_noise():
    n = 20000
    bm = vbt(n, 1, tol=0.1)  # leaves of 2 / 32: inside them, one bridge per path
    w = bm(0.0, 0.01)[:, 0]  # the variance still holds within a leaf
    assert w.var().item() == pytest.approx(0.01, rel=0.05)


@pytest.mark.parametrize(
    "method, levy, order", [("milstein", "none", 1.0), ("srk", "space-time", 1.5)]
)
def test_strong_order_with_a_virtual_tree(method, levy, order):
    sde, batch = GBM("ito"), 256
    bm = nsde.VirtualBrownianTree(
        0.0, 1.0, size=(batch, 2), dtype=F64, entropy=11, levy_area_approximation=levy
    )
    y0 = torch.ones(batch, 2, dtype=F64)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    dts = [2.0**-k for k in range(3, 8)]
    with torch.no_grad():
        exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
        errors = [
            (nsde.sdeint(sde, y0, ts, bm=bm, method=method, dt=dt)[-1] - exact).abs().mean().item()
            for dt in dts
        ]
    assert slope(dts, errors) == pytest.approx(order, abs=0.15)


def test_bad_arguments():
    with pytest.raises(ValueError, match="t0 < t1"):
        nsde.VirtualBrownianTree(1.0, 1.0, size=(2, 1))
    with pytest.raises(ValueError, match="needs size"):
        nsde.VirtualBrownianTree(0.0, 1.0)
    with pytest.raises(ValueError, match="tol must be positive"):
        nsde.VirtualBrownianTree(0.0, 1.0, size=(2,), tol=0.0)
    bm = nsde.VirtualBrownianTree(0.0, 1.0, size=(2, 1))
    with pytest.raises(ValueError, match="shape \\(batch,\\)"):
        bm(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="levy_area_approximation='space-time'"):
        bm(0.0, 1.0, return_U=True)


def test_query_outside_the_span_is_clamped_with_a_warning_like_brownian_interval():
    bm = vbt(3)
    with pytest.warns(UserWarning, match=r"outside \[t0, t1\] = \[0.0, 2.0\]; clamped"):
        outside = bm(-1.0, 2.5)
    assert torch.equal(outside, bm(0.0, 2.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bm(0.0, 2.0)
        bm(torch.full((3,), -1.0), torch.full((3,), 2.5))  # tensors: not read back


def test_reversible_heun_adjoint_equals_backprop_on_a_virtual_tree():
    """The exact adjoint retraces the forward path backwards: the tree must give the same
    increments when asked in reverse order."""
    sde = GBM("stratonovich")
    y0 = torch.tensor([[0.3, -0.2], [0.1, 0.5]], dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 0.33, 1.0], dtype=F64)
    bm = nsde.VirtualBrownianTree(0.0, 1.0, size=(2, 2), dtype=F64, entropy=3)
    kwargs = dict(bm=bm, method="reversible_heun", dt=2**-6)
    grads = []
    for solve in (nsde.sdeint, nsde.sdeint_adjoint):
        ys = solve(sde, y0, ts, **kwargs)
        grads.append(torch.autograd.grad(ys.sum(), [y0, sde.mu, sde.sigma]))
    for exact, adjoint in zip(*grads, strict=True):
        assert torch.allclose(adjoint, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("levy", ["davie", "foster"])
def test_levy_area_of_rows_running_backwards_is_finite(levy):
    """A row's interval may run backwards (ta > tb): its W is minus the forward one and its
    Lévy area approximation has the variance of the interval's length (no NaN)."""
    n = 64
    bm = vbt(n, 2, levy)
    ta = torch.full((n,), 1.5, dtype=F64)
    tb = torch.linspace(0.1, 1.9, n, dtype=F64)  # some rows forwards, some backwards
    w, a = bm(ta, tb, return_A=True)
    assert torch.isfinite(a).all() and torch.isfinite(w).all()
    assert torch.equal(w, -bm(tb, ta))


@pytest.mark.parametrize("size", [(3,), (2, 3)])
def test_shapes_of_w_u_and_the_levy_area_are_the_intervals(size):
    # (a one-dimensional size gave a Lévy area of shape (3, 1), BrownianInterval's is (3,))
    kw = dict(size=size, levy_area_approximation="foster", entropy=0)
    tree = nsde.VirtualBrownianTree(0.0, 1.0, **kw)(0.1, 0.4, return_U=True, return_A=True)
    interval = nsde.BrownianInterval(0.0, 1.0, **kw)(0.1, 0.4, return_U=True, return_A=True)
    assert [x.shape for x in tree] == [x.shape for x in interval]
