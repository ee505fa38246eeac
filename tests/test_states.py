"""States of every shape the solver accepts: nested structures, dtypes, complex, batches."""

from __future__ import annotations

import collections

import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    accuracy_factor,
    adaptive_tolerances,
    make_solver,
)
from problems import LINEAR, LINEAR_MATRIX

import neuralode as no
from neuralode.solvers import ImplicitRK

Y0 = LINEAR.y0_tensor()
TS = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)


def flat_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return LINEAR_MATRIX.to(y.dtype) @ y * (1 + 0.2 * torch.sin(t))


# Each structure: how to build it from the flat state, and how to read a flat tensor back.
STRUCTURES = {
    "tuple": (lambda y: (y[:1], y[1:]), lambda s: torch.cat([s[0], s[1]], -1)),
    "list": (lambda y: [y[:2], y[2:]], lambda s: torch.cat([s[0], s[1]], -1)),
    "dict": (lambda y: {"a": y[:1], "b": y[1:]}, lambda s: torch.cat([s["a"], s["b"]], -1)),
    # keys out of alphabetical order: leaves flatten in the state's own key order
    "dict-reordered": (
        lambda y: {"b": y[1:], "a": y[:1]},
        lambda s: torch.cat([s["a"], s["b"]], -1),
    ),
    "nested": (
        lambda y: {"pos": (y[:1], [y[1:2]]), "vel": y[2:].reshape(1, 1)},
        lambda s: torch.cat([s["pos"][0], s["pos"][1][0], s["vel"].flatten(-2)], -1),
    ),
}


def tree_field(structure: str):
    build, read = STRUCTURES[structure]

    def f(t: torch.Tensor, state):
        return build(flat_field(t, read(state)))

    return f


def _setups(name: str):
    """Fixed steps for every method; adaptive ones also with their controller."""
    yield no.FixedGrid(step_size=0.1)
    if make_solver(name).adaptive:
        rtol, atol = adaptive_tolerances(make_solver(name))
        yield no.PIController(rtol=rtol, atol=atol)


def _tree_cases() -> list:
    """Every method with every structure. A solver sees the flat state whatever its structure,
    and "nested" holds a dict, a tuple and a list: implicit methods (several times an explicit
    solve's cost) take "tuple", "list" and "dict" with -m slow."""
    cases = []
    for name in ALL_METHODS:
        implicit = isinstance(make_solver(name), ImplicitRK)
        for structure in STRUCTURES:
            slow = implicit and structure in ("tuple", "list", "dict")
            marks = [pytest.mark.slow] if slow else []
            cases.append(pytest.param(name, structure, id=f"{name}-{structure}", marks=marks))
    return cases


@pytest.mark.parametrize(("name", "structure"), _tree_cases())
def test_tree_state_matches_flat_tensor(name: str, structure: str) -> None:
    """With the same norm (hence the same steps) a nested state gives the flat tensor's
    answer to rounding, and ``ys`` has y0's structure with a leading time dimension. (With
    leaves in another order than the flat tensor, the norm sums in another order and an
    adaptive solve may take other steps: the answer then agrees to tolerance.)"""
    build, read = STRUCTURES[structure]
    for controller in _setups(name):
        same_steps = structure != "dict-reordered" or isinstance(controller, no.FixedGrid)
        flat = no.solve(flat_field, Y0, TS, solver=make_solver(name), controller=controller)
        tree = no.solve(
            tree_field(structure),
            build(Y0),
            TS,
            solver=make_solver(name),
            controller=controller,
            norm=no.rms_norm,
        )
        assert type(tree.ys) is type(build(Y0))
        if isinstance(tree.ys, dict):
            assert list(tree.ys) == list(build(Y0))
        torch.testing.assert_close(
            read(tree.ys), flat.ys, rtol=0, atol=1e-14 if same_steps else 1e-6
        )
        assert tree.stats.n_steps == flat.stats.n_steps or not same_steps


@pytest.mark.parametrize("structure", STRUCTURES)
def test_tree_state_default_norm_within_tolerance(structure: str) -> None:
    """The default norm of a nested state is the max of per-tensor RMS norms: other steps,
    the same solution to tolerance."""
    build, read = STRUCTURES[structure]
    controller = no.PIController(rtol=1e-8, atol=1e-10)
    flat = no.solve(flat_field, Y0, TS, controller=controller)
    tree = no.solve(tree_field(structure), build(Y0), TS, controller=controller)
    torch.testing.assert_close(read(tree.ys), flat.ys, rtol=1e-6, atol=1e-8)


def test_nested_output_shapes() -> None:
    state = {
        "pos": (torch.zeros(2, 3, dtype=torch.float64),),
        "vel": [torch.ones(4, dtype=torch.float64)],
    }

    def f(t, s):
        return {"pos": (s["pos"][0] + 1,), "vel": [-s["vel"][0]]}

    sol = no.solve(f, state, TS)
    assert sol.ys["pos"][0].shape == (4, 2, 3)
    assert sol.ys["vel"][0].shape == (4, 4)
    assert isinstance(sol.ys["pos"], tuple) and isinstance(sol.ys["vel"], list)
    expected = torch.exp(TS) - 1
    torch.testing.assert_close(sol.ys["pos"][0], expected[:, None, None].expand(4, 2, 3))


@pytest.mark.parametrize("name", ALL_METHODS)
def test_float32_close_to_float64(name: str) -> None:
    """The same fixed steps in float32 and float64 differ by float32 rounding only."""
    controller = no.FixedGrid(step_size=0.05)
    single = no.solve(
        flat_field, Y0.float(), TS.float(), solver=make_solver(name), controller=controller
    )
    double = no.solve(flat_field, Y0, TS, solver=make_solver(name), controller=controller)
    assert single.ys.dtype == torch.float32
    torch.testing.assert_close(single.ys.double(), double.ys, rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_float32_adaptive_against_exact(name: str) -> None:
    rtol, atol = max(adaptive_tolerances(make_solver(name))[0], 1e-5), 1e-7
    controller = no.PIController(rtol=rtol, atol=atol)
    sol = no.solve(
        LINEAR.f, Y0.float(), TS.float(), solver=make_solver(name), controller=controller
    )
    exact = LINEAR.solution(TS.numpy())
    assert sol.ys.dtype == torch.float32
    allowed = 1000 * rtol * accuracy_factor(name)
    torch.testing.assert_close(sol.ys.double(), exact, rtol=0, atol=allowed)


OMEGA = 3.0


def rotation(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 1j * OMEGA * y


def rotation_real(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The same equation on (re, im) pairs in the last dimension."""
    return OMEGA * torch.stack([-y[..., 1], y[..., 0]], -1)


@pytest.mark.parametrize("name", ALL_METHODS)
def test_complex_matches_real_pairs(name: str) -> None:
    """A complex state on fixed steps is the real system on (re, im) pairs, to rounding."""
    y0 = torch.tensor([1.0 + 0.5j, -0.2 + 1.0j], dtype=torch.complex128)
    controller = no.FixedGrid(step_size=0.1)
    complex_sol = no.solve(rotation, y0, TS, solver=make_solver(name), controller=controller)
    real_sol = no.solve(
        rotation_real,
        torch.view_as_real(y0).clone(),
        TS,
        solver=make_solver(name),
        controller=controller,
    )
    assert complex_sol.ys.dtype == torch.complex128
    torch.testing.assert_close(torch.view_as_real(complex_sol.ys), real_sol.ys, rtol=0, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("name", ADAPTIVE_METHODS)
def test_complex_adaptive_against_exact(name: str, dtype: torch.dtype) -> None:
    """y' = i omega y is solved by y0 exp(i omega t)."""
    rtol = adaptive_tolerances(make_solver(name))[0]
    if dtype == torch.complex64:
        rtol = max(rtol, 1e-5)
    controller = no.PIController(rtol=rtol, atol=rtol / 100)
    y0 = torch.tensor([1.0 + 0.5j, -0.2 + 1.0j], dtype=dtype)
    real_dtype = torch.float32 if dtype == torch.complex64 else torch.float64
    seen_times = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen_times.append(t)
        return rotation(t, y)

    ts = TS.to(real_dtype)
    sol = no.solve(f, y0, ts, solver=make_solver(name), controller=controller)
    exact = y0.to(torch.complex128) * torch.exp(1j * OMEGA * TS.to(torch.complex128))[:, None]
    assert sol.ys.dtype == dtype
    assert all(t.dtype == real_dtype and t.ndim == 0 for t in seen_times)
    error = float((sol.ys.to(torch.complex128) - exact).abs().max())
    assert error <= 1000 * rtol * accuracy_factor(name)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 4)], ids=["B,D", "B,C,H,W"])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_batch_shapes_are_kept(name: str, shape: tuple[int, ...]) -> None:
    """f sees the state's own shape; ``ys`` is (len(ts), *shape); samples are independent:
    each matches its own solve on fixed steps."""
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    rates = torch.linspace(-1.0, 0.5, shape[0], dtype=torch.float64).reshape(
        -1, *[1] * (len(shape) - 1)
    )
    shapes_seen = set()

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shapes_seen.add(tuple(y.shape))
        return rates[: y.shape[0]] * y + torch.cos(t) * torch.tanh(y)

    controller = no.FixedGrid(step_size=0.1)
    sol = no.solve(f, y0, TS, solver=make_solver(name), controller=controller)
    assert sol.ys.shape == (len(TS), *shape)
    assert shapes_seen == {shape}
    one = no.solve(f, y0[:1], TS, solver=make_solver(name), controller=controller)
    torch.testing.assert_close(sol.ys[:, :1], one.ys, rtol=0, atol=1e-14)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL_METHODS)
def test_time_is_a_scalar_tensor_of_the_state_dtype(name: str, dtype: torch.dtype) -> None:
    seen = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return -y

    y0 = torch.ones(3, dtype=dtype)
    solver = make_solver(name)
    if solver.adaptive:
        controller = no.PIController(*adaptive_tolerances(solver))
    else:
        controller = no.FixedGrid(step_size=0.25)
    # t given in float64 while the state is float32: f still gets the state's dtype
    no.solve(
        f, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), solver=solver, controller=controller
    )
    assert seen and all(isinstance(t, torch.Tensor) for t in seen)
    assert {(t.dtype, t.ndim) for t in seen} == {(dtype, 0)}
    # (kvaerno4 and kvaerno5 evaluate f past a step's end, here at most a step of 1 past)
    reach = solver.stage_reach
    assert min(float(t) for t in seen) == 0.0 and max(float(t) for t in seen) <= reach


def test_solution_starts_at_y0_and_keeps_the_users_times() -> None:
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    sol = no.solve(flat_field, Y0, ts)
    assert sol.ts is ts
    assert sol.ys.shape == (3, 3)
    assert torch.equal(sol.ys[0], Y0)


def test_single_output_time_returns_y0_without_evaluating_f() -> None:
    calls = []

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls.append(t)
        return -y

    sol = no.solve(f, (Y0, Y0[:1]), torch.tensor([2.0], dtype=torch.float64))
    assert sol.ys[0].shape == (1, 3) and sol.ys[1].shape == (1, 1)
    assert torch.equal(sol.ys[0][0], Y0)
    assert sol.stats.nfe == 0 and not calls


@pytest.mark.parametrize("name", ALL_METHODS)
def test_zero_dimensional_state(name: str) -> None:
    """A scalar (0-dim) state, alone or as a leaf, keeps its shape: ys is (len(ts),)."""
    y0 = torch.tensor(1.0, dtype=torch.float64)
    solver = make_solver(name)
    controller = no.FixedGrid(step_size=0.025)
    sol = no.solve(lambda t, y: -y, y0, TS, solver=solver, controller=controller)
    assert sol.ys.shape == (len(TS),)
    torch.testing.assert_close(sol.ys, torch.exp(-TS), rtol=0, atol=0.01)
    tree = no.solve(
        lambda t, y: (-y[0], -y[1]), (y0, Y0), TS, solver=make_solver(name), controller=controller
    )
    assert tree.ys[0].shape == (len(TS),) and tree.ys[1].shape == (len(TS), 3)
    torch.testing.assert_close(tree.ys[0], sol.ys, rtol=0, atol=1e-15)


def test_empty_batch_state() -> None:
    """A batch of zero samples is a degenerate but valid problem: nothing to integrate."""
    y0 = torch.zeros(0, 3, dtype=torch.float64)
    sol = no.solve(lambda t, y: -y, y0, TS)
    assert sol.ys.shape == (len(TS), 0, 3)


@pytest.mark.parametrize("mode", ["host", "per_sample"])  # (compile: the host's norm, per step)
def test_a_nested_state_with_an_empty_tensor_solves_the_others(mode: str) -> None:
    """An empty tensor in a nested state has no error to measure (its RMS was 0 / 0 = NaN,
    read as f being non-finite); the other tensors are solved as alone, as torchdiffeq."""
    f64 = torch.float64
    y0 = (torch.ones(3, 2, dtype=f64), torch.zeros(3, 0, dtype=f64))
    ts = torch.tensor([0.0, 1.0], dtype=f64)
    kw = {"host": {}, "per_sample": dict(per_sample=True)}[mode]
    solution = no.solve(lambda t, s: (-s[0], -s[1]), y0, ts, **kw)
    alone = no.solve(lambda t, y: -y, y0[0], ts, **kw)
    assert solution.ys[1].shape == (2, 3, 0)
    torch.testing.assert_close(solution.ys[0], alone.ys, rtol=0, atol=1e-15)


State = collections.namedtuple("State", "q p")


@pytest.mark.parametrize("mode", ["host", "per_sample", "backsolve", "leapfrog", "odeint"])
def test_a_namedtuple_state_reaches_f_and_the_outputs_as_itself(mode: str) -> None:
    """f receives the user's namedtuple (it read ``s.q``, and got a plain tuple), the
    outputs come back as one, and the values are the plain tuple's."""
    f64 = torch.float64
    y0 = State(torch.ones(3, 2, dtype=f64), torch.zeros(3, 2, dtype=f64))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=f64)
    seen = set()

    def f(t, s):
        seen.add(type(s))
        return State(s.p, -s.q)

    kw = {
        "host": {},
        "per_sample": dict(per_sample=True),
        "backsolve": dict(gradient=no.Backsolve(params=())),
        "leapfrog": dict(solver="leapfrog", controller=no.FixedGrid(step_size=0.01)),
    }.get(mode)
    if kw is None:
        ys = no.odeint(f, y0, ts)
    else:
        ys = no.solve(f, y0, ts, **kw).ys
    plain = no.solve(lambda t, s: (s[1], -s[0]), tuple(y0), ts, **(kw or {})).ys
    assert seen == {State} and type(ys) is State
    torch.testing.assert_close(tuple(ys), tuple(plain), rtol=1e-6 if kw is None else 0, atol=0)
    assert isinstance(ys.q, torch.Tensor) and ys.q.shape == (3, 3, 2)


def test_an_empty_per_sample_batch_or_a_meta_state_is_refused_by_name() -> None:
    """per_sample=True with no samples names the empty batch (the batch dimension is there);
    a y0 on the meta device (no values) is named rather than failing inside the solve."""
    with pytest.raises(ValueError, match="needs at least one sample, got an empty batch"):
        no.solve(lambda t, y: -y, torch.zeros(0, 3, dtype=torch.float64), TS, per_sample=True)
    with pytest.raises(ValueError, match="per_sample=True needs y0 with a batch dimension"):
        no.solve(lambda t, y: -y, torch.tensor(1.0, dtype=torch.float64), TS, per_sample=True)
    meta = torch.ones(3, device="meta")
    for y0 in (meta, (meta, meta)):
        with pytest.raises(ValueError, match="y0 is on the meta device"):
            no.solve(lambda t, y: y, y0, torch.tensor([0.0, 1.0], device="meta"))
    for solver in (no.solve, no.odeint):  # (the facade moved t to y0's device: a raw error)
        with pytest.raises(ValueError, match="t is on meta but y0 is on cpu; put both on one"):
            solver(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0], device="meta"))


@pytest.mark.parametrize("dtype", [torch.complex32, torch.float8_e4m3fn, torch.float8_e5m2])
def test_floating_dtypes_without_the_solvers_operations_are_refused_by_name(dtype) -> None:
    """complex32 and float8 pass as floating point or complex but fail deep in the stage
    sums (addmv for ComplexHalf): refused at the call, naming the dtypes a state takes."""
    with pytest.raises(TypeError, match=f"y0 has dtype {dtype}.*float16, bfloat16, float32"):
        no.odeint(lambda t, y: -y, torch.ones(2).to(dtype), TS, rtol=1e-1, atol=1e-1)


def test_f_returning_integers_is_not_advised_an_integer_y0() -> None:
    with pytest.raises(TypeError, match=r"returned dtype torch.int64.*\(e.g. .to\(y.dtype\)\)$"):
        no.solve(lambda t, y: torch.ones(2, dtype=torch.int64), torch.ones(2), TS.float())
