"""Per-sample mode on fixed steps: every sample steps on its own grid from its own t0 (a
``FixedGrid`` as a controller of the per-sample loop), equal to solving it alone."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no
from neuralode import _vmap
from neuralode.shooting import multiple_shooting_loss

F64 = torch.float64
# rows with different starts, ends and spacings; outputs between the grid points of h = 0.07
TS = torch.tensor(
    [
        [0.0, 0.5, 1.0, 2.0],
        [1.0, 1.1, 1.3, 3.0],
        [-1.0, 0.0, 0.2, 0.4],
        [0.3, 0.7, 2.0, 2.5],
    ],
    dtype=F64,
)
STEPS = torch.tensor([0.1, 0.03, 0.07, 0.3], dtype=F64)


class Field(torch.nn.Module):
    """A nonlinear, time-dependent field treating rows independently."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(0.5 * torch.randn(3, 3, dtype=F64, generator=generator))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sin(t)[..., None] * torch.tanh(y @ self.weight) + torch.cos(y) - 0.2 * y


def _y0(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(1))


def _one(field):
    """The field on one problem (the host loop's ``t`` 0-dim, ``y`` (3,))."""
    return lambda t, y: field(t.reshape(1), y[None])[0]


def _host_grid(t0: float, t1: float, h: float) -> list[float]:
    """The host loop's uniform grid, as ``_UniformGrid`` makes it: t0 + i h, then t1."""
    n = math.ceil(abs(t1 - t0) / h - 1e-12)
    step = math.copysign(h, t1 - t0)
    return [t0 + i * step for i in range(n)] + [t1]


@pytest.mark.parametrize("method", ["rk4", "euler", "midpoint", "dopri5"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_each_sample_takes_its_lone_fixed_steps(method: str, direction: float) -> None:
    """Per-sample spans on h = 0.07 (outputs between grid points, a shortened last step):
    each sample evaluates f at exactly its lone grid's points (where its steps start), takes
    its lone solve's steps and evaluations, equals its per-sample solve alone bit for bit
    and the host loop's solve to round-off (a batch's stage sums round differently from a
    1-D state's)."""
    field, y0 = Field(), _y0()
    ts = TS if direction > 0 else TS.flip(1)
    seen: list[torch.Tensor] = []

    def recording(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.append(t.clone())
        return field(t, y)

    kwargs = dict(solver=method, controller=no.FixedGrid(step_size=0.07))
    with torch.no_grad():
        sol = no.solve(recording, y0, ts, per_sample=True, **kwargs)
        times = torch.stack(seen)
        for i in range(4):
            host = no.solve(_one(field), y0[i], ts[i], **kwargs)
            alone = no.solve(field, y0[i : i + 1], ts[i : i + 1], per_sample=True, **kwargs)
            assert sol.ys[:, i].equal(alone.ys[:, 0])
            torch.testing.assert_close(sol.ys[:, i], host.ys, rtol=0, atol=2e-15)
            assert int(sol.stats.sample_steps[i]) == host.stats.n_steps
            assert int(sol.stats.sample_nfe[i]) == host.stats.nfe
            grid = _host_grid(float(ts[i, 0]), float(ts[i, -1]), 0.07)
            assert host.stats.n_steps == len(grid) - 1
            called = set(times[:, i].tolist())
            assert set(grid[:-1]) <= called  # every step's start, bit for bit
    assert sol.stats.sample_rejected.equal(torch.zeros(4, dtype=torch.long))


def test_a_step_size_per_sample_and_the_analytic_solution() -> None:
    """``step_size`` of shape (batch,): each sample its own h, as alone; on dy/dt = -k y
    rk4's error at the end falls by 2^4 when every h is halved."""
    rates = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=F64)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rates[:, None] * y

    y0 = torch.ones(4, 1, dtype=F64)
    exact = torch.exp(-rates * (TS[:, -1] - TS[:, 0]))
    errors = []
    for scale in (0.5, 0.25):
        controller = no.FixedGrid(step_size=STEPS * scale)
        sol = no.solve(decay, y0, TS, solver="rk4", controller=controller, per_sample=True)
        errors.append((sol.ys[-1, :, 0] - exact).abs())
        for i in range(4):
            h = float(STEPS[i]) * scale
            one = no.solve(
                lambda t, y, k=rates[i]: -k * y, y0[i], TS[i], solver="rk4",
                controller=no.FixedGrid(step_size=h),
            )  # fmt: skip
            torch.testing.assert_close(sol.ys[:, i], one.ys, rtol=0, atol=1e-15)
            assert int(sol.stats.sample_steps[i]) == one.stats.n_steps
    ratio = errors[0] / errors[1]
    assert bool(((ratio > 12) & (ratio < 20)).all()), ratio


def test_grids_per_sample_the_output_times_and_a_row_each() -> None:
    """``FixedGrid()`` steps between each sample's own output times; a (batch, m) grid gives
    each sample its row; a 1-D grid serves shared times and is refused for differing spans."""
    field, y0 = Field(), _y0()
    with torch.no_grad():
        between = no.solve(field, y0, TS, solver="rk4", controller=no.FixedGrid(), per_sample=True)
        assert between.stats.sample_steps.equal(torch.full((4,), 3))
        rows = torch.stack([torch.linspace(float(r[0]), float(r[-1]), 6, dtype=F64) for r in TS])
        gridded = no.solve(
            field, y0, TS, solver="rk4", controller=no.FixedGrid(grid=rows), per_sample=True
        )
        for i in range(4):
            host = no.solve(_one(field), y0[i], TS[i], solver="rk4", controller=no.FixedGrid())
            torch.testing.assert_close(between.ys[:, i], host.ys, rtol=0, atol=2e-15)
            one = no.FixedGrid(grid=rows[i])
            host = no.solve(_one(field), y0[i], TS[i], solver="rk4", controller=one)
            torch.testing.assert_close(gridded.ys[:, i], host.ys, rtol=0, atol=2e-15)
        shared = torch.linspace(0.0, 2.0, 5, dtype=F64)
        grid = no.FixedGrid(grid=torch.linspace(0.0, 2.0, 9, dtype=F64))
        sol = no.solve(field, y0, shared, solver="rk4", controller=grid, per_sample=True)
        whole = no.solve(field, y0, shared, solver="rk4", controller=grid)  # one system
        torch.testing.assert_close(sol.ys, whole.ys, rtol=0, atol=2e-15)
        with pytest.raises(ValueError, match="one grid for every sample.*spans differ.*batch, m"):
            no.solve(field, y0, TS, solver="rk4", controller=grid, per_sample=True)


@pytest.mark.parametrize("gradient", ["direct", "backsolve"])
def test_gradients_equal_the_lone_solves(gradient: str) -> None:
    """Direct: the gradients w.r.t. y0 and a parameter equal the sum of the lone solves'
    (spans and shared times); Backsolve on shared times: the lone Backsolve solves' (its
    backward solve is one system on the same grid)."""
    field, y0 = Field(), _y0()
    controller = no.FixedGrid(step_size=0.1)
    cases = [TS, torch.tensor([0.0, 0.3, 1.0], dtype=F64)]
    if gradient == "backsolve":
        cases = cases[1:]
    for ts in cases:
        strategy = no.Direct() if gradient == "direct" else no.Backsolve()
        y = y0.clone().requires_grad_()
        sol = no.solve(
            field, y, ts, solver="rk4", controller=controller, per_sample=True, gradient=strategy
        )
        got = torch.autograd.grad(sol.ys.pow(2).sum(), (y, field.weight))
        lone_y, lone_w = [], 0
        for i in range(4):
            yi = y0[i].clone().requires_grad_()
            t_i = ts if ts.ndim == 1 else ts[i]
            lone = no.Direct() if gradient == "direct" else no.Backsolve(params=[field.weight])
            one = no.solve(_one(field), yi, t_i, solver="rk4", controller=controller, gradient=lone)
            g_y, g_w = torch.autograd.grad(one.ys.pow(2).sum(), (yi, field.weight))
            lone_y.append(g_y)
            lone_w = lone_w + g_w
        torch.testing.assert_close(got[0], torch.stack(lone_y), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(got[1], lone_w, rtol=1e-12, atol=1e-13)


def test_gradcheck_with_a_step_size_per_sample() -> None:
    field = Field()
    ts = TS[:2, :3]
    controller = no.FixedGrid(step_size=STEPS[:2])

    def ends(y0: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        field.weight.data = weight.detach()  # (the value; the gradient flows through f)

        def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.sin(t)[:, None] * torch.tanh(y @ weight) + torch.cos(y) - 0.2 * y

        return no.solve(f, y0, ts, solver="midpoint", controller=controller, per_sample=True).ys

    y0 = _y0(2).requires_grad_()
    weight = field.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(ends, (y0, weight))


def test_vmap_over_the_times_with_rk4_runs_one_per_sample_solve(monkeypatch) -> None:
    """vmap over t (each problem its own times, one direction) on fixed steps solves the
    problems as one per-sample solve, not one by one, and equals each solved alone."""
    field = Field()
    y0s = _y0()

    def one_by_one(*args, **kwargs):
        raise AssertionError("solved one by one")

    monkeypatch.setattr(_vmap, "_solve_one_by_one", one_by_one)
    kwargs = dict(solver="rk4", controller=no.FixedGrid(step_size=0.07))
    with torch.no_grad():
        out = torch.func.vmap(lambda y, t: no.solve(_one(field), y, t, **kwargs).ys)(y0s, TS)
        for i in range(4):
            alone = no.solve(_one(field), y0s[i], TS[i], **kwargs)
            torch.testing.assert_close(out[i], alone.ys, rtol=0, atol=2e-15)


def test_multiple_shooting_with_rk4_equals_each_group_solved_alone() -> None:
    """multiple_shooting_loss on fixed steps: each group steps from its own first time."""
    rate = torch.tensor(0.7, dtype=F64)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rate * y * torch.cos(t)[:, None]

    ts = torch.linspace(0.0, 3.0, 7, dtype=F64)
    ys = torch.exp(-0.7 * torch.sin(ts))[:, None].expand(7, 2).clone()
    kwargs = dict(solver="rk4", controller=no.FixedGrid(step_size=0.05))
    result = multiple_shooting_loss(decay, ts, ys, group_size=3, **kwargs)
    assert result.loss < 1e-12 and result.penalty < 1e-12  # the true field fits the data
    for k, group in enumerate(result.groups):
        alone = no.solve(
            lambda t, y: decay(t.reshape(1), y[None])[0], result.y0s[k], ts[group], **kwargs
        )
        torch.testing.assert_close(result.predictions[:, k], alone.ys, rtol=0, atol=1e-15)


def test_what_stays_unsupported_is_refused_with_the_fix() -> None:
    field, y0 = Field(), _y0()
    per_row = no.FixedGrid(step_size=STEPS)
    with pytest.raises(ValueError, match=r"step_size per sample.*needs per_sample=True"):
        no.solve(_one(field), y0[0], TS[0], solver="rk4", controller=per_row)
    with pytest.raises(ValueError, match=r"step_size per sample must have shape \(batch,\)"):
        no.solve(field, y0[:2], TS[:2], solver="rk4", controller=per_row, per_sample=True)
    with pytest.raises(ValueError, match="Backsolve.*cannot take FixedGrid.*gradient=Direct"):
        no.solve(field, y0, TS, solver="rk4", controller=per_row, per_sample=True,
                 gradient=no.Backsolve())  # fmt: skip
    with pytest.raises(ValueError, match="rk4 has no error estimate.*FixedGrid"):
        no.solve(field, y0, TS, solver="rk4", controller=no.PIController(), per_sample=True)
    with pytest.raises(ValueError, match="positive and finite in every entry"):
        no.FixedGrid(step_size=torch.tensor([0.1, 0.0]))
    with pytest.raises(no.MaxStepsError, match="sample 1's fixed grid .* more than max_steps=50"):
        no.solve(field, y0, TS, solver="rk4", controller=per_row, per_sample=True, max_steps=50)


@pytest.mark.slow
def test_compiled_steps_take_the_eager_loops_steps() -> None:
    """compile='step' (and compile=True, which compiles each step on fixed steps) takes the
    eager loop's steps; the compiled arithmetic may round differently."""
    field, y0 = Field(), _y0()
    kwargs = dict(solver="rk4", controller=no.FixedGrid(step_size=STEPS), per_sample=True)
    with torch.no_grad():
        eager = no.solve(field, y0, TS, **kwargs)
        for compile in ("step", True):
            compiled = no.solve(field, y0, TS, compile=compile, **kwargs)
            torch.testing.assert_close(compiled.ys, eager.ys, rtol=0, atol=1e-14)
            assert compiled.stats.sample_steps.equal(eager.stats.sample_steps)
