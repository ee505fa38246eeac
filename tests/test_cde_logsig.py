"""``neuralode.cde``'s signatures, log-signatures and log-ODE windows: against the mathematics
(increments, hand-computed Lévy areas, straight lines, exp(log S) = S, Chen's identity,
reparametrisation invariance, Witt's formula), gradcheck, torchcde's own ``logsig_windows``
code with our log-signature in signatory's place, and a CDE solve on the windows' path."""

from __future__ import annotations

import types

import pytest
import torch

from neuralode import cde
from neuralode.cde import _tensor_algebra as ta

DT = torch.float64
NAN = float("nan")


def _levels(flat: torch.Tensor, channels: int, depth: int) -> list[torch.Tensor]:
    """Split a flat signature (..., d + ... + d^N) into its levels."""
    return list(flat.split([channels**k for k in range(1, depth + 1)], -1))


def _path(*shape: int, seed: int = 0, dtype: torch.dtype = DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _iterated_integrals(x: torch.Tensor) -> torch.Tensor:
    """int (x^i - x^i_0) dx^j of a piecewise-linear path, by hand: on a segment from a to
    a + D the integrand is linear, so each segment adds (a^i - x^i_0 + D^i / 2) D^j."""
    start = x[..., :-1, :] - x[..., :1, :]
    dx = x[..., 1:, :] - x[..., :-1, :]
    return ((start + dx / 2).unsqueeze(-1) * dx.unsqueeze(-2)).sum(-3)


def test_depth_one_is_the_increment() -> None:
    x = _path(3, 2, 7, 4)
    increment = x[..., -1, :] - x[..., 0, :]
    torch.testing.assert_close(cde.logsignature(x, 1), increment)
    torch.testing.assert_close(cde.signature(x, 1), increment)
    torch.testing.assert_close(cde.logsignature(x, 3)[..., :4], increment)


def test_depth_two_is_increment_and_levy_area() -> None:
    x = _path(5, 9, 3, seed=1)
    integrals = _iterated_integrals(x)
    torch.testing.assert_close(_levels(cde.signature(x, 2), 3, 2)[1], integrals.flatten(-2))
    area = 0.5 * (integrals - integrals.transpose(-1, -2))
    pairs = [(0, 1), (0, 2), (1, 2)]  # the Lyndon words of length 2, lexicographic
    assert cde.lyndon_words(3, 2)[3:] == pairs
    expected = torch.cat(
        [x[:, -1] - x[:, 0], torch.stack([area[:, i, j] for i, j in pairs], -1)], -1
    )
    torch.testing.assert_close(cde.logsignature(x, 2), expected)


def test_straight_line_has_nothing_beyond_depth_one() -> None:
    direction = _path(4, 1, 3, seed=2)
    start = _path(4, 1, 3, seed=3)
    # Points along one straight line, moving forward at uneven speeds.
    x = start + torch.tensor([0.0, 0.1, 0.5, 0.55, 1.0], dtype=DT).view(1, 5, 1) * direction
    logsig = cde.logsignature(x, 4)
    torch.testing.assert_close(logsig[..., :3], (direction * 1.0).squeeze(1))
    torch.testing.assert_close(logsig[..., 3:], torch.zeros_like(logsig[..., 3:]))
    # The signature of a segment is the tensor exponential of its increment.
    levels = _levels(cde.signature(x[:, [0, -1]], 3), 3, 3)
    d = direction.squeeze(1)
    torch.testing.assert_close(
        levels[2], (d[:, :, None, None] * d[:, None, :, None] * d[:, None, None, :] / 6).flatten(-3)
    )


def test_exp_of_log_is_the_signature() -> None:
    x = _path(3, 11, 3, seed=4)
    sig = _levels(cde.signature(x, 4), 3, 4)
    logarithm = ta.log(sig)
    for ours, theirs in zip(ta.exp(logarithm), sig):
        torch.testing.assert_close(ours, theirs)
    # The Lyndon coefficients are read off that logarithm.
    torch.testing.assert_close(cde.logsignature(x, 4), ta.lyndon_coefficients(logarithm))


def test_chen_identity() -> None:
    x = _path(2, 13, 3, seed=5)
    first, second = x[:, :6], x[:, 5:]
    product = ta.group_mult(
        _levels(cde.signature(first, 4), 3, 4), _levels(cde.signature(second, 4), 3, 4)
    )
    torch.testing.assert_close(cde.signature(x, 4), torch.cat(product, -1))


def test_reparametrisation_invariance() -> None:
    x = _path(3, 6, 2, seed=6)
    # A point inserted on the third segment, and a repeated point, change nothing.
    inserted = 0.3 * x[:, 2:3] + 0.7 * x[:, 3:4]
    longer = torch.cat([x[:, :3], inserted, x[:, 3:5], x[:, 4:5], x[:, 5:]], 1)
    torch.testing.assert_close(cde.signature(longer, 5), cde.signature(x, 5))
    torch.testing.assert_close(cde.logsignature(longer, 5), cde.logsignature(x, 5))


def test_single_point_has_zero_signature() -> None:
    x = _path(2, 1, 3)
    assert cde.signature(x, 3).abs().max() == 0
    assert cde.logsignature(x, 3).shape == (2, 14)


def test_logsignature_channels_and_lyndon_words() -> None:
    known = {(2, 2): 3, (2, 3): 5, (3, 3): 14, (1, 5): 1, (2, 4): 8, (3, 4): 32, (4, 2): 10}
    for (d, n), count in known.items():
        assert cde.logsignature_channels(d, n) == count
        assert len(cde.lyndon_words(d, n)) == count
        assert cde.logsignature(_path(1, 3, d), n).shape == (1, count)
    assert cde.lyndon_words(2, 4) == [
        (0,),
        (1,),
        (0, 1),
        (0, 0, 1),
        (0, 1, 1),
        (0, 0, 0, 1),
        (0, 0, 1, 1),
        (0, 1, 1, 1),
    ]


def test_gradcheck() -> None:
    x = _path(2, 5, 2, seed=7).requires_grad_()
    assert torch.autograd.gradcheck(lambda p: cde.signature(p, 3), (x,))
    assert torch.autograd.gradcheck(lambda p: cde.logsignature(p, 3), (x,))
    t = torch.tensor([0.0, 0.4, 1.5, 2.0, 3.7], dtype=DT)
    assert torch.autograd.gradcheck(lambda p: cde.logsig_windows(p, 3, 1.3, t), (x,))


def test_float32_matches_float64() -> None:
    x = _path(4, 20, 3, seed=8)
    ours = cde.logsignature(x.float(), 3)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), cde.logsignature(x, 3), rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_matches_cpu() -> None:
    x = _path(4, 20, 3, seed=9)
    x[0, 3, 1] = NAN
    torch.testing.assert_close(
        cde.logsig_windows(x.cuda(), 3, 3.0).cpu(), cde.logsig_windows(x, 3, 3.0)
    )


def test_windows_structure() -> None:
    x = _path(2, 3, 9, 2, seed=10)
    out = cde.logsig_windows(x, 2, 2.0)  # windows [0, 2], [2, 4], [4, 6], [6, 8]
    assert out.shape == (2, 3, 5, 3)
    torch.testing.assert_close(out[..., 0, :2], x[..., 0, :])
    assert out[..., 0, 2].abs().max() == 0
    windows = torch.stack([cde.logsignature(x[..., 2 * k : 2 * k + 3, :], 2) for k in range(4)], -2)
    torch.testing.assert_close(out.diff(dim=-2), windows)
    # At depth 1 the cumulative sum recovers the path at the windows' ends.
    torch.testing.assert_close(cde.logsig_windows(x, 1, 2.0), x[..., ::2, :])
    values, times = cde.logsignature_windows(x, 2, 2.0)
    torch.testing.assert_close(times, torch.tensor([0.0, 2.0, 4.0, 6.0, 8.0], dtype=DT))
    torch.testing.assert_close(values.diff(dim=-2), 2.0 * windows)


def _signatory_shim() -> types.SimpleNamespace:
    """signatory's two entry points that torchcde's log_ode uses, on our log-signature."""

    class Logsignature:
        def __init__(self, depth: int) -> None:
            self.depth = depth

        def __call__(self, path: torch.Tensor) -> torch.Tensor:
            return cde.logsignature(path, self.depth)

    return types.SimpleNamespace(
        logsignature_channels=cde.logsignature_channels, Logsignature=Logsignature
    )


CASES = [
    # (batch shape, length, channels, depth, window_length, times, NaN positions)
    ((3,), 10, 2, 3, 2.0, None, []),
    ((2, 2), 12, 3, 2, 2.5, None, [(0, 0, 4, 1), (1, 1, 0, 2), (0, 1, 11, 0)]),
    ((4,), 9, 2, 4, 0.7, [0.0, 0.3, 0.35, 1.0, 1.4, 2.1, 2.2, 3.0, 3.9], [(1, 2, 0), (2, 5, 1)]),
    # Window ends 1e-7 past observations: torchcde merges them into those observations.
    ((2,), 6, 2, 3, 1.0, [0.0, 1.0 - 1e-7, 2.0 - 1e-7, 2.5, 4.0 + 1e-7, 5.0], [(0, 3, 1)]),
    # Large times: torchcde's relative tolerance moves the ends 1000 and 2000 to the
    # observations 999.995 and 1999.99, which shortens the windows measurably.
    ((2,), 7, 2, 2, 1000.0, [0.0, 500.0, 999.995, 1700.0, 1999.99, 2600.0, 3000.5], []),
    ((3,), 7, 3, 2, 10.0, [0.5, 1.0, 2.0, 3.5, 4.0, 6.0, 7.25], [(2, 6, 0)]),
    ((2,), 5, 1, 3, 1.5, None, [(0, 1, 0)]),
]


@pytest.mark.parametrize("case", CASES)
def test_windows_match_torchcde(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    torchcde = pytest.importorskip("torchcde")
    monkeypatch.setattr(torchcde.log_ode, "signatory", _signatory_shim())
    batch, length, channels, depth, window, times, nans = case
    x = _path(*batch, length, channels, seed=11)
    for position in nans:
        x[position] = NAN
    t = None if times is None else torch.tensor(times, dtype=DT)
    torch.testing.assert_close(
        cde.logsig_windows(x, depth, window, t), torchcde.logsig_windows(x, depth, window, t)
    )
    ours, ours_t = cde.logsignature_windows(x, depth, window, t)
    theirs, theirs_t = torchcde.logsignature_windows(x, depth, window, t)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_t, theirs_t)


def test_cde_on_windows_solves_and_backprops() -> None:
    torch.manual_seed(0)
    x = _path(4, 40, 2, seed=12).requires_grad_()
    path = cde.logsig_windows(x, 2, 5.0)  # 40 observations, 8 windows
    X = cde.LinearInterpolation(cde.linear_interpolation_coeffs(path))
    assert X.interval.tolist() == [0.0, 8.0]
    width = cde.logsignature_channels(2, 2)
    net = torch.nn.Sequential(torch.nn.Linear(6, 6 * width, dtype=DT), torch.nn.Tanh())

    def field(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return net(z).unflatten(-1, (6, width))

    z0 = torch.zeros(4, 6, dtype=DT)
    # One rk4 step per window: backpropagation through the solve reaches x and the field.
    zs = cde.cdeint(
        X, field, z0, X.interval, adjoint=False, method="rk4", options=dict(step_size=1.0)
    )
    assert zs.shape == (4, 2, 6)
    zs[:, -1].pow(2).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: cde.signature(_path(2, 5, 2), 0), "depth must be an int of at least 1"),
        (lambda: cde.logsignature(_path(2, 5, 2), True), "depth must be an int"),
        (lambda: cde.logsignature(_path(2, 5, 2), 2.0), "depth must be an int"),
        (lambda: cde.signature(_path(5), 2), r"shape \(\.\.\., length, channels\)"),
        (lambda: cde.signature(_path(2, 0, 2), 2), "length and channels at least 1"),
        (lambda: cde.signature(torch.ones(2, 5, 2, dtype=torch.long), 2), "floating-point"),
        (lambda: cde.logsignature_channels(0, 2), "channels must be an int"),
        (lambda: cde.lyndon_words(2, 0), "depth must be an int"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 0, 1.0), "depth must be an int"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 2, 0.0), "window_length must be positive"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 2, -1.0), "window_length must be positive"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 2, float("inf")), "window_length must be"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 2, float("nan")), "window_length must be"),
        (lambda: cde.logsig_windows(_path(2, 5, 2), 2, "1"), "window_length must be a positive"),
        (lambda: cde.logsig_windows(_path(5), 2, 1.0), "at least two dimensions"),
        (lambda: cde.logsig_windows(_path(2, 1, 2), 2, 1.0), "at least 2"),
        (
            lambda: cde.logsignature_windows(
                _path(2, 3, 2), 2, 1.0, torch.tensor([0.0, 2.0, 1.0], dtype=DT)
            ),
            "strictly increasing",
        ),
    ],
)
def test_errors(call, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        call()
