"""Compiled SDE solves (``compile="step"`` and ``compile=True``, which compiles each step for
SDEs) against the eager solve: the same steps, values and statistics, gradients through
``Direct()``, and no recompilation for a new y0 of the same shape.

On fixed steps the compiled attempt sees the eager Brownian values at the same times, so
the outputs agree to round-off. Adaptive steps feed each step's Brownian increments back
into the next step's size, and a Brownian path is only Hölder-1/2 continuous in time: a
difference of one ulp in a step's end changes its increment by about its square root, so
inductor's round-off (a different order of operations than the eager kernels) grows into
different, equally valid steps within a few steps. The machinery (Brownian motion drawn
outside the graph, evaluations counted outside it) is checked for the same steps with
torch.compile's ``aot_eager`` backend (dynamo's graph, eager kernels); with inductor the
per-sample solve is checked against the exact solution."""

from __future__ import annotations

import shutil

import pytest
import torch
from sde_problems import GBM, GeneralLinear, RowsOU

import neuralode as no
from neuralode.sde import BrownianInterval, SDESolver, SDETerm, VirtualBrownianTree

F64 = torch.float64
TS = torch.linspace(0.0, 1.0, 5, dtype=F64)

pytestmark = pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)


def _y0(batch: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.linspace(0.5, 1.5, 2 * batch, dtype=F64).reshape(batch, 2)


def _no_new_graph():
    return torch._dynamo.config.patch(error_on_recompile=True)


@pytest.mark.parametrize(
    "sde, m, method, levy",
    [
        (GBM(), 2, "euler", "none"),
        (GeneralLinear("ito", d=2, m=3), 3, "euler", "none"),
        pytest.param(GBM(), 2, "srk", "space-time", marks=pytest.mark.slow),
        pytest.param(GBM(), 2, "milstein", "none", marks=pytest.mark.slow),
        pytest.param(
            GeneralLinear("stratonovich", 2, 3), 3, "heun", "none", marks=pytest.mark.slow
        ),
    ],
    ids=["euler-diagonal", "euler-general", "srk", "milstein", "heun-general"],
)
def test_fixed_grid_compiled_equals_eager(sde, m, method, levy):
    def run(y0, compile):
        bm = BrownianInterval(0.0, 1.0, size=(4, m), dtype=F64, entropy=3,
                              levy_area_approximation=levy)  # fmt: skip
        solver, grid = SDESolver(method), no.FixedGrid(step_size=0.05)
        return no.solve(SDETerm(sde, bm), y0, TS, solver=solver, controller=grid, compile=compile)

    with torch.no_grad():
        eager, compiled = run(_y0(4), False), run(_y0(4), "step")
        with _no_new_graph():
            again = run(_y0(4, 1.3), "step")
        reference = run(_y0(4, 1.3), False)
    torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(again.ys, reference.ys, rtol=1e-12, atol=1e-12)
    for sol, ref in ((compiled, eager), (again, reference)):
        assert (sol.stats.nfe, sol.stats.n_steps) == (ref.stats.nfe, ref.stats.n_steps)
    assert eager.stats.n_steps == 20


@pytest.mark.usefixtures("aot_eager")
def test_adaptive_one_system_compiled_equals_eager_with_gradients():
    """Step doubling on a BrownianInterval, gradients through Direct(): compile='step' and
    compile=True (each step compiled for SDEs, no other graph) take the eager steps
    (dynamo's graphs with the eager kernels: inductor's are tested on fixed steps and per
    sample)."""
    results = {}
    for mode in (False, "step", True):
        bm = BrownianInterval(0.0, 1.0, size=(4, 2), dtype=F64, entropy=3)
        y0 = _y0(4).requires_grad_(True)
        solver, pi = SDESolver("euler", step_doubling=True), no.PIController(1e-3, 1e-4)
        with _no_new_graph() if mode is True else torch.enable_grad():
            sol = no.solve(SDETerm(GBM(), bm), y0, TS, solver=solver, controller=pi, compile=mode)
            sol.ys[-1].pow(2).sum().backward()
        results[mode] = sol, y0.grad
    (eager, grad), *others = results.values()
    assert eager.stats.n_rejected > 0
    for sol, g in others:
        stats = (sol.stats.nfe, sol.stats.n_steps, sol.stats.n_accepted, sol.stats.n_rejected)
        assert stats == (eager.stats.nfe, eager.stats.n_steps, eager.stats.n_accepted,
                         eager.stats.n_rejected)  # fmt: skip
        torch.testing.assert_close(sol.ys, eager.ys, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(g, grad, rtol=1e-8, atol=1e-10)


def _per_sample(sde, y0, compile, method="euler", levy="none"):
    bm = VirtualBrownianTree(0.0, 1.0, size=tuple(y0.shape), dtype=F64, entropy=0,
                             levy_area_approximation=levy)  # fmt: skip
    solver, pi = SDESolver(method, step_doubling=True), no.PIController(1e-3, 1e-4)
    return no.solve(SDETerm(sde, bm), y0, TS, solver=solver, controller=pi, per_sample=True,
                    compile=compile)  # fmt: skip


@pytest.mark.usefixtures("aot_eager")
def test_per_sample_compiled_attempt_takes_the_eager_steps():
    """Dynamo's graph of the attempt with eager kernels: the same values bit for bit, every
    sample's statistics, and one graph for a new y0."""
    from torch._dynamo.utils import counters

    sde = RowsOU(torch.logspace(0, 2, 6, dtype=F64)[:, None])
    y0 = torch.zeros(6, 1, dtype=F64)
    with torch.no_grad():
        eager = _per_sample(sde, y0, False)
        graphs = counters["stats"]["unique_graphs"]
        compiled = _per_sample(sde, y0, "step")
        assert counters["stats"]["unique_graphs"] == graphs + 1
        with _no_new_graph():
            again = _per_sample(sde, y0 + 0.5, True)
        reference = _per_sample(sde, y0 + 0.5, False)
    for sol, ref in ((compiled, eager), (again, reference)):
        assert torch.equal(sol.ys, ref.ys)
        for name in ("sample_steps", "sample_accepted", "sample_rejected", "sample_nfe"):
            assert torch.equal(getattr(sol.stats, name), getattr(ref.stats, name)), name
        assert (sol.stats.nfe, sol.stats.rows_evaluated) == (
            ref.stats.nfe,
            ref.stats.rows_evaluated,
        )
    steps = eager.stats.sample_steps
    assert len(set(steps.tolist())) > 1
    # f(t0, y0), the first step's estimate, then three Euler steps of f and g per attempt
    assert torch.equal(eager.stats.sample_nfe, 2 + 6 * steps)
    assert eager.stats.rows_evaluated == 6 * eager.stats.nfe


@pytest.mark.usefixtures("aot_eager")
def test_per_sample_compiled_gradients_equal_the_eager_ones():
    """Direct() through the compiled attempts of a per-sample srk solve: the eager steps and
    gradients."""
    grads, steps = [], []
    for mode in (False, "step"):
        y0 = _y0(4).requires_grad_(True)
        sol = _per_sample(GBM(), y0, mode, "srk", "space-time")
        sol.ys[-1].pow(2).sum().backward()
        grads.append(y0.grad)
        steps.append(sol.stats.sample_steps)
    assert torch.equal(steps[0], steps[1])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


def test_per_sample_compiled_solve_converges_like_the_eager_one():
    """Inductor's compiled attempt: every sample as accurate as the eager solve against the
    exact GBM solution on the same Brownian motion, each sample's own counts, one graph."""
    sde, batch = GBM(), 16
    y0 = torch.ones(batch, 2, dtype=F64)
    errors, calls = {}, {}
    with torch.no_grad():
        for mode in (False, "step"):
            sol = _per_sample(sde, y0, mode, "srk", "space-time")
            bm = VirtualBrownianTree(0.0, 1.0, size=(batch, 2), dtype=F64, entropy=0,
                                     levy_area_approximation="space-time")  # fmt: skip
            # (at the end: outputs inside a step are linear between its ends)
            errors[mode] = (sol.ys[-1] - sde.exact(y0, bm(0.0, 1.0), 1.0)).abs().amax(1)
            stats = sol.stats
            assert torch.equal(stats.sample_accepted + stats.sample_rejected, stats.sample_steps)
            calls[mode] = int(stats.sample_nfe[0] - 2) // int(stats.sample_steps[0])
            assert torch.equal(stats.sample_nfe, 2 + calls[mode] * stats.sample_steps)
            assert stats.nfe == int(stats.sample_nfe.max())
            assert stats.rows_evaluated == batch * stats.nfe
        with _no_new_graph():
            _per_sample(sde, 2 * y0, "step", "srk", "space-time")
    assert calls["step"] == calls[False] == 21  # three SRK steps of 3 f and 4 g
    assert errors["step"].mean() < 2 * errors[False].mean()
    assert errors["step"].max() < 1e-2


def test_adaptive_sde_steps_move_with_one_ulp_of_the_step_sizes(monkeypatch):
    """Why the inductor-compiled per-sample solve is not compared step for step: the eager
    solve itself takes other steps when every step size moves by one ulp (the Brownian
    increments are Hölder-1/2 in the step's end and set the next step's size)."""
    from neuralode.controllers.pi import PIController

    sde = RowsOU(torch.logspace(0, 2, 8, dtype=F64)[:, None])
    y0 = torch.zeros(8, 1, dtype=F64)
    with torch.no_grad():
        eager = _per_sample(sde, y0, False)
        decide = PIController.decide

        def one_ulp_larger(self, *args, **kwargs):
            accept, size, previous = decide(self, *args, **kwargs)
            return accept, size * (1 + 2.0**-52), previous

        monkeypatch.setattr(PIController, "decide", one_ulp_larger)
        moved = _per_sample(sde, y0, False)
    changed = eager.stats.sample_steps != moved.stats.sample_steps
    assert int(changed.sum()) >= 4
    assert (eager.ys[-1] - moved.ys[-1]).abs().max() > 1e-4
