"""Shared helpers for the engine tests: the method lists (from the central ``METHODS``, so a
new method is tested by adding it there), tolerances per method, the step-count sweep and
log-log fit behind every empirical order, stability polynomials of tableaux, and a vector
field wrapper that records its calls."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
import torch

from neuralode.solvers import METHODS, NewtonError, Solver

ALL_METHODS = sorted(METHODS)
ADAPTIVE_METHODS = [name for name in ALL_METHODS if METHODS[name]().adaptive]
FIXED_METHODS = [name for name in ALL_METHODS if not METHODS[name]().adaptive]
# Methods whose stages sample f past a step's end (kvaerno4, kvaerno5): they refuse jump_t
# and perturb (test_step_jump tests the refusal), so the tests of landing on a jump run the
# others.
STAGES_PAST_THE_STEP = [name for name in ALL_METHODS if METHODS[name]().stage_reach > 1]
JUMP_METHODS = [name for name in ALL_METHODS if name not in STAGES_PAST_THE_STEP]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``-n 2`` on two cores) each worker computes with one intra-op
    thread: the OpenMP threads of two processes spinning on the same cores made small
    operations (GMRES on a PDE grid) tens of times slower. Inductor compiles in the worker
    itself: a pool of compile processes per worker costs each worker about 9 CPU seconds to
    start and finds no free core."""
    if hasattr(config, "workerinput"):
        import torch._inductor.config

        torch.set_num_threads(1)
        torch._inductor.config.compile_threads = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip without a CUDA device; ``benchmarks/gpu_session.sh`` runs
    them on a GPU machine (``pytest -m cuda``)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def room_for_graphs():
    """A test's result never depends on the tests before it in its process: those may have
    compiled a code object (the whole solve's, a step's) up to torch's recompile_limit, past
    which a solve compiles each step instead. Tests of that fallback lower the limit."""
    with torch._dynamo.config.patch(recompile_limit=64):
        yield


@pytest.fixture
def steps_traced_only(monkeypatch):
    """The graphs of ``compile="step"`` (the standard loop's attempt, the PI controller's
    first evaluations, the per-sample attempt; also what ``compile=True`` falls back to)
    run by dynamo's ``"eager"`` backend instead of inductor: for tests of what dynamo
    captures and of the loop around it (the graphs made, the calls of f, the checks), which
    inductor's code generation does not change. The test starts without the kept compiled
    copies, plans and warm keys (a copy kept by an earlier test in the process, inductor's
    for the same solver and settings, would serve its solves and recompile through inductor
    for their f); the process's caches come back afterwards, so no later test runs a graph
    made here. Its value: the functions compiled, in order."""
    from neuralode import _attempt, _compile, _loop, _warm, _whole_plan
    from neuralode.controllers import pi

    for module, name in (
        (_compile, "_COMPILED"), (_whole_plan, "_PLANS"), (_whole_plan, "_COPIES"),
        (_warm, "_ENTRIES"),
    ):  # fmt: skip
        monkeypatch.setattr(module, name, {})

    steps: list[Callable] = []

    def traced_only(fn: Callable, key: Any, **options: Any) -> Any:
        steps.append(fn)
        return _compile.compiled(fn, key, **{"backend": "eager", **options})

    for module in (_attempt, _loop, pi):
        monkeypatch.setattr(module, "compiled", traced_only)
    return steps


@pytest.fixture
def whole_solve_traced_only(monkeypatch, steps_traced_only):
    """The compiled whole solve's graphs (and the steps it falls back to: ``steps_traced_only``)
    run by dynamo's ``"eager"`` backend instead of inductor: for tests of what dynamo
    decides (plans, guards, recompiles, the warm path, the graph's own logic: steps,
    landings, checks), which inductor's minutes of code generation do not change;
    inductor's code of the whole solve is tested by test_whole_backend and test_engine."""
    from neuralode import _whole_plan

    monkeypatch.setattr(_whole_plan, "whole_solve_backend", "eager")


@pytest.fixture
def aot_eager(monkeypatch):
    """The library's compiled steps (``compile="step"``, and the steps that ``compile=True``
    compiles where it keeps no whole graph) by torch.compile's ``aot_eager`` backend:
    dynamo's and AOTAutograd's graphs with the eager kernels, for tests of what dynamo and
    AOTAutograd decide (the same steps, graphs, guards and gradients as the eager solve),
    which inductor's code generation does not change. The test's compiled copies are its
    own."""
    from neuralode import _compile

    compile_fn = torch.compile

    def compile_aot_eager(fn, dynamic=None, fullgraph=False, options=None):
        return compile_fn(fn, backend="aot_eager", dynamic=dynamic, fullgraph=fullgraph)

    monkeypatch.setattr(_compile, "_COMPILED", {})
    monkeypatch.setattr(torch, "compile", compile_aot_eager)


@pytest.fixture(autouse=True)
def run_outputs_are_listed(monkeypatch):
    """Every file or directory a command writes at the top of its ``--out`` is one of
    ``RUN_OUTPUTS`` (what ``--overwrite`` removes): any test that runs a command checks it.
    The entries new since the run locked its directory are compared when it unlocks."""
    from neuralode.training import rundir

    acquire, release = rundir.RunLock.acquire, rundir.RunLock.release
    found: dict[Any, set] = {}
    unlisted: list = []

    def acquire_and_list(lock):
        held = acquire(lock)
        found[lock.path] = set(lock.path.parent.iterdir())
        return held

    def list_and_release(lock):
        if lock._fd is not None and lock.path in found and lock.path.parent.is_dir():
            new = set(lock.path.parent.iterdir()) - found.pop(lock.path) - {lock.path}
            unlisted.extend(sorted(new - set(rundir.run_outputs(lock.path.parent))))
        release(lock)

    monkeypatch.setattr(rundir.RunLock, "acquire", acquire_and_list)
    monkeypatch.setattr(rundir.RunLock, "release", list_and_release)
    yield
    assert not unlisted, f"outputs missing from RUN_OUTPUTS (training/rundir.py): {unlisted}"


def make_solver(name: str) -> Solver:
    """A fresh solver with default options."""
    return METHODS[name]()


def fixed_step(name: str, step: float) -> float:
    """A fixed step size for ``name`` on the D1 orbit: implicit Euler's damping (forward in
    time) and amplification (backward) take the orbit into the singularity at r = 0 on steps
    of 0.05 to 0.1, where its Newton iteration rightly fails; it gets steps five times
    shorter."""
    return step / 5 if name == "implicit_euler" else step


def adaptive_tolerances(solver: Solver) -> tuple[float, float]:
    """(rtol, atol) that a method reaches in an affordable number of steps.

    Steps per unit time grow like rtol ** (-1 / (q + 1)) for an error estimate of order q:
    rtol = 10 ** -(2q + 1), so 1e-8 from q = 4 on (dopri5, tsit5, dopri8), 1e-5 for q = 2
    (bosh3) and 1e-3 for first-order estimates, which would need ~1e4 steps per unit time at
    1e-8. Every check in tolerance units scales with these.
    """
    q = solver.error_order
    rtol = 10.0 ** -min(8, 2 * q + 1)
    return rtol, rtol / 100


STEP_COUNTS = sorted({round(2 ** (k / 2)) for k in range(17)})  # 1, 2, 3, 4, 6, ..., 256
ROUNDOFF_PER_STEP = 1000 * 2.0**-52  # a generous bound on float64 rounding added per step
ERROR_CEILING = 3e-2  # larger errors are not in the asymptotic regime (or unstable)
# A stability-polynomial error coefficient this small (relative to 1/k!) lets the next power
# dominate at every step size float64 can measure (tsit5: 3% at z^6; dopri8: 0.1% at z^9).
NEGLIGIBLE = 0.1


# Embedded pairs whose estimate is much smaller than the error of the solution they propagate,
# so that a solve ends further from the truth, in tolerance units, than with other methods.
# RKF1(2): the first-order embedded solution is within 1/512 of the second-order one, so the
# estimate is ~h^2/512 while the propagated error is ~h^3/6 (torchdiffeq's fehlberg2 shows the
# same 1.6e3 tolerance units on the D1 orbit at rtol=1e-4). Bounds in tolerance units are
# multiplied by this factor. KenCarp4's explicit 4(3) pair (kencarp4 without a linear part):
# on linear problems the embedded solution's z^4 coefficient is 0.995 of the exponential's, so
# the estimate is ~0.005 z^4 / 24 against a propagated error ~0.11 z^5 / 120 (backward on A1:
# 1.8e3 tolerance units).
ESTIMATE_OPTIMISM = {"fehlberg2": 10.0, "kencarp4": 10.0}


def accuracy_factor(name: str) -> float:
    """How many times looser than usual a method's results are, in tolerance units."""
    return ESTIMATE_OPTIMISM.get(name, 1.0)


def asymptotic_errors(
    error_with_steps: Callable[[int], float], points: int = 5, most_steps: int = STEP_COUNTS[-1]
) -> tuple[list[float], list[float]]:
    """(step counts, errors) for the fit of an empirical order on a fixed grid.

    Step counts grow by sqrt(2) up to 256; the sweep stops once the error is within
    ``ROUNDOFF_PER_STEP * n`` of round-off, and the last ``points`` counts with errors below
    ``ERROR_CEILING`` (skipping counts where an implicit method's Newton iteration fails)
    are the ones closest to the asymptotic regime that rounding does not
    disturb. At least four are required. ``most_steps``: the sweep's last step count.
    """
    counts, errors = [], []
    for n in STEP_COUNTS:
        if n > most_steps:
            break
        try:
            error = error_with_steps(n)
        except NewtonError:  # an implicit method's steps are too long for its iteration
            continue
        if error < ROUNDOFF_PER_STEP * n:
            break
        if error < ERROR_CEILING:
            counts.append(n)
            errors.append(error)
    assert len(counts) >= 4, f"too few step counts in the asymptotic range: {errors}"
    return counts[-points:], errors[-points:]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    slope, _ = np.polyfit(np.log(np.asarray(xs)), np.log(np.asarray(ys)), 1)
    return float(slope)


class RecordingField:
    """Wraps f(t, y): counts calls and records (t, y, t dtype) of each, detached."""

    def __init__(self, f: Callable[[torch.Tensor, Any], Any]):
        self.f = f
        self.calls: list[tuple[torch.Tensor, Any]] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    @property
    def times(self) -> list[float]:
        return [float(t) for t, _ in self.calls]

    def __call__(self, t: torch.Tensor, y: Any) -> Any:
        self.calls.append((t.detach().clone(), _detach(y)))
        return self.f(t, y)


def _detach(y: Any) -> Any:
    if isinstance(y, torch.Tensor):
        return y.detach().clone()
    if isinstance(y, (tuple, list)):
        return type(y)(_detach(x) for x in y)
    return {key: _detach(value) for key, value in y.items()}


def stability_coefficients(weights, tableau, k_max: int = 14) -> list[float]:
    """k! * weights^T A^(k-1) 1 for k = 1..k_max: 1 where the polynomial matches exp."""
    s = tableau.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    w, v = np.asarray(weights, dtype=np.float64), np.ones(s)
    out = []
    for k in range(1, k_max + 1):
        out.append(math.factorial(k) * float(w @ v))
        v = a @ v
    return out


def effective_linear_order(solver: Solver) -> int:
    """The global order observed on linear problems: one less than the first power past the
    declared order whose stability-polynomial coefficient is off by more than ``NEGLIGIBLE``
    (the declared order for methods without a tableau)."""
    tableau = getattr(solver, "tableau", None)
    if tableau is None:
        return solver.order
    coefficients = stability_coefficients(tableau.b, tableau)
    for k in range(solver.order + 1, len(coefficients) + 1):
        if abs(coefficients[k - 1] - 1) > NEGLIGIBLE:
            return k - 1
    return solver.order
