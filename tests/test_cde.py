"""Neural CDEs: ``cdeint`` against exact solutions of linear CDEs, gradients (gradcheck, the
adjoint with the data's coefficients), tuple states, the torchsde backend, shape errors,
the ``NeuralCDE`` model, the ``cde`` experiment, and torchcde as the reference."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest
import torch

from neuralode import cde
from neuralode.cli import main
from neuralode.compat import last_stats
from neuralode.models import NeuralCDE

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


class Linear(torch.nn.Module):
    """f(z) = [A_1 z, ..., A_c z]: dz = sum_j A_j z dX^j, a linear CDE (hidden, channels)."""

    def __init__(self, matrices: torch.Tensor):
        super().__init__()
        self.matrices = torch.nn.Parameter(matrices)  # (channels, hidden, hidden)

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.einsum("cij,...j->...ic", self.matrices, z)


class MLPField(torch.nn.Module):
    def __init__(self, hidden: int, channels: int, width: int = 8):
        super().__init__()
        self.hidden, self.channels = hidden, channels
        self.net = torch.nn.Sequential(
            torch.nn.Linear(hidden, width),
            torch.nn.Tanh(),
            torch.nn.Linear(width, hidden * channels),
            torch.nn.Tanh(),
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).unflatten(-1, (self.hidden, self.channels))


def _irregular_times(length: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.cat([torch.zeros(1), torch.rand(length - 1, generator=gen) + 0.1]).cumsum(0)


@pytest.mark.parametrize("jump", [True, False])
def test_scalar_linear_cde_is_an_exponential_of_the_path_increment(jump: bool) -> None:
    """dz = a z dX with z scalar: z_T = z0 exp(a (X_T - X_0)) for every path X, so for a
    piecewise linear one (its kinks at irregular times, a batch of paths)."""
    torch.manual_seed(0)
    t = _irregular_times(9).double()
    x = torch.randn(3, 9, 1, dtype=torch.float64)
    X = cde.LinearInterpolation(cde.linear_interpolation_coeffs(x, t), t)
    a = torch.tensor(0.7, dtype=torch.float64)
    z0 = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    options = {"jump_t": X.grid_points} if jump else None
    tight = TIGHT if jump else {"rtol": 1e-11, "atol": 1e-13}
    z = cde.cdeint(
        X, lambda t, z: a * z.unsqueeze(-1), z0, X.grid_points, adjoint=False,
        options=options, **tight,
    )  # fmt: skip
    assert z.shape == (3, 9, 1)
    exact = z0[:, None] * torch.exp(a * (x - x[:, :1]))
    torch.testing.assert_close(z, exact, rtol=1e-8, atol=1e-9)


def test_stages_past_the_step_read_the_path_extrapolated_past_its_last_knot() -> None:
    """kvaerno5's stages reach 1.23 steps from a step's start, so its last steps read X past
    the last knot, where the path's last piece extends (no error: a polynomial, smooth); the
    solution on the path's interval is exact all the same (dz = a z dX: z0 exp(a (X_T -
    X_0)) for every path). ``jump_t=X.grid_points`` is refused with the fix, and
    ``NeuralCDE`` with kvaerno5 does not default ``jump_t`` to the knots."""
    torch.manual_seed(0)
    t = _irregular_times(7).double()
    x = torch.randn(2, 7, 1, dtype=torch.float64)
    X = cde.CubicSpline(cde.natural_cubic_coeffs(x, t), t)
    last = float(t[-1])
    beyond = X.derivative(torch.tensor(last + 0.3, dtype=torch.float64))
    a = torch.tensor(0.7, dtype=torch.float64)
    seen: list[float] = []

    def field(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        seen.append(float(s))
        return a * z.unsqueeze(-1)

    z0 = torch.tensor([[1.0], [-2.0]], dtype=torch.float64)
    z = cde.cdeint(X, field, z0, X.interval, adjoint=False, method="kvaerno5", **TIGHT)
    assert max(seen) > last and torch.isfinite(beyond).all()
    exact = z0 * torch.exp(a * (X.evaluate(t[-1]) - X.evaluate(t[0])))
    torch.testing.assert_close(z[:, -1], exact, rtol=1e-8, atol=1e-9)
    message = "kvaerno5 evaluates f outside its steps, up to 0.23 of a step.*kvaerno3"
    with pytest.raises(ValueError, match=message):
        cde.cdeint(X, field, z0, X.interval, adjoint=False, method="kvaerno5",
                   options={"jump_t": X.grid_points})  # fmt: skip
    model = NeuralCDE(1, 3, 1, width=8, interpolation="hermite", adjoint=False, method="kvaerno5")
    with torch.no_grad():
        assert torch.isfinite(model(model.coefficients(x.float()))).all()


def test_vector_linear_cde_on_a_path_moving_one_channel_at_a_time_is_matrix_exponentials():
    """dz = A z dX^1 + B z dX^2 with A, B not commuting, on a piecewise linear path whose
    segments move only X^1 or only X^2: each segment multiplies z by expm(A dX^1) or
    expm(B dX^2), in order."""
    torch.manual_seed(1)
    hidden = 3
    A, B = torch.randn(2, hidden, hidden, dtype=torch.float64) * 0.5
    assert (A @ B - B @ A).abs().max() > 0.1
    increments = torch.randn(6, dtype=torch.float64)
    points = [torch.zeros(2, dtype=torch.float64)]
    for k, step in enumerate(increments):  # segment k moves channel k % 2
        point = points[-1].clone()
        point[k % 2] += step
        points.append(point)
    x = torch.stack(points)[None]  # (1, 7, 2)
    t = _irregular_times(7, seed=2).double()
    X = cde.LinearInterpolation(cde.linear_interpolation_coeffs(x, t), t)
    z0 = torch.randn(1, hidden, dtype=torch.float64)
    field = Linear(torch.stack([A, B]))
    z = cde.cdeint(X, field, z0, X.interval, adjoint=False, options={"jump_t": t}, **TIGHT)
    exact = z0[0]
    for k, step in enumerate(increments):
        exact = torch.linalg.matrix_exp((A if k % 2 == 0 else B) * step) @ exact
    torch.testing.assert_close(z[0, -1], exact, rtol=1e-8, atol=1e-9)
    # the matrices do not commute: the other order gives another answer
    swapped = torch.linalg.matrix_exp(B * increments[1::2].sum()) @ torch.linalg.matrix_exp(
        A * increments[0::2].sum()
    )
    assert (z[0, -1] - swapped @ z0[0]).abs().max() > 1e-3


class Functional(torch.nn.Module):
    """The MLP field of given weight tensors (gradcheck's inputs, not parameters)."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor, channels: int):
        super().__init__()
        self.w1, self.w2, self.channels = w1, w2, channels

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        out = torch.tanh(torch.tanh(z @ self.w1.T) @ self.w2.T)
        return out.unflatten(-1, (z.size(-1), self.channels))


@pytest.mark.parametrize("adjoint", [False, True])
def test_gradcheck_in_z0_the_field_and_the_data(adjoint: bool) -> None:
    """cdeint's gradients w.r.t. z0, the vector field's weights and the data x (through
    the natural cubic spline's coefficients: with the adjoint, as ``adjoint_params``).
    The four are one flat input, so that fast_mode's finite differences take one random
    direction through all of them (two solves, not two per input)."""
    torch.manual_seed(3)
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=torch.float64)
    shapes = [(2, 2), (3, 2), (2 * 2, 3), (2, 4, 2)]  # z0, w1, w2, x
    flat = torch.randn(sum(math.prod(s) for s in shapes), dtype=torch.float64)

    def solve(flat):
        sizes = [math.prod(s) for s in shapes]
        z0, w1, w2, x = (p.view(s) for p, s in zip(flat.split(sizes), shapes))
        coeffs = cde.natural_cubic_coeffs(x, t)
        X = cde.CubicSpline(coeffs, t)
        # the coefficients' gradient integrand jumps at the knots: no step straddles one;
        # dopri8 reaches the finite differences' accuracy in fewer steps
        kwargs = dict(rtol=1e-12, atol=1e-14, method="dopri8", options={"jump_t": t})
        if adjoint:
            kwargs["adjoint_params"] = (w1, w2, coeffs)
        return cde.cdeint(X, Functional(w1, w2, 2), z0, t[[0, -1]], adjoint=adjoint, **kwargs)

    flat.requires_grad_()
    assert torch.autograd.gradcheck(solve, (flat,), atol=1e-6, rtol=1e-5, fast_mode=True)


def test_adjoint_and_backpropagation_gradients_agree_for_the_data_coefficients() -> None:
    torch.manual_seed(4)
    x = torch.randn(4, 8, 3, dtype=torch.float64)
    field = MLPField(5, 3).double()
    z0 = torch.randn(4, 5, dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        coeffs = cde.hermite_cubic_coefficients_with_backward_differences(x).requires_grad_()
        X = cde.CubicSpline(coeffs)
        # the coefficients' gradient integrand jumps at the knots: no step straddles one
        kwargs = dict(TIGHT, options={"jump_t": X.grid_points})
        if adjoint:
            kwargs["adjoint_params"] = (*field.parameters(), coeffs)
        z = cde.cdeint(X, field, z0, X.interval, adjoint=adjoint, **kwargs)
        params = (coeffs, *field.parameters())
        grads.append(torch.autograd.grad(z[:, -1].square().sum(), params))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


def test_adjoint_without_the_coefficients_in_adjoint_params_warns() -> None:
    x = torch.randn(2, 5, 2)
    coeffs = cde.natural_cubic_coeffs(x).requires_grad_()
    with pytest.warns(UserWarning, match="adjoint_params"):
        cde.cdeint(
            cde.CubicSpline(coeffs), MLPField(3, 2), torch.zeros(2, 3), torch.tensor([0.0, 4.0])
        )


def test_tuple_state_is_the_concatenated_state_with_a_block_field() -> None:
    """z = (za, zb) driven by TupleControl(Xa, Xb), each block by its own control, coupled
    through the field: the same as one state [za, zb] driven by [Xa, Xb] with the
    block-diagonal field."""
    torch.manual_seed(5)
    xa, xb = torch.randn(3, 6, 2, dtype=torch.float64), torch.randn(3, 6, 1, dtype=torch.float64)
    Xa = cde.CubicSpline(cde.natural_cubic_coeffs(xa))
    Xb = cde.CubicSpline(cde.natural_cubic_coeffs(xb))
    fa, fb = MLPField(4, 2).double(), MLPField(2, 1).double()
    fa.net[0] = torch.nn.Linear(6, 8).double()  # each block sees the whole state
    fb.net[0] = torch.nn.Linear(6, 8).double()

    def tuple_field(t, z):
        whole = torch.cat(z, -1)
        return fa(t, whole), fb(t, whole)

    za, zb = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    control = cde.TupleControl(Xa, Xb)
    out = cde.cdeint(control, tuple_field, (za, zb), control.interval, adjoint=False, **TIGHT)
    assert isinstance(out, tuple) and out[0].shape == (3, 2, 4) and out[1].shape == (3, 2, 2)

    X = cde.CubicSpline(cde.natural_cubic_coeffs(torch.cat([xa, xb], -1)))

    def block_field(t, z):
        field = z.new_zeros(*z.shape[:-1], 6, 3)
        field[..., :4, :2] = fa(t, z)
        field[..., 4:, 2:] = fb(t, z)
        return field

    whole = cde.cdeint(X, block_field, torch.cat([za, zb], -1), X.interval, adjoint=False, **TIGHT)
    torch.testing.assert_close(torch.cat(out, -1), whole, rtol=1e-6, atol=1e-8)


def test_torchsde_backend_equals_the_torchdiffeq_backend() -> None:
    torch.manual_seed(6)
    x = torch.randn(4, 10, 3)
    X = cde.CubicSpline(cde.natural_cubic_coeffs(x))
    field = MLPField(5, 3)
    z0 = torch.randn(4, 5)
    ode = cde.cdeint(X, field, z0, X.grid_points, adjoint=False, rtol=1e-7, atol=1e-9)
    sde = cde.cdeint(
        X, field, z0, X.grid_points, adjoint=False, backend="torchsde", method="midpoint", dt=0.01
    )
    assert sde.shape == ode.shape == (4, 10, 5)
    torch.testing.assert_close(sde, ode, rtol=1e-3, atol=1e-4)


def test_cdeint_refuses_shapes_that_do_not_fit() -> None:
    x = torch.randn(2, 5, 3)
    X = cde.CubicSpline(cde.natural_cubic_coeffs(x))
    z0 = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="5 hidden channels, but z0 has 4"):
        cde.cdeint(X, lambda t, z: z.new_zeros(2, 5, 3), z0, X.interval)
    with pytest.raises(ValueError, match="2 input channels, but X.derivative"):
        cde.cdeint(X, MLPField(4, 2), z0, X.interval)
    with pytest.raises(ValueError, match="batch dimensions must be z0's"):
        cde.cdeint(X, lambda t, z: z.new_zeros(3, 4, 3), torch.zeros(3, 4), X.interval)
    with pytest.raises(ValueError, match="'derivative' method"):
        cde.cdeint(x, MLPField(4, 3), z0, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="backend must be one of"):
        cde.cdeint(X, MLPField(4, 3), z0, X.interval, backend="jax")
    with pytest.raises(ValueError, match="1-D tensor"):
        cde.cdeint(X, MLPField(4, 3), z0, X.interval[None])
    with pytest.raises(ValueError, match="func must return"):
        cde.cdeint(X, lambda t, z: z, z0, X.interval)


@pytest.mark.parametrize("interpolation", ["cubic", "hermite", "linear"])
@pytest.mark.parametrize("sequence", [False, True])
def test_neural_cde_output_shapes(interpolation: str, sequence: bool) -> None:
    x = torch.randn(2, 3, 7, 4)  # two batch dimensions
    x[0, 1, 2:4, 1] = float("nan")
    model = NeuralCDE(4, 6, 5, width=8, interpolation=interpolation, sequence=sequence)
    out = model(model.coefficients(x))
    assert out.shape == ((2, 3, 7, 5) if sequence else (2, 3, 5))
    assert torch.isfinite(out).all()
    assert model.nfe_forward > 0 and model.nfe_backward == 0


@pytest.mark.parametrize("adjoint", [False, True])
@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
def test_neural_cde_gradients_reach_every_parameter(adjoint: bool, interpolation: str) -> None:
    torch.manual_seed(7)
    x = torch.randn(5, 8, 3)
    model = NeuralCDE(3, 4, 2, width=8, interpolation=interpolation, adjoint=adjoint)
    model(model.coefficients(x)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (model.nfe_backward > 0) == adjoint


@pytest.mark.parametrize("interpolation", ["hermite", "linear"])
def test_neural_cde_ends_adaptive_steps_at_the_knots(interpolation: str) -> None:
    """The path's derivative (linear) or second derivative (Hermite) jumps at the knots:
    the default solve ends a step at each, as ``jump_t=X.grid_points`` does."""
    torch.manual_seed(11)
    x = torch.randn(16, 12, 3)
    model = NeuralCDE(3, 4, 1, width=16, interpolation=interpolation, adjoint=False)
    coeffs = model.coefficients(x)
    with torch.no_grad():
        default, nfe = model(coeffs), model.nfe_forward
        model.options = {"jump_t": torch.arange(12.0)}
        torch.testing.assert_close(model(coeffs), default, rtol=0, atol=0)
    assert model.nfe_forward == nfe


@pytest.mark.parametrize("interpolation", ["cubic", "linear"])
def test_neural_cde_adjoint_gradients_equal_backpropagation(interpolation: str) -> None:
    """Also the series' (the coefficients'): the adjoint differentiates them too, and
    backpropagation lands its steps on the knots, where their gradient jumps."""
    torch.manual_seed(8)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    x[..., 0] = torch.arange(6.0)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(9)
        model = NeuralCDE(
            2, 3, 1, width=8, adjoint=adjoint, rtol=1e-10, atol=1e-12, interpolation=interpolation
        ).double()
        coeffs = model.coefficients(x).requires_grad_()
        model(coeffs).sum().backward()
        grads.append([coeffs.grad, *(p.grad for p in model.parameters())])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
    times = torch.arange(6.0, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="does not differentiate with respect to the times"):
        model(model.coefficients(x, times.detach()), times)


def test_neural_cde_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="interpolation must be one of"):
        NeuralCDE(2, 3, 1, interpolation="quintic")
    with pytest.raises(ValueError, match="unknown method"):
        NeuralCDE(2, 3, 1, method="nosuch")
    with pytest.raises(ValueError, match="hidden_channels must be an integer >= 1"):
        NeuralCDE(2, 0, 1)
    with pytest.raises(ValueError, match="input_channels must be an integer >= 1, got 2.7"):
        NeuralCDE(2.7, 3, 1)
    with pytest.raises(TypeError, match="adjoint must be True or False"):
        NeuralCDE(2, 3, 1, adjoint="no")
    with pytest.raises(ValueError, match="rtol must be a non-negative number"):
        NeuralCDE(2, 3, 1, rtol=float("nan"))
    model = NeuralCDE(2, 3, 1)
    with pytest.raises(ValueError, match="input_channels=2"):
        model(model.coefficients(torch.randn(4, 5, 3)))


def run_experiment(out, *options: str) -> list[str]:
    """``neuralode experiment cde`` at a tiny size into ``out`` with ``options`` added,
    restoring torch's thread count; returns its command line."""
    argv = ["experiment", "cde", "--out", str(out), "--train", "16", "--test", "8"]
    argv += ["--batch", "8", "--eval-every", "2", "--hidden", "4", "--width", "8"]
    argv += ["--no-progress", "--threads", "1", *options]
    threads = torch.get_num_threads()
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    return argv


def test_experiment_writes_metrics_and_plot(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    argv = run_experiment(tmp_path, "--length", "6", "--iterations", "3")
    assert "test accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["interpolations"]) == {"cubic", "hermite", "linear"}
    for result in metrics["interpolations"].values():
        assert 0 <= result["test_accuracy"] <= 1 and math.isfinite(result["train_loss"])
        assert result["nfe_forward"] > 0 and result["nfe_backward"] == 0
        assert result["train_time_s"] > 0 and len(result["loss_history"]) == 3
        assert [e["step"] for e in result["evaluations"]] == [2, 3]
    assert 0.5 < metrics["observed_fraction"] < 0.9  # 30 % of x, y missing
    assert (tmp_path / "cde_spirals.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 6  # three jobs, two evaluations each
    assert main(argv) == 2  # the run is there: refused without --resume / --overwrite
    assert "holds an earlier run" in capsys.readouterr().err


def test_experiment_data_are_irregular_spirals_with_missing_values() -> None:
    from neuralode.experiments.cde import make_data

    x, labels = make_data(64, 20, 0.3, 0.0, torch.Generator().manual_seed(0))
    assert x.shape == (64, 20, 3) and set(labels.tolist()) == {0.0, 1.0}
    times = x[..., 0]
    assert not times.isnan().any() and (times.diff(dim=1) >= 0).all()
    assert not torch.equal(times[0], times[1])  # each series its own times
    missing = x[..., 1:].isnan().float().mean()
    assert 0.2 < missing < 0.4
    # without noise, the turning direction is the sign of the cross product of successive
    # points less than half a turn apart (a time channel of 1 is two turns)
    x, labels = make_data(64, 20, 0.0, 0.0, torch.Generator().manual_seed(1))
    times, xy = x[..., 0], x[..., 1:]
    cross = xy[:, :-1, 0] * xy[:, 1:, 1] - xy[:, :-1, 1] * xy[:, 1:, 0]
    turning = (cross * (times.diff(dim=1) < 0.2)).sum(1)
    assert torch.equal((turning > 0).float(), labels)


def test_matches_torchcde() -> None:
    """The same X and func through torchcde.cdeint (its torchdiffeq solve) and ours."""
    torchcde = pytest.importorskip("torchcde")
    torch.manual_seed(10)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    x[0, 3, 1] = float("nan")
    field = MLPField(4, 2).double()
    z0 = torch.randn(3, 4, dtype=torch.float64)
    for ours_coeffs, theirs_coeffs, kind in (
        (cde.natural_cubic_coeffs, torchcde.natural_cubic_coeffs, "cubic"),
        (cde.linear_interpolation_coeffs, torchcde.linear_interpolation_coeffs, "linear"),
    ):
        if kind == "cubic":
            ours_X, theirs_X = (
                cde.CubicSpline(ours_coeffs(x)),
                torchcde.CubicSpline(theirs_coeffs(x)),
            )
        else:
            ours_X = cde.LinearInterpolation(ours_coeffs(x))
            theirs_X = torchcde.LinearInterpolation(theirs_coeffs(x))
        kwargs = dict(TIGHT, options={"jump_t": ours_X.grid_points})
        ours = cde.cdeint(ours_X, field, z0, ours_X.grid_points, adjoint=False, **kwargs)
        kwargs = dict(TIGHT, options={"jump_t": theirs_X.grid_points})
        theirs = torchcde.cdeint(theirs_X, field, z0, theirs_X.grid_points, adjoint=False, **kwargs)
        torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-9)


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_cdeint_runs_as_one_compiled_graph_and_equals_the_eager_solve() -> None:
    """options=dict(compile=True): the CDE's whole solve is one graph (the spline's lookups
    trace as tensor indexing, its blocks do not alias), with the eager solve's result."""
    torch.manual_seed(6)
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    X = cde.CubicSpline(cde.natural_cubic_coeffs(x))
    field = MLPField(3, 2).double()
    z0 = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        eager = cde.cdeint(X, field, z0, X.grid_points, adjoint=False, **TIGHT)
        with warnings.catch_warnings():
            # (the fallback to compiled steps warns that the whole solve was not captured)
            warnings.filterwarnings("error", message=".*whole solve")
            whole = cde.cdeint(
                X, field, z0, X.grid_points, adjoint=False, options=dict(compile=True), **TIGHT
            )
    torch.testing.assert_close(whole, eager, rtol=1e-8, atol=1e-9)


def _series_of_different_difficulty() -> tuple[torch.Tensor, torch.Tensor]:
    """Three series on irregular times, the last one fast and large: one system would step
    all of them at its pace."""
    torch.manual_seed(12)
    t = _irregular_times(8, seed=3).double()
    x = (
        torch.randn(3, 8, 2, dtype=torch.float64)
        * torch.tensor([0.2, 1.0, 4.0]).double()[:, None, None]
    )
    return x, t


# (hermite: a CubicSpline as natural, its kinks those of linear's derivative one order up)
@pytest.mark.parametrize(
    "interpolation", ["natural", pytest.param("hermite", marks=pytest.mark.slow), "linear"]
)
def test_per_sample_cdeint_solves_each_series_on_its_own_steps(interpolation: str) -> None:
    """options=dict(per_sample=True): func sees each series' own time, every series takes
    its own steps (the easy one fewer than the hard one, whose steps one system would impose
    on all), and each series' solution is its solve alone, to the tolerance: the kinks of
    the interpolation's derivatives at the knots reject steps there, so round-off in the
    batched evaluations moves the steps and the solutions differ by more than round-off."""
    x, t = _series_of_different_difficulty()
    make, cls = {
        "natural": (cde.natural_cubic_coeffs, cde.CubicSpline),
        "hermite": (cde.hermite_cubic_coefficients_with_backward_differences, cde.CubicSpline),
        "linear": (cde.linear_interpolation_coeffs, cde.LinearInterpolation),
    }[interpolation]
    coeffs = make(x, t)
    field = MLPField(3, 2).double()
    times_seen = []

    def func(time, z):
        times_seen.append(time.shape)
        return field(time, z)

    z0 = torch.randn(3, 3, dtype=torch.float64)
    X = cls(coeffs, t)
    together = cde.cdeint(X, func, z0, t, adjoint=False, options={"per_sample": True}, **TIGHT)
    steps = last_stats().sample_steps
    assert set(times_seen) == {(3,)}
    cde.cdeint(X, field, z0, t, adjoint=False, **TIGHT)
    assert steps[0] < steps[2] and steps[0] < last_stats().n_steps
    for i in range(3):
        alone = cde.cdeint(
            cls(coeffs[i : i + 1], t), field, z0[i : i + 1], t, adjoint=False, **TIGHT
        )
        torch.testing.assert_close(together[i : i + 1], alone, rtol=1e-6, atol=1e-8)


def test_per_sample_cdeint_gradients() -> None:
    """Per sample, the gradients (z0, the field's parameters, the data's coefficients) of
    the adjoint and of backpropagation with steps ending on the knots (jump_t) are the
    accurate reference's: one system, backpropagated with jump_t. Without jump_t,
    backpropagation's gradient with respect to the coefficients is O(h) off (a step across
    a knot differentiates them to O(h)): only its other gradients are compared."""
    x, t = _series_of_different_difficulty()
    coeffs = cde.natural_cubic_coeffs(x, t).requires_grad_()
    field = MLPField(3, 2).double()
    z0 = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    inputs = [z0, coeffs, *field.parameters()]

    def gradients(adjoint: bool, options: dict) -> tuple[torch.Tensor, ...]:
        X = cde.CubicSpline(coeffs, t)
        extra = {"adjoint_params": (*field.parameters(), coeffs)} if adjoint else {}
        zT = cde.cdeint(X, field, z0, t, adjoint=adjoint, options=options, **TIGHT, **extra)
        return torch.autograd.grad(zT[:, -1].square().sum(), inputs)

    reference = gradients(False, {"jump_t": t})
    by_adjoint = gradients(True, {"per_sample": True})
    by_backprop = gradients(False, {"per_sample": True, "jump_t": t})
    without_jumps = gradients(False, {"per_sample": True})
    for i, want in enumerate(reference):
        scale = float(want.abs().max())
        torch.testing.assert_close(by_adjoint[i], want, rtol=0, atol=1e-6 * scale)
        torch.testing.assert_close(by_backprop[i], want, rtol=0, atol=1e-8 * scale)
        if i != 1:  # (the coefficients: see above)
            torch.testing.assert_close(without_jumps[i], want, rtol=0, atol=1e-6 * scale)
    assert not torch.allclose(without_jumps[1], reference[1], rtol=0, atol=1e-5)


class _NoRows(cde.InterpolationBase):
    """A control without ``derivative_rows``."""

    def __init__(self, X):
        super().__init__()
        self.X = X

    grid_points = property(lambda self: self.X.grid_points)
    interval = property(lambda self: self.X.interval)

    def evaluate(self, t):
        return self.X.evaluate(t)

    def derivative(self, t):
        return self.X.derivative(t)


def test_cdeint_refuses_per_sample_solves_it_cannot_do() -> None:
    X = cde.CubicSpline(cde.natural_cubic_coeffs(torch.randn(2, 5, 2)))
    field, z0 = MLPField(3, 2), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="'skip_finished'.*cannot tell which"):
        cde.cdeint(X, field, z0, X.interval, options={"per_sample": "skip_finished"})
    with pytest.raises(ValueError, match="backend='torchdiffeq' only, got backend='torchsde'"):
        cde.cdeint(
            X, field, z0, X.interval, backend="torchsde", options={"per_sample": True}, dt=0.1
        )
    with pytest.raises(ValueError, match="_NoRows has none"):
        cde.cdeint(_NoRows(X), field, z0, X.interval, options={"per_sample": True})
    for z0_bad in (torch.zeros(3), (torch.zeros(2, 3),)):
        with pytest.raises(ValueError, match=r"z0 must be one tensor \(batch, hidden_channels\)"):
            cde.cdeint(X, field, z0_bad, X.interval, options={"per_sample": True})


@pytest.mark.slow  # (20 s: test_cdeint_runs_as_one_compiled_graph_... covers the graph)
@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_neural_cde_trains_compiled_with_the_solvers_nfe() -> None:
    """NeuralCDE(adjoint=True, options=dict(compile=True)): forward and backward solves
    compiled once (a repeated step compiles nothing: the field's call count is no guard),
    the eager model's gradients, and the NFE counted by the solver inside the graph."""
    torch.manual_seed(7)
    x = torch.randn(4, 6, 2, dtype=torch.float64)
    models, grads = [], []
    for options in ({}, {"compile": True}):
        torch.manual_seed(8)
        model = NeuralCDE(2, 3, 1, width=8, rtol=1e-9, atol=1e-11, options=options).double()
        coeffs = model.coefficients(x)
        for step in range(2):
            patch = torch._dynamo.config.patch(error_on_recompile=step > 0 and bool(options))
            with patch:
                loss = model(coeffs).square().sum()
                grads.append(torch.autograd.grad(loss, list(model.parameters())))
        models.append(model)
    for eager, compiled in zip(grads[0], grads[2]):
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-9)
    assert models[1].nfe_forward > 0 and models[1].nfe_backward > 0
    assert abs(models[1].nfe_forward - models[0].nfe_forward) <= 0.1 * models[0].nfe_forward


@pytest.mark.parametrize("sequence", [False, True])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_log_ode_neural_cde_output_shapes(sequence: bool, depth: int) -> None:
    x = torch.randn(2, 3, 41, 4)  # two batch dimensions
    x[0, 1, 5:9, 1] = float("nan")
    model = NeuralCDE(4, 6, 5, width=8, sequence=sequence, log_ode=(depth, 10))
    assert model.interpolation == "linear"
    coeffs = model.coefficients(x)
    width = cde.logsignature_channels(4, depth)
    assert coeffs.shape == (2, 3, 5, width)  # the start and 4 windows of 10
    assert model.field.input_channels == width and model.initial.in_features == 4
    out = model(coeffs)
    assert out.shape == ((2, 3, 5, 5) if sequence else (2, 3, 5))
    assert torch.isfinite(out).all() and model.nfe_forward > 0


def test_log_ode_depth_1_is_the_linear_model_at_the_windows_ends() -> None:
    """At depth 1 a window's log-signature is its increment, so the log-ODE path is the
    cumulative sum of the increments: the linear interpolation of the values at the windows'
    ends (up to the sum's rounding). With windows of one sampling step it is the linear
    model on the same data (the same weights give the same output); with windows of two
    steps, the linear model on every other observation."""
    torch.manual_seed(12)
    x = torch.randn(4, 9, 3, dtype=torch.float64)
    x[1, 2:4, 1] = float("nan")
    linear = NeuralCDE(3, 5, 2, width=8, interpolation="linear", rtol=1e-9, atol=1e-11)
    linear = linear.double()
    log_ode = NeuralCDE(3, 5, 2, width=8, rtol=1e-9, atol=1e-11, log_ode=(1, 1.0)).double()
    log_ode.load_state_dict(linear.state_dict())  # the same shapes at depth 1
    coeffs = linear.coefficients(x)
    torch.testing.assert_close(log_ode.coefficients(x), coeffs, rtol=0, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(
            log_ode(log_ode.coefficients(x)), linear(coeffs), rtol=1e-12, atol=1e-12
        )
    # observations at times 0, 0.5, ..., 4: windows of 0.5 are one sampling step, and the
    # CDE over the window index is the linear model's CDE over t reparametrised
    t = torch.linspace(0, 4, 9, dtype=torch.float64)
    log_ode.log_ode = (1, 0.5)
    torch.testing.assert_close(log_ode.coefficients(x, t), coeffs, rtol=0, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(
            log_ode(log_ode.coefficients(x, t)),
            linear(linear.coefficients(x, t), t),
            rtol=1e-7,
            atol=1e-8,
        )
    log_ode.log_ode = (1, 2.0)
    filled = cde.linear_interpolation_coeffs(x)  # NaNs filled as the windows fill them
    torch.testing.assert_close(log_ode.coefficients(x), filled[:, ::2], rtol=0, atol=1e-14)


def test_log_ode_depth_2_adds_the_windows_levy_areas() -> None:
    """Depth 2 keeps the depth-1 path in its first channels and adds, per window, the Lévy
    area of each pair of channels: the turning direction of the spirals in (x, y)."""
    torch.manual_seed(13)
    angle = torch.linspace(0, 2 * math.pi, 21, dtype=torch.float64)
    x = torch.stack([angle.cos(), angle.sin()], -1)[None]  # one anticlockwise circle
    coeffs = NeuralCDE(2, 3, 1, log_ode=(2, 5)).coefficients(x)
    depth1 = NeuralCDE(2, 3, 1, log_ode=(1, 5)).coefficients(x)
    assert coeffs.shape == (1, 5, 3)
    torch.testing.assert_close(coeffs[..., :2], depth1)
    areas = coeffs[0, 1:, 2] - coeffs[0, :-1, 2]
    # a window's Lévy area is the area between its chord and the polygon, chord-sign
    # convention 0.5 * (int x dy - int y dx) > 0 for anticlockwise motion
    assert (areas > 0).all()
    turn = 2 * math.pi / 20
    segment_area = 0.5 * math.sin(turn)  # triangle (0, p_i, p_i+1)
    chord_area = 0.5 * math.sin(5 * turn)  # triangle (0, p_0, p_5)
    torch.testing.assert_close(areas, torch.full_like(areas, 5 * segment_area - chord_area))


@pytest.mark.parametrize("adjoint", [False, True])
def test_log_ode_neural_cde_gradients_reach_every_parameter(adjoint: bool) -> None:
    torch.manual_seed(14)
    x = torch.randn(5, 30, 3)
    x[2, 4:7, 2] = float("nan")
    model = NeuralCDE(3, 4, 2, width=8, adjoint=adjoint, log_ode=(2, 6.0))
    model(model.coefficients(x)).square().sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert (model.nfe_backward > 0) == adjoint


def test_log_ode_neural_cde_refuses_bad_arguments() -> None:
    for bad in (2, (2,), (2, 5, 1), "2,5"):
        with pytest.raises(ValueError, match=r"pair \(depth, window_length\)"):
            NeuralCDE(2, 3, 1, log_ode=bad)
    for depth in (0, 1.5, True):
        with pytest.raises(ValueError, match="log_ode's depth must be an integer >= 1"):
            NeuralCDE(2, 3, 1, log_ode=(depth, 5))
    for window in (0, -1.0, float("inf"), float("nan"), "5", None):
        with pytest.raises(ValueError, match="log_ode's window_length must be a positive"):
            NeuralCDE(2, 3, 1, log_ode=(2, window))
    for interpolation in ("cubic", "hermite"):
        with pytest.raises(ValueError, match="interpolates the log-signature path linearly"):
            NeuralCDE(2, 3, 1, interpolation=interpolation, log_ode=(2, 5))
    model = NeuralCDE(2, 3, 1, log_ode=(2, 5))
    x = torch.randn(4, 11, 2)
    with pytest.raises(ValueError, match="give the observation times to coefficients"):
        model(model.coefficients(x), torch.arange(3.0))
    with pytest.raises(ValueError, match="log-signature path has 3 channels"):
        model(NeuralCDE(2, 3, 1, log_ode=(3, 5)).coefficients(x))
    assert "log_ode=(2, 5.0)" in repr(model)
    assert NeuralCDE(2, 3, 1).interpolation == "cubic"


def test_experiment_adds_log_ode_models(tmp_path, capsys) -> None:
    pytest.importorskip("matplotlib")
    run_experiment(
        tmp_path, "--length", "31", "--iterations", "2", "--interpolation", "linear",
        "--log-ode", "2", "10", "--log-ode", "3", "7.5",
    )  # fmt: skip
    assert "log-ode-d3-w7.5: test accuracy" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    results = metrics["interpolations"]
    assert list(results) == ["linear", "log-ode-d2-w10", "log-ode-d3-w7.5"]
    assert results["log-ode-d2-w10"]["log_ode"] == [2, 10.0] and "log_ode" not in results["linear"]
    for result in results.values():
        assert 0 <= result["test_accuracy"] <= 1 and result["nfe_forward"] > 0
    # the field's output layer grows with the log-signature: 3, 6 and 14 channels
    sizes = {name: r["parameters"] for name, r in results.items()}
    assert sizes["linear"] < sizes["log-ode-d2-w10"] < sizes["log-ode-d3-w7.5"]
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert weights["log-ode-d3-w7.5"]["field.net.2.weight"].shape == (4 * 14, 8)
    # 31 observations at index times 0..30: 3 windows of 10 instead of 30 knots
    assert results["log-ode-d2-w10"]["nfe_forward"] < results["linear"]["nfe_forward"]


@pytest.mark.parametrize(
    ("values", "message"),
    [(["0", "5"], "DEPTH must be a positive integer"), (["2", "-1"], "WINDOW must be")],
)
def test_experiment_refuses_bad_log_ode(tmp_path, capsys, values, message) -> None:
    argv = ["experiment", "cde", "--out", str(tmp_path / "run"), "--log-ode", *values]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", ["linear", "natural"])
def test_the_adjoint_reaches_a_path_built_from_its_adjoint_params(path: str) -> None:
    """torchcde's pattern: the coefficients (or the data they are made from, by a spline
    solve that saves tensors) among ``adjoint_params``. Every evaluation of the adjoint
    system traverses that one graph, so it is kept across the evaluations (it was freed
    after the first: "Trying to backward through the graph a second time"); the gradients
    are backpropagation's."""
    torch.manual_seed(0)
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    field = torch.nn.Sequential(
        torch.nn.Linear(3, 6), torch.nn.Tanh(), torch.nn.Unflatten(-1, (3, 2))
    ).double()
    grads = []
    for adjoint in (False, True):
        data = x.clone().requires_grad_(True)
        if path == "linear":
            X = cde.LinearInterpolation(cde.linear_interpolation_coeffs(data))
        else:
            X = cde.CubicSpline(cde.natural_cubic_coeffs(data))
        z0 = torch.zeros(2, 3, dtype=torch.float64)
        zs = cde.cdeint(
            X=X, func=lambda t, z: field(z), z0=z0, t=X.interval, adjoint=adjoint,
            method="rk4", options=dict(step_size=0.05),
            **({"adjoint_params": (*field.parameters(), data)} if adjoint else {}),
        )  # fmt: skip
        grads.append(torch.autograd.grad(zs.sum(), data)[0])
    # (the continuous adjoint against the discrete gradient: equal to the steps' error)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-2, atol=1e-3)
