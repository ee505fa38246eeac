"""``neuralode.cde`` interpolation: natural cubic splines against SciPy (with missing values,
per channel), Hermite cubics with backward differences and linear/rectilinear paths against
their definitions, gradients by gradcheck, every validation error, and torchcde's
coefficients where torchcde is importable."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.interpolate
import torch

from neuralode.cde.interpolation import (
    CubicSpline,
    LinearInterpolation,
    NaturalCubicSpline,
    hermite_cubic_coefficients_with_backward_differences,
    linear_interpolation_coeffs,
    natural_cubic_coeffs,
    natural_cubic_spline_coeffs,
)

DT = torch.float64
NAN = float("nan")


def _times(length: int, seed: int = 0) -> torch.Tensor:
    """Random irregular increasing times starting at a random point."""
    g = torch.Generator().manual_seed(seed)
    steps = torch.rand(length - 1, generator=g, dtype=DT) * 2 + 0.05
    return torch.cat([torch.rand(1, generator=g, dtype=DT) - 1, steps]).cumsum(0)


def _data(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


def _queries(t: torch.Tensor, n: int = 41, seed: int = 2) -> torch.Tensor:
    """Random times in [t0, tN] plus every knot."""
    g = torch.Generator().manual_seed(seed)
    inside = t[0] + (t[-1] - t[0]) * torch.rand(n, generator=g, dtype=DT)
    return torch.cat([inside, t]).sort().values


def _with_missing(x: torch.Tensor, seed: int = 3) -> torch.Tensor:
    """x with random NaNs plus the awkward cases: a channel never observed, observed once
    (in the middle), only at the end, only at both ends, and missing runs at both ends."""
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    x[torch.rand(x.shape, generator=g) < 0.35] = NAN
    x[0, :, 0] = NAN
    x[1, :, 1] = NAN
    x[1, 4, 1] = 0.7
    x[2, :-1, 2] = NAN
    x[2, :3, 0] = NAN
    x[2, -3:, 0] = NAN
    x[2, -1, 2] = 0.3
    x[3, :, 2] = NAN  # observed at the two ends only
    x[3, 0, 2], x[3, -1, 2] = 0.25, -1.5
    x[3, :, 3] = _data(x.size(1), seed=9)  # fully observed beside missing channels
    return x


def _scipy_natural(t: np.ndarray, x: np.ndarray) -> scipy.interpolate.CubicSpline:
    return scipy.interpolate.CubicSpline(t, x, bc_type="natural")


# --- natural cubic splines ---------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 11])
def test_natural_cubic_matches_scipy(length: int) -> None:
    t = _times(length)
    x = _data(2, 3, length, 4)
    spline = CubicSpline(natural_cubic_coeffs(x, t), t)
    s = _queries(t)
    reference = _scipy_natural(t.numpy(), x.numpy().reshape(6, length, 4).transpose(1, 0, 2))
    expected = reference(s.numpy()).transpose(1, 0, 2).reshape(2, 3, len(s), 4)
    slopes = reference(s.numpy(), 1).transpose(1, 0, 2).reshape(2, 3, len(s), 4)
    np.testing.assert_allclose(spline.evaluate(s).numpy(), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(spline.derivative(s).numpy(), slopes, rtol=0, atol=1e-11)


def test_default_times_are_0_to_length_minus_1() -> None:
    x = _data(5, 7, 2)
    t = torch.arange(7, dtype=DT)
    torch.testing.assert_close(natural_cubic_coeffs(x), natural_cubic_coeffs(x, t))
    spline = CubicSpline(natural_cubic_coeffs(x))
    torch.testing.assert_close(spline.grid_points, t)
    torch.testing.assert_close(spline.interval, torch.tensor([0.0, 6.0], dtype=DT))
    linear = LinearInterpolation(linear_interpolation_coeffs(x))
    torch.testing.assert_close(linear.grid_points, t)


@pytest.mark.parametrize("version", [0, 1])
def test_missing_values_are_scipy_splines_through_each_channels_observations(
    version: int,
) -> None:
    length = 9
    t = _times(length, seed=4)
    x = _with_missing(_data(4, length, 4, seed=5))
    make = natural_cubic_coeffs if version == 1 else natural_cubic_spline_coeffs
    coeffs = make(x, t)
    spline = CubicSpline(coeffs, t)
    s = _queries(t)
    values, slopes = spline.evaluate(s), spline.derivative(s)
    assert values.shape == (4, len(s), 4)
    # Observed at the two ends only: exactly the line through them.
    assert (coeffs[3, :, [10, 14]] == 0).all()
    assert (coeffs[3, :, 6] == (x[3, -1, 2] - x[3, 0, 2]) / (t[-1] - t[0])).all()
    for i in range(4):
        for c in range(4):
            series = x[i, :, c].numpy().copy()
            observed = ~np.isnan(series)
            if not observed.any():
                assert (values[i, :, c] == 0).all() and (slopes[i, :, c] == 0).all()
                continue
            first, last = np.flatnonzero(observed)[[0, -1]]
            if version == 1:  # fill the whole leading and trailing runs
                series[:first] = series[first]
                series[last + 1 :] = series[last]
            else:  # impute the first and last entries only
                series[0], series[-1] = series[first], series[last]
            keep = ~np.isnan(series)
            reference = _scipy_natural(t.numpy()[keep], series[keep])
            np.testing.assert_allclose(values[i, :, c], reference(s.numpy()), atol=1e-11)
            np.testing.assert_allclose(slopes[i, :, c], reference(s.numpy(), 1), atol=1e-10)


def test_missing_value_gradients_are_finite_and_zero_at_the_nans() -> None:
    t = _times(8, seed=6).requires_grad_()
    x = _with_missing(_data(4, 8, 4, seed=7)).requires_grad_()
    for make in (
        natural_cubic_coeffs,
        natural_cubic_spline_coeffs,
        hermite_cubic_coefficients_with_backward_differences,
        linear_interpolation_coeffs,
    ):
        x.grad = t.grad = None
        coeffs = make(x, t)
        assert torch.isfinite(coeffs).all()
        coeffs.square().sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(t.grad).all()
        assert (x.grad[torch.isnan(x)] == 0).all()


# --- Hermite cubic with backward differences ---------------------------------------------


def test_hermite_interpolates_is_c1_and_takes_backward_differences() -> None:
    length = 8
    t = _times(length, seed=8)
    x = _data(3, length, 2, seed=9)
    coeffs = hermite_cubic_coefficients_with_backward_differences(x, t)
    assert coeffs.shape == (3, length - 1, 8)
    spline = CubicSpline(coeffs, t)
    h = (t[1:] - t[:-1]).unsqueeze(-1)
    backward = (x[:, 1:] - x[:, :-1]) / h  # the difference ending at knot k + 1
    a, b = coeffs[..., :2], coeffs[..., 2:4]
    # Each piece starts at its knot with the backward difference there (the first piece
    # with its own forward difference).
    torch.testing.assert_close(a, x[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(b[:, 1:], backward[:, :-1], rtol=0, atol=0)
    torch.testing.assert_close(b[:, 0], backward[:, 0], rtol=0, atol=0)
    # At a knot the left piece is used: it ends at the data with the backward difference,
    # which the next piece starts with (C1).
    torch.testing.assert_close(spline.evaluate(t), x, rtol=0, atol=1e-13)
    torch.testing.assert_close(spline.derivative(t[1:]), backward, rtol=0, atol=1e-12)
    # Between knots: the cubic Hermite basis with those end values and slopes.
    s = _queries(t)
    index = torch.bucketize(s, t).sub(1).clamp(0, length - 2)
    u = ((s - t[index]) / h[index, 0]).unsqueeze(-1)
    h00, h10 = 2 * u**3 - 3 * u**2 + 1, u**3 - 2 * u**2 + u
    h01, h11 = -2 * u**3 + 3 * u**2, u**3 - u**2
    m0, m1 = b[:, index], backward[:, index]
    expected = h00 * x[:, index] + h10 * h[index] * m0 + h01 * x[:, index + 1] + h11 * h[index] * m1
    torch.testing.assert_close(spline.evaluate(s), expected, rtol=0, atol=1e-12)


def test_hermite_with_missing_values_is_hermite_of_the_linear_fill() -> None:
    t = _times(9, seed=10)
    x = _with_missing(_data(4, 9, 4, seed=11))
    torch.testing.assert_close(
        hermite_cubic_coefficients_with_backward_differences(x, t),
        hermite_cubic_coefficients_with_backward_differences(linear_interpolation_coeffs(x, t), t),
        rtol=0,
        atol=0,
    )


def test_hermite_is_causal() -> None:
    """Changing the data after knot k leaves the path up to t_k unchanged."""
    t = _times(10, seed=12)
    x = _data(2, 10, 3, seed=13)
    y = x.clone()
    y[:, 6:] += 1.0
    s = torch.linspace(float(t[0]), float(t[5]), 50, dtype=DT)
    for make in (hermite_cubic_coefficients_with_backward_differences,):
        torch.testing.assert_close(
            CubicSpline(make(x, t), t).evaluate(s), CubicSpline(make(y, t), t).evaluate(s)
        )
    # The natural spline is not.
    assert not torch.allclose(
        CubicSpline(natural_cubic_coeffs(x, t), t).evaluate(s),
        CubicSpline(natural_cubic_coeffs(y, t), t).evaluate(s),
    )


# --- linear and rectilinear ---------------------------------------------------------------


def test_linear_is_numpy_interp_per_channel_with_missing_values() -> None:
    length = 9
    t = _times(length, seed=14)
    x = _with_missing(_data(4, length, 4, seed=15))
    coeffs = linear_interpolation_coeffs(x, t)
    linear = LinearInterpolation(coeffs, t)
    s = _queries(t)
    values, slopes = linear.evaluate(s), linear.derivative(s)
    for i in range(4):
        for c in range(4):
            series = x[i, :, c].numpy()
            keep = ~np.isnan(series)
            if not keep.any():
                assert (coeffs[i, :, c] == 0).all() and (values[i, :, c] == 0).all()
                continue
            # np.interp holds the first/last observation beyond them: torchcde's end filling.
            knots = np.interp(t.numpy(), t.numpy()[keep], series[keep])
            np.testing.assert_allclose(coeffs[i, :, c], knots, rtol=0, atol=1e-14)
            np.testing.assert_allclose(values[i, :, c], np.interp(s.numpy(), t, knots), atol=1e-14)
            index = np.clip(np.searchsorted(t.numpy(), s.numpy()) - 1, 0, length - 2)
            expected = (np.diff(knots) / np.diff(t.numpy()))[index]
            np.testing.assert_allclose(slopes[i, :, c], expected, rtol=1e-14, atol=1e-14)


def test_linear_without_missing_values_returns_the_data() -> None:
    x = _data(3, 6, 2)
    assert linear_interpolation_coeffs(x) is x


def test_rectilinear_moves_in_time_then_jumps() -> None:
    times = torch.tensor([0.0, 0.5, 1.5, 2.0], dtype=DT)
    features = torch.tensor([[1.0, 5.0], [NAN, 6.0], [3.0, NAN], [4.0, 8.0]], dtype=DT)
    x = torch.cat([features[:, :1], times.unsqueeze(-1), features[:, 1:]], dim=-1)
    coeffs = linear_interpolation_coeffs(x, rectilinear=1)
    # (time, feature 0, feature 1) knots: hold (forward filled), move time, jump.
    expected = torch.tensor(
        [
            [1.0, 0.0, 5.0],
            [1.0, 0.5, 5.0],
            [1.0, 0.5, 6.0],
            [1.0, 1.5, 6.0],
            [3.0, 1.5, 6.0],
            [3.0, 2.0, 6.0],
            [4.0, 2.0, 8.0],
        ],
        dtype=DT,
    )
    torch.testing.assert_close(coeffs, expected, rtol=0, atol=0)
    linear = LinearInterpolation(coeffs)
    torch.testing.assert_close(linear.evaluate(2.5), torch.tensor([1.0, 1.0, 6.0], dtype=DT))
    torch.testing.assert_close(linear.derivative(2.5), torch.tensor([0.0, 1.0, 0.0], dtype=DT))
    batched = linear_interpolation_coeffs(torch.stack([x, x]).unsqueeze(0), rectilinear=1)
    torch.testing.assert_close(batched, expected.expand(1, 2, 7, 3), rtol=0, atol=0)


def test_rectilinear_warns_on_leading_nans_and_backward_fills() -> None:
    x = torch.tensor([[0.0, NAN], [1.0, 2.0], [2.0, 3.0]], dtype=DT)
    with pytest.warns(UserWarning, match="not causal"):
        coeffs = linear_interpolation_coeffs(x, rectilinear=0)
    torch.testing.assert_close(coeffs[:2, 1], torch.tensor([2.0, 2.0], dtype=DT))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear_interpolation_coeffs(x.nan_to_num(), rectilinear=0)


# --- the modules ---------------------------------------------------------------------------


def test_scalar_zero_dim_and_batched_times_agree() -> None:
    t = _times(6, seed=16)
    x = _data(2, 6, 3, seed=17)
    s = torch.tensor([-0.5, 0.3, 1.7, 9.0], dtype=DT)  # includes both extrapolations
    for spline in (
        CubicSpline(natural_cubic_coeffs(x, t), t),
        NaturalCubicSpline(natural_cubic_coeffs(x, t), t),
        LinearInterpolation(linear_interpolation_coeffs(x, t), t),
    ):
        for method in (spline.evaluate, spline.derivative):
            batched = method(s)
            assert batched.shape == (2, 4, 3)
            for j, time in enumerate(s):
                torch.testing.assert_close(method(float(time)), batched[:, j], rtol=0, atol=0)
                torch.testing.assert_close(method(time), batched[:, j], rtol=0, atol=0)
            assert method(s.reshape(2, 2)).shape == (2, 2, 2, 3)


@pytest.mark.parametrize("kind", ["natural", "hermite", "linear"])
@pytest.mark.parametrize("extra", [(), (2,)])
def test_rows_read_each_series_at_its_own_time(kind: str, extra: tuple[int, ...]) -> None:
    """evaluate_rows(t)[i] and derivative_rows(t)[i] are evaluate(t[i])[i] and
    derivative(t[i])[i], bitwise, with times inside, at knots and beyond both ends, and with
    a further batch dimension after the series'."""
    t = _times(6, seed=11)
    x = _data(5, *extra, 6, 3, seed=12)
    if kind == "linear":
        X = LinearInterpolation(linear_interpolation_coeffs(x, t), t)
    else:
        make = {
            "natural": natural_cubic_coeffs,
            "hermite": hermite_cubic_coefficients_with_backward_differences,
        }[kind]
        X = CubicSpline(make(x, t), t)
    times = torch.stack([t[0] - 0.3, t[2], (t[3] + t[4]) / 2, t[-1], t[-1] + 0.5])
    for rows, broadcast in ((X.evaluate_rows, X.evaluate), (X.derivative_rows, X.derivative)):
        got = rows(times)
        assert got.shape == (5, *extra, 3)
        for i in range(5):
            assert torch.equal(got[i], broadcast(times[i])[i])


def test_rows_refuse_a_time_per_series_of_the_wrong_shape() -> None:
    X = CubicSpline(natural_cubic_coeffs(torch.randn(4, 5, 2)))
    with pytest.raises(ValueError, match=r"one time per series: shape \(4,\)"):
        X.derivative_rows(torch.zeros(3))
    with pytest.raises(ValueError, match="one time per series"):
        X.evaluate_rows(torch.zeros(4, 1))
    unbatched = LinearInterpolation(linear_interpolation_coeffs(torch.randn(5, 2)))
    with pytest.raises(ValueError, match="one time per series"):
        unbatched.derivative_rows(torch.zeros(5))


def test_modules_hold_coefficients_as_buffers() -> None:
    coeffs = natural_cubic_coeffs(_data(2, 5, 3))
    spline = CubicSpline(coeffs)
    assert isinstance(spline, torch.nn.Module) and issubclass(NaturalCubicSpline, CubicSpline)
    assert set(spline.state_dict()) == {"_t", "_a", "_b", "_two_c", "_three_d"}
    assert spline.to(torch.float32).evaluate(1.5).dtype == torch.float32
    linear = LinearInterpolation(linear_interpolation_coeffs(_data(2, 5, 3)))
    assert set(linear.state_dict()) == {"_t", "_coeffs", "_derivs"}


# --- gradients -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        natural_cubic_coeffs,
        natural_cubic_spline_coeffs,
        hermite_cubic_coefficients_with_backward_differences,
        linear_interpolation_coeffs,
    ],
)
@pytest.mark.parametrize("missing", [False, True])
def test_gradcheck_coefficients(make, missing: bool) -> None:
    t = _times(6, seed=18).requires_grad_()
    x = _data(2, 6, 2, seed=19)
    if missing:
        x[0, 1, 0] = x[0, 0, 1] = x[1, -1, 1] = x[1, 2:4, 0] = NAN
    x.requires_grad_()
    assert torch.autograd.gradcheck(make, (x, t))


@pytest.mark.parametrize("kind", ["cubic", "linear"])
def test_gradcheck_evaluate_and_derivative(kind: str) -> None:
    x = _data(2, 5, 2, seed=20).requires_grad_()
    t = _times(5, seed=21).requires_grad_()
    s = torch.tensor([-0.3, 0.4, 2.2, 3.1], dtype=DT, requires_grad=True)

    def path(x, t, s):
        if kind == "cubic":
            module = CubicSpline(natural_cubic_coeffs(x, t), t)
        else:
            module = LinearInterpolation(linear_interpolation_coeffs(x, t), t)
        return module.evaluate(s), module.derivative(s)

    assert torch.autograd.gradcheck(path, (x, t, s))
    coeffs = hermite_cubic_coefficients_with_backward_differences(x.detach(), t.detach())
    coeffs.requires_grad_()
    assert torch.autograd.gradcheck(lambda c: CubicSpline(c).derivative(s.detach()), (coeffs,))


# --- validation ----------------------------------------------------------------------------

_X = _data(2, 4, 3)
_T = torch.arange(4, dtype=DT)
_COEFF_FUNCTIONS = [
    natural_cubic_coeffs,
    natural_cubic_spline_coeffs,
    hermite_cubic_coefficients_with_backward_differences,
    linear_interpolation_coeffs,
]


@pytest.mark.parametrize("make", _COEFF_FUNCTIONS)
@pytest.mark.parametrize(
    ("x", "t", "match"),
    [
        (_X.long(), None, "floating-point tensor"),
        (_X.numpy(), None, "must be a torch.Tensor"),
        (_X[0, :, 0], None, "at least two dimensions"),
        (_X[:, :1], None, "needs at least 2"),
        (_X[:, :1], _T[:1], "needs at least 2 knots"),
        (_X, _T.long(), "t must be a floating-point tensor"),
        (_X, [0.0, 1.0, 2.0, 3.0], "t must be a torch.Tensor"),
        (_X, _T.unsqueeze(0), "one-dimensional"),
        (_X, _T[:3], "t has 3 times but x"),
        (_X, torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=DT), "strictly increasing"),
        (_X, torch.tensor([0.0, 2.0, 1.0, 3.0], dtype=DT), "strictly increasing"),
        (_X, torch.tensor([0.0, NAN, 1.0, 3.0], dtype=DT), "t contains NaN"),
    ],
)
def test_coefficient_validation(make, x, t, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(x, t)


@pytest.mark.parametrize(
    ("rectilinear", "match"),
    [(3, r"out of range.*\[0, 2\]"), (-1, "out of range"), (1.0, "must be None or an int")],
)
def test_rectilinear_validation(rectilinear, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        linear_interpolation_coeffs(_X, rectilinear=rectilinear)


def test_rectilinear_rejects_nan_times() -> None:
    x = _X.clone()
    x[1, 2, 0] = NAN
    with pytest.raises(ValueError, match="time channel.*contains NaN"):
        linear_interpolation_coeffs(x, rectilinear=0)
    with pytest.raises(ValueError, match="t has 4 times but x"):  # 2 length - 1 knots
        linear_interpolation_coeffs(_X, _T, rectilinear=0)


@pytest.mark.parametrize(
    ("module", "coeffs", "t", "match"),
    [
        (CubicSpline, torch.zeros(2, 3, 6, dtype=DT), None, "not a positive multiple of 4"),
        (CubicSpline, torch.zeros(2, 3, 0, dtype=DT), None, "not a positive multiple of 4"),
        (CubicSpline, torch.zeros(8, dtype=DT), None, "at least two dimensions"),
        (CubicSpline, torch.zeros(3, 8, dtype=torch.long), None, "floating point"),
        (CubicSpline, torch.zeros(3, 8, dtype=DT), _T[:3], "t has 3 times but coeffs"),
        (CubicSpline, torch.zeros(3, 8, dtype=DT), _T.flip(0), "strictly increasing"),
        (NaturalCubicSpline, torch.zeros(3, 6, dtype=DT), None, "multiple of 4"),
        (LinearInterpolation, torch.zeros(1, 2, dtype=DT), None, "at least 2"),
        (LinearInterpolation, torch.zeros(4, 2, dtype=DT), _T[:3], "t has 3 times but coeffs"),
        (LinearInterpolation, torch.zeros(4, 2, dtype=DT), _T.unsqueeze(1), "one-dimensional"),
        (LinearInterpolation, "coeffs", None, "must be a torch.Tensor"),
    ],
)
def test_module_validation(module, coeffs, t, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        module(coeffs, t)


# --- torchcde ------------------------------------------------------------------------------


def test_equals_torchcde() -> None:
    torchcde = pytest.importorskip("torchcde")
    t = _times(9, seed=22)
    x = _data(4, 9, 4, seed=23)
    pairs = [
        (natural_cubic_coeffs, torchcde.natural_cubic_coeffs),
        (natural_cubic_spline_coeffs, torchcde.natural_cubic_spline_coeffs),
        (
            hermite_cubic_coefficients_with_backward_differences,
            torchcde.hermite_cubic_coefficients_with_backward_differences,
        ),
        (linear_interpolation_coeffs, torchcde.linear_interpolation_coeffs),
    ]
    for data in (x, _with_missing(x)):
        for times in (None, t):
            for ours, theirs in pairs:
                # The same operations in the same order: equal to the last bit.
                torch.testing.assert_close(
                    ours(data, times), theirs(data, times), rtol=0, atol=0, equal_nan=True
                )
    rect = torch.cat([t.expand(4, 9).unsqueeze(-1), _with_missing(x)[..., 1:]], dim=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.testing.assert_close(
            linear_interpolation_coeffs(rect, rectilinear=0),
            torchcde.linear_interpolation_coeffs(rect, rectilinear=0),
            rtol=0,
            atol=0,
        )
    s = torch.cat([_queries(t), torch.tensor([-3.0, 40.0], dtype=DT)])
    coeffs = torchcde.natural_cubic_coeffs(_with_missing(x), t)
    for ours, theirs in (
        (CubicSpline(coeffs, t), torchcde.CubicSpline(coeffs, t)),
        (
            LinearInterpolation(torchcde.linear_interpolation_coeffs(x, t), t),
            torchcde.LinearInterpolation(torchcde.linear_interpolation_coeffs(x, t), t),
        ),
    ):
        torch.testing.assert_close(ours.evaluate(s), theirs.evaluate(s))
        torch.testing.assert_close(ours.derivative(s), theirs.derivative(s))
        torch.testing.assert_close(ours.evaluate(0.7), theirs.evaluate(0.7))
        torch.testing.assert_close(ours.interval, theirs.interval)
        ours.load_state_dict(theirs.state_dict())
