"""Implicit and stiff solvers: stiff reference problems against SciPy's Radau, Newton failures,
per-sample (block-diagonal) Newton for batches, the Krylov option, gradients with every
strategy, the torchdiffeq-style options, and the stiffness hint of MaxStepsError.

Orders of convergence, dense output, states, statistics and jumps of the implicit methods are
tested with every other method (the central ``METHODS`` list); tableaux in test_tableaux.
"""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
from problems import HIRES, ROBERTSON, VDP_STIFF, StiffProblem

import neuralode as no
from neuralode import pde
from neuralode._norms import rms_norm
from neuralode._term import ODETerm
from neuralode._tree import tree_spec
from neuralode.solvers import (
    GL4,
    SDIRK2,
    TRBDF2,
    ImplicitEuler,
    NewtonError,
    Radau,
    RadauIIA5,
    _dense_solve,
)
from neuralode.solvers._newton import batch_layout


def _tolerance_units(ys: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> float:
    return float(((ys - ref).abs() / (atol + rtol * ref.abs())).max())


# (problem, outputs used, rtol, atol). Van der Pol (whose reference SciPy computes on the
# fly) only in the slow tests.
STIFF_CASES = {
    "robertson": (ROBERTSON, None, 1e-6, 1e-10),
    "hires": (HIRES, None, 1e-6, 1e-10),
    "vdp1000": (VDP_STIFF, None, 1e-6, 1e-8),
}


@pytest.mark.parametrize(
    "case", ["robertson", "hires", pytest.param("vdp1000", marks=pytest.mark.slow)]
)
def test_radau_matches_scipy_references(case: str) -> None:
    """Within a few tolerance units of SciPy's Radau at rtol 1e-13, in about as many steps as
    SciPy's Radau takes (van der Pol: 1,187 accepted at rtol 1e-6)."""
    problem, upto, rtol, atol = STIFF_CASES[case]
    solver = Radau()
    sol = no.solve(
        problem.f,
        problem.y0_tensor(),
        problem.ts_tensor(upto),
        solver=solver,
        controller=no.PIController(rtol=rtol, atol=atol),
    )
    error = _tolerance_units(sol.ys, problem.reference(upto), rtol, atol)
    assert error < 10, f"{case}: {error:.3g} tolerance units"
    assert sol.stats.n_steps < 2000
    # a Jacobian serves the steps after it while Newton converges fast with it (SciPy: 41
    # Jacobians for 188 steps on Robertson, 273 for 1,187 on van der Pol)
    assert solver.counters["jacobians"] < sol.stats.n_steps / 2


@pytest.mark.slow
@pytest.mark.parametrize("problem", [ROBERTSON, HIRES, VDP_STIFF], ids=lambda p: p.name)
def test_stored_references_are_scipy_radau(problem: StiffProblem) -> None:
    solution = problem.scipy_solution(rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(solution, problem.reference(), rtol=1e-6, atol=1e-12)


def _log_grid(t1: float, n: int) -> torch.Tensor:
    """0 then n points geometrically spaced from 1e-6 to t1: for stiff transients."""
    return torch.cat([torch.zeros(1), torch.logspace(-6, torch.log10(torch.tensor(t1)), n)]).to(
        torch.float64
    )


@pytest.mark.parametrize(
    ("solver", "bound"),
    [(RadauIIA5(), 1e-5), (TRBDF2(), 1e-3), (SDIRK2(), 1e-3)],
    ids=lambda x: getattr(x, "name", ""),
)
def test_l_stable_fixed_steps_on_robertson(solver, bound: float) -> None:
    """Steps up to 2e4 on Robertson (stiffness ~1e4): L-stable methods stay accurate to their
    order on a grid no explicit method could use. (Implicit Euler's simplified Newton
    iteration, with the Jacobian of the step's start, diverges on the longest of these
    steps: NewtonError.)"""
    grid = _log_grid(ROBERTSON.ts[-1], 120)
    sol = no.solve(
        ROBERTSON.f,
        ROBERTSON.y0_tensor(),
        ROBERTSON.ts_tensor(),
        solver=solver,
        controller=no.FixedGrid(grid=grid),
    )
    error = float((sol.ys - ROBERTSON.reference()).abs().max())
    assert error < bound, f"{solver.name}: max error {error:.3g}"


def test_explicit_method_hitting_max_steps_suggests_a_stiff_method() -> None:
    with pytest.raises(no.MaxStepsError, match="stiff") as info:
        no.solve(
            ROBERTSON.f,
            ROBERTSON.y0_tensor(),
            ROBERTSON.ts_tensor(),
            controller=no.PIController(rtol=1e-6, atol=1e-10),
            max_steps=500,
        )
    assert "radau" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Newton failures


def _square(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y**2


def test_newton_failure_on_fixed_steps_is_an_error() -> None:
    """y1 = 1 + h y1^2 has no real solution for h > 1/4."""
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(NewtonError, match="did not converge on the step from t=0 to t=0.5"):
        no.solve(_square, y0, ts, solver=ImplicitEuler())
    short = torch.tensor([0.0, 0.1], dtype=torch.float64)
    with pytest.raises(NewtonError, match="max_iters=2"):
        no.solve(_square, y0, short, solver=ImplicitEuler(max_iters=2))


def test_newton_failure_under_error_control_rejects_the_step() -> None:
    """A first step of 100 on Robertson: the iteration fails, the step is retried shorter,
    and the solution is still accurate."""
    problem, _, rtol, atol = STIFF_CASES["robertson"]
    solver = Radau()
    controller = no.PIController(rtol=rtol, atol=atol, first_step=100.0)
    sol = no.solve(
        problem.f, problem.y0_tensor(), problem.ts_tensor(4), solver=solver, controller=controller
    )
    assert solver.counters["newton_failures"] >= 1
    assert sol.stats.n_rejected >= solver.counters["newton_failures"]
    assert _tolerance_units(sol.ys, problem.reference(4), rtol, atol) < 10


def test_per_element_tolerances_drive_newton_as_numbers_do() -> None:
    """Tolerances given per element (tensors) scale the Newton test and make a failed
    iteration a rejected step exactly as the same numbers do: the same steps, the same
    solution."""
    problem, _, rtol, atol = STIFF_CASES["robertson"]
    y0, ts = problem.y0_tensor(), problem.ts_tensor(4)
    solutions = []
    per_element = (torch.full((3,), rtol, dtype=y0.dtype), torch.full((3,), atol, dtype=y0.dtype))
    for tolerances in ((rtol, atol), per_element):
        solver = Radau()
        controller = no.PIController(*tolerances, first_step=100.0)
        solutions.append(no.solve(problem.f, y0, ts, solver=solver, controller=controller))
        assert solver.counters["newton_failures"] >= 1
    numbers, tensors = solutions
    assert tensors.stats.n_steps == numbers.stats.n_steps
    torch.testing.assert_close(tensors.ys, numbers.ys, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# Batches: one Newton matrix per sample


def _batched_robertson(scales: torch.Tensor):
    """Independent Robertson problems, sample b running at rate scales[b]."""

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return scales[:, None] * ROBERTSON.f(t, y)

    return f


def test_batch_layout_of_nested_states() -> None:
    spec, _ = tree_spec((torch.zeros(3, 2), {"b": torch.zeros(3, 1)}))
    layout = batch_layout(spec, 3, torch.device("cpu"))
    assert layout.index.tolist() == [[0, 1, 6], [2, 3, 7], [4, 5, 8]]
    flat = torch.arange(9.0)
    torch.testing.assert_close(layout.scatter(layout.gather(flat)), flat)
    # tensors without the batch dimension first: one block
    assert batch_layout(spec, 4, torch.device("cpu")).index.shape == (1, 9)


def test_batched_newton_uses_per_sample_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    shapes = []
    original = _dense_solve.DenseSolve._factorise

    def recording(self, matrix):
        shapes.append(tuple(matrix.shape))
        return original(self, matrix)

    monkeypatch.setattr(_dense_solve.DenseSolve, "_factorise", recording)
    scales = torch.tensor([1.0, 0.5, 2.0, 0.1], dtype=torch.float64)
    y0 = ROBERTSON.y0_tensor().expand(4, 3).clone()
    ts = ROBERTSON.ts_tensor(3)
    controller = no.PIController(rtol=1e-6, atol=1e-10)
    batched = no.solve(
        _batched_robertson(scales), y0, ts, solver=Radau(batch_size=4), controller=controller
    )
    assert set(shapes) == {(4, 9, 9), (4, 3, 3)}  # stages, and the error estimate's matrix
    for b, scale in enumerate(scales):
        alone = no.solve(
            _batched_robertson(scale[None]),
            y0[b : b + 1],
            ts,
            solver=Radau(),
            controller=controller,
        )
        assert _tolerance_units(batched.ys[:, b], alone.ys[:, 0], 1e-6, 1e-10) < 3


def test_batched_fixed_steps_equal_the_whole_state_newton() -> None:
    scales = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    y0 = ROBERTSON.y0_tensor().expand(3, 3).clone()
    grid = _log_grid(100.0, 40)
    results = [
        no.solve(
            _batched_robertson(scales),
            y0,
            grid,
            solver=RadauIIA5(batch_size=batch),
            controller=no.FixedGrid(),
        ).ys
        for batch in (3, None)
    ]
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Jacobian-free Newton-Krylov


def test_krylov_matches_direct_linear_algebra() -> None:
    ts = HIRES.ts_tensor(2)  # HIRES's fast transient: t = 0 to 1, 42 steps
    controller = no.PIController(rtol=1e-5, atol=1e-9)
    direct = no.solve(HIRES.f, HIRES.y0_tensor(), ts, solver=Radau(), controller=controller)
    krylov_solver = Radau(linear_solver="krylov")
    krylov = no.solve(HIRES.f, HIRES.y0_tensor(), ts, solver=krylov_solver, controller=controller)
    assert _tolerance_units(krylov.ys, HIRES.reference(2), 1e-5, 1e-9) < 10
    assert _tolerance_units(krylov.ys, direct.ys, 1e-5, 1e-9) < 1
    assert krylov_solver.counters["factorisations"] == 0


# ---------------------------------------------------------------------------------------------
# Gradients on a small stiff linear problem: y' = A y with eigenvalues -k1 and -k2 * 1000.


def _stiff_linear(params: torch.Tensor, stiffness: float = 1000.0):
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        k1, k2 = params[0], params[1]
        first = -k1 * y[..., 0] + 0.5 * y[..., 1]
        second = -stiffness * k2 * (y[..., 1] - torch.sin(t) * y[..., 0])
        return torch.stack([first, second], -1)

    return f


# Steps of 0.25 (h k2 stiffness = 325: the stiff mode far outside explicit stability) and
# radau's ~40 adaptive steps keep each gradcheck's dozen solves short.
GRADIENT_SETUPS = {
    "radauIIA5-fixed": lambda: (RadauIIA5(), no.FixedGrid(step_size=0.25)),
    "trbdf2-fixed": lambda: (TRBDF2(), no.FixedGrid(step_size=0.25)),
    "gl4-krylov": lambda: (GL4(linear_solver="krylov"), no.FixedGrid(step_size=0.25)),
    # Newton converged well below the step tolerance: finite differences then see the
    # implicit function, whose derivative the stages carry
    "radau": lambda: (Radau(newton_tol=1e-6), no.PIController(rtol=1e-4, atol=1e-6)),
}


def _stiff_inputs():
    y0 = torch.tensor([[1.0, 0.2], [0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    params = torch.tensor([0.7, 1.3], dtype=torch.float64, requires_grad=True)
    ts = torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64)
    return y0, params, ts


@pytest.mark.parametrize("strategy", ["direct", "checkpointed"])
@pytest.mark.parametrize("setup", GRADIENT_SETUPS)
def test_gradcheck_on_a_stiff_problem(setup: str, strategy: str) -> None:
    """Gradients of the discrete solve (implicit-function gradients of the stages) against
    finite differences, w.r.t. y0 and the parameters."""
    y0, params, ts = _stiff_inputs()

    def run(y0: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        solver, controller = GRADIENT_SETUPS[setup]()
        gradient = no.Direct() if strategy == "direct" else no.Checkpointed(params=(params,))
        return no.solve(
            _stiff_linear(params), y0, ts, solver=solver, controller=controller, gradient=gradient
        ).ys

    # GMRES in the backward pass is reproducible only to its tolerance
    nondet_tol = 1e-9 if "krylov" in setup else 0.0
    fast_mode = setup == "radau"  # one random projection: ~40 steps, 3 stage Jacobians each
    assert torch.autograd.gradcheck(
        run,
        (y0, params),
        eps=1e-6,
        atol=1e-6,
        rtol=1e-5,
        nondet_tol=nondet_tol,
        fast_mode=fast_mode,
    )


@pytest.mark.parametrize("batch_size", [None, 2])
def test_direct_and_backsolve_agree(batch_size: int | None) -> None:
    """The continuous adjoint, solved backwards by radau too (its augmented dynamics have
    no autograd graph: Jacobians by differences, one block), against backpropagation, on a
    mildly stiff problem: re-solving the state backwards amplifies errors like exp(k t)."""
    y0, params, ts = _stiff_inputs()
    grads = []
    for gradient in (no.Direct(), no.Backsolve(params=(params,))):
        sol = no.solve(
            _stiff_linear(params, stiffness=10.0),
            y0,
            ts,
            solver=Radau(batch_size=batch_size),
            controller=no.PIController(rtol=1e-7, atol=1e-9),
            gradient=gradient,
        )
        loss = (sol.ys**2).sum() + sol.ys[1, :, 0].sum()
        grads.append(torch.autograd.grad(loss, (y0, params)))
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, direct, rtol=1e-5, atol=1e-7)


def test_odeint_adjoint_backward_solve_drops_the_forward_preconditioner() -> None:
    """odeint_adjoint's backward solve takes the forward options; a preconditioner among
    them is made for the forward state and is left out of the adjoint system's solves (it
    raised a shape error in the backward pass), so the gradient is Direct's."""
    heat = pde.Heat(pde.Grid((15,), boundary=pde.Dirichlet()), 0.01)
    (x,) = heat.grid.coordinates()
    u0 = torch.sin(math.pi * x)[None, None]
    ts = torch.tensor([0.0, 0.05, 0.1], dtype=torch.float64)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)

    def field(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return scale * heat(t, u)

    options = dict(linear_solver="krylov", preconditioner=heat.preconditioner())
    adjoint = no.odeint_adjoint(
        field, u0, ts, method="radau", options=options, rtol=1e-8, atol=1e-10,
        adjoint_params=(scale,),
    )  # fmt: skip
    direct = no.odeint(field, u0, ts, method="radau", options=options, rtol=1e-8, atol=1e-10)
    (by_adjoint,) = torch.autograd.grad(adjoint.sum(), scale)
    (by_direct,) = torch.autograd.grad(direct.sum(), scale)
    torch.testing.assert_close(by_adjoint, by_direct, rtol=1e-6, atol=0)


def test_backsolve_gives_radau_the_backward_solves_tolerances() -> None:
    """Per-element tolerances laid out for the forward state (2 x 2 here) are laid out for
    the backward state [y, adjoint, parameter gradients] (10 elements) by the backward
    controller, and the solver's Newton iteration takes those (the forward ones do not
    broadcast against the backward state)."""
    y0, params, ts = _stiff_inputs()
    grads = []
    for gradient in (no.Direct(), no.Backsolve(params=(params,))):
        controller = no.PIController(
            rtol=torch.tensor([1e-6, 1e-7], dtype=torch.float64),
            atol=torch.tensor([1e-8, 1e-9], dtype=torch.float64),
        )
        sol = no.solve(
            _stiff_linear(params, stiffness=10.0),
            y0,
            ts,
            solver=Radau(),
            controller=controller,
            gradient=gradient,
        )
        grads.append(torch.autograd.grad((sol.ys**2).sum(), (y0, params)))
    for direct, adjoint in zip(*grads):
        torch.testing.assert_close(adjoint, direct, rtol=1e-5, atol=1e-7)


def test_backsolve_on_a_stiff_problem_fails_with_advice() -> None:
    """Backwards in time the stiff mode grows like exp(1300 t): the backward solve cannot
    keep up, and the error says so and names the strategies that work."""
    y0, params, ts = _stiff_inputs()
    sol = no.solve(
        _stiff_linear(params),
        y0,
        ts,
        solver=Radau(),
        controller=no.PIController(rtol=1e-6, atol=1e-8),
        gradient=no.Backsolve(params=(params,), max_steps=50),
    )
    with pytest.raises(no.MaxStepsError, match="unstable for stiff.*Checkpointed"):
        sol.ys.sum().backward()


# ---------------------------------------------------------------------------------------------
# torchdiffeq-style interface and options


def test_odeint_with_implicit_methods_and_options() -> None:
    y0, params, ts = _stiff_inputs()
    f = _stiff_linear(params.detach())
    y0 = y0.detach()
    adaptive = no.odeint(
        f, y0, ts, rtol=1e-8, atol=1e-10, method="radau", options={"batch_size": 2}
    )
    fixed = no.odeint(f, y0, ts, method="radauIIA5", options={"step_size": 0.01, "max_iters": 8})
    torch.testing.assert_close(fixed, adaptive, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="unknown option"):
        no.odeint(f, y0, ts, method="gl4", options={"newton_iters": 3})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"linear_solver": "lu"}, "linear_solver must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_iters": 0}, "max_iters must be an integer of at least 2"),
        # one iteration gives no contraction rate: the test could never pass
        ({"max_iters": 1}, "max_iters must be an integer of at least 2"),
        ({"max_iters": True}, "max_iters must be an integer"),
        ({"newton_tol": -1.0}, "newton_tol must be a positive finite number"),
        ({"newton_tol": math.inf}, "newton_tol must be a positive finite number"),
        ({"newton_tol": "1e-3"}, "newton_tol must be a positive finite number"),
        ({"krylov_tol": "1e-3"}, "krylov_tol must be a number in"),
        ({"krylov_dim": 2.0}, "krylov_dim must be a positive integer"),
        ({"linear_solver": ["direct"]}, "linear_solver must be one of"),
    ],
)
def test_bad_options(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        Radau(**kwargs)


def _robertson(t: float, y: torch.Tensor) -> torch.Tensor:
    fast, slow = 1e4 * y[1] * y[2], 3e7 * y[1] ** 2
    return torch.stack([-0.04 * y[0] + fast, 0.04 * y[0] - fast - slow, slow])


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        # batch_size=3 on Robertson's (3,) state splits its coupled entries: every Newton
        # matrix is wrong and nearly every step fails (70 steps without it)
        ({"batch_size": 3}, "check that batch_size=3 splits the state"),
        # one Krylov vector: the linear solves are far off, Newton does not converge
        ({"linear_solver": "krylov", "krylov_dim": 1}, "raise krylov_dim (now 1)"),
    ],
)
def test_max_steps_after_newton_failures_names_the_newton_options(
    options: dict, fragment: str
) -> None:
    """A radau solve whose steps keep failing in Newton's iteration runs out of steps: the
    message counts those failures and names the options that govern them, instead of
    advising a stiff method (radau is one)."""
    solver = Radau(**options)
    with pytest.raises(no.MaxStepsError, match="failed in the Newton iteration") as caught:
        no.solve(
            _robertson,
            torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64),
            torch.tensor([0.0, 40.0], dtype=torch.float64),
            solver=solver,
            controller=no.PIController(rtol=1e-6, atol=1e-10),
            max_steps=100,
        )
    message = str(caught.value)
    assert fragment in message
    assert "raise max_iters (now 6)" in message
    assert "use a stiff method" not in message


def test_radau_starts_newton_from_the_previous_collocation_polynomial() -> None:
    """With the extrapolated start (RADAU5's and SciPy's), Newton converges in a few
    iterations on every step: no failures, and about SciPy Radau's 86 steps (from Z = 0 it
    took 151 steps, 41 of them failed Newton iterations)."""
    y0, params, ts = _stiff_inputs()
    solver = Radau()
    sol = no.solve(
        _stiff_linear(params.detach()),
        y0.detach(),
        ts,
        solver=solver,
        controller=no.PIController(rtol=1e-6, atol=1e-8),
    )
    assert solver.counters["newton_failures"] == 0
    assert sol.stats.n_steps <= 90
    assert solver.counters["newton_iterations"] <= 2.5 * sol.stats.n_steps


def test_auto_linear_solver_takes_gmres_where_direct_newton_matrices_are_too_big(monkeypatch):
    """linear_solver="auto" (the default) solves directly while the Newton matrices fit the
    budget and by GMRES beyond it, taking krylov's steps there; an explicit "direct" over
    the budget is refused with the fixes instead of allocating them."""
    from neuralode.solvers import _implicit_stages, _newton

    y0 = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.25], dtype=torch.float64)
    controller = no.PIController(1e-6, 1e-8)

    def solve(**options):
        solver = no.solvers.METHODS["radau"](**options)
        rates = torch.arange(1.0, 7.0, dtype=torch.float64)
        sol = no.solve(lambda t, y: -y * rates, y0, ts, solver=solver, controller=controller)
        return sol.ys, solver.counters["factorisations"]

    # (GMRES's complex products can round differently from one run to the next with the
    # buffers' alignment: the paths are told apart by their LU counts)
    direct, krylov = solve(linear_solver="direct"), solve(linear_solver="krylov")
    assert direct[1] > 0 and krylov[1] == 0
    auto = solve()  # small: direct
    assert auto[1] == direct[1]
    torch.testing.assert_close(auto[0], direct[0], rtol=1e-13, atol=1e-15)
    budget = 8 * 18 * 18 - 1  # radau's three stages of 6 entries, float64: one byte short
    monkeypatch.setattr(_newton, "NEWTON_BYTES", budget)
    monkeypatch.setattr(_implicit_stages, "NEWTON_BYTES", budget)
    auto = solve()
    assert auto[1] == 0
    torch.testing.assert_close(auto[0], krylov[0], rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match=r"linear_solver='direct' would build Newton matrices"):
        solve(linear_solver="direct")


def test_newton_gives_up_early_only_when_max_iters_cannot_converge() -> None:
    """Under error control the iteration stops early ("too slow") when the contraction rate
    predicts no convergence within max_iters. The update after k more iterations is about
    rate**k times this one, and the test of the last one passes when rate / (1 - rate)
    times it is within newton_tol: the prediction is rate**(k + 1) / (1 - rate) * size,
    SciPy Radau's. f = -y with autograd seeing -3 y (an off Jacobian, as a frozen one is)
    contracts at exactly 0.5 on a step of 1: updates 0.25, 0.125, 0.0625, 0.03125, so with
    max_iters=4 and newton_tol=0.04 the fourth iteration converges (rate**k alone, one
    factor short, gave up after the second)."""
    y0 = torch.ones(1, dtype=torch.float64)
    spec, _ = tree_spec(y0)
    term = ODETerm(lambda t, y: -3 * y + 2 * y.detach(), spec, y0)
    solver = ImplicitEuler(max_iters=4, newton_tol=0.04)
    solver.set_tolerances(0.0, 1.0)  # error control: Newton's scale is atol = 1
    step = solver.step(term, 0.0, 1.0, y0, solver.init(term, 0.0, y0, None), False)
    assert solver.counters["newton_failures"] == 0
    assert solver.counters["newton_iterations"] == 4
    torch.testing.assert_close(step.y1, torch.tensor([0.5 + 0.5**5], dtype=torch.float64))


def test_a_newton_failure_under_error_control_is_a_finite_rejected_step() -> None:
    """A step whose Newton iteration fails (here: too slow for max_iters=3 at rate 0.5 and
    newton_tol=1e-6) ends where it starts with an infinite error: rejected, and finite, so
    a solve stalled by such steps is a step-size underflow rather than "every step produced
    non-finite values"."""
    y0 = torch.ones(1, dtype=torch.float64)
    spec, _ = tree_spec(y0)
    term = ODETerm(lambda t, y: -3 * y + 2 * y.detach(), spec, y0)
    solver = ImplicitEuler(max_iters=3, newton_tol=1e-6)
    solver.set_tolerances(0.0, 1.0)
    step = solver.step(term, 0.0, 1.0, y0, solver.init(term, 0.0, y0, None), False)
    assert solver.counters["newton_failures"] == 1
    assert torch.equal(step.y1, y0)
    assert bool(torch.isinf(step.error).all())
    assert "1 step(s) of implicit_euler failed in the Newton iteration" in solver.failure_hint()


class _Damped(torch.nn.Module):
    """tanh(W y + b) - k y + sin(t) / 2 with decay rates k: 1, 2, 5 (mild) or 1, 10, 100."""

    def __init__(self, rates: tuple[float, ...]):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 3, dtype=torch.float64)
        self.rates = torch.tensor(rates, dtype=torch.float64)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(y)) - self.rates * y + 0.5 * torch.sin(t)


@pytest.mark.parametrize("rates", [(1.0, 2.0, 5.0), (1.0, 10.0, 100.0)], ids=["mild", "stiff"])
def test_backsolve_warns_where_its_backward_solve_leaves_the_forward_trajectory(rates) -> None:
    """An implicit method's backward solve of a moderately stiff problem does not fail: it
    completes along another trajectory (here 1e10 away), and the gradients are 10% off
    Direct's. The backward state at each output time is compared with the forward one's,
    and a miss beyond a tenth of the state's size is a warning; on the mild problem
    Backsolve's gradients are Direct's to 1e-8, and nothing is said."""
    field = _Damped(rates)
    ts = torch.tensor([0.0, 0.3, 0.7, 1.2], dtype=torch.float64)
    weights = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3)
    grads = []
    for gradient in (no.Direct(), no.Backsolve()):
        y0 = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64, requires_grad=True)
        sol = no.solve(
            field, y0, ts, solver=no.solvers.Kvaerno5(),
            controller=no.PIController(rtol=1e-8, atol=1e-10), gradient=gradient,
        )  # fmt: skip
        loss = (sol.ys * weights).sum()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grads.append(
                torch.cat(
                    [g.flatten() for g in torch.autograd.grad(loss, (y0, field.linear.weight))]
                )
            )
        said = [str(w.message) for w in caught if "Backsolve:" in str(w.message)]
        if rates[-1] > 5 and isinstance(gradient, no.Backsolve):
            assert len(said) == 1
            assert re.search(r"from t=1.2 reached t=0.7 \S+ away from the forward", said[0])
            assert "use gradient=Checkpointed()" in said[0]
        else:
            assert said == []
    error = float((grads[1] - grads[0]).abs().max() / grads[0].abs().max())
    assert error > 0.05 if rates[-1] > 5 else error < 1e-8
    # said once per model: a training loop's next steps (gradient="adjoint" makes a new
    # Backsolve each time) do not repeat it
    y0 = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        no.solve(
            field, y0, ts, solver=no.solvers.Kvaerno5(), gradient="adjoint"
        ).ys.sum().backward()
    assert not [w for w in caught if "Backsolve:" in str(w.message)]


@pytest.mark.slow  # ~60 s: the backward solve shrinks its steps to underflow
def test_a_solve_stalled_by_newton_failures_is_a_step_size_underflow() -> None:
    """Backsolve's backward solve of a strongly stiff problem (k = 1e4) stalls on steps whose
    Newton iteration fails at every size. A failed step ends where it starts, so this is a
    step-size underflow that counts the Newton failures and carries Backsolve's advice
    (failed steps with NaN states read as "f(t, y) is probably non-finite")."""
    k = torch.tensor(1e4, dtype=torch.float64, requires_grad=True)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.stack([-k * (y[0] - torch.cos(0.7 * t)) - y[1] * y[0], 0.7 * y[0] - y[1] ** 2])

    y0 = torch.tensor([1.0, 0.5], dtype=torch.float64, requires_grad=True)
    ys = no.solve(
        f,
        y0,
        torch.tensor([0.0, 0.4, 1.0], dtype=torch.float64),
        solver=Radau(),
        controller=no.PIController(rtol=1e-8, atol=1e-10),
        gradient=no.Backsolve([k]),
    ).ys
    with pytest.raises(no.StepSizeUnderflowError) as caught:
        ys.sum().backward()
    message = str(caught.value)
    assert "failed in the Newton iteration" in message
    assert "use Checkpointed" in message


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"tol": -1.0}, "tol must be a finite non-negative number"),
        ({"tol": math.nan}, "tol must be a finite non-negative number"),
        ({"tol": "1e-6"}, "tol must be a finite non-negative number"),
        ({"max_iters": True}, "max_iters must be an integer >= 1"),
    ],
)
def test_implicit_adams_bad_options(kwargs: dict, fragment: str) -> None:
    """The corrector's options are checked where they are given (a string tol failed at
    the first step with a TypeError naming no option; a negative or NaN one never let the
    corrector converge)."""
    with pytest.raises(ValueError, match=fragment):
        no.solvers.ImplicitAdams(**kwargs)


def test_newton_error_of_radau_on_fixed_steps_advises_error_control() -> None:
    """radau on a fixed grid whose Newton iteration fails is told to use its own error
    control, not to use "an adaptive stiff method (radau)", which it is."""
    with pytest.raises(NewtonError, match="radau with an error-controlled PIController"):
        no.solve(
            lambda t, y: 100 * y**2,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 1.0], dtype=torch.float64),
            solver=Radau(),
            controller=no.FixedGrid(step_size=0.5),
        )


def test_a_failed_step_at_min_step_is_not_retried_unchanged() -> None:
    """y' = y^2 blows up at t = 1: near it radau's Newton iteration fails on a step held at
    min_step. Retrying that same step could only fail again (99,907 identical failures and
    90 s to max_steps); the solve stops at the first repeat, naming min_step and the
    Newton failure."""
    solver = Radau()
    with pytest.raises(no.StepSizeUnderflowError, match="min_step") as caught:
        no.solve(
            lambda t, y: y**2,
            torch.ones(1, dtype=torch.float64),
            torch.tensor([0.0, 2.0], dtype=torch.float64),
            solver=solver,
            controller=no.PIController(rtol=1e-6, atol=1e-8, min_step=1e-3),
            max_steps=2000,
        )
    assert "failed in the Newton iteration" in str(caught.value)
    assert solver.counters["newton_failures"] == 1


# the rule on Radau's steps: test_the_hold_after_a_rejection_caps_the_next_step (default run);
# this one measures what it saves on stiff van der Pol (30 s)
@pytest.mark.slow
def test_radau_does_not_grow_the_step_right_after_a_rejection(monkeypatch) -> None:
    """Hairer's rule (RADAU5): the step after a rejected one may not grow. Without it a
    Newton failure (a rejection) shrinks the step by dfactor and the next accepted step grows
    straight back into the failure: van der Pol, mu = 1000, at rtol 1e-4 takes 348
    rejections (231 Newton failures) instead of 193 (85), and 27% more evaluations."""
    controller = no.PIController(rtol=1e-4, atol=1e-8)
    ts = VDP_STIFF.ts_tensor(None)
    runs = {}
    for hold in (True, False):
        monkeypatch.setattr(Radau, "hold_after_reject", hold)
        solver = Radau()
        sol = no.solve(VDP_STIFF.f, VDP_STIFF.y0_tensor(), ts, solver=solver, controller=controller)
        error = _tolerance_units(sol.ys, VDP_STIFF.reference(None), 1e-4, 1e-8)
        runs[hold] = (
            sol.stats.nfe,
            sol.stats.n_rejected,
            solver.counters["newton_failures"],
            error,
        )
    (held_nfe, held_rejected, held_failures, held_error) = runs[True]
    (free_nfe, free_rejected, free_failures, _) = runs[False]
    assert held_error < 1
    assert held_rejected < 0.7 * free_rejected and held_failures < 0.5 * free_failures
    assert held_nfe < 0.85 * free_nfe


def test_the_hold_after_a_rejection_caps_the_next_step() -> None:
    """The controller's host loop: after a rejection, an accepted step is followed by one of
    its own size at most where the solver asks for it; a rejection still shrinks; explicit
    methods keep growing (their steps as torchdiffeq's and diffrax's)."""
    control = no.PIController(rtol=1e-6, atol=1e-9, first_step=0.1)
    y0 = torch.ones(3, dtype=torch.float64)
    small = torch.full_like(y0, 1e-12)
    for solver, held in ((Radau(), True), (no.solvers.Dopri5(), False)):
        f0 = -y0
        _, state = control.init(None, solver, [0.0, 1.0], y0, f0, rms_norm)
        accepted, t_next, state = control.adapt(0.0, 0.1, y0, y0, small, state)
        assert accepted and t_next > 0.2  # grows after an accepted step
        rejected, t_retry, state = control.adapt(0.1, 0.5, y0, y0, 1e3 * y0, state)
        assert not rejected and t_retry < 0.5  # shrinks
        accepted, t_next, state = control.adapt(0.1, 0.2, y0, y0, small, state)
        assert accepted and (t_next == pytest.approx(0.3) if held else t_next > 0.3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize(
    ("method", "linear_solver"),
    [("radau", "direct"), ("radau", "krylov"), ("kvaerno3", "direct"), ("gl4", "krylov")],
)
def test_a_16_bit_state_is_solved_with_its_linear_algebra_in_float32(
    dtype: torch.dtype, method: str, linear_solver: str
) -> None:
    """PyTorch has no LU factorisation or least squares in float16 or bfloat16: the Newton
    matrices of a 16-bit state are factorised in float32 (GMRES's least squares too, its
    eigenbasis split in complex64), and the solution, its gradients and the stages stay in
    the state's dtype, as accurate as the dtype allows."""
    a = torch.tensor([[-1.0, 0.5, 0.0], [0.0, -20.0, 1.0], [0.3, 0.0, -200.0]])
    weight = torch.nn.Parameter(a.to(dtype))
    y0 = torch.tensor([1.0, -0.5, 0.25], dtype=dtype, requires_grad=True)
    ts = torch.tensor([0.0, 0.5, 1.0])
    sol = no.solve(
        lambda t, y: y @ weight.T, y0, ts, solver=no.METHODS[method](linear_solver=linear_solver),
        controller=no.FixedGrid(step_size=0.01) if method == "gl4"
        else no.PIController(rtol=1e-2, atol=1e-3),
    )  # fmt: skip
    sol.ys.sum().backward()
    assert sol.ys.dtype == y0.grad.dtype == weight.grad.dtype == dtype
    y0_64 = y0.detach().double()
    exact = torch.stack([torch.linalg.matrix_exp(a.double() * t) @ y0_64 for t in ts.double()])
    eps = torch.finfo(dtype).eps  # (round-off over 100 gl4 steps: a few units of it)
    assert float((sol.ys.detach().double() - exact).abs().max()) < 5 * eps
    ones = torch.ones(3, dtype=torch.float64)
    exact_grad = sum(torch.linalg.matrix_exp(a.double() * t).T @ ones for t in ts.double())
    relative = float((y0.grad.double() - exact_grad).abs().max() / exact_grad.abs().max())
    assert relative < 5 * eps
