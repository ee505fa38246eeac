"""Bad input and failing solves raise clear errors naming the problem and the value."""

from __future__ import annotations

import math
import re
import shutil

import pytest
import torch
from conftest import ALL_METHODS, make_solver
from problems import ROBERTSON

import neuralode as no
from neuralode.solvers import NewtonError


def T(*values: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def decay(t: torch.Tensor, y):
    return -y


Y0 = T(1.0, 2.0)
TS = T(0.0, 1.0)


def _raises(error: type[Exception], fragment: str):
    return pytest.raises(error, match=re.escape(fragment))


# --- output times --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        (torch.zeros(2, 2, dtype=torch.float64), "1-D tensor, got shape (2, 2)"),
        (torch.tensor(1.0, dtype=torch.float64), "1-D tensor, got shape ()"),
        (torch.zeros(0, dtype=torch.float64), "non-empty 1-D tensor, got shape (0,)"),
    ],
    ids=["2-D", "0-D", "empty"],
)
def test_times_must_be_one_dimensional(ts: torch.Tensor, fragment: str) -> None:
    with _raises(ValueError, fragment):
        no.solve(decay, Y0, ts)


@pytest.mark.parametrize(
    ("ts", "fragment"),
    [
        (T(0.0, 1.0, 1.0, 2.0), "t[1]=1.0, t[2]=1.0"),
        (T(0.0, 2.0, 1.0), "t[1]=2.0, t[2]=1.0"),
        (T(2.0, 1.0, 1.5), "t[1]=1.0, t[2]=1.5"),
    ],
    ids=["repeated", "up-then-down", "down-then-up"],
)
def test_times_must_be_strictly_monotonic(ts: torch.Tensor, fragment: str) -> None:
    with _raises(ValueError, "strictly increasing or strictly decreasing"):
        no.solve(decay, Y0, ts)
    with _raises(ValueError, fragment):
        no.solve(decay, Y0, ts)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_times_must_be_finite(bad: float) -> None:
    with _raises(ValueError, f"t contains NaN or inf: [0.0, {bad}, 1.0]"):
        no.solve(decay, Y0, T(0.0, bad, 1.0))


def test_times_must_be_a_floating_point_tensor() -> None:
    with _raises(TypeError, "t must be a floating point tensor, got dtype torch.int64"):
        no.solve(decay, Y0, torch.tensor([0, 1]))
    with _raises(TypeError, "t must be a 1-D tensor of times, got list"):
        no.solve(decay, Y0, [0.0, 1.0])


def test_times_on_another_device() -> None:
    with _raises(ValueError, "t is on meta but y0 is on cpu"):
        no.solve(decay, Y0, torch.tensor([0.0, 1.0], device="meta"))


@pytest.mark.cuda
def test_times_on_cuda_state_on_cpu() -> None:
    with _raises(ValueError, "t is on cuda:0 but y0 is on cpu"):
        no.solve(decay, Y0, TS.cuda())


def test_times_in_another_float_dtype_are_accepted() -> None:
    """Like torchdiffeq, t may be float32 with a float64 state (and the reverse)."""
    a = no.solve(decay, Y0, TS.float())
    b = no.solve(decay, Y0.float(), TS)
    assert a.ys.dtype == torch.float64 and b.ys.dtype == torch.float32
    torch.testing.assert_close(b.ys.double(), a.ys, rtol=1e-5, atol=1e-6)


# --- initial state -------------------------------------------------------------------------


def test_integer_state() -> None:
    with _raises(TypeError, "y0 must be a floating point or complex tensor, got dtype torch.int64"):
        no.solve(decay, torch.tensor([1, 2]), TS)


def test_non_finite_state() -> None:
    with _raises(no.NonFiniteError, "y0 contains NaN or inf"):
        no.solve(decay, T(1.0, float("nan")), TS)
    with _raises(no.NonFiniteError, "y0 contains NaN or inf"):
        no.solve(decay, (Y0, T(float("inf"))), TS)


def test_state_of_the_wrong_type() -> None:
    with _raises(TypeError, "y0 must be a tensor or a tuple/list/dict of tensors, got float"):
        no.solve(decay, 1.0, TS)
    with _raises(ValueError, "y0 contains no tensors"):
        no.solve(decay, (), TS)


def test_mixed_dtypes_in_a_tuple_state() -> None:
    with _raises(TypeError, "y0 (tensor 1) has dtype torch.float32; tensor 0 has torch.float64"):
        no.solve(decay, (Y0, T(1.0, dtype=torch.float32)), TS)


def test_mixed_devices_in_a_tuple_state() -> None:
    with _raises(ValueError, "y0 (tensor 1) is on meta; tensor 0 is on cpu"):
        no.solve(decay, (Y0, torch.ones(1, dtype=torch.float64, device="meta")), TS)


# --- the vector field ----------------------------------------------------------------------


def test_func_must_be_callable() -> None:
    with _raises(TypeError, "func must be callable as func(t, y), got int"):
        no.solve(3, Y0, TS)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_func_returning_the_wrong_shape(name: str) -> None:
    with _raises(ValueError, "func(t, y) output has shape (4,); expected (2,)"):
        no.solve(lambda t, y: torch.cat([y, y]), Y0, TS, solver=make_solver(name))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_func_returning_the_wrong_dtype(name: str) -> None:
    fragment = "func(t, y) returned dtype torch.float32; the state has dtype torch.float64"
    with _raises(TypeError, fragment):
        no.solve(lambda t, y: y.float(), Y0, TS, solver=make_solver(name))


@pytest.mark.parametrize("value", [[1.0, 2.0], None, 3.0], ids=["list", "None", "float"])
def test_func_returning_a_non_tensor(value) -> None:
    with _raises(TypeError, f"func(t, y) must return a tensor like y0, got {type(value).__name__}"):
        no.solve(lambda t, y: value, Y0, TS)


def test_func_returning_the_wrong_structure() -> None:
    with _raises(ValueError, "func(t, y) output has 1 tensors but the state has 2"):
        no.solve(lambda t, y: y[0], (Y0, Y0), TS)
    with _raises(ValueError, "has shape (3,) (tensor 1 of the state); expected (2,)"):
        no.solve(lambda t, y: (y[0], T(1.0, 2.0, 3.0)), (Y0, Y0), TS)


def test_func_returning_a_mixed_dtype_tuple() -> None:
    with _raises(TypeError, "torch.float32"):
        no.solve(lambda t, y: (-y[0], -y[1].float()), (Y0, Y0), TS)


def test_func_returning_a_dict_in_another_key_order() -> None:
    state = {"a": T(1.0, 2.0), "b": T(0.5, -1.0)}
    same_order = no.solve(lambda t, s: {"a": -s["a"], "b": 2 * s["b"]}, state, TS)
    other_order = no.solve(lambda t, s: {"b": 2 * s["b"], "a": -s["a"]}, state, TS)
    torch.testing.assert_close(other_order.ys, same_order.ys)


def test_func_returning_a_dict_with_other_keys() -> None:
    with _raises(ValueError, "'b'"):
        no.solve(lambda t, s: {"b": -s["a"]}, {"a": Y0}, TS)


# --- failing solves ------------------------------------------------------------------------


def blow_up(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y' = y^2 from y(0) = 1: y = 1 / (1 - t), infinite at t = 1."""
    return y**2


def test_blow_up_adaptive_stops_near_the_singularity() -> None:
    """The adaptive controller shrinks the step towards t = 1 until it cannot change t."""
    with pytest.raises(no.StepSizeUnderflowError) as info:
        no.solve(blow_up, T(1.0), T(0.0, 2.0))
    message = str(info.value)
    assert "step size underflow at t=1.0000" in message
    assert "blow up" in message


def test_blow_up_on_a_fixed_grid_reports_the_output_time() -> None:
    for dtype in (torch.float32, torch.float64):
        with pytest.raises(no.NonFiniteError) as info:
            no.solve(
                blow_up,
                T(1.0).to(dtype),
                T(0.0, 0.5, 2.0).to(dtype),
                solver=no.RK4(),
                controller=no.FixedGrid(step_size=0.1),
            )
        message = str(info.value)
        assert "the solution contains NaN or inf at t=2 (output 2)" in message
        assert ("use float64" in message) == (dtype == torch.float32), message  # (not in it)


def test_overflow_on_a_fixed_grid_names_the_dtype_and_the_size_before() -> None:
    """y' = y in float32 with rk4: |y| passes 3.4e38 between t = 80 and 90 and the step's
    sums turn inf into NaN; the message names the overflow and the last finite size."""
    with pytest.raises(no.NonFiniteError) as info:
        no.solve(
            lambda t, y: y,
            torch.ones(3),
            torch.linspace(0.0, 100.0, 11),
            solver=no.RK4(),
            controller=no.FixedGrid(step_size=0.1),
        )
    message = str(info.value)
    assert "NaN or inf at t=90 (output 9)" in message
    assert "overflow torch.float32 (|y| was already 5.54e+34 at t=80" in message


def test_non_finite_field_mid_solve() -> None:
    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y if t < 1 else y * float("nan")

    with pytest.raises(no.NonFiniteError) as info:
        no.solve(field, T(1.0), T(0.0, 2.0))
    assert "from t=1 produced non-finite values" in str(info.value)


def _failing_after(t0: float):
    """A field finite at ``t0`` only (one problem, or per sample): every step from t0 fails
    with NaN, whatever its size."""

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        at_t0 = t == t0 if t.ndim == 0 else (t == t0)[:, None]
        return torch.where(at_t0, -y, y * float("nan"))

    return field


def _message_dt(message: str) -> float:
    """The step size an error message reports (``dt=...``)."""
    return float(re.search(r"dt=(-?[\d.]+(?:e[-+]\d+)?)", message).group(1))


# (t0, t1): from t = 0, "the step cannot change t" alone would let the step shrink to
# subnormals (about 460 attempts); the floor relative to the span stops it after 42
FAILING_SPANS = [(0.0, 1.0), (0.0, -1.0), (5.0, 6.0)]


def _floor_attempts(t0: float, t1: float) -> tuple[float, int]:
    """The step floor of a solve from ``t0`` to ``t1`` (4 ulps of max(|t|, 2^-52 |t1 -
    t0|): 2.0e-31 from 0 and 4.4e-15 from 5 here) and the attempts from first_step 0.01,
    shrinking 5x per failure, until the retried step is below it: 42 and 18."""
    floor = 4 * 2.0**-52 * max(abs(t0), 2.0**-52 * abs(t1 - t0))
    return floor, math.floor(math.log(0.01 / floor, 5)) + 1


@pytest.mark.parametrize("method", ["dopri5", "radau"])
@pytest.mark.parametrize("span", FAILING_SPANS, ids=["from-0", "from-0-backward", "from-5"])
def test_steps_failing_from_the_start_stop_at_the_step_floor(
    method: str, span: tuple[float, float]
) -> None:
    """Every step from t0 fails (NaN in f; for radau, a failed Newton iteration): the solve
    gives up once the retried step is below the floor relative to the time span, after a
    few tens of attempts wherever t0 lies, and the message names the floor."""
    t0, t1 = span
    floor, attempts = _floor_attempts(t0, t1)
    controller = no.PIController(first_step=0.01)
    solver = make_solver(method)
    field = _failing_after(t0)
    sol = no.solve(field, Y0, T(t0, t1), solver=solver, controller=controller, throw=False)
    assert not sol.succeeded
    assert sol.stats.n_rejected == sol.stats.n_steps == attempts
    with pytest.raises(no.SolverError) as info:
        no.solve(field, Y0, T(t0, t1), solver=make_solver(method), controller=controller)
    dt = _message_dt(str(info.value))
    assert 0.2 * floor < abs(dt) < floor
    if method == "radau":  # (dopri5's steps are non-finite: NonFiniteError)
        assert f"smallest step the solve resolves there, {floor:.3g}" in str(info.value)


@pytest.mark.parametrize("span", FAILING_SPANS, ids=["from-0", "from-0-backward", "from-5"])
def test_per_sample_steps_failing_from_the_start_stop_at_the_step_floor(
    span: tuple[float, float],
) -> None:
    """Per sample: each sample's step falls below the floor after as many attempts; the
    loop finds the stall at its next check, at most 64 attempts later."""
    t0, t1 = span
    attempts = _floor_attempts(t0, t1)[1]
    controller = no.PIController(first_step=0.01)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    ts = T(t0, t1)
    sol = no.solve(_failing_after(t0), y0, ts, controller=controller, per_sample=True, throw=False)
    assert (sol.status == no.Status.STEP_SIZE_UNDERFLOW).all()
    assert int(sol.stats.sample_steps.max()) <= attempts + 64
    with _raises(no.StepSizeUnderflowError, "below the smallest step the solve resolves"):
        no.solve(_failing_after(t0), y0, ts, controller=controller, per_sample=True)


@pytest.mark.parametrize("per_sample", [False, True], ids=["one", "per-sample"])
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the graph's own step floor)
def test_compiled_steps_failing_from_the_start_stop_at_the_step_floor(per_sample: bool) -> None:
    """The compiled whole solve stops at the same floor: its last step is above a fifth of
    it (before: a step shrunk to 0)."""
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    y0 = torch.ones(3, 2, dtype=torch.float64) if per_sample else Y0
    controller = no.PIController(first_step=0.01)
    with torch.no_grad(), pytest.raises(no.StepSizeUnderflowError) as info:
        no.solve(
            _failing_after(0.0), y0, TS, controller=controller, per_sample=per_sample,
            compile=True,
        )  # fmt: skip
    floor = 4 * 2.0**-104
    dt = _message_dt(str(info.value))
    assert 0.2 * floor < dt < floor
    assert f"the solve resolves there, {floor:.3g}" in str(info.value)


@pytest.mark.parametrize("per_sample", [False, True], ids=["one", "per-sample"])
def test_a_tiny_time_span_resolves_steps_as_much_shorter(per_sample: bool) -> None:
    """The step floor scales with the span: y' = -1e12 y over [0, 1e-12] takes its many
    steps of about 1e-14 and reaches exp(-1)."""
    y0 = torch.ones(2, 1, dtype=torch.float64) if per_sample else T(1.0)
    controller = no.PIController(rtol=1e-10, atol=1e-12)
    sol = no.solve(
        lambda t, y: -1e12 * y, y0, T(0.0, 1e-12), controller=controller, per_sample=per_sample
    )
    assert sol.succeeded
    assert sol.stats.n_accepted >= 10 * (2 if per_sample else 1)
    torch.testing.assert_close(sol.ys[-1], torch.full_like(y0, math.exp(-1)), rtol=1e-8, atol=0)


@pytest.mark.parametrize("method", ["radau", "kvaerno3"])
def test_a_stiff_transient_at_the_start_of_a_long_span_is_resolved(method: str) -> None:
    """Robertson's kinetics to t = 1e13: the first steps are about 1e-4 long, and Newton
    failures reject some of them, steps far below 4 ulps of the span (0.009): the floor's
    span part lies 16 decades below the span, so the solve goes on to y3 = 1."""
    controller = no.PIController(rtol=1e-4, atol=1e-8)
    sol = no.solve(
        ROBERTSON.f, ROBERTSON.y0_tensor(), T(0.0, 1e13), solver=make_solver(method),
        controller=controller,
    )  # fmt: skip
    assert sol.succeeded
    assert abs(float(sol.ys[-1, 2]) - 1) < 1e-6


@pytest.mark.parametrize("per_sample", [False, True], ids=["one", "per-sample"])
def test_rejected_short_steps_at_the_start_of_a_long_span_go_on(per_sample: bool) -> None:
    """y' = -1e3 e^-t y over [0, 1e14] with dopri5 from first_step 0.1: rejected for
    stability, the retried steps (about 0.02) lie below 4 ulps of the span (0.09) but far
    above the floor, and the solve reaches exp(-1000) = 0 to atol."""

    def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rate = torch.exp(-t)[:, None] if t.ndim else torch.exp(-t)
        return -1e3 * rate * y

    y0 = torch.ones(2, 1, dtype=torch.float64) if per_sample else T(1.0)
    controller = no.PIController(rtol=1e-6, atol=1e-9, first_step=0.1)
    sol = no.solve(field, y0, T(0.0, 1e14), controller=controller, per_sample=per_sample)
    assert sol.succeeded
    assert int(sol.stats.n_rejected) > 0
    assert float(sol.ys[-1].abs().max()) < 1e-9


@pytest.mark.parametrize("option", ["step_t", "jump_t"])
def test_steps_below_the_floor_after_a_landing_point_go_on(option: str) -> None:
    """A landing point 1e-20 after t0 (far below the floor of a span of 1) cuts a step that
    short, and the steps after it grow from there: accepted steps below the floor go on;
    only failing ones stop there."""
    sol = no.solve(decay, T(1.0), TS, **{option: [1e-20, 2e-20]})
    assert sol.succeeded
    torch.testing.assert_close(sol.ys[-1], T(math.exp(-1)), rtol=1e-6, atol=0)


def test_non_finite_field_at_the_start() -> None:
    with _raises(no.NonFiniteError, "f(t0, y0) contains NaN or inf at t0=0"):
        no.solve(lambda t, y: y * float("nan"), T(1.0), T(0.0, 2.0))


@pytest.mark.parametrize("mode", ["eager", "per_sample", "compile"])
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the graph's own check of f0)
def test_a_finite_field_too_large_for_the_tolerances_is_named_so(mode: str) -> None:
    """f(t0, y0) finite but so large that the first step's scaled norm overflows float32:
    the error says so (and not only that f0 is non-finite), in every mode; with a given
    first step the solve runs."""

    def huge(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.full_like(y, 1e36)

    y0 = torch.tensor([[0.5, -0.3], [2.0, 1.0]])
    kwargs = {"per_sample": mode == "per_sample", "compile": mode == "compile"}
    if mode == "compile" and not any(shutil.which(c) for c in ("c++", "g++", "clang++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler")
    with torch.no_grad():
        with pytest.raises(no.NonFiniteError) as info:
            no.solve(huge, y0, T(0.0, 1.0), **kwargs)
        assert "overflow the state's dtype" in str(info.value)
        assert "f(t0, y0) contains NaN or inf" in str(info.value)
        first = no.PIController(first_step=1e-3)
        assert no.solve(huge, y0, T(0.0, 1.0), controller=first, **kwargs).succeeded


def test_max_steps_exceeded() -> None:
    with pytest.raises(no.MaxStepsError) as info:
        no.solve(decay, Y0, T(0.0, 2.0), max_steps=3)
    message = str(info.value)
    assert "max_steps=3" in message and "before t=2" in message
    assert isinstance(info.value, no.SolverError)


def test_max_steps_exceeded_on_a_fixed_grid_is_known_before_stepping() -> None:
    controller = no.FixedGrid(step_size=0.1)
    calls = []

    def counted(t, y):
        calls.append(t)
        return -y

    with _raises(no.MaxStepsError, "has 10 steps, more than max_steps=5"):
        no.solve(counted, Y0, TS, solver=no.Euler(), controller=controller, max_steps=5)
    assert calls == []
    # a grid of 10**12 points is refused at once, not built
    with _raises(no.MaxStepsError, "has 1,000,000,000,000 steps, more than max_steps=100,000"):
        no.solve(decay, Y0, TS, solver=no.RK4(), controller=no.FixedGrid(step_size=1e-12))


@pytest.mark.parametrize("value", [0, -1, 2.5, True])
def test_max_steps_must_be_a_positive_integer(value) -> None:
    with _raises(ValueError, f"max_steps must be a positive integer or None, got {value!r}"):
        no.solve(decay, Y0, TS, max_steps=value)


@pytest.mark.parametrize("per_sample", [False, True])
def test_max_steps_none_is_no_limit(per_sample: bool) -> None:
    """A solve needing more steps than max_steps runs to the end with None (solve and
    odeint's max_num_steps)."""
    if per_sample:
        y0, t1, method, options = Y0[:, None], 10.0, "dopri5", dict(per_sample=True)
        kwargs = dict(controller=no.PIController(rtol=1e-12, atol=1e-12), per_sample=True)
    else:
        y0, t1, method, options = Y0, 0.2, "euler", dict(step_size=1e-3)
        kwargs = dict(solver=no.Euler(), controller=no.FixedGrid(step_size=1e-3))
    ts = T(0.0, t1)
    with pytest.raises(no.MaxStepsError):
        no.solve(decay, y0, ts, max_steps=100, **kwargs)
    sol = no.solve(decay, y0, ts, max_steps=None, **kwargs)
    assert sol.stats.n_accepted > 100
    torch.testing.assert_close(sol.ys[-1], y0 * math.exp(-t1), rtol=1e-3, atol=1e-12)
    ys = no.odeint(decay, y0, ts, method=method, rtol=1e-12, atol=1e-12,
                   options=dict(options, max_num_steps=None))  # fmt: skip
    torch.testing.assert_close(ys[-1], sol.ys[-1], rtol=1e-12, atol=1e-15)


# --- options -------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["rtol", "atol"])
def test_negative_tolerances(option: str) -> None:
    with _raises(ValueError, f"{option} must be a non-negative number, got -0.001"):
        no.PIController(**{option: -1e-3})
    with _raises(ValueError, f"{option} must be a non-negative number, got nan"):
        no.PIController(**{option: float("nan")})


def test_negative_tolerance_tensor() -> None:
    with _raises(ValueError, "rtol must be a non-negative number in every entry"):
        no.PIController(rtol=torch.tensor([1e-6, -1e-6]))


@pytest.mark.parametrize("name", [n for n in ALL_METHODS if not make_solver(n).adaptive])
def test_adaptive_controller_with_a_fixed_step_method(name: str) -> None:
    solver_name = make_solver(name).name
    with _raises(ValueError, f"{solver_name} has no error estimate and cannot adapt its step"):
        no.solve(decay, Y0, TS, solver=make_solver(name), controller=no.PIController())


@pytest.mark.parametrize("step_size", [0.0, -0.1, float("inf"), float("nan")])
def test_bad_step_size(step_size: float) -> None:
    with _raises(ValueError, f"step_size must be a positive finite number, got {step_size!r}"):
        no.FixedGrid(step_size=step_size)


def test_bad_grid() -> None:
    with _raises(ValueError, "the step grid must start at t0=0.0 and end at t1=1.0"):
        no.solve(decay, Y0, TS, solver=no.RK4(), controller=no.FixedGrid(grid=T(0.0, 0.5)))
    with _raises(ValueError, "the step grid must be strictly monotonic"):
        no.solve(
            decay, Y0, TS, solver=no.RK4(), controller=no.FixedGrid(grid=T(0.0, 0.6, 0.5, 1.0))
        )


@pytest.mark.parametrize("option", ["step_t", "jump_t"])
def test_nan_in_landing_times(option: str) -> None:
    with _raises(ValueError, f"{option} contains NaN"):
        no.solve(decay, Y0, TS, **{option: [0.5, float("nan")]})


def test_a_newton_failure_in_backsolves_backward_solve_is_named_as_the_backward_solves() -> None:
    """implicit_euler's fixed steps converge forwards on a stiff f but not on the adjoint
    system backwards: the error says that it is Backsolve's backward solve and what to use."""
    f64 = torch.float64
    gen = torch.Generator().manual_seed(0)
    rates = torch.tensor([[2.0, 0.3, 0.0], [0.1, 20.0, 1.0], [0.0, 0.5, 60.0]], dtype=f64)
    weight = (torch.randn(3, 3, generator=gen, dtype=f64) * 0.5).requires_grad_()
    f = lambda t, y: -(y @ rates.T) + torch.sin(y @ weight.T) + 0.1 * torch.cos(t)  # noqa: E731
    solution = no.solve(
        f,
        torch.tensor([1.0, -0.5, 0.3], dtype=f64),
        torch.tensor([0.0, 0.3, 0.7], dtype=f64),
        solver="implicit_euler",
        controller=no.FixedGrid(step_size=0.05),
        gradient=no.Backsolve(params=(weight,)),
    )
    with pytest.raises(
        NewtonError, match="the adjoint's backward solve from t=0.7 .* Checkpointed"
    ):
        solution.ys.sum().backward()
