"""The derivative term of the step-size controller (``PIController(dcoeff=...)``, also
``PIDController``): its formula, on host floats and per-sample tensors alike, and the same
steps in every execution mode."""

from __future__ import annotations

import math
import shutil

import pytest
import torch

import neuralode as no

PID = dict(rtol=1e-7, atol=1e-9, pcoeff=0.2, icoeff=0.4, dcoeff=0.15)


def diffrax_factor(ratio: float, last: float, before: float, k: int, p, i, d, safety=0.9):
    """diffrax 0.7's PIDController factor, written from its definition: the inverse scaled
    errors to the powers (p + i + d) / k, -(p + 2 d) / k and d / k."""
    beta1, beta2, beta3 = (p + i + d) / k, -(p + 2 * d) / k, d / k
    return safety * (1 / ratio) ** beta1 * (1 / last) ** beta2 * (1 / before) ** beta3


def test_pid_factor_and_memory_on_floats_and_tensors() -> None:
    controller = no.PIDController(**PID, ifactor=100.0, dfactor=0.01)
    assert controller is not None and no.PIDController is no.PIController
    exponent = 1 / 5  # (dopri5's error estimate is of order 4)
    memory = controller.initial_memory()
    assert memory == (1.0, 1.0)
    ratios = [0.3, 0.05, 2.0, 0.7]
    history = [1.0, 1.0]  # the accepted steps' ratios, latest last
    for ratio in ratios:
        accept, size, memory = controller.decide(ratio, 0.1, memory, exponent)
        want = 0.1 * diffrax_factor(ratio, history[-1], history[-2], 5, 0.2, 0.4, 0.15)
        assert accept == (ratio <= 1)
        assert math.isclose(size, want, rel_tol=1e-12)
        if accept:
            history.append(ratio)
        assert memory == (history[-1], history[-2])
    # per sample: the same numbers row by row, the memory a (2, batch) tensor
    ratio = torch.tensor(ratios, dtype=torch.float64)
    tensor_memory = controller.initial_memory(torch.ones(4, dtype=torch.float64))
    assert tensor_memory.shape == (2, 4)
    tensor_memory = torch.tensor([[0.5, 0.2, 0.9, 0.1], [0.3, 0.4, 1.0, 0.6]], dtype=torch.float64)
    accept, size, new = controller.decide(
        ratio, torch.full_like(ratio, 0.1), tensor_memory, exponent
    )
    for j in range(4):
        last, before = float(tensor_memory[0, j]), float(tensor_memory[1, j])
        float_accept, float_size, float_memory = controller.decide(
            ratios[j], 0.1, (last, before), exponent
        )
        assert bool(accept[j]) == float_accept
        assert math.isclose(float(size[j]), float_size, rel_tol=1e-12)
        assert (float(new[0, j]), float(new[1, j])) == float_memory


def test_dcoeff_zero_is_the_pi_controller_and_bad_values_are_refused() -> None:
    f = lambda t, y: torch.stack([y[1], -y[0] + (1 - y[0] ** 2) * y[1]])  # noqa: E731
    y0, ts = torch.tensor([2.0, 0.0], dtype=torch.float64), torch.linspace(0, 5, 3).double()
    pi = no.solve(f, y0, ts, controller=no.PIController(pcoeff=0.3, icoeff=0.3))
    pid = no.solve(f, y0, ts, controller=no.PIDController(pcoeff=0.3, icoeff=0.3, dcoeff=0.0))
    assert pi.stats.n_steps == pid.stats.n_steps and torch.equal(pi.ys, pid.ys)
    for bad in (-0.1, math.nan, math.inf, "0.1"):
        with pytest.raises(ValueError, match="dcoeff must be a finite number >= 0"):
            no.PIDController(dcoeff=bad)


def vdp(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Van der Pol rows (x, v) with mu 1, 3, 6 for rows 0, 1, 2."""
    mu = torch.tensor([1.0, 3.0, 6.0], dtype=y.dtype)[: y.shape[0], None]
    x, v = y[..., :1], y[..., 1:]
    return torch.cat([v, mu * (1 - x**2) * v - x], -1)


Y0 = torch.tensor([[2.0, 0.0], [1.0, 1.0], [-1.5, 0.5]], dtype=torch.float64)
TS = torch.linspace(0.0, 4.0, 5, dtype=torch.float64)


def test_per_sample_rows_take_their_own_pid_steps() -> None:
    """Per sample, each row's PID steps and outputs are its solve alone (host loop)."""
    together = no.solve(vdp, Y0, TS, controller=no.PIDController(**PID), per_sample=True)
    for i in range(3):

        def row(t: torch.Tensor, y: torch.Tensor, i: int = i) -> torch.Tensor:
            padded = torch.zeros(3, 2, dtype=y.dtype).index_copy(0, torch.tensor([i]), y)
            return vdp(t, padded)[i : i + 1]

        alone = no.solve(row, Y0[i : i + 1], TS, controller=no.PIDController(**PID))
        assert int(together.stats.sample_steps[i]) == alone.stats.n_steps
        torch.testing.assert_close(together.ys[:, i], alone.ys[:, 0], rtol=1e-12, atol=1e-13)


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
@pytest.mark.parametrize("per_sample", [False, True], ids=["one-problem", "per-sample"])
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the PID logic)
def test_device_loop_and_whole_graph_take_the_host_loops_pid_steps(per_sample: bool) -> None:
    controller = no.PIDController(**PID)
    with torch.no_grad():
        eager = no.solve(vdp, Y0, TS, controller=controller, per_sample=per_sample)
        whole = no.solve(vdp, Y0, TS, controller=controller, per_sample=per_sample, compile=True)
        if not per_sample:
            device = no.solve(vdp, Y0, TS, controller=controller, device_loop=True)
            assert device.stats.n_steps == eager.stats.n_steps
            torch.testing.assert_close(device.ys, eager.ys, rtol=1e-12, atol=1e-13)
    assert whole.stats.n_steps == eager.stats.n_steps
    torch.testing.assert_close(whole.ys, eager.ys, rtol=1e-12, atol=1e-13)


def test_torchdiffeq_facade_takes_dcoeff() -> None:
    options = dict(pcoeff=0.2, icoeff=0.4, dcoeff=0.15)
    out = no.odeint(vdp, Y0, TS, rtol=1e-7, atol=1e-9, options=options)
    core = no.solve(vdp, Y0, TS, controller=no.PIDController(**PID))
    torch.testing.assert_close(out, core.ys, rtol=0, atol=0)


# diffrax 0.7.2, float64: diffeqsolve(ODETerm(van der Pol, mu 3), Dopri5(), 0.0, 4.0, None,
# [2.0, 0.0], stepsize_controller=PIDController(rtol=1e-7, atol=1e-9, pcoeff, icoeff,
# dcoeff)): (pcoeff, icoeff, dcoeff) -> accepted, rejected, y(4)
DIFFRAX_PID = {
    (0.0, 1.0, 0.0): (70, 10, (-1.6903711887103898, -3.083799824399018)),
    (0.2, 0.4, 0.15): (78, 7, (-1.6903711976139013, -3.0837998484517395)),
    (0.3, 0.3, 0.1): (82, 6, (-1.690371207804995, -3.083799792198263)),
}


@pytest.mark.parametrize("coefficients", list(DIFFRAX_PID))
def test_pid_takes_diffraxs_steps(coefficients: tuple[float, float, float]) -> None:
    """With diffrax's first step and accept rule, diffrax's PIDController's steps."""
    p, i, d = coefficients
    controller = no.PIDController(
        rtol=1e-7, atol=1e-9, pcoeff=p, icoeff=i, dcoeff=d, first_step=0.01,
        shrink_after_accept=False,
    )  # fmt: skip
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64)
    sol = no.solve(
        lambda t, y: torch.stack([y[1], 3.0 * (1 - y[0] ** 2) * y[1] - y[0]]),
        y0, torch.tensor([0.0, 4.0], dtype=torch.float64), controller=controller,
    )  # fmt: skip
    accepted, rejected, end = DIFFRAX_PID[coefficients]
    assert (sol.stats.n_accepted, sol.stats.n_rejected) == (accepted, rejected)
    torch.testing.assert_close(
        sol.ys[-1], torch.tensor(end, dtype=torch.float64), rtol=0, atol=1e-12
    )


def test_predictive_factor_on_floats_and_tensors() -> None:
    """Gustafsson's predictive factor: the integral factor times min(1, (h / h_last)
    (r_last / r)^(1/k)) after an accepted step, the integral factor before any."""
    controller = no.PIController(predictive=True, ifactor=100.0, dfactor=0.01)
    exponent = 1 / 4
    memory = controller.initial_memory()
    accept, size, memory = controller.decide(0.5, 0.1, memory, exponent)
    assert accept and math.isclose(size, 0.1 * 0.9 * 0.5**-0.25, rel_tol=1e-12)
    assert memory == (0.5, 0.1)
    for ratio, h in ((0.2, 0.13), (3.0, 0.2), (0.9, 0.08)):
        last, last_size = memory
        accept, size, memory = controller.decide(ratio, h, memory, exponent)
        trend = min(1.0, h / last_size * (last / ratio) ** exponent)
        assert math.isclose(size, h * 0.9 * ratio**-exponent * trend, rel_tol=1e-12)
        assert memory == ((ratio, h) if ratio <= 1 else (last, last_size))
    ratios = torch.tensor([0.2, 3.0, 0.9, 0.5], dtype=torch.float64)
    sizes = torch.tensor([0.13, 0.2, 0.08, 0.1], dtype=torch.float64)
    rows = torch.tensor([[0.5, 0.4, 1.0, 1.0], [0.1, 0.3, 0.0, 0.05]], dtype=torch.float64)
    accept, size, new = controller.decide(ratios, sizes, rows, exponent)
    for j in range(4):
        pair = (float(rows[0, j]), float(rows[1, j]))
        a, s, m = controller.decide(float(ratios[j]), float(sizes[j]), pair, exponent)
        assert bool(accept[j]) == a and math.isclose(float(size[j]), s, rel_tol=1e-12)
        assert (float(new[0, j]), float(new[1, j])) == m


def test_predictive_radau_rejects_fewer_steps_within_tolerance() -> None:
    """On van der Pol with mu 1000 (Hairer & Wanner II) over its first fast transition (at
    t ~ 800) radau's predictive control halves the rejected steps (31 against 63 at rtol
    1e-4) at the same accuracy; a PI controller refuses it with pcoeff, and it must be a
    bool. (The reference, at rtol 1e-8, is within 1e-4 tolerance units of the truth.)"""
    scipy_integrate = pytest.importorskip("scipy.integrate")
    import numpy as np

    mu, rtol, atol = 1000.0, 1e-4, 1e-8

    def vdp_np(t, y):
        return np.array([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]])

    ts = np.linspace(0.0, 1000.0, 7)
    ref = scipy_integrate.solve_ivp(vdp_np, (0, 1000), [2.0, 0.0], method="Radau",
                                    rtol=1e-8, atol=1e-10, t_eval=ts).y.T  # fmt: skip
    runs = {}
    for predictive in (False, True):
        runs[predictive] = no.solve(
            lambda t, y: torch.stack([y[1], mu * (1 - y[0] ** 2) * y[1] - y[0]]),
            torch.tensor([2.0, 0.0], dtype=torch.float64), torch.tensor(ts), solver="radau",
            controller=no.PIController(rtol=rtol, atol=atol, predictive=predictive),
        )  # fmt: skip
        error = np.abs(runs[predictive].ys.numpy() - ref) / (atol + rtol * np.abs(ref))
        assert error.max() < 1.0
    assert runs[True].stats.n_rejected < runs[False].stats.n_rejected / 1.5
    assert runs[True].stats.nfe < runs[False].stats.nfe
    with pytest.raises(ValueError, match="takes no pcoeff or dcoeff"):
        no.PIController(predictive=True, pcoeff=0.3)
    with pytest.raises(TypeError, match="predictive must be True or False"):
        no.PIController(predictive="yes")


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
@pytest.mark.usefixtures("whole_solve_traced_only")  # (the predictive controller's logic)
def test_predictive_control_takes_the_same_steps_in_every_mode() -> None:
    controller = no.PIController(rtol=1e-7, atol=1e-9, predictive=True)
    with torch.no_grad():
        host = no.solve(vdp, Y0, TS, controller=controller)
        device = no.solve(vdp, Y0, TS, controller=controller, device_loop=True)
        whole = no.solve(vdp, Y0, TS, controller=controller, compile=True)
        per_sample = no.solve(vdp, Y0, TS, controller=controller, per_sample=True)
    for other in (device, whole):
        assert other.stats.n_steps == host.stats.n_steps
        torch.testing.assert_close(other.ys, host.ys, rtol=1e-12, atol=1e-13)
    for i in range(3):

        def row(t: torch.Tensor, y: torch.Tensor, i: int = i) -> torch.Tensor:
            padded = torch.zeros(3, 2, dtype=y.dtype).index_copy(0, torch.tensor([i]), y)
            return vdp(t, padded)[i : i + 1]

        alone = no.solve(row, Y0[i : i + 1], TS, controller=controller)
        assert int(per_sample.stats.sample_steps[i]) == alone.stats.n_steps
