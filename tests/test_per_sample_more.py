"""Per-sample mode for the hypersolvers and the symplectic methods on a ``FixedGrid``: every
sample steps on its own grid, from its own t0, and equals its lone solve."""

from __future__ import annotations

import pytest
import torch

import neuralode as no
from neuralode.shooting import multiple_shooting_loss
from neuralode.solvers import HyperEuler, HyperMidpoint

F64 = torch.float64
# spans of different lengths and starts; outputs between the grid points of h = 0.07
TS = torch.tensor([[0.0, 0.5, 1.0, 2.0], [1.0, 1.1, 1.3, 3.0], [-1.0, 0.0, 0.2, 0.4]], dtype=F64)
STEPS = torch.tensor([0.1, 0.03, 0.07], dtype=F64)


def pendulum(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A driven pendulum on rows (t (batch,), y (batch, 2)) or one problem (t 0-dim, y (2,))."""
    drive = 1 + 0.2 * torch.sin(t)[..., None] if t.ndim else 1 + 0.2 * torch.sin(t)
    return torch.stack([y[..., 1], -torch.sin(y[..., 0])], -1) * drive


class Correction(torch.nn.Module):
    """A nonzero correction depending on t, y, f(t, y) and dt, on rows or one problem."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(0.5 * torch.randn(2, 2, dtype=F64, generator=generator))

    def forward(self, t, y, dy, dt):
        t, dt = (t[..., None], dt[..., None]) if t.ndim else (t, dt)
        return torch.tanh(y @ self.weight) * torch.cos(t) + 0.3 * dy * dt


class Spring(torch.nn.Module):
    """A nonlinear separable field on (q, p) with a time-dependent force, taken whole."""

    def __init__(self) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(1.3, dtype=F64))

    def forward(self, t, y):
        q, p = y
        return self._dq(t, p), self._dp(t, q)

    def _dq(self, t, p):
        return p / 1.5

    def _dp(self, t, q):
        force = torch.cos(t).reshape(-1, *[1] * (q.ndim - 1)) if t.ndim else torch.cos(t)
        return -self.k * q - 0.2 * q**3 + 0.1 * force


class SpringHalves(Spring):
    """The same field offering its halves (``dq_dt``, ``dp_dt``)."""

    def dq_dt(self, t, p):
        return self._dq(t, p)

    def dp_dt(self, t, q):
        return self._dp(t, q)


def _one(func):
    return lambda t, y: func(t.reshape(1), y[None])[0]


def _hyper(correction: Correction, base=HyperEuler):
    one = base(lambda t, y, dy, dt: correction(t.reshape(1), y[None], dy[None], dt.reshape(1))[0])
    return base(correction), one


def _pair(batch: int = 3):
    generator = torch.Generator().manual_seed(2)
    q0, p0 = torch.randn(2, batch, 2, dtype=F64, generator=generator)
    return q0, p0


def _fields(kind: str):
    return SpringHalves() if kind == "halves" else Spring()


@pytest.mark.parametrize("base", [HyperEuler, HyperMidpoint])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_hypersolver_samples_equal_their_lone_solves(base, direction: float) -> None:
    """Each sample equals its per-sample solve alone bit for bit and its host-loop solve to
    round-off, with the lone solve's steps and evaluations of f."""
    correction = Correction()
    rows, one = _hyper(correction, base)
    y0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
    ts = TS if direction > 0 else TS.flip(1)
    grid = no.FixedGrid(step_size=0.07)
    with torch.no_grad():
        sol = no.solve(pendulum, y0, ts, solver=rows, controller=grid, per_sample=True)
        for i in range(3):
            alone = no.solve(pendulum, y0[i : i + 1], ts[i : i + 1], solver=rows,
                             controller=grid, per_sample=True)  # fmt: skip
            host = no.solve(pendulum, y0[i], ts[i], solver=one, controller=grid)
            assert sol.ys[:, i].equal(alone.ys[:, 0])
            torch.testing.assert_close(sol.ys[:, i], host.ys, rtol=0, atol=2e-15)
            assert int(sol.stats.sample_steps[i]) == host.stats.n_steps
            assert int(sol.stats.sample_nfe[i]) == host.stats.nfe
        # the correction is seen: without it the solve is the base method's
        plain = no.solve(pendulum, y0, ts, solver=rows.base, controller=grid, per_sample=True)
        assert (plain.ys[-1] - sol.ys[-1]).abs().min() > 1e-6


@pytest.mark.parametrize("method", ["leapfrog", "yoshida4", "semi_implicit_euler"])
@pytest.mark.parametrize("kind", ["halves", "whole"])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_symplectic_samples_equal_their_lone_solves(method: str, kind: str, direction) -> None:
    """A pair state (q, p) per sample: each sample equals its lone solve (the host loop on
    (q_i, p_i)) bit for bit, outputs between grid points included, with its steps; its
    evaluations of f (or its halves) equal the lone solve's where the outputs are grid
    points (``FixedGrid()``: steps between the output times)."""
    field = _fields(kind)
    q0, p0 = _pair()
    fine = torch.stack([torch.linspace(float(r[0]), float(r[-1]), 12, dtype=F64) for r in TS])
    for ts, grid in ((TS, no.FixedGrid(step_size=0.07)), (fine, no.FixedGrid())):
        ts = ts if direction > 0 else ts.flip(1)
        with torch.no_grad():
            sol = no.solve(field, (q0, p0), ts, solver=method, controller=grid, per_sample=True)
            for i in range(3):
                host = no.solve(field, (q0[i], p0[i]), ts[i], solver=method, controller=grid)
                assert sol.ys[0][:, i].equal(host.ys[0]) and sol.ys[1][:, i].equal(host.ys[1])
                assert int(sol.stats.sample_steps[i]) == host.stats.n_steps
                if grid.step_size is None or method != "semi_implicit_euler":
                    assert int(sol.stats.sample_nfe[i]) == host.stats.nfe
                else:  # its outputs reuse f(t1, y1), the next step's f0
                    assert int(sol.stats.sample_nfe[i]) < host.stats.nfe


def test_halves_are_called_on_the_rows() -> None:
    """A field offering its halves gets dq_dt(t, p) and dp_dt(t, q) on every sample's rows,
    t one time per sample; f whole only for each sample's first f0."""
    calls: list[str] = []

    class Counting(SpringHalves):
        def forward(self, t, y):
            calls.append("f")
            return super().forward(t, y)

        def dq_dt(self, t, p):
            assert t.shape == (3,) and p.shape == (3, 2)
            calls.append("dq")
            return super().dq_dt(t, p)

        def dp_dt(self, t, q):
            assert t.shape == (3,) and q.shape == (3, 2)
            calls.append("dp")
            return super().dp_dt(t, q)

    with torch.no_grad():
        no.solve(Counting(), _pair(), TS, solver="leapfrog",
                 controller=no.FixedGrid(), per_sample=True)  # fmt: skip
    assert calls[0] == "f" and calls.count("f") == 1
    assert calls.count("dq") == calls.count("dp") == 3  # a half of each kind per step


def test_a_step_size_per_sample_and_the_orders() -> None:
    """``step_size`` of shape (batch,): each sample its own h, as alone; on the harmonic
    oscillator (q, p) -> (p, -q) leapfrog's error at t1 falls by 2^2 and yoshida4's by 2^4
    when every h is halved."""

    def oscillator(t, y):
        q, p = y
        return p, -q

    q0, p0 = torch.ones(3, 1, dtype=F64), torch.zeros(3, 1, dtype=F64)
    span = (TS[:, -1] - TS[:, 0])[:, None]
    for method, order in (("leapfrog", 2), ("yoshida4", 4)):
        errors = []
        for scale in (0.5, 0.25):
            grid = no.FixedGrid(step_size=STEPS * scale)
            q, p = no.solve(oscillator, (q0, p0), TS, solver=method, controller=grid,
                            per_sample=True).ys  # fmt: skip
            errors.append((q[-1] - torch.cos(span)).abs()[:, 0])
            for i in range(3):
                one = no.FixedGrid(step_size=float(STEPS[i]) * scale)
                alone = no.solve(oscillator, (q0[i], p0[i]), TS[i], solver=method, controller=one)
                assert q[:, i].equal(alone.ys[0]) and p[:, i].equal(alone.ys[1])
        ratio = errors[0] / errors[1]
        assert bool(((ratio > 2**order * 0.75) & (ratio < 2**order * 1.25)).all()), ratio


@pytest.mark.parametrize("solver", ["hyper", "leapfrog"])
def test_direct_gradients_equal_the_lone_solves(solver: str) -> None:
    """Direct: the gradients w.r.t. the initial state and the parameters (f's, and the
    correction's) equal the sum of the lone solves'."""
    if solver == "hyper":
        correction = Correction()
        rows, one = _hyper(correction)
        y0 = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1))
        params = (correction.weight,)
        kwargs = dict(solver=rows, controller=no.FixedGrid(step_size=STEPS))
        y = y0.clone().requires_grad_()
        sol = no.solve(pendulum, y, TS, per_sample=True, **kwargs)
        got = torch.autograd.grad(sol.ys.pow(2).sum(), (y, *params))
        want_y, want_p = [], 0
        for i in range(3):
            yi = y0[i].clone().requires_grad_()
            grid = no.FixedGrid(step_size=float(STEPS[i]))
            lone = no.solve(pendulum, yi, TS[i], solver=one, controller=grid)
            g = torch.autograd.grad(lone.ys.pow(2).sum(), (yi, *params))
            want_y.append(g[0])
            want_p = want_p + g[1]
    else:
        field = SpringHalves()
        q0, p0 = _pair()
        params = (field.k,)
        q, p = q0.clone().requires_grad_(), p0.clone().requires_grad_()
        controller = no.FixedGrid(step_size=STEPS)
        sol = no.solve(field, (q, p), TS, solver="leapfrog", controller=controller,
                       per_sample=True)  # fmt: skip
        loss = sol.ys[0].pow(2).sum() + sol.ys[1].pow(3).sum()
        got = torch.autograd.grad(loss, (q, *params))
        want_y, want_p = [], 0
        for i in range(3):
            qi = q0[i].clone().requires_grad_()
            grid = no.FixedGrid(step_size=float(STEPS[i]))
            lone = no.solve(field, (qi, p0[i]), TS[i], solver="leapfrog", controller=grid)
            g = torch.autograd.grad(lone.ys[0].pow(2).sum() + lone.ys[1].pow(3).sum(),
                                    (qi, *params))  # fmt: skip
            want_y.append(g[0])
            want_p = want_p + g[1]
    torch.testing.assert_close(got[0], torch.stack(want_y), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(got[1], want_p, rtol=1e-13, atol=1e-14)


def test_multiple_shooting_with_a_hypersolver_equals_each_group_alone() -> None:
    rate = torch.tensor(0.7, dtype=F64)

    def decay(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -rate * y * torch.cos(t)[:, None]

    ts = torch.linspace(0.0, 3.0, 7, dtype=F64)
    ys = torch.exp(-0.7 * torch.sin(ts))[:, None].expand(7, 2).clone()
    correction = Correction()
    rows, one = _hyper(correction)
    grid = no.FixedGrid(step_size=0.05)
    result = multiple_shooting_loss(decay, ts, ys, group_size=3, solver=rows, controller=grid)
    for k, group in enumerate(result.groups):
        alone = no.solve(_one(decay), result.y0s[k], ts[group], solver=one, controller=grid)
        torch.testing.assert_close(result.predictions[:, k], alone.ys, rtol=0, atol=1e-15)
    (weight,) = torch.autograd.grad(result.loss, correction.weight)
    assert bool(weight.abs().sum() > 0)  # the correction is trained through the loss


def test_throw_false_marks_the_failing_sample_of_a_pair() -> None:
    """A sample whose q overflows is marked NON_FINITE, the others succeed (the pair's
    rows are read per sample)."""

    def blowup(t, y):
        q, p = y
        return p, q**3

    q0 = torch.tensor([[0.1], [0.2], [40.0]], dtype=F64)
    grid = no.FixedGrid(step_size=0.1)
    sol = no.solve(blowup, (q0, q0.clone()), TS, solver="leapfrog", controller=grid,
                   per_sample=True, throw=False)  # fmt: skip
    assert sol.status.tolist() == [0, 0, int(no.Status.NON_FINITE)]


def test_what_stays_unsupported_is_refused_with_the_fix() -> None:
    q0, p0 = _pair()
    field = SpringHalves()
    ts = TS[:, [0, -1]]
    grid = no.FixedGrid(step_size=0.1)
    with pytest.raises(ValueError, match="leapfrog takes fixed steps.*FixedGrid"):
        no.solve(field, (q0, p0), ts, solver="leapfrog", controller=no.PIController(),
                 per_sample=True)  # fmt: skip
    with pytest.raises(ValueError, match="device_loop=True does not run leapfrog.*per_sample"):
        no.solve(field, (q0, p0), ts[0], solver="leapfrog", controller=grid, device_loop=True)
    with pytest.raises(ValueError, match="leapfrog needs the state as a pair"):
        no.solve(pendulum, q0, ts, solver="leapfrog", controller=grid, per_sample=True)
    with pytest.raises(ValueError, match=r"batch first, of one size.*\(3, 2\) and \(2, 2\)"):
        no.solve(field, (q0, p0[:2]), ts, solver="leapfrog", controller=grid, per_sample=True)
    with pytest.raises(ValueError, match="leapfrog does not support event"):
        event = no.Event(lambda t, y: y[0][..., 0])
        no.solve(field, (q0, p0), ts, solver="leapfrog", controller=grid, per_sample=True,
                 event=event)  # fmt: skip
    with pytest.raises(ValueError, match="leapfrog does not support jump_t"):
        no.solve(field, (q0, p0), ts, solver="leapfrog", controller=grid, per_sample=True,
                 jump_t=[0.05])  # fmt: skip
    with pytest.raises(ValueError, match="dense=True per sample.*leapfrog has not"):
        no.solve(field, (q0, p0), ts, solver="leapfrog", controller=grid, per_sample=True,
                 dense=True)  # fmt: skip
    rows, _ = _hyper(Correction())
    with pytest.raises(ValueError, match="hyper_euler needs y0 to be one tensor"):
        no.solve(lambda t, y: y, (q0, p0), ts, solver=rows, controller=grid, per_sample=True)
    with pytest.raises(ValueError, match="hyper_euler takes fixed steps.*FixedGrid"):
        no.solve(pendulum, q0, ts, solver=rows, controller=no.PIController(), per_sample=True)
    with pytest.raises(ValueError, match="device_loop=True does not run hyper_euler"):
        no.solve(_one(pendulum), q0[0], ts[0], solver=rows, controller=grid, device_loop=True)
    wrong = HyperEuler(lambda t, y, dy, dt: y[:, :1])
    with pytest.raises(ValueError, match=r"correction of hyper_euler has shape \(3, 1\)"):
        no.solve(pendulum, q0, ts, solver=wrong, controller=grid, per_sample=True)


# ---------------------------------------------------------------------------------------------
# nested states per sample: each sample's part of every tensor as its row

_W = torch.tensor([[0.3, -0.8, 0.2], [0.9, 0.1, -0.4], [-0.2, 0.5, 0.3]], dtype=F64)


def _flat_field(t, y):
    """A non-autonomous field on rows (batch, 3) with t (batch,), or on one (3,)."""
    return torch.tanh(y @ _W.T) - 0.1 * y * torch.cos(t)[..., None]


def _split(y):
    return (y[..., :1], {"rest": y[..., 1:].reshape(*y.shape[:-1], 1, 2)})


def _join(state):
    first, rest = state  # (..., 1) and (..., 1, 2)
    return torch.cat([first, rest["rest"].reshape(*first.shape[:-1], -1)], -1)


def _nested_field(t, state):
    return _split(_flat_field(t, _join(state)))


@pytest.mark.parametrize("event", [None, "terminal", "non_terminal"])
@pytest.mark.parametrize("gradient", [no.Direct, no.Backsolve, no.Checkpointed])
def test_a_nested_state_per_sample_equals_each_sample_solved_alone(gradient, event) -> None:
    """A tuple (with a dict inside) of (batch, ...) tensors per sample: each sample's
    outputs, steps, event time and state, and gradients equal its lone solve's."""
    y0 = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.7, -0.3], [-0.4, 0.2, 0.6]], dtype=F64)
    ts = torch.linspace(0.0, 2.0, 5, dtype=F64)

    def run(start, **options):
        kwargs = dict(controller=no.PIController(rtol=1e-8, atol=1e-10), **options)
        kwargs["gradient"] = gradient() if gradient is no.Direct else gradient(params=())
        if event is not None:  # samples 1 and 2 cross, sample 0 does not
            kwargs["event"] = no.Event(lambda t, s: s[0][..., 0], terminal=event == "terminal")
        sol = no.solve(_nested_field, start, ts, **kwargs)
        if event != "terminal":
            return sol, _join(sol.ys).pow(2).sum()
        # the event's time and state where there is one, else the final state
        final = _join(sol.ys)[-1]
        if sol.event_t is None:  # (alone, without one)
            return sol, final.pow(2).sum()
        hit = _join(sol.event_y)
        if sol.event_mask is None:  # (alone, with one)
            return sol, sol.event_t + hit.pow(2).sum()
        at_event = sol.event_t.nan_to_num() + hit.nan_to_num().pow(2).sum(-1)
        return sol, torch.where(sol.event_mask, at_event, final.pow(2).sum(-1)).sum()

    rows = y0.clone().requires_grad_(True)
    sol, loss = run(_split(rows), per_sample=True)
    (grad,) = torch.autograd.grad(loss, rows)
    for i in range(3):
        row = y0[i].clone().requires_grad_(True)
        alone, alone_loss = run(_split(row))
        (alone_grad,) = torch.autograd.grad(alone_loss, row) if alone_loss.requires_grad else (0,)
        ys = _join(sol.ys)[:, i].detach()
        alone_ys = _join(alone.ys).detach()
        if event == "terminal" and alone.event_t is not None:  # outputs after it hold it
            hit = float(alone.event_t.detach())
            assert float(sol.event_t[i].detach()) == pytest.approx(hit, abs=1e-13)
            torch.testing.assert_close(
                _join(sol.event_y)[i].detach(), _join(alone.event_y).detach()
            )
            ys = ys[: alone_ys.shape[0]]
        if event is None or gradient is no.Direct:  # (else alone counts two forward solves)
            assert int(sol.stats.sample_steps[i]) == alone.stats.n_steps
        torch.testing.assert_close(ys, alone_ys, rtol=0, atol=1e-12)
        # (Backsolve's backward pass per sample is one solve of the batch as one system)
        close = (
            dict(rtol=1e-6, atol=1e-8) if gradient is no.Backsolve else dict(rtol=1e-9, atol=1e-11)
        )
        torch.testing.assert_close(grad[i], alone_grad, **close)
    if event == "terminal":
        assert sol.event_mask.tolist() == [False, True, True]


def test_a_nested_state_per_sample_keeps_its_structure_in_outputs_and_dense_output() -> None:
    def oscillator(t, s):
        return {"x": s["v"], "v": -s["x"]}

    start = {"x": torch.ones(2, 1, dtype=F64), "v": torch.zeros(2, 1, dtype=F64)}
    ts = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=F64)  # each sample its own span
    control = no.PIController(rtol=1e-10, atol=1e-12)
    sol = no.solve(oscillator, start, ts, controller=control, per_sample=True, dense=True)
    assert sol.ys["x"].shape == (2, 2, 1)
    torch.testing.assert_close(sol.ys["x"][-1, :, 0], torch.cos(ts[:, -1]))
    t = torch.tensor([[0.5, 0.7, 0.9], [1.5, 0.2, 1.9]], dtype=F64)
    values, slopes = sol.evaluate(t), sol.derivative(t)
    assert values["x"].shape == (2, 3, 1) and slopes["v"].shape == (2, 3, 1)
    torch.testing.assert_close(values["x"][..., 0], torch.cos(t), rtol=1e-8, atol=1e-9)
    torch.testing.assert_close(slopes["x"][..., 0], -torch.sin(t), rtol=1e-7, atol=1e-8)
    energy = no.solve(oscillator, start, ts[0], controller=control, per_sample=True,
                      saveat=no.SaveAt(fn=lambda t, s: s["x"] ** 2 + s["v"] ** 2))  # fmt: skip
    torch.testing.assert_close(energy.ys, torch.ones(2, 2, 1, dtype=F64))


def test_a_nested_state_per_sample_fails_per_sample_and_is_refused_where_it_cannot_run() -> None:
    def blowup(t, s):
        return s[0] ** 2, s[1]

    start = (torch.tensor([[1.0], [-1.0]], dtype=F64), torch.zeros(2, 1, dtype=F64))
    ts = torch.tensor([0.0, 2.0], dtype=F64)
    sol = no.solve(blowup, start, ts, per_sample=True, throw=False)
    assert sol.status.tolist() == [int(no.Status.STEP_SIZE_UNDERFLOW), 0]
    assert bool(sol.ys[0][-1, 0].isnan().all()) and float(sol.ys[0][-1, 1]) == pytest.approx(-1 / 3)
    with pytest.raises(
        ValueError, match=r"every tensor's first dimension to be the batch.*\(3, 1\)"
    ):
        no.solve(blowup, (start[0], torch.zeros(3, 1, dtype=F64)), ts, per_sample=True)
    with pytest.raises(ValueError, match="device_loop=True needs y0 to be one tensor"):
        no.solve(blowup, (start[0][0], start[1][0]), ts, device_loop=True)


def test_each_sample_of_a_nested_state_takes_the_steps_it_takes_alone() -> None:
    """A sample's error norm is its lone solve's (the max over its tensors' RMS, not the RMS
    of its whole row), also with per-element tolerances laid out as the flat state."""
    weights = torch.tensor([[0.9, -1.4, 0.3], [1.2, 0.4, -0.8], [-0.5, 1.1, 0.7]], dtype=F64)

    def field(t, state):
        d = 3 * torch.tanh(torch.cat(state, -1) @ weights.T)
        return d[..., :1], d[..., 1:]

    y0 = torch.tensor([[0.5, -0.2, 0.1], [0.1, 0.7, -0.3], [-0.4, 0.2, 0.6]], dtype=F64)
    ts = torch.linspace(0.0, 3.0, 4, dtype=F64)
    # atol per element, flat: the first tensor's 3 entries, then the second's 3 x 2
    atol = torch.cat([torch.full((3,), 1e-9), torch.full((6,), 1e-6)]).to(F64)
    controller = no.PIController(rtol=1e-6, atol=atol)
    sol = no.solve(field, (y0[:, :1], y0[:, 1:]), ts, controller=controller, per_sample=True)
    for i in range(3):
        alone_atol = torch.cat([atol[i : i + 1], atol[3 + 2 * i : 5 + 2 * i]])
        alone = no.solve(field, (y0[i, :1], y0[i, 1:]), ts,
                         controller=no.PIController(rtol=1e-6, atol=alone_atol))  # fmt: skip
        assert int(sol.stats.sample_steps[i]) == alone.stats.n_steps
        torch.testing.assert_close(sol.ys[0][:, i], alone.ys[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(sol.ys[1][:, i], alone.ys[1], rtol=0, atol=1e-12)
