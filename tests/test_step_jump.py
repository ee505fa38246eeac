"""``step_t`` (times steps must land on) and ``jump_t`` (discontinuities of f)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    ADAPTIVE_METHODS,
    ALL_METHODS,
    JUMP_METHODS,
    STAGES_PAST_THE_STEP,
    accuracy_factor,
    adaptive_tolerances,
    make_solver,
)
from problems import LINEAR

import neuralode as no

DIRECTIONS = pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
JUMP = 0.5


def _controller(name: str, step_size: float = 0.1):
    solver = make_solver(name)
    if solver.adaptive:
        rtol, atol = adaptive_tolerances(solver)
        return no.PIController(rtol=rtol, atol=atol)
    return no.FixedGrid(step_size=step_size)


class StepLog:
    """Callbacks and a wrapped f writing to one event list, in the order they happen."""

    def __init__(self, f):
        self.f = f
        self.events: list[tuple] = []

    def field(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.events.append(("f", float(t)))
        return self.f(t, y)

    def on_step(self, t: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
        self.events.append(("step", float(t), float(dt)))

    def on_accept(self, t: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
        self.events.append(("accept", float(t), float(dt)))

    def on_reject(self, t: torch.Tensor, y: torch.Tensor, dt: torch.Tensor) -> None:
        self.events.append(("reject", float(t), float(dt)))

    @property
    def accepted_starts(self) -> list[float]:
        return [event[1] for event in self.events if event[0] == "accept"]

    def evaluations_by_step(self) -> list[tuple[float, float, list[float]]]:
        """(t0, t0 + dt, times of f inside that attempted step) for every attempted step."""
        steps, current = [], None
        for event in self.events:
            if event[0] == "step":
                current = (event[1], event[1] + event[2], [])
                steps.append(current)
            elif event[0] == "f" and current is not None:
                current[2].append(event[1])
            elif event[0] in ("accept", "reject"):
                current = None
        return steps


@DIRECTIONS
@pytest.mark.parametrize("name", ALL_METHODS)
def test_step_t_points_are_step_ends(name: str, backward: bool) -> None:
    """Every step_t point inside the span starts an accepted step (so it ends the one before);
    points outside the span are ignored; the solution is unchanged in accuracy."""
    step_t = [0.123, 0.5, 0.77, 1.5, -0.2]
    ts = torch.tensor([1.0, 0.0] if backward else [0.0, 1.0], dtype=torch.float64)
    y_start = LINEAR.solution(ts[:1].numpy())[0]
    log = StepLog(LINEAR.f)
    sol = no.solve(
        log.field,
        y_start,
        ts,
        solver=make_solver(name),
        controller=_controller(name),
        step_t=torch.tensor(step_t, dtype=torch.float64),
        callbacks=log,
    )
    starts = log.accepted_starts
    for point in (0.123, 0.5, 0.77):
        assert point in starts, f"{name}: no step starts at {point}: {starts}"
    assert all(0.0 <= t <= 1.0 for t in starts)
    exact = LINEAR.solution(ts[1:].numpy())[0]
    plain = no.solve(LINEAR.f, y_start, ts, solver=make_solver(name), controller=_controller(name))
    plain_error = float((plain.ys[-1] - exact).abs().max())
    error = float((sol.ys[-1] - exact).abs().max())
    assert error <= 10 * plain_error + 1e-12


def step_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y' = -y + H(t - 1/2): f jumps by 1 at t = 1/2."""
    return -y + (t >= JUMP).to(y.dtype)


def step_exact(t: float) -> float:
    if t < JUMP:
        return math.exp(-t)
    return 1 + (math.exp(-JUMP) - 1) * math.exp(-(t - JUMP))


@pytest.mark.parametrize("name", [name for name in ADAPTIVE_METHODS if name in JUMP_METHODS])
def test_jump_t_is_accurate_and_cheaper(name: str) -> None:
    """At a hundredth of the usual tolerances, so that every method without ``jump_t`` must
    reject steps at the discontinuity (at rtol=1e-3 fehlberg2 steps over it unawares).
    Outputs at step ends: dense output next to the jump is tested below."""
    solver = make_solver(name)
    rtol, atol = (tol / 100 for tol in adaptive_tolerances(solver))
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    exact = torch.tensor([[step_exact(float(t))] for t in ts], dtype=torch.float64)

    def run(**jumps) -> no.Solution:
        controller = no.PIController(rtol=rtol, atol=atol)
        return no.solve(
            step_field, y0, ts, solver=make_solver(name), controller=controller, **jumps
        )

    with_jump, without = run(jump_t=[JUMP]), run()
    error = float((with_jump.ys - exact).abs().max()) / (atol + rtol)
    assert error <= 100 * accuracy_factor(name), f"{name}: {error:.3g} tolerances with jump_t"
    assert with_jump.stats.nfe < without.stats.nfe
    assert with_jump.stats.n_rejected < without.stats.n_rejected


def _jump_side_cases() -> list:
    cases = []
    for name in JUMP_METHODS:
        for backward in (False, True):
            case_id = f"{name}-{'backward' if backward else 'forward'}"
            cases.append(pytest.param(name, backward, id=case_id))
    return cases


@pytest.mark.parametrize(("name", "backward"), _jump_side_cases())
def test_f_is_never_evaluated_across_the_jump(name: str, backward: bool) -> None:
    """Steps ending at the jump evaluate f only on their own side of it, steps starting there
    only on the far side, and f is never called at the jump time itself (where f's value
    belongs to one side only). Outputs inside the steps around the jump make dense output
    evaluate there too."""
    direction = -1.0 if backward else 1.0
    # outputs just inside the steps on both sides of the jump, however long those steps are
    ts = torch.tensor([0.0, 0.49, 0.4999, 0.5001, 0.51, 1.0], dtype=torch.float64)
    ts = ts.flip(0) if backward else ts
    y_start = torch.ones(1, dtype=torch.float64)
    log = StepLog(step_field)
    no.solve(
        log.field,
        y_start,
        ts,
        solver=make_solver(name),
        controller=_controller(name, step_size=0.06),
        jump_t=[JUMP],
        callbacks=log,
    )
    all_times = [event[1] for event in log.events if event[0] == "f"]
    assert JUMP not in all_times, f"{name}: f evaluated exactly at the jump"
    touching = 0
    for t0, t1, times in log.evaluations_by_step():
        if math.isclose(t1, JUMP, abs_tol=1e-12):
            touching += 1
            assert all(direction * (t - JUMP) < 0 for t in times), (t0, t1, times)
        if t0 == JUMP:
            touching += 1
            assert all(direction * (t - JUMP) > 0 for t in times), (t0, t1, times)
    assert touching >= 2


THIRD_ORDER_AND_UP = [name for name in JUMP_METHODS if make_solver(name).order >= 3]


@pytest.mark.parametrize("name", THIRD_ORDER_AND_UP)
def test_dense_output_next_to_a_jump(name: str) -> None:
    """Outputs inside the steps on both sides of a jump are as accurate as the steps: on a
    grid of 0.1 a third-order method is within 1e-4, while an f(t1, y1) from the far side
    puts the interpolant off by ~dt * jump / 8 ~ 1e-2."""
    ts = torch.tensor([0.0, 0.45, 0.47, 0.5, 0.53, 0.55, 1.0], dtype=torch.float64)
    sol = no.solve(
        step_field,
        torch.ones(1, dtype=torch.float64),
        ts,
        solver=make_solver(name),
        controller=no.FixedGrid(step_size=0.1),
        jump_t=[JUMP],
    )
    exact = torch.tensor([[step_exact(float(t))] for t in ts], dtype=torch.float64)
    error = float((sol.ys - exact).abs().max())
    assert error < 1e-3, f"{name}: dense output error {error:.3g} next to the jump"


def test_jump_t_on_a_fixed_grid_lands_on_the_jump() -> None:
    """A jump between grid points splits the step there; rk4 is then exact to its order."""
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    log = StepLog(step_field)
    y0 = torch.ones(1, dtype=torch.float64)
    controller = no.FixedGrid(step_size=0.3)
    sol = no.solve(
        log.field, y0, ts, solver=no.RK4(), controller=controller, jump_t=[JUMP], callbacks=log
    )
    assert log.accepted_starts[:4] == pytest.approx([0.0, 0.3, 0.5, 0.6])
    assert JUMP in log.accepted_starts
    plain = no.solve(step_field, y0, ts, solver=no.RK4(), controller=controller)
    exact = step_exact(1.0)
    assert abs(float(sol.ys[-1, 0]) - exact) < 1e-4
    assert abs(float(sol.ys[-1, 0]) - exact) < abs(float(plain.ys[-1, 0]) - exact) / 10


ONE_STEP_METHODS = [name for name in JUMP_METHODS if not make_solver(name).multistep]


@pytest.mark.parametrize("name", ONE_STEP_METHODS)
def test_checkpointed_gradients_across_a_jump_equal_direct(name: str) -> None:
    """Checkpointed recomputes the step after the jump from the solver's own start state
    there (for radau a state dict, f from the far side of the jump), so its gradients are
    Direct's, the gradient of the same discrete solve."""
    ts = torch.tensor([1.0, 0.0], dtype=torch.float64)  # backward: the jump in both loops

    def gradients(checkpointed: bool) -> list[torch.Tensor]:
        rate = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
        y0 = torch.ones(1, dtype=torch.float64, requires_grad=True)

        def field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -rate * y + (t >= JUMP).to(y.dtype)

        sol = no.solve(
            field,
            y0,
            ts,
            solver=make_solver(name),
            controller=_controller(name, step_size=0.06),
            gradient=no.Checkpointed([rate]) if checkpointed else no.Direct(),
            jump_t=[JUMP],
        )
        return list(torch.autograd.grad(sol.ys[-1].sum(), [y0, rate]))

    for direct, checkpointed in zip(gradients(False), gradients(True)):
        torch.testing.assert_close(checkpointed, direct, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("name", STAGES_PAST_THE_STEP)
def test_stages_past_the_step_refuse_jump_t_and_perturb(name: str) -> None:
    """kvaerno4 and kvaerno5 evaluate f past a step's end (diffrax's tableaux: stage times
    1.146 and 1.230 steps), so a step landing on a jump would sample f on its far side:
    ``jump_t`` and ``perturb`` are refused before any evaluation of f, naming the fix, in
    the forward solve, in Backsolve's backward solves and through ``odeint``'s options."""
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    log = StepLog(step_field)
    fix = "Use a method whose stages stay inside the step"
    for options in (dict(jump_t=[JUMP]), dict(jump_t=[2.0]), dict(perturb=True)):
        message = rf"{name} evaluates f outside its steps, up to 0\.[12]\d* of a step.*{fix}"
        with pytest.raises(ValueError, match=message):
            no.solve(log.field, y0, ts, solver=make_solver(name), **options)
    with pytest.raises(ValueError, match=f"{name} .*jump_t.*{fix}"):
        no.odeint(log.field, y0, ts, method=name, options=dict(jump_t=[JUMP]))
    grad_y0 = y0.clone().requires_grad_(True)
    backward = [
        dict(solver=make_solver(name), jump_t=[JUMP]),  # the backward solve's own method
        dict(gradient=no.Backsolve((), solver=make_solver(name)), jump_t=[JUMP]),
        dict(solver=make_solver(name), gradient=no.Backsolve((), jump_t=[JUMP])),
        dict(gradient=no.Backsolve((), solver=make_solver(name), perturb=True)),
    ]
    for options in backward:
        options.setdefault("gradient", no.Backsolve(()))
        with pytest.raises(ValueError, match=f"{name} evaluates f.*{fix}"):
            no.solve(log.field, grad_y0, ts, **options)
    assert not log.events  # (refused before f is evaluated)
    # step_t (steps land there, f smooth) runs, with f evaluated past the step's end
    sol = no.solve(log.field, y0, ts, solver=make_solver(name), step_t=[0.25], callbacks=log)
    assert 0.25 in log.accepted_starts and sol.stats.n_accepted > 1


def test_stage_times_past_the_step_are_the_tableaus() -> None:
    """A kvaerno5 step from 0 to 0.1 evaluates f at 0.1 * c for its stage times c, the third
    of them 0.123, past the step's end (as diffrax's Kvaerno5 does)."""
    log = StepLog(lambda t, y: -y)
    solver = no.solvers.Kvaerno5()
    no.solve(log.field, torch.ones(1, dtype=torch.float64),
             torch.tensor([0.0, 0.1], dtype=torch.float64), solver=solver,
             controller=no.FixedGrid(step_size=0.1))  # fmt: skip
    times = sorted({round(event[1], 12) for event in log.events if event[0] == "f"})
    expected = sorted({round(0.1 * c, 12) for c in solver.tableau.c})
    assert times == expected and max(times) == pytest.approx(0.1230333209967908)
    assert solver.stage_reach == pytest.approx(1.230333209967908)
    assert no.solvers.Kvaerno4().stage_reach == pytest.approx(1.145632125)
    assert no.solvers.Kvaerno3().stage_reach == 1.0


@pytest.mark.parametrize("kind", ["step_t", "jump_t"])
@pytest.mark.parametrize(
    ("start", "end", "step", "point"),
    [(0.1, 1.0, 0.1, 0.3), (0.1, 1.0, 0.1, 0.7), (0.0, 1.2, 0.3, 0.9)],
    ids=["past-0.3", "past-0.7", "short-of-0.9"],
)
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
def test_landing_within_round_off_of_a_grid_point(
    kind: str, start: float, end: float, step: float, point: float, backward: bool
) -> None:
    """A landing time a few ulps from a point of the uniform grid is one time with it: no
    step between them (one that could not change t, a StepSizeUnderflowError). From 0.1 the
    grid has 0.1 + 2 * 0.1 = 0.30000000000000004 just past 0.3 (and 0.7000000000000001),
    from 0 the grid of 0.3 has 0.8999999999999999 just short of 0.9. The adjoint's backward
    solve builds its grid from the other end, so it meets the landing from the other side."""
    ts = torch.tensor([end, start] if backward else [start, end], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64, requires_grad=True)
    sol = no.solve(
        lambda t, y: -y,
        y0,
        ts,
        solver=no.RK4(),
        controller=no.FixedGrid(step_size=step),
        gradient=no.Backsolve(()),
        **{kind: [point]},
    )
    (grad,) = torch.autograd.grad(sol.ys[-1].sum(), [y0])
    exact = math.exp((end - start) * (1.0 if backward else -1.0))
    assert sol.stats.n_steps == round((end - start) / step)
    assert abs(float(sol.ys[-1, 0].detach()) - exact) < 1e-3 * exact
    assert abs(float(grad[0]) - exact) < 1e-3 * exact


def test_one_landing_time_may_be_a_number_and_other_forms_are_named() -> None:
    """``jump_t=0.5`` is the one point 0.5, as ``[0.5]``, a tensor or an iterator; a string,
    None, a complex or a bool time is a TypeError naming the argument and the form it takes."""
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    reference = no.solve(step_field, y0, ts, jump_t=[JUMP]).ys
    for given in (JUMP, torch.tensor(JUMP), torch.tensor([[JUMP]]), iter([JUMP])):
        assert torch.equal(no.solve(step_field, y0, ts, jump_t=given).ys, reference)
    assert torch.equal(no.solve(step_field, y0, ts, step_t=JUMP, jump_t=[JUMP]).ys, reference)
    for bad in (str(JUMP), None, [None], [0.5j], True, torch.tensor([1j])):
        with pytest.raises(TypeError, match="jump_t must (be a sequence of times|hold real)"):
            no.solve(step_field, y0, ts, jump_t=bad)
    assert no.Backsolve(params=(), jump_t=JUMP).jump_t == (JUMP,)
