"""The partitioned (symplectic) methods of ``PARTITIONED_METHODS`` against mathematics: their
orders on the harmonic oscillator and the pendulum, the symplecticity of one step's map, the
bounded energy error over long times, their gradients, evaluation counts and refusals."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode import odeint
from neuralode.solvers import PARTITIONED_METHODS, Splitting

METHODS = sorted(PARTITIONED_METHODS)
F64 = torch.float64


def oscillator(t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """q' = p, p' = -q: H = (p^2 + q^2) / 2."""
    q, p = y
    return p, -q


def pendulum(t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """q' = p, p' = -sin q: H = p^2 / 2 - cos q."""
    q, p = y
    return p, -torch.sin(q)


def coupled(t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
    """Two pendulums joined by a spring: V = sum(1 - cos q) + (q0 - q1)^2 / 2, T = |p|^2 / 2."""
    q, p = y
    spring = q[0] - q[1]
    return p, -torch.sin(q) - torch.stack([spring, -spring])


def pair(*values: float) -> tuple[torch.Tensor, torch.Tensor]:
    half = len(values) // 2
    return torch.tensor(values[:half], dtype=F64), torch.tensor(values[half:], dtype=F64)


def solve_fixed(method: str, func, y0, ts: torch.Tensor, h: float | None = None, **kwargs):
    controller = no.FixedGrid() if h is None else no.FixedGrid(step_size=h)
    return no.solve(func, y0, ts, solver=method, controller=controller, **kwargs)


def energy(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p.pow(2).sum(-1) / 2 - torch.cos(q).sum(-1)


# ------------------------------------------------------------------------------------------
# orders


def observed_order(errors: list[float], ratio: float = 2.0) -> float:
    return math.log(errors[0] / errors[1]) / math.log(ratio)


@pytest.mark.parametrize("method", METHODS)
def test_order_on_the_harmonic_oscillator(method):
    order = PARTITIONED_METHODS[method]().order
    ts = torch.tensor([0.0, 2.0], dtype=F64)
    exact = torch.tensor([math.cos(2.0), -math.sin(2.0)], dtype=F64)
    errors = []
    for h in (0.05, 0.025):
        q, p = solve_fixed(method, oscillator, pair(1.0, 0.0), ts, h).ys
        errors.append(float((torch.cat([q[-1], p[-1]]) - exact).abs().max()))
    assert observed_order(errors) == pytest.approx(order, abs=0.15)


@pytest.mark.parametrize("method", METHODS)
def test_order_on_the_pendulum(method):
    order = PARTITIONED_METHODS[method]().order
    ts = torch.tensor([0.0, 3.0], dtype=F64)
    y0 = pair(1.2, 0.3)
    ref = no.solve(pendulum, y0, ts, solver="dopri8", controller=no.PIController(1e-12, 1e-14))
    exact = torch.cat([ref.ys[0][-1], ref.ys[1][-1]])
    errors = []
    for h in (0.06, 0.03):
        q, p = solve_fixed(method, pendulum, y0, ts, h).ys
        errors.append(float((torch.cat([q[-1], p[-1]]) - exact).abs().max()))
    assert observed_order(errors) == pytest.approx(order, abs=0.2)


@pytest.mark.parametrize("method", METHODS)
def test_dense_output_off_the_grid(method):
    """Outputs between steps come from cubic Hermite through the steps' ends (order 3 in the
    step: at h = 0.01 about h^4 max|y^(4)| / 384 = 3e-11), within h^order of the solution."""
    ts = torch.tensor([0.0, 0.123, 0.5, 0.777], dtype=F64)
    q, p = solve_fixed(method, oscillator, pair(1.0, 0.0), ts, 0.01).ys
    expected = torch.cos(ts)
    tolerance = 0.01 ** PARTITIONED_METHODS[method]().order
    assert torch.allclose(q[:, 0], expected, atol=tolerance, rtol=0)
    assert torch.allclose(p[:, 0], -torch.sin(ts), atol=tolerance, rtol=0)


# ------------------------------------------------------------------------------------------
# symplecticity and energy


def step_jacobian(method: str, x: torch.Tensor, h: float) -> torch.Tensor:
    """The Jacobian of one step's map (q, p) -> (q1, p1) of the coupled pendulums."""
    ts = torch.tensor([0.0, h], dtype=F64)

    def one_step(x: torch.Tensor) -> torch.Tensor:
        q, p = no.solve(coupled, (x[:2], x[2:]), ts, solver=method).ys
        return torch.cat([q[-1], p[-1]])

    return torch.autograd.functional.jacobian(one_step, x)


J = torch.tensor(
    [[0, 0, 1, 0], [0, 0, 0, 1], [-1, 0, 0, 0], [0, -1, 0, 0]], dtype=F64
)  # fmt: skip
X0 = torch.tensor([1.0, -0.4, 0.3, 0.8], dtype=F64)


@pytest.mark.parametrize("method", METHODS)
def test_one_step_is_symplectic(method):
    M = step_jacobian(method, X0, 0.3)
    assert torch.allclose(M.T @ J @ M, J, atol=1e-12, rtol=0)


def test_rk4_step_is_not_symplectic():
    """The same check fails for rk4: it measures symplecticity."""
    M = step_jacobian("rk4", X0, 0.3)
    assert (M.T @ J @ M - J).abs().max() > 1e-5


def energy_errors(method: str, h: float, steps: int) -> torch.Tensor:
    ts = torch.arange(steps + 1, dtype=F64) * h
    q, p = no.solve(pendulum, pair(1.5, 0.0), ts, solver=method, max_steps=None).ys
    e = energy(q, p)
    return (e - e[0]).abs()


def test_leapfrog_energy_error_stays_bounded_where_rk4_drifts():
    """Over 10^3 steps (about 27 periods) the leapfrog energy error oscillates (its largest
    value in the second half is no larger than in the first) while rk4's grows with time
    (twice as large in the second half)."""
    steps, h = 1_000, 0.2
    half = steps // 2
    leap = energy_errors("leapfrog", h, steps)
    assert float(leap[half:].max()) <= 1.05 * float(leap[:half].max())
    assert float(leap.max()) < 0.05  # O(h^2), bounded
    rk4 = energy_errors("rk4", h, steps)
    assert float(rk4[half:].max()) > 1.5 * float(rk4[:half].max())


# ------------------------------------------------------------------------------------------
# evaluations


@pytest.mark.parametrize(
    "method, first, per_step",
    [("semi_implicit_euler", 2, 2), ("leapfrog", 3, 2), ("yoshida4", 7, 6)],
)
def test_evaluations_per_step(method, first, per_step):
    """Each kick and drift evaluates f once; a splitting that starts and ends with a kick
    (leapfrog, yoshida4) reuses the last kick's dp/dt at the next step's start."""
    splitting = PARTITIONED_METHODS[method].splitting
    assert splitting.evaluations(carried=False) == first
    assert splitting.evaluations(carried=True) == per_step
    steps = 10
    sol = solve_fixed(method, oscillator, pair(1.0, 0.0), torch.tensor([0.0, 1.0]), 0.1)
    assert sol.stats.n_steps == steps
    assert sol.stats.nfe == first + per_step * (steps - 1)


def test_splitting_is_validated():
    with pytest.raises(ValueError, match="drift fractions sum to 0.5"):
        Splitting("bad", (("kick", 1.0), ("drift", 0.5)), 1)
    with pytest.raises(ValueError, match="in a row"):
        Splitting("bad", (("kick", 0.5), ("kick", 0.5), ("drift", 1.0)), 1)
    with pytest.raises(ValueError, match="one of"):
        Splitting("bad", (("push", 1.0), ("drift", 1.0), ("kick", 1.0)), 1)


# ------------------------------------------------------------------------------------------
# the façade and names


@pytest.mark.parametrize("method", METHODS)
def test_odeint_facade(method):
    t = torch.linspace(0, 1, 5, dtype=F64)
    qs, ps = odeint(oscillator, pair(1.0, 0.0), t, method=method, options=dict(step_size=0.01))
    assert qs.shape == ps.shape == (5, 1)
    order = PARTITIONED_METHODS[method]().order
    assert torch.allclose(qs[:, 0], torch.cos(t), atol=10 * 0.01**order, rtol=0)
    # the output times as the grid (torchdiffeq's fixed methods without step_size)
    qs, ps = odeint(oscillator, pair(1.0, 0.0), torch.linspace(0, 1, 201, dtype=F64), method=method)
    assert float((qs[-1, 0] - math.cos(1)).abs()) < 10 * 0.005**order


def test_names_resolve():
    assert isinstance(no.solve(oscillator, pair(1.0, 0.0), torch.tensor([0.0, 0.1]),
                               solver="leapfrog").ys, tuple)  # fmt: skip
    assert no.PARTITIONED_METHODS["leapfrog"] is no.Leapfrog
    with pytest.raises(ValueError, match="yoshida4"):  # the list of names includes them
        odeint(oscillator, pair(1.0, 0.0), torch.tensor([0.0, 0.1]), method="leapfrogg")


# ------------------------------------------------------------------------------------------
# refusals


@pytest.mark.parametrize("method", METHODS)
def test_state_that_is_not_a_pair_is_refused(method):
    ts = torch.tensor([0.0, 0.1])
    with pytest.raises(ValueError, match=r"pair \(q, p\) of two tensors, got one tensor.*tuple"):
        no.solve(lambda t, y: -y, torch.ones(2), ts, solver=method)
    three = (torch.ones(1), torch.ones(1), torch.ones(1))
    with pytest.raises(ValueError, match="got a tuple of 3 tensors"):
        no.solve(lambda t, y: y, three, ts, solver=method)
    with pytest.raises(ValueError, match="not both tensors"):
        no.solve(lambda t, y: y, (torch.ones(1), (torch.ones(1), torch.ones(1))), ts, solver=method)


@pytest.mark.parametrize("method", METHODS)
def test_adaptive_steps_are_refused(method):
    with pytest.raises(ValueError, match="no error estimate.*FixedGrid / options step_size"):
        no.solve(oscillator, pair(1.0, 0.0), torch.tensor([0.0, 1.0]), solver=method,
                 controller=no.PIController(1e-6, 1e-8))  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['first_step'\]"):
        odeint(oscillator, pair(1.0, 0.0), torch.tensor([0.0, 1.0]), method=method,
               options=dict(first_step=0.1))  # fmt: skip


# ------------------------------------------------------------------------------------------
# gradients


class Spring(torch.nn.Module):
    """q' = p / m, p' = -k sin q (a separable field with parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))
        self.m = torch.nn.Parameter(torch.tensor(0.8, dtype=F64))

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        q, p = y
        return p / self.m, -self.k * torch.sin(q)


TS = torch.tensor([0.0, 0.35, 0.8], dtype=F64)  # 0.35: an output between steps of 0.1


def outputs(method: str, gradient, field: Spring, q0, p0) -> torch.Tensor:
    sol = no.solve(field, (q0, p0), TS, solver=method, gradient=gradient,
                   controller=no.FixedGrid(step_size=0.1))  # fmt: skip
    q, p = sol.ys
    return torch.cat([q.flatten(), p.flatten()])


def start() -> tuple[torch.Tensor, torch.Tensor]:
    q0 = torch.tensor([0.7, -0.2], dtype=F64, requires_grad=True)
    p0 = torch.tensor([0.1, 0.4], dtype=F64, requires_grad=True)
    return q0, p0


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_direct(method):
    field = Spring()

    def run(q0, p0, k, m):
        field.k, field.m = k, m  # (plain tensors: gradcheck perturbs them)
        return outputs(method, no.Direct(), field, q0, p0)

    k = field.k.detach().clone().requires_grad_(True)
    m = field.m.detach().clone().requires_grad_(True)
    del field.k, field.m
    assert torch.autograd.gradcheck(run, (*start(), k, m))


def gradients(method: str, gradient) -> list[torch.Tensor]:
    field = Spring()
    q0, p0 = start()
    loss = outputs(method, gradient, field, q0, p0).pow(2).sum()
    return list(torch.autograd.grad(loss, [q0, p0, field.k, field.m]))


@pytest.mark.parametrize("method", METHODS)
def test_checkpointed_equals_direct(method):
    for a, b in zip(gradients(method, no.Checkpointed()), gradients(method, no.Direct())):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_backsolve_approximates_direct(method):
    """Backsolve's continuous adjoint, solved backwards on the same grid by the explicit
    Runge-Kutta method of the same order (the adjoint system's state is not a pair), agrees
    with the discrete gradient to the methods' accuracy: within 2 h^order of its size."""
    order = PARTITIONED_METHODS[method]().order
    for a, b in zip(gradients(method, no.Backsolve()), gradients(method, no.Direct())):
        assert float((a - b).abs().max()) <= 2 * 0.1**order * float(b.abs().max())


def test_odeint_adjoint_facade():
    from neuralode import odeint_adjoint

    field = Spring()
    q0, p0 = start()
    opts = dict(step_size=0.05)
    qs, ps = odeint_adjoint(field, (q0, p0), TS, method="yoshida4", options=opts)
    loss = qs.pow(2).sum() + ps.pow(2).sum()
    grads = torch.autograd.grad(loss, [q0, p0, field.k, field.m])
    reference = gradients("yoshida4", no.Direct())  # (step 0.1: within the solves' errors)
    for a, b in zip(grads, reference):
        assert torch.allclose(a, b, atol=1e-3, rtol=0)


# ------------------------------------------------------------------------------------------
# execution modes


def test_device_loop_is_refused():
    """One problem on fixed steps: the host loop (per sample: tests/test_per_sample_more.py)."""
    y0 = (torch.ones(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64))
    with pytest.raises(ValueError, match="device_loop=True does not run leapfrog.*per_sample"):
        no.solve(
            oscillator, y0, torch.tensor([0.0, 1.0], dtype=F64), solver="leapfrog",
            device_loop=True,
        )  # fmt: skip


@pytest.mark.parametrize("method", METHODS)
def test_vmap_equals_solving_each_alone(method):
    q0s = torch.tensor([[0.5], [1.0], [1.5]], dtype=F64)

    def final(q0: torch.Tensor) -> torch.Tensor:
        q, p = solve_fixed(method, pendulum, (q0, torch.zeros_like(q0)), TS, 0.1).ys
        return torch.cat([q[-1], p[-1]])

    batched = torch.func.vmap(final)(q0s)
    for row, q0 in zip(batched, q0s):
        assert torch.allclose(row, final(q0), atol=1e-14, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_non_separable_field_is_first_order(method):
    """The docstring's claim: on a non-separable f the methods stay consistent, of order 1."""

    def field(t, y):
        q, p = y
        return p + 0.5 * torch.sin(q), -q + 0.3 * p * q

    y0, ts = pair(1.0, 0.2), torch.tensor([0.0, 1.0], dtype=F64)
    ref = no.solve(field, y0, ts, solver="dopri8", controller=no.PIController(1e-12, 1e-14)).ys
    errors = []
    for h in (0.02, 0.01):
        q, p = solve_fixed(method, field, y0, ts, h).ys
        errors.append(float(torch.cat([q[-1] - ref[0][-1], p[-1] - ref[1][-1]]).abs().max()))
    assert observed_order(errors) == pytest.approx(1, abs=0.1)


def test_evaluation_times_outside_the_step_refuse_jump_t_and_perturb():
    """yoshida4's kicks evaluate f at 1.35 and -0.35 steps (its drifts' fractions w1 and
    w1 + w0), outside the step: with ``jump_t`` or ``perturb`` a step landing on a jump would
    sample f on its far side (the method drops to order 2 there), so both are refused,
    naming leapfrog; leapfrog's and semi-implicit Euler's evaluations stay in the step."""
    w1 = 1 / (2 - 2 ** (1 / 3))
    times = PARTITIONED_METHODS["yoshida4"].splitting.times
    assert max(times) == pytest.approx(w1) and min(times) == pytest.approx(1 - w1)
    assert no.Yoshida4().stage_reach == pytest.approx(w1)
    for method in ("leapfrog", "semi_implicit_euler"):
        assert PARTITIONED_METHODS[method]().stage_reach == 1.0
    ts, y0 = torch.tensor([0.0, 1.0], dtype=F64), pair(1.0, 0.0)
    for options in (dict(jump_t=[0.55]), dict(perturb=True)):
        with pytest.raises(ValueError, match="yoshida4 evaluates f outside its steps.*leapfrog"):
            solve_fixed("yoshida4", oscillator, y0, ts, 0.1, **options)
        solve_fixed("leapfrog", oscillator, y0, ts, 0.1, **options)


# ------------------------------------------------------------------------------------------
# separable fields that offer their halves: each kick evaluates dp_dt(t, q) alone, each drift
# dq_dt(t, p) alone


class SplitSpring(Spring):
    """``Spring`` (q' = p / m, p' = -k sin q) offering its halves, counting the calls of the
    whole field and of each half; the halves see the user's (unflattened) q and p."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = {"whole": 0, "dq_dt": 0, "dp_dt": 0}
        self.shapes: set[tuple[int, ...]] = set()

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        self.calls["whole"] += 1
        return super().forward(t, y)

    def dq_dt(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        self.calls["dq_dt"] += 1
        self.shapes.add(tuple(p.shape))
        return p / self.m

    def dp_dt(self, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        self.calls["dp_dt"] += 1
        self.shapes.add(tuple(q.shape))
        return -self.k * torch.sin(q)


class TimedSplit(torch.nn.Module):
    """A time-dependent separable field, q' = p (1 + t / 2), p' = -q cos(t), on states of
    shape (2, 3) given as a list [q, p], offering its halves."""

    def forward(self, t: torch.Tensor, y: list[torch.Tensor]) -> list[torch.Tensor]:
        q, p = y
        return [self.dq_dt(t, p), self.dp_dt(t, q)]

    def dq_dt(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        assert p.shape == (2, 3)
        return p * (1 + t / 2)

    def dp_dt(self, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        assert q.shape == (2, 3)
        return -q * torch.cos(t)


def whole(field: torch.nn.Module):
    """``field`` without its halves: the symplectic methods call it whole."""
    return lambda t, y: field(t, y)


@pytest.mark.parametrize("method", METHODS)
def test_halves_give_the_whole_fields_results(method):
    """The same states (at the steps and between them, t = 0.35) from the halves as from the
    whole field, to round-off, with only the halves called."""
    field = SplitSpring()
    y0 = tuple(x.detach() for x in start())
    grid = no.FixedGrid(step_size=0.1)
    halves = no.solve(field, y0, TS, solver=method, controller=grid)
    assert field.calls["whole"] == 0 and field.calls["dq_dt"] and field.calls["dp_dt"]
    assert field.shapes == {(2,)}  # the user's tensors, not the flat state
    reference = no.solve(whole(field), y0, TS, solver=method, controller=grid)
    for a, b in zip(halves.ys, reference.ys):
        assert torch.allclose(a, b, atol=1e-15, rtol=0)
    # a time-dependent field on a list of (2, 3) tensors
    timed = TimedSplit()
    y0 = [torch.linspace(-1, 1, 6, dtype=F64).view(2, 3), torch.ones(2, 3, dtype=F64)]
    ts = torch.tensor([0.0, 0.37, 1.0], dtype=F64)
    halves = no.solve(timed, y0, ts, solver=method, controller=grid)
    reference = no.solve(whole(timed), y0, ts, solver=method, controller=grid)
    assert isinstance(halves.ys, list)
    for a, b in zip(halves.ys, reference.ys):
        assert torch.allclose(a, b, atol=1e-15, rtol=0)


@pytest.mark.parametrize(
    "method, first, per_step",
    [
        ("semi_implicit_euler", (1, 1), (1, 1)),
        ("leapfrog", (1, 2), (1, 1)),
        ("yoshida4", (3, 4), (3, 3)),
    ],
)
def test_halves_are_counted_as_evaluations(method, first, per_step):
    """Each kick calls dp_dt once and each drift dq_dt once ((dq_dt, dp_dt) calls in the
    first step and in each later one: leapfrog one of each after the first step, whose
    opening kick carries no dp/dt in); ``stats.nfe`` counts each call of a half as one."""
    field, steps = SplitSpring(), 10
    y0 = tuple(x.detach() for x in start())
    sol = solve_fixed(method, field, y0, torch.tensor([0.0, 1.0], dtype=F64), 0.1)
    expected = [a + (steps - 1) * b for a, b in zip(first, per_step)]
    assert [field.calls["dq_dt"], field.calls["dp_dt"], field.calls["whole"]] == [*expected, 0]
    assert (
        sol.stats.nfe
        == sum(expected)
        == PARTITIONED_METHODS[method].splitting.evaluations(False)
        + (steps - 1) * PARTITIONED_METHODS[method].splitting.evaluations(True)
    )


def test_halves_at_the_ends_of_a_step_with_outputs():
    """A step with outputs inside needs f at both its ends: from halves, each half the step's
    kicks and drifts evaluated there is reused (leapfrog's first kick at (t0, q0), its last at
    (t1, q1)), so only dq/dt is evaluated at each end: 2 halves more, as the whole field's 2."""
    field = SplitSpring()
    y0 = tuple(x.detach() for x in start())
    ts = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    sol = solve_fixed("leapfrog", field, y0, ts, 0.1)
    assert field.calls == {"whole": 0, "dq_dt": 10 + 2, "dp_dt": 11}
    assert sol.stats.nfe == 3 + 2 * 9 + 2


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_direct_through_the_halves(method):
    field = SplitSpring()

    def run(q0, p0, k, m):
        field.k, field.m = k, m
        return outputs(method, no.Direct(), field, q0, p0)

    k = field.k.detach().clone().requires_grad_(True)
    m = field.m.detach().clone().requires_grad_(True)
    del field.k, field.m
    assert torch.autograd.gradcheck(run, (*start(), k, m))
    assert field.calls["whole"] == 0


def split_gradients(method: str, gradient, field: Spring) -> list[torch.Tensor]:
    q0, p0 = start()
    loss = outputs(method, gradient, field, q0, p0).pow(2).sum()
    return list(torch.autograd.grad(loss, [q0, p0, field.k, field.m]))


@pytest.mark.parametrize("method", METHODS)
def test_gradients_through_the_halves(method):
    """Checkpointed equals Direct through the halves (its recomputed steps call them too),
    both equal the whole field's; Backsolve's forward solve calls the halves and its adjoint
    system (a state that is not a pair, solved by a Runge-Kutta method) the whole field."""
    direct = split_gradients(method, no.Direct(), SplitSpring())
    field = SplitSpring()
    checkpointed = split_gradients(method, no.Checkpointed(), field)
    assert field.calls["whole"] == 0
    for a, b, c in zip(checkpointed, direct, gradients(method, no.Direct())):
        assert torch.allclose(a, b, atol=1e-12, rtol=1e-12)
        assert torch.allclose(b, c, atol=1e-14, rtol=1e-14)
    field = SplitSpring()
    backsolve = split_gradients(method, no.Backsolve(), field)
    assert field.calls["whole"] > 0 and field.calls["dq_dt"] > 0
    for a, b in zip(backsolve, gradients(method, no.Backsolve())):
        assert torch.allclose(a, b, atol=1e-14, rtol=1e-14)


class HalvesOnly(Spring):
    """``Spring``'s halves, without ``SplitSpring``'s counts (dynamo guards on a count kept
    in a Python dict, and would compile each step anew); calling the whole field fails."""

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple:
        raise AssertionError("the whole field is called")

    def dq_dt(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return p / self.m

    def dp_dt(self, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        return -self.k * torch.sin(q)


@pytest.mark.parametrize(
    "eager_type, compiled_type", [(Spring, Spring), (SplitSpring, HalvesOnly)],
    ids=["whole", "halves"],
)  # fmt: skip
@pytest.mark.usefixtures("steps_traced_only")
def test_compiled_step_equals_eager(eager_type, compiled_type):
    """compile='step' (and compile=True, which falls back to it on fixed steps) runs each
    step as one graph: the same states and evaluations as the eager loop, through the whole
    field or through its halves (then never the whole)."""
    from torch._dynamo.utils import counters

    field = eager_type()
    y0 = tuple(x.detach() for x in start())
    ts = torch.tensor([0.0, 0.35, 1.0], dtype=F64)
    grid = no.FixedGrid(step_size=0.1)
    eager = no.solve(field, y0, ts, solver="leapfrog", controller=grid)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():
        compiled = no.solve(
            compiled_type(), y0, ts, solver="leapfrog", controller=grid, compile="step"
        )
    # one graph for the steps (and one for the first, which checks what f returns)
    assert counters["stats"]["unique_graphs"] - graphs <= 2
    for a, b in zip(compiled.ys, eager.ys):
        assert torch.allclose(a, b, atol=1e-14, rtol=0)
    # 10 steps, and f at both ends of the step holding t = 0.35 for its dense output
    assert compiled.stats.nfe == eager.stats.nfe == 3 + 2 * 9 + 2
    if eager_type is SplitSpring:
        assert field.calls["whole"] == 0


@pytest.mark.parametrize("method", METHODS)
def test_vmap_through_the_halves(method):
    field = SplitSpring()
    q0s = torch.tensor([[0.5], [1.0], [1.5]], dtype=F64)

    def final(q0: torch.Tensor) -> torch.Tensor:
        q, p = solve_fixed(method, field, (q0, torch.zeros_like(q0)), TS, 0.1).ys
        return torch.cat([q[-1], p[-1]])

    with torch.no_grad():
        batched = torch.func.vmap(final)(q0s)
        assert field.calls["whole"] == 0 and field.calls["dp_dt"] > 0
        for row, q0 in zip(batched, q0s):
            assert torch.allclose(row, final(q0), atol=1e-14, rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_odeint_facade_through_the_halves(method):
    field = SplitSpring()
    y0 = tuple(x.detach() for x in start())
    with torch.no_grad():
        qs, ps = odeint(field, y0, TS, method=method, options=dict(step_size=0.1))
        assert field.calls["whole"] == 0
        reference = odeint(whole(field), y0, TS, method=method, options=dict(step_size=0.1))
    assert torch.allclose(qs, reference[0], atol=1e-15, rtol=0)
    assert torch.allclose(ps, reference[1], atol=1e-15, rtol=0)


def test_one_half_alone_is_not_used():
    """A field with only dq_dt (or a state that is not a pair) is called whole."""

    class OneHalf(Spring):
        def dq_dt(self, t, p):
            raise AssertionError("called")

    solve_fixed("leapfrog", OneHalf(), tuple(x.detach() for x in start()), TS, 0.1)


def test_halves_returning_the_wrong_shape_or_dtype_are_refused():
    y0 = pair(1.0, 0.0)

    class Wrong(torch.nn.Module):
        def __init__(self, dq, dp):
            super().__init__()
            self.dq, self.dp = dq, dp

        def forward(self, t, y):
            return y[1], -y[0]

        def dq_dt(self, t, p):
            return self.dq(p)

        def dp_dt(self, t, q):
            return self.dp(q)

    flip = Wrong(lambda p: p, lambda q: -q.expand(2, 1))
    with pytest.raises(
        ValueError, match=r"dp_dt\(t, q\) returned shape \(2, 1\).*p's shape \(1,\)"
    ):
        solve_fixed("leapfrog", flip, y0, TS, 0.1)
    flip = Wrong(lambda p: p.float(), lambda q: -q)
    with pytest.raises(TypeError, match=r"dq_dt\(t, p\) returned dtype torch.float32"):
        solve_fixed("leapfrog", flip, y0, TS, 0.1)


@pytest.mark.parametrize("gradient", ["direct", "adjoint", "checkpointed"])
def test_ode_block_carries_a_pair_state_for_a_symplectic_method(gradient: str) -> None:
    """ODEBlock with leapfrog on (q, p): the solve's final pair (and its states at ts), with
    gradients; what a nested state cannot run with is refused by name."""
    from neuralode.models import EnergyMLP, ODEBlock, SeparableHamiltonian
    from neuralode.models.regularisers import KineticEnergy

    torch.manual_seed(0)
    field = SeparableHamiltonian(EnergyMLP(2, 8), EnergyMLP(2, 8))
    q, p = torch.randn(3, 2), torch.randn(3, 2)
    block = ODEBlock(field, method=no.Leapfrog(), step_size=0.1, gradient=gradient)
    out = block((q, p))
    alone = no.solve(field, (q, p), torch.tensor([0.0, 1.0]), solver=no.Leapfrog(),
                     controller=no.FixedGrid(step_size=0.1))  # fmt: skip
    assert isinstance(out, tuple) and out[0].shape == q.shape
    torch.testing.assert_close(out, (alone.ys[0][-1], alone.ys[1][-1]), rtol=0, atol=0)
    (out[0].sum() + out[1].sum()).backward()
    # (each energy's output bias is a constant of H: no gradient)
    assert sum(p.grad is not None and bool(p.grad.any()) for p in field.parameters()) >= 6
    assert block((q, p), torch.linspace(0, 1, 5))[0].shape == (5, 3, 2)
    with pytest.raises(ValueError, match="regularisers do not work with Leapfrog"):
        ODEBlock(field, method=no.Leapfrog(), step_size=0.1, regularisers=[KineticEnergy(0.1)])
    regularised = ODEBlock(field, method="rk4", step_size=0.1, regularisers=[KineticEnergy(0.1)])
    with pytest.raises(ValueError, match="nested state"):
        regularised((q, p))
    with pytest.raises(TypeError, match="x must be a tensor or"):
        block(("q", "p"))
