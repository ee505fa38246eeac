"""Per-sample time spans: ``ts`` of shape (batch, n), each sample its own t0, t1 and outputs,
equal to solving each sample alone."""

from __future__ import annotations

import math

import pytest
import torch

import neuralode as no

F64 = torch.float64
CONTROLLER = dict(rtol=1e-9, atol=1e-11)
# rows with different starts, ends and spacings (and one span inside another's)
TS = torch.tensor(
    [
        [0.0, 0.5, 1.0, 2.0],
        [1.0, 1.1, 1.3, 3.0],
        [-1.0, 0.0, 0.2, 0.4],
        [0.3, 0.7, 2.0, 2.5],
    ],
    dtype=F64,
)


class Field(torch.nn.Module):
    """A nonlinear, time-dependent field treating rows independently."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(0.5 * torch.randn(3, 3, dtype=F64, generator=generator))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.sin(t)[:, None] * torch.tanh(y @ self.weight) + torch.cos(y) - 0.2 * y


def _y0(batch: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, dtype=F64, generator=torch.Generator().manual_seed(1))


def _alone(field, y0, ts, **kwargs):
    """Each sample solved alone (a per-sample batch of one), stacked as the batch is."""
    rows = [
        no.solve(field, y0[i : i + 1], ts[i], per_sample=True, **kwargs) for i in range(len(y0))
    ]
    return torch.cat([r.ys for r in rows], 1), torch.cat([r.stats.sample_steps for r in rows])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_spans_equal_solving_each_sample_alone(method: str, direction: float) -> None:
    field, y0 = Field(), _y0()
    ts = TS if direction > 0 else TS.flip(1)
    # equal to the solves alone at any tolerance: one that keeps bosh3 to a few dozen steps
    kwargs = dict(solver=method, controller=no.PIController(1e-6, 1e-8))
    with torch.no_grad():
        sol = no.solve(field, y0, ts, per_sample=True, **kwargs)
        alone, steps = _alone(field, y0, ts, **kwargs)
    assert sol.ys.shape == (4, 4, 3)
    assert sol.ts is ts
    assert sol.ys[0].equal(y0)
    torch.testing.assert_close(sol.ys, alone, rtol=0, atol=1e-12)
    assert sol.stats.sample_steps.equal(steps)
    assert sol.succeeded and sol.status.equal(torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("method", ["dopri5", "dopri8"])
def test_spans_take_the_standard_loops_steps(method: str) -> None:
    """Each sample takes the steps the standard (host) loop takes on it alone, and its
    outputs agree to round-off (the loops interpolate with different arithmetic)."""
    field, y0 = Field(), _y0()
    controller = no.PIController(**CONTROLLER)
    with torch.no_grad():
        sol = no.solve(field, y0, TS, per_sample=True, solver=method, controller=controller)
        for i in range(4):
            one = no.solve(
                lambda t, y: field(t.reshape(1), y[None])[0],
                y0[i],
                TS[i],
                solver=method,
                controller=controller,
            )
            assert one.stats.n_steps == int(sol.stats.sample_steps[i])
            torch.testing.assert_close(sol.ys[:, i], one.ys, rtol=0, atol=1e-10)


def test_spans_match_the_exact_solution_and_f_sees_each_samples_time() -> None:
    rates = torch.tensor([0.5, -1.0, 2.0, 0.1], dtype=F64)
    first: list[torch.Tensor] = []

    def decay(t, y):
        if not first:
            first.append(t.clone())
        return -rates[:, None] * y * (1 + 0.5 * torch.cos(t))[:, None]

    y0 = torch.ones(4, 1, dtype=F64)
    sol = no.solve(decay, y0, TS, per_sample=True, controller=no.PIController(1e-10, 1e-12))
    assert first[0].equal(TS[:, 0])
    # y = exp(-r (t - t0 + 0.5 (sin t - sin t0)))
    exponent = (TS - TS[:, :1]) + 0.5 * (torch.sin(TS) - torch.sin(TS[:, :1]))
    exact = torch.exp(-rates[:, None] * exponent).T
    torch.testing.assert_close(sol.ys[..., 0], exact, rtol=1e-8, atol=1e-10)


def test_one_output_per_sample_and_shared_rows() -> None:
    field, y0 = Field(), _y0()
    with torch.no_grad():
        only_t0 = no.solve(field, y0, TS[:, :1], per_sample=True)
        assert only_t0.ys.shape == (1, 4, 3) and only_t0.ys[0].equal(y0)
        # identical rows give the shared 1-D solve's results
        shared = no.solve(field, y0, TS[0], per_sample=True)
        rows = no.solve(field, y0, TS[0].expand(4, -1), per_sample=True)
    assert rows.ys.equal(shared.ys)


def test_skip_finished_and_odeint_give_the_same_results() -> None:
    field, y0 = Field(), _y0()
    controller = no.PIController(**CONTROLLER)
    with torch.no_grad():
        full = no.solve(field, y0, TS, per_sample=True, controller=controller)
        skip = no.solve(field, y0, TS, per_sample="skip_finished", controller=controller)
        ys = no.odeint(field, y0, TS, options=dict(per_sample=True), **CONTROLLER)
    # f on fewer rows: a matrix product may round a row differently for another batch size
    torch.testing.assert_close(skip.ys, full.ys, rtol=1e-13, atol=1e-15)
    assert torch.equal(skip.stats.sample_steps, full.stats.sample_steps)
    assert skip.stats.rows_evaluated < full.stats.rows_evaluated  # finished samples skipped
    assert ys.equal(full.ys)


def test_odeint_adjoint_with_spans_matches_odeint() -> None:
    field, y0 = Field(), _y0().requires_grad_(True)
    options = dict(per_sample=True)
    grads = []
    for odeint in (no.odeint, no.odeint_adjoint):
        ys = odeint(field, y0, TS, options=options, rtol=1e-10, atol=1e-12)
        grads.append(torch.autograd.grad(ys.sum(), (y0, field.weight)))
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_gradcheck_direct_with_respect_to_y0_and_a_parameter() -> None:
    y0 = _y0(3).requires_grad_(True)
    weight = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=F64, requires_grad=True)
    ts = torch.tensor([[0.0, 0.4, 1.0], [0.5, 0.6, 0.8], [-0.5, 0.0, 0.7]], dtype=F64)

    def run(y0, weight):
        def field(t, y):
            return torch.tanh(y[:, :2] @ weight).repeat(1, 2)[:, :3] * torch.cos(t)[:, None]

        controller = no.PIController(1e-10, 1e-12)
        return no.solve(field, y0, ts, per_sample=True, controller=controller).ys

    # random projections of the Jacobian (fast_mode): a difference per input, not per entry
    assert torch.autograd.gradcheck(
        run, (y0, weight), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True
    )


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_backsolve_matches_direct_and_each_sample_alone(direction: float) -> None:
    field, y0 = Field(), _y0().requires_grad_(True)
    ts = TS if direction > 0 else TS.flip(1)
    controller = no.PIController(1e-9, 1e-11)
    weights = torch.randn(4, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    grads = []
    for gradient in (no.Direct(), no.Backsolve()):
        sol = no.solve(field, y0, ts, per_sample=True, controller=controller, gradient=gradient)
        grads.append(torch.autograd.grad((sol.ys * weights).sum(), (y0, field.weight)))
    alone_y0, alone_w = torch.zeros_like(y0), torch.zeros_like(field.weight)
    for i in range(4):
        sol = no.solve(field, y0[i : i + 1], ts[i], per_sample=True, controller=controller)
        g_y0, g_w = torch.autograd.grad((sol.ys[:, 0] * weights[:, i]).sum(), (y0, field.weight))
        alone_y0, alone_w = alone_y0 + g_y0, alone_w + g_w
    torch.testing.assert_close(grads[0][0], alone_y0, rtol=0, atol=1e-12)
    torch.testing.assert_close(grads[0][1], alone_w, rtol=0, atol=1e-12)
    # the continuous adjoint on per-sample clocks: the discrete gradient to the tolerance
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gradient", [no.Direct, no.Backsolve])
def test_time_gradients_per_sample_equal_each_sample_alone(gradient) -> None:
    field, y0 = Field(), _y0()
    ts = TS.clone().requires_grad_(True)
    controller = no.PIController(1e-9, 1e-11)
    weights = torch.randn(4, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    sol = no.solve(field, y0, ts, per_sample=True, controller=controller, gradient=gradient())
    (g,) = torch.autograd.grad((sol.ys * weights).sum(), ts)
    for i in range(4):
        ti = TS[i].clone().requires_grad_(True)
        alone = no.solve(field, y0[i : i + 1], ti, per_sample=True, controller=controller)
        (expected,) = torch.autograd.grad((alone.ys[:, 0] * weights[:, i]).sum(), ti)
        torch.testing.assert_close(g[i], expected, rtol=1e-6, atol=1e-8)
    # dL/dt_last = w . f(t_last, y_last): the exact flow's derivative
    with torch.no_grad():
        f_end = field(TS[:, -1], sol.ys[-1])
    torch.testing.assert_close(g[:, -1], (weights[-1] * f_end).sum(1), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("gradient", [no.Direct, no.Backsolve])
def test_events_with_spans(gradient) -> None:
    """Sample i's event at t = c_i (shifted by the state a little): located in its own span,
    equal to solving it alone; a sample whose span ends first has none."""
    field, y0 = Field(), _y0().requires_grad_(True)
    c = torch.tensor([0.7, 5.0, 0.1, 1.5], dtype=F64)
    event = no.Event(lambda t, y: t - c[: len(t)] + 0.01 * y[:, 0])
    controller = no.PIController(1e-9, 1e-11)
    sol = no.solve(
        field, y0, TS, per_sample=True, controller=controller, event=event, gradient=gradient()
    )
    assert sol.event_mask.tolist() == [True, False, True, True]
    assert sol.status.tolist() == [4, 0, 4, 4] and sol.succeeded
    (g,) = torch.autograd.grad(sol.ys.sum() + sol.event_t.nan_to_num().sum(), y0)
    for i in range(4):
        alone_event = no.Event(lambda t, y, i=i: t - c[i] + 0.01 * y[:, 0])
        y0_i = y0.detach()[i : i + 1].requires_grad_(True)
        alone = no.solve(
            field, y0_i, TS[i], per_sample=True, controller=controller, event=alone_event
        )
        torch.testing.assert_close(sol.ys[:, i], alone.ys[:, 0], rtol=0, atol=1e-12)
        torch.testing.assert_close(sol.event_t[i], alone.event_t[0], equal_nan=True)
        (g_i,) = torch.autograd.grad(alone.ys.sum() + alone.event_t.nan_to_num().sum(), y0_i)
        torch.testing.assert_close(g[i], g_i[0], rtol=1e-6, atol=1e-7)


def test_bad_per_sample_times_are_refused_with_the_fix() -> None:
    field, y0 = Field(), _y0()
    with pytest.raises(ValueError, match=r"need per_sample=True"):
        no.solve(field, y0, TS)
    with pytest.raises(ValueError, match=r"shape \(batch, n\) = \(4, n\)"):
        no.solve(field, y0, TS[:3], per_sample=True)
    bad = TS.clone()
    bad[2, 2] = bad[2, 1]
    with pytest.raises(ValueError, match=r"sample 2: t\[2, 1\]=0.0, t\[2, 2\]=0.0"):
        no.solve(field, y0, bad, per_sample=True)
    mixed = TS.clone()
    mixed[1] = mixed[1].flip(0)
    with pytest.raises(ValueError, match="sample 1's times run in the other direction"):
        no.solve(field, y0, mixed, per_sample=True)
    infinite = TS.clone()
    infinite[3, -1] = math.inf
    with pytest.raises(ValueError, match="sample 3's output times\\) contains NaN or inf"):
        no.solve(field, y0, infinite, per_sample=True)
    with pytest.raises(TypeError, match="floating point"):
        no.solve(field, y0, TS.long(), per_sample=True)
    with pytest.raises(ValueError, match="need per_sample=True"):
        no.odeint(field, y0, TS)


def test_dense_and_saveat_with_spans() -> None:
    """The dense solution evaluates each sample inside its own span; SaveAt(t1=True) keeps
    each sample's last time, and a SaveAt function gets each sample's own times."""
    rates = torch.tensor([0.5, 2.0], dtype=F64)
    spans = torch.tensor([[0.0, 0.5, 1.0], [2.0, 2.1, 3.0]], dtype=F64)
    y0 = torch.ones(2, 1, dtype=F64)

    def decay(t, y):
        return -rates[:, None] * y

    controller = no.PIController(1e-10, 1e-12)
    sol = no.solve(decay, y0, spans, per_sample=True, dense=True, controller=controller)
    points = torch.tensor([[0.25, 0.75], [2.5, 2.9]], dtype=F64)
    exact = torch.exp(-rates[:, None] * (points - spans[:, :1]))
    torch.testing.assert_close(sol.evaluate(points)[..., 0], exact, rtol=1e-8, atol=0)
    last = no.solve(decay, y0, spans, per_sample=True, saveat=no.SaveAt(t1=True))
    assert last.ts.equal(spans[:, -1:])
    torch.testing.assert_close(last.ys[0, :, 0], torch.exp(-rates * 1.0), rtol=1e-5, atol=0)
    seen = []
    kept = no.SaveAt(fn=lambda t, y: seen.append(t) or y.sum(1))
    no.solve(decay, y0, spans, per_sample=True, saveat=kept)
    assert torch.stack(seen).equal(spans.T)
