"""Per-sample SDE solves (``per_sample=True`` with a ``VirtualBrownianTree``) against
mathematics: every sample equals the sample solved alone on its own path, the adaptive
solve converges to the exact solution driven by the same Brownian motion at the method's
strong order, the statistics are each sample's, a batch of mixed stiffness costs fewer steps
than one system, gradients match the samples' own, and what cannot run is refused."""

from __future__ import annotations

import pytest
import torch
from sde_problems import GBM, GeneralLinear, RowsOU, ScalarGBM, slope

import neuralode as no
from neuralode.sde import BrownianInterval, SDESolver, SDETerm, VirtualBrownianTree

F64 = torch.float64
TS = torch.linspace(0.0, 1.0, 6, dtype=F64)


class RowTimes(torch.nn.Module):
    """An SDE wrapper that checks f and g receive one time per row."""

    def __init__(self, sde):
        super().__init__()
        self.sde = sde
        self.noise_type, self.sde_type = sde.noise_type, sde.sde_type

    def f(self, t, y):
        assert t.shape == (y.shape[0],) and t.dtype == F64
        return self.sde.f(t, y)

    def g(self, t, y):
        assert t.shape == (y.shape[0],)
        return self.sde.g(t, y)


def solve(sde, bm, y0, method, rtol=1e-3, atol=1e-4, options=None, **kwargs):
    return no.solve(
        SDETerm(sde, bm),
        y0,
        TS,
        solver=SDESolver(method, options, step_doubling=True),
        controller=no.PIController(rtol=rtol, atol=atol),
        **kwargs,
    )


CASES = [  # (sde, noise channels, method, options, Lévy area)
    (GBM("ito"), 2, "euler", None, "none"),
    (GBM("ito"), 2, "milstein", None, "none"),
    (GBM("ito"), 2, "milstein", {"grad_free": True}, "none"),
    (GBM("ito"), 2, "srk", None, "space-time"),
    (ScalarGBM("ito"), 1, "srk", None, "space-time"),
    (GBM("stratonovich"), 2, "heun", None, "none"),
    (GBM("stratonovich"), 2, "midpoint", None, "none"),
    (GBM("stratonovich"), 2, "euler_heun", None, "none"),
    (GeneralLinear("stratonovich"), 3, "log_ode", None, "davie"),
    (RowsOU(torch.linspace(1, 30, 5, dtype=F64)[:, None]), 2, "srk", None, "space-time"),
]


@pytest.mark.parametrize("sde, m, method, options, levy", CASES, ids=lambda x: str(x)[:12])
def test_each_sample_equals_the_sample_solved_alone(sde, m, method, options, levy):
    batch = 5
    bm = VirtualBrownianTree(
        0.0, 1.0, size=(batch, m), dtype=F64, entropy=7, levy_area_approximation=levy
    )
    y0 = torch.linspace(0.5, 1.5, batch * 2, dtype=F64).reshape(batch, 2)
    with torch.no_grad():
        together = solve(RowTimes(sde), bm, y0, method, options=options, per_sample=True)
        steps = together.stats.sample_steps
        assert len(set(steps.tolist())) > 1  # the samples took their own steps
        assert int(steps.sum()) == together.stats.n_steps
        for i in range(batch):
            alone_sde = RowsOU(sde.theta[i : i + 1]) if isinstance(sde, RowsOU) else sde
            alone = solve(alone_sde, bm.rows([i]), y0[i : i + 1], method, options=options,
                          per_sample=True)  # fmt: skip
            assert (alone.ys[:, 0] - together.ys[:, i]).abs().max() < 1e-12
            assert alone.stats.sample_steps.item() == steps[i].item()
            assert alone.stats.sample_rejected.item() == together.stats.sample_rejected[i]
            assert alone.stats.sample_nfe.item() == together.stats.sample_nfe[i]


def test_per_sample_statistics_count_each_samples_evaluations():
    batch = 4
    bm = VirtualBrownianTree(0.0, 1.0, size=(batch, 2), dtype=F64, entropy=1)
    with torch.no_grad():
        sol = solve(GBM("ito"), bm, torch.ones(batch, 2, dtype=F64), "euler", per_sample=True)
    stats = sol.stats
    assert torch.equal(stats.sample_accepted + stats.sample_rejected, stats.sample_steps)
    assert stats.n_accepted == int(stats.sample_accepted.sum())
    # f(t0, y0) and the first step's estimate, then per attempt three Euler steps of f and g
    assert torch.equal(stats.sample_nfe, 2 + 6 * stats.sample_steps)
    assert torch.equal(sol.status, torch.zeros(batch, dtype=torch.long))


@pytest.mark.parametrize(
    "method, levy, order",
    [pytest.param("milstein", "none", 1.0, marks=pytest.mark.slow), ("srk", "space-time", 1.5)],
)
def test_adaptive_per_sample_solve_converges_at_the_strong_order(method, levy, order):
    """Against the exact GBM solution driven by the same W: the mean error falls with the
    mean step size as h^order (the step sizes set by rtol)."""
    sde, batch = GBM("ito"), 64
    bm = VirtualBrownianTree(
        0.0, 1.0, size=(batch, 2), dtype=F64, entropy=3, levy_area_approximation=levy
    )
    y0 = torch.ones(batch, 2, dtype=F64)
    exact = sde.exact(y0, bm(0.0, 1.0), 1.0)
    sizes, errors = [], []
    with torch.no_grad():
        for rtol in (1e-2, 3e-3, 1e-3, 3e-4):
            sol = solve(sde, bm, y0, method, rtol=rtol, atol=rtol, per_sample=True)
            sizes.append(1.0 / sol.stats.sample_accepted.double().mean().item())
            errors.append((sol.ys[-1] - exact).abs().mean().item())
    assert errors[-1] < errors[0] / 5
    assert slope(sizes, errors) == pytest.approx(order, abs=0.3)


def test_mixed_stiffness_costs_fewer_steps_per_sample_than_as_one_system():
    """OU with theta from 1 to 100 across the rows: as one system every row takes the
    stiffest row's steps; per sample each row its own."""
    batch = 16
    theta = torch.logspace(0, 2, batch, dtype=F64)[:, None]
    bm = VirtualBrownianTree(
        0.0, 1.0, size=(batch, 1), dtype=F64, entropy=2, levy_area_approximation="space-time"
    )
    y0 = torch.ones(batch, 1, dtype=F64)
    with torch.no_grad():
        apart = solve(RowsOU(theta), bm, y0, "srk", per_sample=True)
        system = solve(RowsOU(theta), bm, y0, "srk")
    row_steps = apart.stats.sample_steps
    assert row_steps[0] < row_steps[-1]  # the stiff rows take more steps
    assert int(row_steps.sum()) < 0.6 * batch * system.stats.n_steps
    # both are accurate solutions of the same paths
    assert (apart.ys[-1] - system.ys[-1]).abs().max() < 0.05


def test_gradients_are_the_samples_own():
    """Direct() through a per-sample solve: the batch's gradient is the sum of the samples'
    gradients solved alone, finite although finished samples take zero steps."""
    batch = 3
    bm = VirtualBrownianTree(
        0.0, 1.0, size=(batch, 2), dtype=F64, entropy=4, levy_area_approximation="space-time"
    )
    y0 = torch.ones(batch, 2, dtype=F64)
    sde = GBM("ito")
    ys = solve(sde, bm, y0, "srk", per_sample=True).ys
    together = torch.autograd.grad(ys[-1].sum(), [sde.mu, sde.sigma])
    alone = [0.0, 0.0]
    for i in range(batch):
        ys = solve(sde, bm.rows([i]), y0[i : i + 1], "srk", per_sample=True).ys
        for k, g in enumerate(torch.autograd.grad(ys[-1].sum(), [sde.mu, sde.sigma])):
            alone[k] = alone[k] + g
    for a, b in zip(together, alone, strict=True):
        assert torch.isfinite(a) and (a - b).abs() < 1e-10


class _SqrtDecay(torch.nn.Module):
    """dY = -k sqrt(Y) sqrt(Y) dt + 0.01 dW: NaN (and NaN derivatives) where Y < 0."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(3.0, dtype=F64))

    def f(self, t, y):
        return -self.k * torch.sqrt(y) * torch.sqrt(y)

    def g(self, t, y):
        return torch.full_like(y, 0.01)


def test_rejected_attempts_outside_the_sdes_domain_leave_gradients_exact():
    """A first step of 1 overshoots below Y = 0, where f is NaN: the rejected attempts'
    rows are kept out of the graph (f's backward would multiply their zero gradient by its
    NaN derivatives), so the batch's gradients are the sum of the samples' alone."""
    batch = 3
    bm = VirtualBrownianTree(0.0, 1.0, size=(batch, 1), dtype=F64, entropy=2)
    y0 = torch.tensor([[1.0], [2.0], [0.5]], dtype=F64)
    sde = _SqrtDecay()
    solver = SDESolver("euler", step_doubling=True)
    controller = no.PIController(rtol=1e-3, atol=1e-4, first_step=1.0)

    def run(rows, start):
        term = SDETerm(sde, bm.rows(rows))
        sol = no.solve(term, start, TS, solver=solver, controller=controller, per_sample=True)
        return sol, torch.autograd.grad(sol.ys[-1].sum(), (start, sde.k))

    start = y0.clone().requires_grad_(True)
    sol, (g_y0, g_k) = run(list(range(batch)), start)
    assert int(sol.stats.sample_rejected.min()) > 0
    for i in range(batch):
        _, (a_y0, a_k) = run([i], y0[i : i + 1].clone().requires_grad_(True))
        torch.testing.assert_close(g_y0[i], a_y0[0], rtol=1e-10, atol=0)
        g_k = g_k - a_k
    assert abs(float(g_k)) < 1e-10


def test_per_sample_output_times():
    batch = 3
    bm = VirtualBrownianTree(0.0, 2.0, size=(batch, 2), dtype=F64, entropy=5)
    ts = torch.tensor([[0.0, 0.5, 1.0], [0.0, 1.0, 2.0], [0.5, 1.0, 1.5]], dtype=F64)
    y0 = torch.ones(batch, 2, dtype=F64)
    kwargs = dict(
        solver=SDESolver("milstein", step_doubling=True),
        controller=no.PIController(rtol=1e-3, atol=1e-4),
        per_sample=True,
    )
    with torch.no_grad():
        sol = no.solve(SDETerm(GBM(), bm), y0, ts, **kwargs)
        for i in range(batch):
            alone = no.solve(SDETerm(GBM(), bm.rows([i])), y0[i : i + 1], ts[i : i + 1], **kwargs)
            assert (alone.ys[:, 0] - sol.ys[:, i]).abs().max() < 1e-12


def test_what_per_sample_sdes_refuse():
    y0 = torch.ones(2, 1, dtype=F64)
    vbt = VirtualBrownianTree(0.0, 1.0, size=(2, 1), dtype=F64)
    adaptive = SDESolver("euler", step_doubling=True)
    with pytest.raises(ValueError, match="VirtualBrownianTree"):
        interval = BrownianInterval(0.0, 1.0, size=(2, 1), dtype=F64)
        no.solve(SDETerm(GBM(), interval), y0, TS, solver=adaptive, per_sample=True)
    with pytest.raises(ValueError, match="step_doubling=True"):
        no.solve(SDETerm(GBM(), vbt), y0, TS, solver=SDESolver("euler"), per_sample=True)
    with pytest.raises(ValueError, match="needs a PIController"):
        no.solve(
            SDETerm(GBM(), vbt), y0, TS, solver=adaptive, per_sample=True,
            controller=no.FixedGrid(step_size=0.1),
        )  # fmt: skip
    strat = GBM("stratonovich")
    with pytest.raises(ValueError, match="reversible_heun"):
        solver = SDESolver("reversible_heun", step_doubling=True)
        no.solve(SDETerm(strat, vbt), y0, TS, solver=solver, per_sample=True)
    with pytest.raises(ValueError, match="skip_finished"):
        no.solve(SDETerm(GBM(), vbt), y0, TS, solver=adaptive, per_sample="skip_finished")
    with pytest.raises(ValueError, match="use compile='step'"):
        no.solve(SDETerm(GBM(), vbt), y0, TS, solver=adaptive, per_sample=True, cuda_graph=True)
    with pytest.raises(ValueError, match="events"):
        no.solve(
            SDETerm(GBM(), vbt), y0, TS, solver=adaptive, per_sample=True,
            event=no.Event(lambda t, y: y[..., 0] - 2.0),
        )  # fmt: skip
    with pytest.raises(ValueError, match="no dense output"):
        no.solve(SDETerm(GBM(), vbt), y0, TS, solver=adaptive, per_sample=True, dense=True)
    with pytest.raises(
        ValueError, match=r"Batch sizes not consistent: \[2, 3, 2, 2\] \(y0 2, bm 3"
    ):
        bm3 = VirtualBrownianTree(0.0, 1.0, size=(3, 1), dtype=F64)
        no.solve(SDETerm(GBM(), bm3), y0, TS, solver=adaptive, per_sample=True)
