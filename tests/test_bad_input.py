"""The rows of the guide's table "Bad input and what happens", one test per row (the ids in
``@row(...)``), and the torchdiffeq options the façade accepts."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import neuralode as no
from neuralode import odeint, odeint_adjoint

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = ("tests/test_bad_input.py", "tests/test_train_reliability.py")


def row(*ids: str):
    """Names the rows of the guide's bad-input table that a test covers (read from the
    source by ``test_every_row_of_the_bad_input_table_has_a_test``)."""
    return lambda test: test


def T(*values: float, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def decay(t, y):
    return -y


def rotation(t, y):
    return torch.stack([y[1], -y[0]])


def test_every_row_of_the_bad_input_table_has_a_test() -> None:
    guide = (ROOT / "docs/guide.md").read_text()
    section = guide.split("## Bad input and what happens", 1)[1].split("\n## ", 1)[0]
    ids = re.findall(r"^\| ([A-Z]\d+) \|", section, re.M)
    assert len(ids) >= 20 and len(set(ids)) == len(ids)
    tested = set()
    for name in TEST_FILES:
        for args in re.findall(r"@row\(([^)]*)\)", (ROOT / name).read_text()):
            tested.update(re.findall(r'"([A-Z]\d+)"', args))
    assert sorted(set(ids) - tested) == [], "rows without a test"
    assert sorted(tested - set(ids)) == [], "tests of rows that are not in the table"


# --- tolerances and dtypes -------------------------------------------------------------------


@row("S1")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_states_refuse_tolerances_below_their_resolution(dtype) -> None:
    y0 = torch.ones(3, dtype=dtype)
    with pytest.raises(ValueError, match=rf"rtol=1e-07 .* below the resolution .*{dtype}"):
        odeint(decay, y0, T(0.0, 1.0))  # torchdiffeq's defaults: rtol=1e-7, atol=1e-9
    with pytest.raises(ValueError, match="wider dtype"):
        no.solve(decay, y0, T(0.0, 1.0), controller=no.PIController(1e-6, 1e-8))
    with pytest.raises(ValueError, match="wider dtype"):  # a zero y0 counts as magnitude 1
        odeint(lambda t, y: torch.ones_like(y), y0 * 0, T(0.0, 1.0), rtol=1e-6, atol=1e-6)
    odeint(lambda t, y: torch.ones_like(y), y0 * 0, T(0.0, 1.0), rtol=1e-6, atol=1e-2)


@row("S2")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_states_solve_with_tolerances_they_can_meet(dtype) -> None:
    """The scaled error is computed in float32: float16's default-looking small atol no
    longer overflows the error ratio, and the result is as accurate as the dtype allows."""
    y0 = torch.ones(3, dtype=dtype)
    eps = torch.finfo(dtype).eps
    ys = odeint(decay, y0, T(0.0, 1.0), rtol=1e-2, atol=1e-6)
    assert ys.dtype == dtype
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 2 * eps
    batch = no.solve(decay, torch.ones(4, 2, dtype=dtype), T(0.0, 1.0), per_sample=True,
                     controller=no.PIController(1e-2, 1e-6))  # fmt: skip
    assert batch.ys.dtype == dtype
    assert float((batch.ys[-1].float() - math.exp(-1)).abs().max()) < 2 * eps
    # float16 with a tiny atol overflowed the scaled norm in float16 ("contains NaN or inf")
    ys = odeint(decay, torch.ones(3, dtype=torch.float16), T(0.0, 1.0), rtol=1e-3, atol=1e-9)
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 2 * torch.finfo(torch.float16).eps


@row("S3")
def test_float32_with_a_tolerance_below_its_resolution_warns() -> None:
    y0 = torch.ones(2, dtype=torch.float32)
    with pytest.warns(UserWarning, match=r"rtol=1e-12 .* torch.float32 .* float64"):
        odeint(decay, y0, T(0.0, 1.0), rtol=1e-12, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(decay, y0, T(0.0, 1.0), rtol=1e-8)  # above a hundredth of float32's eps
        odeint(decay, y0, T(0.0, 1.0), rtol=1e-12, atol=1e-3)  # atol is above it
    # the backward solves of Backsolve (odeint_adjoint's adjoint_rtol/atol) too: without the
    # warning a float32 backward at rtol 1e-12 takes thousands of steps unexplained
    start = y0.clone().requires_grad_(True)
    backsolve = no.Backsolve(params=(), rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning, match=r"Backsolve's backward rtol=1e-12 .* torch.float32"):
        no.solve(decay, start, T(0.0, 1.0), gradient=backsolve)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        no.solve(decay, start, T(0.0, 1.0), gradient=no.Backsolve(params=(), rtol=1e-6))


@row("S4")
def test_zero_tolerances_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="rtol=0 and atol=0 ask for an error of exactly zero"):
        odeint(decay, T(1.0), T(0.0, 1.0), rtol=0, atol=0)
    with pytest.raises(ValueError, match="rtol=0 and atol=0"):
        no.PIController(torch.zeros(2), 0.0)
    ys = odeint(decay, T(1.0), T(0.0, 1.0), rtol=0, atol=1e-10)  # one of them is enough
    assert abs(float(ys[-1, 0]) - math.exp(-1)) < 1e-9


@row("S17")
def test_nan_negative_or_non_numeric_tolerances_are_refused_by_name() -> None:
    """A NaN tolerance (also one entry of a per-element tensor) or a negative one is refused
    where it is given, PIController's and Backsolve's alike, rather than surfacing as a
    non-finite f or a negative backward tolerance; a non-number is a TypeError."""
    for bad in (math.nan, -1e-3, torch.tensor([1e-3, math.nan]), torch.tensor([-1.0, 1e-3])):
        with pytest.raises(ValueError, match="rtol must be a non-negative number"):
            no.PIController(rtol=bad)
        with pytest.raises(ValueError, match="atol must be a non-negative number"):
            no.PIController(atol=bad)
        with pytest.raises(ValueError, match="Backsolve rtol must be a non-negative number"):
            no.Backsolve(params=(), rtol=bad)
    for bad in ("1e-3", None, torch.tensor([1, 2])):
        with pytest.raises(TypeError, match="rtol must be a number or a"):
            no.PIController(rtol=bad)
    with pytest.raises(TypeError, match="Backsolve atol must be a number or a"):
        no.Backsolve(params=(), atol="1e-9")


def test_pi_coefficients_out_of_range_are_refused_by_name() -> None:
    """``icoeff`` must be a finite number > 0 and ``pcoeff`` a finite number >= 0: a
    negative icoeff grows rejected steps until the step size underflows."""
    for bad in (-1.0, 0.0, math.nan, math.inf, "0.3"):
        with pytest.raises(ValueError, match=r"icoeff must be a finite number > 0, got"):
            no.PIController(icoeff=bad)
    for bad in (-0.1, math.nan, math.inf, None):
        with pytest.raises(ValueError, match=r"pcoeff must be a finite number >= 0, got"):
            no.PIController(pcoeff=bad)
    no.PIController(icoeff=0.3, pcoeff=0.4)  # Gustafsson's PI controller
    no.PIController(icoeff=1, pcoeff=0)


def test_backsolve_takes_its_solver_and_controller_as_solve_does() -> None:
    """``Backsolve(solver=...)`` accepts a method name or class as ``solve(solver=...)`` does
    (a name reached the backward pass as a string), and refuses other types at once."""
    y0 = T(1.0, 0.5).requires_grad_()
    grads = []
    for solver in ("bosh3", no.Bosh3, no.Bosh3()):
        gradient = no.Backsolve(params=(), solver=solver, controller=no.PIController)
        ys = no.solve(decay, y0, T(0.0, 1.0), gradient=gradient).ys
        grads.append(torch.autograd.grad(ys[-1].sum(), y0)[0])
    torch.testing.assert_close(grads[0], torch.full((2,), math.exp(-1), dtype=F64))
    assert all(torch.equal(grad, grads[0]) for grad in grads)
    with pytest.raises(ValueError, match="unknown solver 'rk45'; available: euler"):
        no.Backsolve(params=(), solver="rk45")
    with pytest.raises(TypeError, match="solver must be a Solver such as no.Dopri5"):
        no.Backsolve(params=(), solver=3)


# --- step counts, events, overflow -----------------------------------------------------------


@row("S5")
def test_a_fixed_grid_longer_than_max_steps_is_refused_before_it_is_built() -> None:
    calls = []

    def counted(t, y):
        calls.append(t)
        return -y

    with pytest.raises(no.MaxStepsError, match="has 1,000,000,000 steps, more than max_steps"):
        odeint(counted, T(1.0), T(0.0, 1.0), method="rk4", options={"step_size": 1e-9})
    assert calls == []
    # the lazily made grid lands where the list did: t0 + i * step, then the end time
    ys = odeint(decay, T(1.0), T(0.0, 0.6, 1.0), method="euler", options={"step_size": 0.3})
    expected = [1.0, 0.7 * 0.7, 0.7 * 0.7 * 0.7 * (1 - 0.1)]
    torch.testing.assert_close(ys[:, 0], T(*expected), rtol=1e-14, atol=0)


@row("S18")
def test_per_sample_fixed_steps_refuse_an_adaptive_controller_and_one_problem_grids() -> None:
    y0 = torch.ones(2, 1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"rk4 has no error estimate.*FixedGrid\(step_size"):
        no.solve(
            decay, y0, T(0.0, 1.0), solver="rk4", controller=no.PIController(), per_sample=True
        )
    per_sample = no.FixedGrid(step_size=T(0.1, 0.2))
    with pytest.raises(ValueError, match=r"step_size per sample .* needs per_sample=True"):
        no.solve(decay, y0, T(0.0, 1.0), solver="rk4", controller=per_sample)
    ys = no.solve(decay, y0, T(0.0, 1.0), solver="rk4", controller=per_sample, per_sample=True).ys
    torch.testing.assert_close(ys[-1, :, 0], torch.exp(-T(1.0, 1.0)), rtol=1e-4, atol=0)


@row("S6", "S16")
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_an_event_that_never_fires_says_so(method) -> None:
    options = {"max_num_steps": 300} | ({"step_size": 0.1} if method == "rk4" else {})
    with pytest.raises(no.MaxStepsError, match="the event never fired") as info:
        odeint(
            rotation, T(1.0, 0.0), T(0.0, 1.0), method=method, options=options,
            event_fn=lambda t, y: y[0] - 5.0,
        )  # fmt: skip
    assert "stiff" not in str(info.value)
    with pytest.raises(ValueError, match="event search towards t=inf on fixed steps needs a step"):
        odeint(rotation, T(1.0, 0.0), T(0.0, 1.0), method="rk4", event_fn=lambda t, y: y[0])


@row("S7", "S8")
def test_event_functions_returning_bools_or_nan_are_named() -> None:
    with pytest.raises(TypeError, match="returned a bool tensor.*y\\[0\\] - 1"):
        odeint(rotation, T(1.0, 0.0), T(0.0, 1.0), event_fn=lambda t, y: y[0] > 0.5)
    with pytest.raises(ValueError, match="the event function returns NaN at t0=0"):
        odeint(rotation, T(1.0, 0.0), T(0.0, 1.0), event_fn=lambda t, y: y[0] * math.nan)
    per_sample = dict(per_sample=True)
    with pytest.raises(ValueError, match="returns NaN"):
        odeint(
            decay, torch.ones(3, 1, dtype=F64), T(0.0, 1.0), options=per_sample,
            event_fn=lambda t, y: y[:, 0] * math.nan,
        )  # fmt: skip


@row("S9")
def test_overflow_to_infinity_is_named() -> None:
    y0 = torch.ones(2, dtype=torch.float32)
    with pytest.raises(no.NonFiniteError, match="the solution overflows torch.float32"):
        odeint(lambda t, y: y, y0, T(0.0, 100.0))
    with pytest.raises(no.NonFiniteError, match="the solution overflows torch.float32"):
        no.solve(lambda t, y: y, torch.ones(3, 2), T(0.0, 100.0), per_sample=True)
    with pytest.raises(no.NonFiniteError, match="overflows torch.float32 to inf by t=300"):
        odeint(lambda t, y: y, y0, T(0.0, 300.0), method="euler", options={"step_size": 1.0})


class _NaNInBackward(torch.autograd.Function):
    """Zero forwards, NaN backwards: f is finite, its vector-Jacobian product is not."""

    @staticmethod
    def forward(ctx, y):
        return torch.zeros_like(y)

    @staticmethod
    def backward(ctx, grad):
        return grad * math.nan


@row("S10")
def test_nan_only_in_the_backward_pass_names_the_adjoint() -> None:
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rate = torch.nn.Parameter(torch.tensor(1.0, dtype=F64))

        def forward(self, t, y):
            return -self.rate * y + _NaNInBackward.apply(y)

    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    ys = odeint_adjoint(Field(), y0, T(0.0, 1.0))
    assert bool(torch.isfinite(ys).all())
    with pytest.raises(no.NonFiniteError, match="the adjoint's backward solve from t=1 to t=0"):
        ys.sum().backward()


def test_a_backward_failure_quotes_the_inner_message_as_one_sentence(monkeypatch) -> None:
    """The backward solve's error goes on after the inner one's message, whether that ends
    with a period or not: one period between them."""
    import neuralode.adjoint._backward as backward

    y0 = torch.ones(2, dtype=F64, requires_grad=True)
    for error, inner in ((no.NonFiniteError, "inner, with a period."),
                         (no.StepSizeUnderflowError, "inner, without one")):  # fmt: skip
        ys = no.solve(decay, y0, T(0.0, 1.0), gradient=no.Backsolve(params=())).ys

        def fail(*args, error=error, inner=inner, **kwargs):
            raise error(inner)

        monkeypatch.setattr(backward, "integrate", fail)
        with pytest.raises(error) as info:
            ys.sum().backward()
        monkeypatch.undo()
        assert f"{inner.rstrip('.')}. " in str(info.value)
        assert ".." not in str(info.value) and "one Backsolve" not in str(info.value)


# --- argument forms --------------------------------------------------------------------------


@row("S11", "S12", "S13", "S14")
def test_obvious_argument_forms_are_accepted() -> None:
    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 2).double()

        def forward(self, t, y):
            return self.linear(y)

    f = Field()
    linear = f.linear
    y0 = T(1.0, 0.5)
    ts = T(0.0, 1.0)

    reference = no.solve(f, y0, ts, solver=no.Dopri5(), controller=no.PIController())
    grads = None
    for kwargs in [
        dict(solver="dopri5"),
        dict(solver=no.Dopri5),
        dict(controller=no.PIController),
        dict(gradient="adjoint", norm="rms"),
        dict(gradient=no.Backsolve(params=linear)),
        dict(gradient=no.Checkpointed(params=linear.weight)),
        dict(gradient="direct"),
    ]:
        sol = no.solve(f, y0, ts, **kwargs)
        torch.testing.assert_close(sol.ys, reference.ys, rtol=1e-6, atol=1e-7)
        grad = torch.autograd.grad(sol.ys[-1].sum(), linear.weight)[0]
        if grads is not None:
            torch.testing.assert_close(grad, grads, rtol=1e-5, atol=1e-6)
        grads = grad
    for name, norm in (("max", no.max_norm), ("l2", torch.linalg.vector_norm)):
        by_name = no.solve(f, y0, ts, norm=name)
        by_callable = no.solve(f, y0, ts, norm=norm)
        assert torch.equal(by_name.ys, by_callable.ys), name


@row("S15")
def test_wrong_argument_types_name_the_expected_type() -> None:
    y0, ts = T(1.0), T(0.0, 1.0)
    with pytest.raises(TypeError, match="solver must be a Solver such as no.Dopri5"):
        no.solve(decay, y0, ts, solver=3)
    with pytest.raises(ValueError, match="unknown solver 'rk45'; available: euler"):
        no.solve(decay, y0, ts, solver="rk45")
    with pytest.raises(ValueError, match="unknown gradient 'adjoints'; available"):
        no.solve(decay, y0, ts, gradient="adjoints")
    with pytest.raises(TypeError, match="gradient must be Direct\\(\\), Backsolve"):
        no.solve(decay, y0, ts, gradient=no.Dopri5())
    with pytest.raises(ValueError, match="unknown norm 'l1'; available: rms, max, l2"):
        no.solve(decay, y0, ts, norm="l1")
    with pytest.raises(TypeError, match="norm must be a callable"):
        no.solve(decay, y0, ts, norm=2)
    for bad in (0, -1, 6, 1.0, True):  # leaves, not entries: 6 measured every leaf
        with pytest.raises(ValueError, match="n_measured counts leading leaves .* from 1 to 2"):
            no.seminorm([2, 2], bad)
    with pytest.raises(TypeError, match="params must be a sequence of tensors or an nn.Module"):
        no.solve(decay, y0.requires_grad_(), ts, gradient=no.Backsolve(params=3))


def test_flags_that_are_not_bools_are_refused_by_name() -> None:
    """``throw``, ``perturb`` and ``Backsolve``'s ``seminorm``, ``perturb`` (or ``None``) and
    ``compile_step`` take a bool (NumPy's too): a truthy string such as ``"no"`` is a
    TypeError rather than switching the option on; the torchdiffeq facade keeps
    torchdiffeq's truthy ``perturb`` option."""
    y0, ts = T(1.0), T(0.0, 1.0)
    for name in ("throw", "perturb"):
        for bad in ("no", 1, None):
            with pytest.raises(TypeError, match=f"{name} must be True or False, got {bad!r}"):
                no.solve(decay, y0, ts, **{name: bad})
    for bad in ("no", 0):
        with pytest.raises(TypeError, match=f"seminorm must be True or False, got {bad!r}"):
            no.Backsolve(params=(), seminorm=bad)
    reference = no.solve(decay, y0, ts, perturb=True).ys
    given = no.solve(decay, y0, ts, perturb=np.bool_(True), throw=np.True_).ys
    assert torch.equal(given, reference)
    assert no.Backsolve(params=(), seminorm=np.bool_(False)).seminorm is False
    for name in ("perturb", "compile_step"):
        for bad in ("no", 1, torch.tensor(True)):
            with pytest.raises(TypeError, match=f"{name} must be True or False"):
                no.Backsolve(params=(), **{name: bad})
    strategy = no.Backsolve(params=(), perturb=np.True_, compile_step=np.False_)
    assert strategy.perturb is True and strategy.compile_step is False
    assert no.Backsolve(params=()).perturb is None  # (the forward solve's)
    rk4 = {"step_size": 0.25, "perturb": 1, "throw": "yes"}  # (torchdiffeq's truthy options)
    ys = odeint(decay, y0, ts, method="rk4", options=rk4)
    torch.testing.assert_close(ys[-1], y0 * math.exp(-1), rtol=1e-3, atol=0)


# --- torchdiffeq's contract ------------------------------------------------------------------


FIXED_METHODS = [name for name, cls in no.METHODS.items() if not cls().adaptive]


@pytest.mark.parametrize("method", FIXED_METHODS)
@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_fixed_grid_interp_matches_its_formula(method, interp) -> None:
    """Outputs between grid points by torchdiffeq's linear or cubic Hermite formula."""
    ts = T(0.0, 0.25, 0.6, 1.0)
    out = odeint(
        rotation, T(1.0, 0.0), ts, method=method, options=dict(step_size=0.5, interp=interp)
    )
    grid = odeint(
        rotation, T(1.0, 0.0), T(0.0, 0.5, 1.0), method=method, options=dict(step_size=0.5)
    )
    for i, t in ((1, 0.25), (2, 0.6)):
        lo = 0 if t < 0.5 else 1
        y0, y1, h = grid[lo], grid[lo + 1], (t - 0.5 * lo) / 0.5
        if interp == "linear":
            expected = y0 + h * (y1 - y0)
        else:
            f0, f1 = rotation(None, y0), rotation(None, y1)
            expected = (
                (1 + 2 * h) * (1 - h) ** 2 * y0 + h * (1 - h) ** 2 * 0.5 * f0
                + h * h * (3 - 2 * h) * y1 + h * h * (h - 1) * 0.5 * f1
            )  # fmt: skip
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="option interp must be one of"):
        odeint(rotation, T(1.0, 0.0), ts, method=method, options=dict(interp="quadratic"))


@pytest.mark.parametrize("method", FIXED_METHODS)
def test_fixed_grid_interp_with_events_on_every_fixed_method(method) -> None:
    """The event lies on the chosen interpolant between the grid points around it."""
    for interp in ("linear", "cubic"):
        options = dict(step_size=0.1, interp=interp)
        event_t, solution = odeint(
            rotation, T(1.0, 0.0), T(0.0, 1.0), method=method, options=options,
            event_fn=lambda t, y: y[0] - 0.3,
        )  # fmt: skip
        assert float(solution[-1, 0]) == pytest.approx(0.3, abs=1e-9)
        assert float(event_t) == pytest.approx(math.acos(0.3), abs=5e-2), interp


def test_fixed_grid_interp_locates_events_on_that_interpolant() -> None:
    pytest.importorskip("torchdiffeq")
    import torchdiffeq

    for interp in ("linear", "cubic"):
        options = dict(step_size=0.1, interp=interp)
        ours = odeint(
            rotation, T(1.0, 0.0), T(0.0, 1.0), method="rk4", options=options,
            event_fn=lambda t, y: y[0] - 0.3,
        )[0]  # fmt: skip
        theirs = torchdiffeq.odeint(
            rotation, T(1.0, 0.0), T(0.0, 1.0), method="rk4", options=options,
            event_fn=lambda t, y: y[0] - 0.3,
        )[0]  # fmt: skip
        assert float(ours) == pytest.approx(float(theirs), abs=1e-8), interp
        assert float(ours) == pytest.approx(
            math.acos(0.3), abs=1e-3 if interp == "linear" else 1e-5
        )


def test_fixed_adams_is_implicit_adams() -> None:
    options = dict(step_size=0.05)
    a = odeint(rotation, T(1.0, 0.0), T(0.0, 1.0), method="fixed_adams", options=options)
    b = odeint(rotation, T(1.0, 0.0), T(0.0, 1.0), method="implicit_adams", options=options)
    assert torch.equal(a, b)


def test_callbacks_a_method_never_calls_are_warned_about() -> None:
    class Field(torch.nn.Module):
        def forward(self, t, y):
            return -y

        def callback_step(self, t0, y0, dt):
            self.steps = getattr(self, "steps", 0) + 1

        def callback_accept_step(self, t0, y0, dt):
            raise AssertionError("a fixed-grid method does not call callback_accept_step")

    field = Field()
    with pytest.warns(UserWarning, match="method 'rk4' never calls callback_accept_step"):
        odeint(field, T(1.0), T(0.0, 1.0), method="rk4", options=dict(step_size=0.25))
    assert field.steps == 4
    with pytest.warns(UserWarning, match="'scipy_solver' never calls callback_step"):
        pytest.importorskip("scipy")
        odeint(field, T(1.0), T(0.0, 1.0), method="scipy_solver")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del Field.callback_accept_step
        odeint(field, T(1.0), T(0.0, 1.0), method="dopri5")


class _Decay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return -self.rate * y * (1 + (t > 0.5).to(y.dtype))  # rate doubles at t = 0.5


class _TupleDecay(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rate = torch.nn.Parameter(torch.tensor(0.7, dtype=F64))

    def forward(self, t, y):
        return tuple(-self.rate * part for part in y)


def test_adjoint_options_step_t_jump_t_perturb_and_norm_reach_the_backward_solve() -> None:
    """y(1) = y0 exp(-1.5 rate) (the rate doubles at t = 0.5): d sum y(1) / d rate is
    -1.5 sum y(1); the backward solve lands on the jump by its own options."""
    y0 = T(1.0, 2.0)
    for adjoint_options in [
        dict(jump_t=[0.5]),
        dict(step_t=[0.5], jump_t=T(0.5)),
        dict(norm="seminorm", jump_t=[0.5]),
        dict(norm=lambda state: max(x.abs().max() for x in state), jump_t=[0.5]),
    ]:
        field = _Decay()
        ys = odeint_adjoint(
            field, y0, T(0.0, 1.0), rtol=1e-10, atol=1e-12, options=dict(jump_t=[0.5]),
            adjoint_options=adjoint_options,
        )  # fmt: skip
        (grad,) = torch.autograd.grad(ys[-1].sum(), field.rate)
        torch.testing.assert_close(grad, -1.5 * ys[-1].sum().detach(), rtol=1e-7, atol=0)
    seen = []

    def norm(state):
        seen.append(len(state))
        return max(x.abs().max() for x in state)

    field = _TupleDecay()
    ys = odeint_adjoint(field, (y0, y0[:1]), T(0.0, 1.0), adjoint_options=dict(norm=norm))
    torch.autograd.grad(ys[0][-1].sum(), field.rate)
    assert set(seen) == {1 + 2 + 2 + 1}  # (t, *y, *adj_y, *adj_params) as torchdiffeq
    # perturb on a fixed grid: the evaluations at the ends of each backward step move inside
    field = _Decay()
    ys = odeint_adjoint(
        field, y0, T(0.0, 1.0), method="rk4", options=dict(step_size=0.25),
        adjoint_options=dict(step_size=0.25, perturb=True),
    )  # fmt: skip
    (grad,) = torch.autograd.grad(ys[-1].sum(), field.rate)
    torch.testing.assert_close(grad, -1.5 * ys[-1].sum().detach(), rtol=1e-3, atol=0)


def test_grid_constructor_is_called_again_for_the_backward_solves() -> None:
    calls = []

    def grid(func, y0, t):
        calls.append(t.tolist())
        return torch.linspace(float(t[0]), float(t[-1]), 21, dtype=t.dtype)

    field = _Decay()
    ys = odeint_adjoint(
        field, T(1.0), T(0.0, 0.4, 1.0), method="rk4", options=dict(grid_constructor=grid)
    )
    assert calls == [[0.0, 0.4, 1.0]]
    ys[-1].sum().backward()
    assert calls == [[0.0, 0.4, 1.0], [1.0, 0.4], [0.4, 0.0]]


def test_scipy_solver_with_one_output_time_and_step_bounds() -> None:
    pytest.importorskip("scipy")
    y0 = T(1.0, 0.0)
    out = odeint(rotation, y0, T(0.5), method="scipy_solver")
    assert torch.equal(out, y0[None])
    calls = []

    def counted(t, y):
        calls.append(float(t))
        return rotation(t, y)

    ts = T(0.0, 10.0)
    odeint(counted, y0, ts, method="scipy_solver", options=dict(max_step=0.01), rtol=1e-3)
    steps = sorted(set(calls))
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 0.01 + 1e-12
    out = odeint(
        rotation, y0, ts, method="scipy_solver", rtol=1e-8, atol=1e-10,
        options=dict(solver="LSODA", min_step=1e-6, max_step=0.5),
    )  # fmt: skip
    torch.testing.assert_close(out[-1], T(math.cos(10.0), -math.sin(10.0)), rtol=0, atol=1e-6)


def test_min_step_is_honoured_by_dopri5() -> None:
    counts = {}
    nfe = []

    def counted(t, y):
        nfe.append(1)
        return rotation(t, y)

    for min_step in (0.0, 0.5):
        nfe.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            odeint(
                counted,
                T(1.0, 0.0),
                T(0.0, 10.0),
                rtol=1e-10,
                atol=1e-10,
                options=dict(min_step=min_step),
            )
        counts[min_step] = len(nfe)
        hit = [w for w in caught if "hitting the minimum step size" in str(w.message)]
        # steps at min_step are accepted, with one warning for the solve (not one per step)
        assert len(hit) == (1 if min_step > 0 else 0)
    assert counts[0.5] <= 6 * 10 / 0.5 + 10 < counts[0.0]


def test_an_event_function_an_empty_evaluate_and_one_problems_max_steps() -> None:
    """A bare function as event is a TypeError naming the fix; evaluate at no times is the
    empty result of their shape; one problem's max_steps error in the compiled or device
    loop names no sample (as the host loop's)."""
    y0, ts = T(1.0, 0.0), T(0.0, 1.0)
    with pytest.raises(TypeError, match=r"event must be a neuralode.Event.*no.Event\(fn\)"):
        no.solve(rotation, y0, ts, event=lambda t, y: y[0] - 0.5)
    sol = no.solve(rotation, y0, ts, dense=True)
    assert sol.evaluate(torch.zeros(0, dtype=F64)).shape == (0, 2)
    assert sol.evaluate(torch.zeros(4, 0, dtype=F64)).shape == (4, 0, 2)
    with torch.no_grad():
        for options in (dict(device_loop=True), dict()):
            with pytest.raises(no.MaxStepsError, match=r"^reached max_steps=2 at t="):
                no.solve(rotation, y0, T(0.0, 10.0), max_steps=2, **options)


@row("S19")
def test_a_field_written_for_one_time_is_told_how_to_take_one_per_sample() -> None:
    """Per sample f gets t of shape (batch,): -y * t on a (batch, 1) state broadcasts to the
    wrong shape (refused with the fix), on a (batch, 2) state it fails inside f (torch's
    error kept, the fix appended), eagerly and with compiled steps."""
    ts = T(0.0, 1.0)
    with pytest.raises(ValueError, match=r"shape \(5, 5\); expected \(5, 1\).*t\[:, None\]"):
        no.solve(lambda t, y: -y * t, torch.ones(5, 1, dtype=torch.float64), ts, per_sample=True)
    for compile in (False, "step"):
        with pytest.raises(RuntimeError, match=r"must match.*t has shape \(5,\).*t\[:, None\]"):
            no.solve(lambda t, y: -y * t, torch.ones(5, 2, dtype=torch.float64), ts,
                     per_sample=True, compile=compile)  # fmt: skip


@row("S20")
def test_a_module_in_another_dtype_than_the_state_is_named_with_the_fix() -> None:
    """A float32 module on a float64 state (torchdiffeq's most common first error) fails in
    the module with torch's message; the first call keeps it and names the fix. A later
    failure of the same kind is f's own and passes unchanged."""
    layer = torch.nn.Linear(2, 2)
    y0 = torch.ones(3, 2, dtype=torch.float64)
    fix = r"same dtype.*first call with the state in torch.float64.*module.to\(torch.float64\)"
    with pytest.raises(RuntimeError, match=fix):
        no.solve(lambda t, y: layer(y), y0, T(0.0, 1.0))
    with pytest.raises(RuntimeError, match=r"should be the same\. func\(t, y\) failed"):
        no.odeint(lambda t, y: torch.nn.Conv1d(1, 1, 1)(y), y0[:1, None], T(0.0, 1.0))
    calls = []

    def later(t, y):
        calls.append(t)
        return layer(y) if len(calls) > 1 else -y

    with pytest.raises(RuntimeError) as caught:
        no.solve(later, y0, T(0.0, 1.0))
    assert "first call" not in str(caught.value)


@row("S21")
def test_a_field_under_autocast_is_cast_and_tight_tolerances_warn() -> None:
    """Under torch.autocast f's linear layers return bfloat16 on a float32 state: the solve
    casts them (torchdiffeq's sums promote them) instead of refusing the dtype, and warns
    about tolerances below bfloat16's resolution."""
    layer = torch.nn.Linear(2, 2)
    y0 = torch.ones(3, 2)
    resolution = r"rtol=1e-07 .* below the resolution of torch.bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(UserWarning, match=resolution):
        ys = odeint(lambda t, y: layer(y), y0, T(0.0, 1.0, dtype=torch.float32))
    assert ys.dtype == torch.float32


@row("S22")
def test_times_the_states_dtype_cannot_hold_are_refused_or_warned() -> None:
    """f receives t in the state's dtype: float16 past 65504 would be inf, and bfloat16
    near t = 300 resolves only 300 and 302."""
    f = lambda t, y: -y * torch.cos(t)  # noqa: E731
    y16 = torch.ones(1, dtype=torch.float16)
    with pytest.raises(ValueError, match="beyond the largest torch.float16 value"):
        odeint(f, y16, T(1e5, 1e5 + 2.0, dtype=torch.float64), rtol=1e-2, atol=1e-3)
    seen = []
    bf16 = torch.ones(1, dtype=torch.bfloat16)
    with pytest.warns(UserWarning, match=r"resolves times near \|t\| = 302 only to 2"):
        odeint(lambda t, y: seen.append(float(t)) or f(t, y), bf16, T(300.0, 302.0), rtol=1e-2)
    assert set(seen) <= {300.0, 302.0}
    with warnings.catch_warnings():  # the same span near 0 is resolved: no warning
        warnings.simplefilter("error")
        odeint(f, bf16, T(0.0, 2.0), rtol=1e-2)
        odeint(f, torch.ones(1), T(300.0, 302.0, dtype=torch.float32))
