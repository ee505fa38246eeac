"""The torchdiffeq-compatible façade against torchdiffeq itself."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import neuralode as no

torchdiffeq = pytest.importorskip("torchdiffeq")
F64 = torch.float64
A = torch.tensor([[-0.1, 1.0], [-1.0, -0.1]], dtype=F64)
Y0 = torch.tensor([1.0, 0.5], dtype=F64)
T = torch.linspace(0, 3, 7, dtype=F64)
EXACT = torch.stack([torch.linalg.matrix_exp(A * t) @ Y0 for t in T])
SHARED_FIXED = ["euler", "midpoint", "heun2", "heun3", "rk4"]
SHARED_ADAPTIVE = ["adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8"]


def linear(t, y):
    return A @ y


def linear_of(dtype: torch.dtype, device: str = "cpu"):
    matrix = A.to(dtype=dtype, device=device)
    return lambda t, y: matrix @ y


class Field(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )
        self.double()

    def forward(self, t, y):
        return self.net(y)


@pytest.mark.parametrize("method", SHARED_FIXED)
def test_fixed_methods_match_torchdiffeq_on_the_grid(method: str) -> None:
    grid = torch.linspace(0, 3, 31, dtype=F64)
    ours = no.odeint(linear, Y0, grid, method=method)
    theirs = torchdiffeq.odeint(linear, Y0, grid, method=method)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("interp", [None, "linear", "cubic"])
@pytest.mark.parametrize("method", SHARED_FIXED)
def test_fixed_methods_match_torchdiffeq_between_grid_points(method: str, interp) -> None:
    """Output times off the grid of step_size, forwards and backwards in time: the same
    interpolation as torchdiffeq's (linear by default) and the same evaluations of f, less
    those torchdiffeq repeats."""
    options = {"step_size": 0.1} if interp is None else {"step_size": 0.1, "interp": interp}
    for t in (
        torch.tensor([0.03, 0.25, 0.5, 1.37], dtype=F64),
        torch.tensor([1.0, 0.72, 0.05], dtype=F64),
    ):
        counts = []
        for library in (no, torchdiffeq):
            calls = []

            def f(t, y, calls=calls):
                calls.append(t)
                return linear(t, y)

            ys = library.odeint(f, Y0, t, method=method, options=dict(options))
            counts.append((ys, len(calls)))
        (ours, ours_calls), (theirs, theirs_calls) = counts
        torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-13)
        if interp == "cubic":  # torchdiffeq evaluates f(t1, y1) again for each output
            assert ours_calls == theirs_calls - (len(t) - 1)
        else:
            assert ours_calls == theirs_calls


@pytest.mark.parametrize(
    "method, shape", [("rk4", (3, 2)), ("midpoint", (3, 2)), ("leapfrog", None)]
)
@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_fixed_methods_per_sample_interpolate_as_each_sample_alone(method, shape, interp) -> None:
    """options=dict(per_sample=True) on fixed grids: each sample's own output times, written
    by the same interpolation between its grid points as its solve alone."""
    ts = torch.tensor([[0.0, 0.25, 1.0], [0.0, 0.33, 0.7], [0.1, 0.5, 2.0]], dtype=F64)
    options = {"step_size": 0.1, "interp": interp}
    if shape is None:  # a pendulum as a pair (q, p)

        def f(t, state):
            q, p = state
            return p, -torch.sin(q)

        y0 = (torch.tensor([[1.0], [0.5], [0.2]], dtype=F64), torch.zeros(3, 1, dtype=F64))
    else:

        def f(t, y):
            return y @ A.T + torch.sin(3 * t).reshape(-1, *[1] * (y.ndim - 1))

        y0 = torch.arange(6, dtype=F64).reshape(shape) / 5
    ys = no.odeint(f, y0, ts, method=method, options={**options, "per_sample": True})
    for i in range(3):
        alone = no.odeint(f, tuple(y[i] for y in y0) if shape is None else y0[i], ts[i],
                          method=method, options=options)  # fmt: skip
        if shape is None:
            for y, y_alone in zip(ys, alone, strict=True):
                torch.testing.assert_close(y[:, i], y_alone, rtol=1e-14, atol=1e-14)
        else:
            torch.testing.assert_close(ys[:, i], alone, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("method", SHARED_ADAPTIVE)
def test_adaptive_methods_are_as_accurate_as_torchdiffeq(method: str) -> None:
    ours = no.odeint(linear, Y0, T, method=method, rtol=1e-6, atol=1e-8)
    theirs = torchdiffeq.odeint(linear, Y0, T, method=method, rtol=1e-6, atol=1e-8)
    ours_error = (ours - EXACT).abs().max()
    theirs_error = (theirs - EXACT).abs().max()
    assert ours_error <= 3 * theirs_error + 1e-9


def test_default_method_and_tuple_state() -> None:
    def f(t, state):
        x, v = state
        return v, -x

    x, v = no.odeint(f, (torch.tensor([1.0], dtype=F64), torch.tensor([0.0], dtype=F64)), T)
    torch.testing.assert_close(x[:, 0], torch.cos(T), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(v[:, 0], -torch.sin(T), rtol=1e-6, atol=1e-6)


def test_per_component_tolerances_as_torchdiffeq() -> None:
    """rtol/atol per tensor of a tuple state (a tuple, a list or a tensor of one entry per
    tensor) and per element of a tensor state: the same steps as torchdiffeq's dopri5."""

    def pair(t, y):
        return -y[0], -3.0 * y[1]

    y0 = (torch.ones(2, dtype=F64), torch.ones(3, dtype=F64))
    for rtol, atol in (((1e-9, 1e-3), [1e-10, 1e-4]), (torch.tensor([1e-9, 1e-3]), 1e-10)):
        ours = no.odeint(pair, y0, T, rtol=rtol, atol=atol)
        theirs = torchdiffeq.odeint(pair, y0, T, rtol=rtol, atol=atol)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    rtol = torch.tensor([1e-10, 1e-3], dtype=F64)
    ours = no.odeint(linear, Y0, T, rtol=rtol, atol=1e-12)
    torch.testing.assert_close(ours, torchdiffeq.odeint(linear, Y0, T, rtol=rtol, atol=1e-12))
    # a list or tuple for a tensor state is a tensor of per-element tolerances (torchdiffeq)
    ours = no.odeint(linear, Y0, T, rtol=[1e-10, 1e-3], atol=(1e-12, 1e-12))
    torch.testing.assert_close(ours, torchdiffeq.odeint(linear, Y0, T, rtol=rtol, atol=1e-12))
    # the adjoint's backward solve takes the forward tolerances for y and the adjoint
    field, start = Field(), Y0.clone().requires_grad_()
    no.odeint_adjoint(field, start, T, rtol=rtol, atol=1e-12)[-1].sum().backward()
    direct = Y0.clone().requires_grad_()
    no.odeint(field, direct, T, rtol=1e-10, atol=1e-12)[-1].sum().backward()
    torch.testing.assert_close(start.grad, direct.grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="rtol has 3 entries but y0 has 2 tensors"):
        no.odeint(pair, y0, T, rtol=(1e-6, 1e-6, 1e-6))
    with pytest.raises(ValueError, match="rtol cannot require gradient"):
        no.odeint(linear, Y0, T, rtol=torch.tensor(1e-6, requires_grad=True))
    with pytest.raises(ValueError, match="does not broadcast against the state"):
        no.odeint(linear, Y0, T, atol=torch.full((3,), 1e-6))


def test_decreasing_times() -> None:
    back = no.odeint(linear, EXACT[-1], T.flip(0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(back, EXACT.flip(0), rtol=1e-7, atol=1e-8)


def test_step_size_and_grid_constructor() -> None:
    ours = no.odeint(linear, Y0, T, method="rk4", options={"step_size": 0.01})
    torch.testing.assert_close(ours, EXACT, rtol=1e-8, atol=1e-8)
    calls = []

    def grid(func, y0, t):
        calls.append(t)
        return torch.linspace(float(t[0]), float(t[-1]), 301, dtype=F64)

    gridded = no.odeint(linear, Y0, T, method="rk4", options={"grid_constructor": grid})
    assert len(calls) == 1
    torch.testing.assert_close(gridded, ours, rtol=1e-9, atol=1e-9)


def test_options_reach_the_solver() -> None:
    with pytest.raises(no.MaxStepsError):
        no.odeint(linear, Y0, T, options={"max_num_steps": 3})
    with pytest.raises(AssertionError):  # as torchdiffeq's, for code that catches that
        no.odeint(linear, Y0, T, options={"max_num_steps": 3})
    accepted = []

    class Recorder:
        def __call__(self, t, y):
            return A @ y

        def callback_accept_step(self, t0, y0, dt):
            accepted.append(float(t0 + dt))

    no.odeint(Recorder(), Y0, T, options={"step_t": [1.2345], "first_step": 0.01})
    assert any(abs(t - 1.2345) < 1e-12 for t in accepted)
    assert accepted[0] == pytest.approx(0.01)
    seen = []

    def norm(state):
        seen.append(type(state))
        return state.abs().max()

    no.odeint(linear, Y0, T, options={"norm": norm})
    assert seen and seen[0] is torch.Tensor


def test_perturb_evaluates_inside_the_steps() -> None:
    times = []

    def f(t, y):
        times.append(float(t))
        return torch.ones_like(y)

    no.odeint(
        f, Y0, torch.tensor([0.0, 1.0, 2.0], dtype=F64), method="euler", options={"perturb": True}
    )
    assert times[0] > 0.0 and times[1] > 1.0


def test_callbacks_receive_tensors() -> None:
    received = []

    class WithCallbacks(torch.nn.Module):
        def forward(self, t, y):
            return A @ y

        def callback_step(self, t0, y0, dt):
            received.append((t0, y0, dt))

    no.odeint(WithCallbacks(), Y0, T)
    assert received and all(isinstance(x, torch.Tensor) for x in received[0])


def test_unknown_method_and_option_errors_name_them() -> None:
    with pytest.raises(ValueError, match="unknown method 'rk45'"):
        no.odeint(linear, Y0, T, method="rk45")
    with pytest.raises(ValueError, match="unknown option.*step_size.*dopri5"):
        no.odeint(linear, Y0, T, options={"step_size": 0.1})
    with pytest.raises(ValueError, match="rtol must be a non-negative"):
        no.odeint(linear, Y0, T, rtol=-1.0)
    with pytest.raises(ValueError, match="dtype must be a floating-point"):
        no.odeint(linear, Y0, T, options={"dtype": torch.int32})


@pytest.mark.parametrize("state_dtype", [torch.float32, F64])
def test_time_dtype_option_is_accepted_as_in_torchdiffeq(state_dtype: torch.dtype) -> None:
    # torchdiffeq's options=dict(dtype=torch.float32) (its time dtype, e.g. for devices
    # without float64) solves as with float64 time, to the tolerance
    y0, t = Y0.to(state_dtype), T.to(state_dtype)
    f, options = linear_of(state_dtype), {"dtype": torch.float32}
    ours = no.odeint(f, y0, t, rtol=1e-6, atol=1e-8, options=options)
    theirs = torchdiffeq.odeint(f, y0, t, rtol=1e-6, atol=1e-8, options=options)
    assert ours.dtype == theirs.dtype == state_dtype
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    field = Field().to(state_dtype)
    start = y0.clone().requires_grad_(True)
    ys = no.odeint_adjoint(field, start, t, rtol=1e-6, atol=1e-8, options=options)
    (grad,) = torch.autograd.grad(ys[-1].sum(), start)
    start = y0.clone().requires_grad_(True)
    ys = torchdiffeq.odeint_adjoint(field, start, t, rtol=1e-6, atol=1e-8, options=options)
    (expected,) = torch.autograd.grad(ys[-1].sum(), start)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)


def test_times_on_another_device_are_moved_with_torchdiffeqs_warning() -> None:
    # y0 on meta and t on the CPU: both libraries warn and move t, and the solve then fails
    # on meta's missing values (instead of a device error before it): torchdiffeq in torch,
    # neuralode with its own error naming the meta device
    for interface, error, match in (
        (no, ValueError, "y0 is on the meta device"),
        (torchdiffeq, RuntimeError, "meta tensors"),
    ):
        for adjoint in ({}, {"adjoint_params": ()}):
            odeint = interface.odeint_adjoint if adjoint else interface.odeint
            with (
                pytest.warns(UserWarning, match="t is not on the same device as y0"),
                pytest.raises(error, match=match),
            ):
                odeint(lambda t, y: -y, Y0.to("meta"), T, **adjoint)


@pytest.mark.cuda
def test_cpu_times_for_a_cuda_state_as_torchdiffeq() -> None:
    y0, t = Y0.cuda(), T.clone().requires_grad_(True)
    for interface in (no, torchdiffeq):
        with pytest.warns(UserWarning, match="t is not on the same device as y0"):
            ys = interface.odeint_adjoint(linear_of(F64, "cuda"), y0, t, adjoint_params=())
        assert ys.device == y0.device
        torch.testing.assert_close(ys.cpu(), EXACT, rtol=1e-6, atol=1e-8)
        (grad,) = torch.autograd.grad(ys[-1].sum(), t)
        assert grad.device == t.device and grad[-1] == pytest.approx(float((A @ EXACT[-1]).sum()))


def test_explicit_adams_takes_max_iters_as_torchdiffeq() -> None:
    # torchdiffeq's explicit Adams inherits the corrector's max_iters and ignores it
    grid = torch.linspace(0, 3, 31, dtype=F64)
    plain = no.odeint(linear, Y0, grid, method="explicit_adams")
    ours = no.odeint(linear, Y0, grid, method="explicit_adams", options={"max_iters": 2})
    torch.testing.assert_close(ours, plain, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_backprop_gradients_match_torchdiffeq(method: str) -> None:
    field = Field()
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    options = {"step_size": 0.05} if method == "rk4" else None
    grads = []
    for odeint in (no.odeint, torchdiffeq.odeint):
        out = odeint(field, y0, T, method=method, options=options, rtol=1e-9, atol=1e-10)
        grads.append(torch.autograd.grad(out[-1].pow(2).sum(), (y0, *field.parameters())))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("adjoint_options", [None, {"norm": "seminorm"}])
def test_odeint_adjoint_matches_torchdiffeq(adjoint_options) -> None:
    field = Field()
    y0 = torch.randn(4, 2, dtype=F64, requires_grad=True)
    grads = []
    for odeint_adjoint in (no.odeint_adjoint, torchdiffeq.odeint_adjoint):
        out = odeint_adjoint(field, y0, T, rtol=1e-9, atol=1e-10, adjoint_options=adjoint_options)
        grads.append(torch.autograd.grad(out.pow(2).sum(), (y0, *field.parameters())))
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("adjoint_options", [None, {"norm": "seminorm"}])
def test_a_forward_norm_also_measures_the_backward_solve(adjoint_options) -> None:
    """torchdiffeq: without a norm in adjoint_options, the forward options' norm measures y
    and the adjoint backwards (with the parameter gradients' RMS unless "seminorm"): the
    same backward calls of it, the same gradients."""
    results = []
    for library in (no, torchdiffeq):
        calls = [0]

        def first_only(state, calls=calls):  # measures the first component only
            calls[0] += 1
            return state[..., 0].abs().max()

        field, y0 = Field(), Y0.clone().requires_grad_()
        ys = library.odeint_adjoint(field, y0, T, rtol=1e-6, atol=1e-8,
                                    options={"norm": first_only},
                                    adjoint_options=adjoint_options)  # fmt: skip
        forward_calls = calls[0]
        ys[-1].sum().backward()
        results.append((calls[0] - forward_calls, y0.grad, field.net[0].weight.grad))
    (ours, *our_grads), (theirs, *their_grads) = results
    assert ours > 0 and abs(ours - theirs) <= 0.25 * theirs
    for a, b in zip(our_grads, their_grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _data_parallel_replica(network: torch.nn.Module) -> torch.nn.Module:
    """The replica ``nn.parallel.replicate`` builds for one device, on the CPU: its parameters
    are differentiable copies held as plain attributes, and its ``parameters()`` is empty."""
    modules = list(network.modules())
    copies = [m._replicate_for_data_parallel() for m in modules]
    index = {m: i for i, m in enumerate(modules)}
    for module, replica in zip(modules, copies):
        for key, child in module._modules.items():
            setattr(replica, key, copies[index[child]])
        for key, param in module._parameters.items():
            setattr(replica, key, param * 1)
    return copies[0]


def test_odeint_adjoint_finds_the_parameters_of_a_data_parallel_replica() -> None:
    # as torchdiffeq's find_parameters: under nn.DataParallel, func is a replica whose
    # parameters() is empty
    field = Field()
    (expected,) = torch.autograd.grad(no.odeint(field, Y0, T).pow(2).sum(), field.net[0].weight)
    replica = _data_parallel_replica(field)
    assert not list(replica.parameters())
    for odeint_adjoint in (no.odeint_adjoint, torchdiffeq.odeint_adjoint):
        ys = odeint_adjoint(_data_parallel_replica(field), Y0, T)
        (grad,) = torch.autograd.grad(ys.pow(2).sum(), field.net[0].weight)
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-7)


def test_odeint_adjoint_needs_params_for_plain_functions_and_rejects_scipy() -> None:
    y0 = Y0.clone().requires_grad_(True)
    with pytest.raises(ValueError, match="adjoint_params"):
        no.odeint_adjoint(linear, y0, T)
    out = no.odeint_adjoint(linear, y0, T, adjoint_params=())
    (grad,) = torch.autograd.grad(out[-1].sum(), y0)
    torch.testing.assert_close(grad, torch.linalg.matrix_exp(A * 3.0).T @ torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match="scipy_solver is not differentiable"):
        no.odeint_adjoint(Field(), y0, T, method="scipy_solver")


def test_adjoint_callbacks_are_called_in_the_backward_pass() -> None:
    counts = {"forward": 0, "backward": 0}

    class Counted(Field):
        def callback_step(self, t0, y0, dt):
            counts["forward"] += 1

        def callback_step_adjoint(self, t0, y0, dt):
            counts["backward"] += 1

    out = no.odeint_adjoint(Counted(), Y0.clone().requires_grad_(True), T)
    assert counts["forward"] > 0 and counts["backward"] == 0
    out.sum().backward()
    assert counts["backward"] > 0


@pytest.mark.parametrize("backwards_in_time", [False, True])
def test_callbacks_get_torchdiffeqs_positive_step_in_either_direction(
    backwards_in_time: bool,
) -> None:
    """torchdiffeq integrates a reversed span forwards in -t: its callbacks' dt is positive
    in the forward and in the adjoint's backward solve, and so is ours."""
    steps = {}
    times = torch.tensor([1.0, 0.0] if backwards_in_time else [0.0, 1.0], dtype=F64)
    for lib in (no, torchdiffeq):

        class Logged(Field):
            def callback_step(self, t0, y0, dt, lib=lib):
                steps.setdefault((lib.__name__, "forward"), []).append(float(dt))

            def callback_step_adjoint(self, t0, y0, dt, lib=lib):
                steps.setdefault((lib.__name__, "adjoint"), []).append(float(dt))

        out = lib.odeint_adjoint(
            Logged(), Y0.clone().requires_grad_(True), times, method="rk4",
            options=dict(step_size=0.25),
        )  # fmt: skip
        out.sum().backward()
    for solve in ("forward", "adjoint"):
        assert steps["neuralode", solve] == steps["torchdiffeq", solve] == [0.25] * 4


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"options": {"norm": lambda y: y.abs().max()}},
        {"adjoint_options": {"norm": lambda x: max(v.abs().max() for v in x)}},
    ],
    ids=["plain", "forward norm", "adjoint norm"],
)
def test_adjoint_params_may_be_a_generator(extra) -> None:
    """torchdiffeq takes ``adjoint_params=func.parameters()`` (read once into a tuple)."""
    grads = []
    for params in ("generator", "tuple"):
        torch.manual_seed(0)
        field = Field()
        chosen = field.parameters() if params == "generator" else tuple(field.parameters())
        out = no.odeint_adjoint(field, Y0, T, adjoint_params=chosen, **extra)
        out.sum().backward()
        grads.append([p.grad.clone() for p in field.parameters()])
    for generated, listed in zip(*grads):
        torch.testing.assert_close(generated, listed, rtol=0, atol=0)


@pytest.mark.parametrize(
    "rtol",
    [np.float32(1e-7), np.array(1e-7), np.array([1e-7, 1e-8]), np.int64(0)],
    ids=["float32", "0-d array", "per element", "int64"],
)
@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_numpy_tolerances_are_taken_as_torchdiffeq_takes_them(rtol, interface: str) -> None:
    y0 = Y0.clone().requires_grad_(True)
    ours = getattr(no, interface)(Field(), y0, T, rtol=rtol, atol=np.float32(1e-9))
    theirs = torchdiffeq.odeint(Field(), Y0, T, rtol=rtol, atol=np.float32(1e-9))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    assert y0.grad is not None


def test_odeint_adjoint_takes_one_tolerance_per_tensor_of_a_tuple_state_as_odeint() -> None:
    """Its backward solve lays them out over the flat state, as the forward solve does."""
    grads = []
    for interface in (no.odeint, no.odeint_adjoint):
        y0 = (Y0.clone().requires_grad_(True), torch.ones(3, dtype=F64, requires_grad=True))
        out = interface(_PairField(), y0, T, rtol=(1e-9, 1e-10), atol=[1e-10, 1e-11])
        sum(o[-1].sum() for o in out).backward()
        grads.append([y.grad for y in y0])
    for adjoint, direct in zip(grads[1], grads[0]):
        torch.testing.assert_close(adjoint, direct, rtol=1e-6, atol=1e-8)


def test_options_inherited_by_another_adjoint_method_are_named_with_the_fix() -> None:
    with pytest.raises(ValueError, match="adjoint_options was not given.*pass adjoint_options"):
        no.odeint_adjoint(
            Field(), Y0.clone().requires_grad_(True), T, method="rk4",
            options=dict(step_size=0.1), adjoint_method="dopri5",
        )  # fmt: skip


def test_implicit_adams_takes_torchdiffeqs_max_order_12() -> None:
    """torchdiffeq's default max_order 12 is accepted, and on a pendulum at step 0.1 our
    order-12 corrector is at least as accurate as torchdiffeq's default."""

    def pendulum(t, y):
        return torch.stack([y[1], -torch.sin(y[0])])

    y0, t = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 2.0, 4.0], dtype=F64)
    exact = torchdiffeq.odeint(pendulum, y0, t, method="dopri8", rtol=1e-13, atol=1e-13)
    errors = [
        float((lib.odeint(pendulum, y0, t, method="implicit_adams", options=options) - exact)
              .abs().max())
        for lib, options in ((no, dict(step_size=0.1, max_order=12)),
                             (torchdiffeq, dict(step_size=0.1)))
    ]  # fmt: skip
    assert errors[0] <= errors[1], errors


def test_odeint_dense_matches_torchdiffeqs() -> None:
    """The same call; at tight tolerances both are within the tolerance of the exact
    solution, so they agree; ours takes many times per call and is differentiable."""

    def linear(t, y):
        return A @ y

    times = torch.tensor([0.3, 1.7, 2.9], dtype=F64)
    exact = torch.stack([torch.linalg.matrix_exp(A * t) @ Y0 for t in times])
    y0 = Y0.clone().requires_grad_(True)
    ours = no.odeint_dense(linear, y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64),
                           rtol=1e-10, atol=1e-12)(times)  # fmt: skip
    dense = torchdiffeq.odeint_dense(
        linear, Y0, torch.tensor(0.0, dtype=F64), torch.tensor(3.0, dtype=F64),
        rtol=1e-10, atol=1e-12,
    )  # fmt: skip
    theirs = torch.stack([dense(t) for t in times])  # (it takes one time per call)
    torch.testing.assert_close(ours, exact, rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-9)
    ours[-1].sum().backward()  # differentiable, like torchdiffeq's
    expected = (torch.linalg.matrix_exp(A * 2.9)).sum(0)
    torch.testing.assert_close(y0.grad, expected, rtol=1e-7, atol=1e-8)


def test_odeint_dense_takes_tuple_states_and_other_methods() -> None:
    dense = no.odeint_dense(_PairField(), (Y0, torch.ones(3, dtype=F64)), 0.0, 2.0,
                            method="tsit5", rtol=1e-9, atol=1e-11)  # fmt: skip
    y, s = dense(torch.tensor([[0.5, 1.0]], dtype=F64))
    assert y.shape == (1, 2, 2) and s.shape == (1, 2, 3)
    torch.testing.assert_close(s[0, :, 0], torch.exp(-torch.tensor([0.5, 1.0], dtype=F64)))
    with pytest.raises(ValueError, match="scipy_solver keeps no steps"):
        no.odeint_dense(Field(), Y0, 0.0, 1.0, method="scipy_solver")


class _PairField(Field):
    """A tuple state: ``(y, s)`` with ``s' = -s``."""

    def forward(self, t, y):
        return self.net(y[0]), -y[1]


@pytest.mark.parametrize("tuple_state", [False, True])
def test_adjoint_callbacks_get_torchdiffeqs_augmented_state(tuple_state: bool) -> None:
    """``callback_step_adjoint`` is given ``(t, y, adj_y, *adj_params)`` as torchdiffeq gives
    it: y in y0's shape for a tensor y0, the flat concatenation for a tuple y0."""
    first = {}
    for lib in (no, torchdiffeq):

        class Recorded(_PairField if tuple_state else Field):
            def callback_step_adjoint(self, t0, y0, dt, lib=lib):
                first.setdefault(lib.__name__, (t0.detach(), [v.detach() for v in y0]))

        y0 = Y0.clone().requires_grad_(True)
        if tuple_state:
            y0 = (y0, torch.ones(3, dtype=F64, requires_grad=True))
        out = lib.odeint_adjoint(Recorded(), y0, T, rtol=1e-9, atol=1e-10)
        loss = sum(o[-1].sum() for o in out) if tuple_state else out[-1].sum()
        loss.backward()
    (t_ours, ours), (t_theirs, theirs) = first["neuralode"], first["torchdiffeq"]
    assert float(t_ours) == pytest.approx(float(t_theirs))
    assert [v.shape for v in ours] == [v.shape for v in theirs]
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(mine, reference, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("interface", ["odeint", "odeint_adjoint"])
def test_odeint_event_matches_torchdiffeq(interface: str) -> None:
    field = Field()
    y0 = torch.tensor([1.0, 0.3], dtype=F64, requires_grad=True)

    def event_fn(t, y):
        return y[0] - 0.9 + 0.01 * t

    results = []
    for lib in (no, torchdiffeq):
        event_t, solution = lib.odeint_event(
            field,
            y0,
            torch.tensor(0.0, dtype=F64),
            event_fn=event_fn,
            odeint_interface=getattr(lib, interface),
            rtol=1e-10,
            atol=1e-12,
        )
        loss = event_t + solution[-1].sum()
        results.append((event_t, solution, torch.autograd.grad(loss, (y0, *field.parameters()))))
    (t_ours, s_ours, g_ours), (t_theirs, s_theirs, g_theirs) = results
    assert float(t_ours.detach()) == pytest.approx(float(t_theirs.detach()), abs=1e-8)
    torch.testing.assert_close(s_ours, s_theirs, rtol=1e-7, atol=1e-8)
    for ours, theirs in zip(g_ours, g_theirs):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "method, options, kwargs",
    [
        ("rk4", {"step_size": 0.01, "interp": "linear"}, {}),
        ("euler", {"step_size": 0.01, "interp": "cubic"}, {}),
        ("dopri5", None, {"rtol": 1e-3, "atol": 1e-4}),
    ],
)
def test_odeint_adjoint_event_state_is_odeints(method: str, options, kwargs) -> None:
    """The event state of odeint_adjoint (and of Checkpointed()) is the dense output of the
    step that holds the located event, as odeint's and torchdiffeq's: event_fn is zero there,
    not off by the error of a step shortened to end at the event."""

    def fall(t, y):
        return torch.stack([y[1], -9.81 * torch.sin(y[0] + 1.0)])

    def results(lib, interface):
        y0 = torch.tensor([1.0, 0.0], dtype=F64)
        extra = {"adjoint_params": ()} if interface == "odeint_adjoint" else {}
        return lib.odeint_event(
            fall, y0, torch.tensor(0.0, dtype=F64), event_fn=lambda t, y: y[0],
            odeint_interface=getattr(lib, interface), method=method, options=options,
            **kwargs, **extra,
        )  # fmt: skip

    t_direct, s_direct = results(no, "odeint")
    t_adjoint, s_adjoint = results(no, "odeint_adjoint")
    assert float(t_adjoint) == float(t_direct)
    torch.testing.assert_close(s_adjoint, s_direct, rtol=0, atol=1e-12)
    assert abs(float(s_adjoint[-1, 0])) < 1e-12
    _, s_theirs = results(torchdiffeq, "odeint_adjoint")
    if method != "dopri5":  # the same fixed steps and interpolation as torchdiffeq's
        torch.testing.assert_close(s_adjoint, s_theirs, rtol=0, atol=1e-8)
    sols = [
        no.solve(fall, torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 5.0], dtype=F64),
                 solver="dopri5", controller=no.PIController(1e-3, 1e-4), gradient=gradient,
                 event=no.Event(lambda t, y: y[0]))
        for gradient in (no.Direct(), no.Checkpointed(params=()))
    ]  # fmt: skip
    torch.testing.assert_close(sols[1].event_y, sols[0].event_y, rtol=0, atol=1e-12)


def test_none_options_take_their_defaults_and_t0_may_require_grad() -> None:
    """An option set to None is its default (as torchdiffeq; ``max_num_steps=None`` stays
    "no limit"), and a t0 that requires grad (for d event_t / d t0) raises no warning."""
    default = no.odeint(linear, Y0, T)
    given = no.odeint(linear, Y0, T, options={"first_step": None, "max_num_steps": None})
    torch.testing.assert_close(given, default, rtol=0, atol=0)
    fixed = no.odeint(linear, Y0, T, method="implicit_adams",
                      options={"step_size": 0.1, "max_iters": None})  # fmt: skip
    torch.testing.assert_close(fixed, EXACT, rtol=0, atol=1e-5)
    t0 = torch.tensor(0.0, dtype=F64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        event_t, _ = no.odeint_event(linear, Y0, t0, event_fn=lambda t, y: y[0] - 0.5)
    (grad,) = torch.autograd.grad(event_t, t0)
    assert float(grad) == pytest.approx(1.0, abs=1e-6)  # autonomous: the event moves with t0


def test_odeint_with_event_fn_returns_time_and_solution() -> None:
    event_t, solution = no.odeint(
        lambda t, y: -y, Y0, T, event_fn=lambda t, y: y[0] - math.exp(-1.0)
    )
    assert float(event_t) == pytest.approx(1.0, abs=1e-6)
    assert solution.shape == (2, 2)


def test_scipy_solver_matches_exact_solution_and_refuses_gradients() -> None:
    pytest.importorskip("scipy")
    out = no.odeint(
        linear, Y0, T, method="scipy_solver", options={"solver": "DOP853"}, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(out, EXACT, rtol=1e-8, atol=1e-9)
    back = no.odeint(linear, EXACT[-1], T.flip(0), method="scipy_solver", rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(back, EXACT.flip(0), rtol=1e-7, atol=1e-8)
    x, v = no.odeint(
        lambda t, s: (s[1], -s[0]),
        (torch.ones(1, dtype=torch.float32), torch.zeros(1, dtype=torch.float32)),
        T.float(),
        method="scipy_solver",
    )
    assert x.dtype == torch.float32 and x.shape == (7, 1)
    y0 = Y0.clone().requires_grad_(True)
    out = no.odeint(linear, y0, T, method="scipy_solver")
    with pytest.raises(RuntimeError, match="scipy_solver is not differentiable"):
        out.sum().backward()
    with pytest.raises(ValueError, match="unknown SciPy method"):
        no.odeint(linear, Y0, T, method="scipy_solver", options={"solver": "Euler"})
