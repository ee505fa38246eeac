"""Lagrangian neural networks: the Euler-Lagrange acceleration of L (checked against the
pendulum's and the double pendulum's analytic equations of motion), its flow conserves L's
energy (the Legendre transform) to solver accuracy, gradients match finite differences, it
runs under no_grad and torch.func transforms, and a singular mass matrix is refused or
regularised."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neuralode as no
from neuralode.models import EnergyMLP, LagrangianAcceleration, SecondOrderDynamics

F64 = torch.float64
G = 9.81


class Pendulum(nn.Module):
    """L = qdot^2 / 2 + cos q, summed over the dimensions: qddot = -sin q."""

    def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        return (qdot**2 / 2 + torch.cos(q)).sum(-1)


class DoublePendulum(nn.Module):
    """The double pendulum's L in the angles (q1, q2) of the two rods from the vertical:
    masses m1, m2, lengths l1, l2. Its mass matrix depends on q and d2L/dqdot dq is not 0."""

    def __init__(self, m1=1.0, m2=2.0, l1=1.5, l2=0.7):
        super().__init__()
        self.m1, self.m2, self.l1, self.l2 = m1, m2, l1, l2

    def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        m1, m2, l1, l2 = self.m1, self.m2, self.l1, self.l2
        (a, b), (wa, wb) = q.unbind(-1), qdot.unbind(-1)
        kinetic = (m1 + m2) / 2 * l1**2 * wa**2 + m2 / 2 * l2**2 * wb**2
        kinetic = kinetic + m2 * l1 * l2 * wa * wb * torch.cos(a - b)
        return kinetic + (m1 + m2) * G * l1 * torch.cos(a) + m2 * G * l2 * torch.cos(b)

    def acceleration(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        """The textbook equations of motion, solved for the angular accelerations."""
        m1, m2, l1, l2 = self.m1, self.m2, self.l1, self.l2
        (a, b), (wa, wb) = q.unbind(-1), qdot.unbind(-1)
        delta = a - b
        den = 2 * m1 + m2 - m2 * torch.cos(2 * delta)
        acc_a = (
            -G * (2 * m1 + m2) * torch.sin(a)
            - m2 * G * torch.sin(a - 2 * b)
            - 2 * torch.sin(delta) * m2 * (wb**2 * l2 + wa**2 * l1 * torch.cos(delta))
        ) / (l1 * den)
        acc_b = (
            2
            * torch.sin(delta)
            * (
                wa**2 * l1 * (m1 + m2)
                + G * (m1 + m2) * torch.cos(a)
                + wb**2 * l2 * m2 * torch.cos(delta)
            )
        ) / (l2 * den)
        return torch.stack([acc_a, acc_b], -1)


class Learned(nn.Module):
    """A learned-form L: qdot^2 / 2 - |q|^2 (an oscillator of frequency sqrt 2) plus a small
    MLP of (q, qdot), so the mass matrix stays near the identity (positive definite) while L
    has every kind of coupling."""

    def __init__(self, d: int, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = EnergyMLP(2 * d, hidden).double()

    def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        return (qdot**2 / 2 - q**2).sum(-1) + 0.1 * self.net(q, qdot)


class NoKinetic(nn.Module):
    def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        return torch.cos(q).sum(-1)


def _states(batch: int = 6, d: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, batch, d, generator=generator, dtype=F64).unbind()


def test_pendulum_acceleration_is_minus_sin_q_in_every_form_and_under_no_grad() -> None:
    accel = LagrangianAcceleration(Pendulum())
    q, qdot = _states(d=3)
    torch.testing.assert_close(accel(None, q, qdot), -torch.sin(q), rtol=0, atol=1e-15)
    f = SecondOrderDynamics(accel)
    dx, dv = f(torch.tensor(0.0), (q, qdot))
    torch.testing.assert_close(dx, qdot, rtol=0, atol=0)
    torch.testing.assert_close(dv, -torch.sin(q), rtol=0, atol=1e-15)
    flat = f(torch.tensor(0.0), torch.cat([q, qdot], -1))
    torch.testing.assert_close(flat, torch.cat([qdot, -torch.sin(q)], -1), rtol=0, atol=1e-15)
    with torch.no_grad():
        got = accel(None, q, qdot)
        energy = accel.energy(q, qdot)
    assert not got.requires_grad and not energy.requires_grad
    torch.testing.assert_close(got, -torch.sin(q), rtol=0, atol=1e-15)
    # the Legendre transform: E = qdot^2 / 2 - cos q
    torch.testing.assert_close(energy, (qdot**2 / 2 - torch.cos(q)).sum(-1), rtol=0, atol=1e-15)
    # extra batch dimensions (batch, ..., d)
    torch.testing.assert_close(
        accel(None, q.reshape(2, 3, 3), qdot.reshape(2, 3, 3)),
        -torch.sin(q).reshape(2, 3, 3),
        rtol=0,
        atol=1e-15,
    )


def test_double_pendulum_matches_its_analytic_equations_of_motion() -> None:
    system = DoublePendulum()
    accel = LagrangianAcceleration(system)
    q, qdot = _states(batch=8, d=2, seed=3)
    torch.testing.assert_close(
        accel(None, q, qdot), system.acceleration(q, qdot), rtol=1e-12, atol=1e-12
    )
    with torch.no_grad():
        torch.testing.assert_close(
            accel(None, q, qdot), system.acceleration(q, qdot), rtol=1e-12, atol=1e-12
        )


def test_gradcheck_in_float64_through_inputs_and_parameters() -> None:
    lagrangian = Learned(2)
    accel = LagrangianAcceleration(lagrangian)
    q, qdot = (x.requires_grad_() for x in _states(batch=3, d=2))
    assert torch.autograd.gradcheck(lambda q, v: accel(None, q, v), (q, qdot))
    assert torch.autograd.gradgradcheck(lambda q, v: accel(None, q, v), (q, qdot))
    weight = lagrangian.net.net[0].weight

    def of_weight(w: torch.Tensor) -> torch.Tensor:
        params = {"lagrangian.net.net.0.weight": w}
        return torch.func.functional_call(accel, params, (None, q.detach(), qdot.detach()))

    assert torch.autograd.gradcheck(of_weight, (weight.detach().clone().requires_grad_(),))
    # the same parameter gradient by backward through an ordinary call
    (grad,) = torch.autograd.grad(accel(None, q, qdot).square().sum(), [weight])
    w = weight.detach().clone().requires_grad_()
    (expected,) = torch.autograd.grad(of_weight(w).square().sum(), [w])
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


def test_an_accurate_solve_conserves_the_legendre_energy_of_a_learned_form_l() -> None:
    accel = LagrangianAcceleration(Learned(2))
    f = SecondOrderDynamics(accel)
    q, qdot = _states(batch=4, d=2, seed=5)
    ts = torch.linspace(0, 10, 11, dtype=F64)
    with torch.no_grad():
        start = accel.energy(q, qdot)
        sol = no.solve(f, (q, qdot), ts, controller=no.PIController(rtol=1e-10, atol=1e-12))
        end = accel.energy(sol.ys[0][-1], sol.ys[1][-1])
        coarse = no.solve(f, (q, qdot), ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.5))
        coarse_end = accel.energy(coarse.ys[0][-1], coarse.ys[1][-1])
    assert (end - start).abs().max() < 1e-7
    assert (sol.ys[0][-1] - q).abs().max() > 0.1  # the state moved
    # a coarse solve does not conserve it: the check above is not vacuous
    assert (coarse_end - start).abs().max() > 1e-4


def test_no_grad_and_torch_func_transforms() -> None:
    accel = LagrangianAcceleration(DoublePendulum())
    q, qdot = _states(batch=5, d=2, seed=7)
    expected = DoublePendulum().acceleration(q, qdot)
    # vmap over samples (each call sees one state (d,)) and over batches
    per_sample = torch.func.vmap(lambda a, b: accel(None, a, b))(q, qdot)
    torch.testing.assert_close(per_sample, expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        mapped = torch.func.vmap(lambda a, b: accel(None, a, b))(q[:, None], qdot[:, None])
    assert not mapped.requires_grad
    torch.testing.assert_close(mapped[:, 0], expected, rtol=1e-12, atol=1e-12)
    # jacrev against the analytic equations' Jacobian
    got = torch.func.jacrev(lambda a: accel(None, a, qdot[:1]))(q[:1])
    want = torch.autograd.functional.jacobian(
        lambda a: DoublePendulum().acceleration(a, qdot[:1]), q[:1]
    )
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    # a solve vmapped over initial states gives the batched solve's states
    f = SecondOrderDynamics(accel)
    ts = torch.tensor([0.0, 0.3], dtype=F64)

    def end(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return no.solve(f, (a, b), ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.1)).ys[
            0
        ][-1]

    torch.testing.assert_close(
        torch.func.vmap(end)(q[:, None], qdot[:, None])[:, 0], end(q, qdot), rtol=0, atol=1e-13
    )


def test_a_singular_mass_matrix_is_refused_with_the_fix_or_regularised() -> None:
    q, qdot = _states(batch=4, d=2)
    with pytest.raises(ValueError, match="singular at 4 of 4 samples.*regularisation=eps"):
        LagrangianAcceleration(NoKinetic())(None, q, qdot)
    with pytest.raises(ValueError, match="singular"), torch.no_grad():
        SecondOrderDynamics(LagrangianAcceleration(NoKinetic()))(None, (q, qdot))
    with pytest.raises(torch.linalg.LinAlgError, match="singular"):
        torch.func.vmap(lambda a, b: LagrangianAcceleration(NoKinetic())(None, a, b))(q, qdot)
    # regularised: (0 + eps I) qddot = dL/dq = -sin q
    eps = 0.5
    got = LagrangianAcceleration(NoKinetic(), regularisation=eps)(None, q, qdot)
    torch.testing.assert_close(got, -torch.sin(q) / eps, rtol=0, atol=1e-15)
    # and on a regular L it adds eps to the mass matrix: (1 + eps) qddot = -sin q
    got = LagrangianAcceleration(Pendulum(), regularisation=eps)(None, q, qdot)
    torch.testing.assert_close(got, -torch.sin(q) / (1 + eps), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="regularisation must be >= 0"):
        LagrangianAcceleration(Pendulum(), regularisation=-1.0)


def test_bad_calls_are_refused_with_the_fix() -> None:
    q, qdot = _states(batch=4, d=2)
    accel = LagrangianAcceleration(Pendulum())
    with pytest.raises(ValueError, match="without separable=True"):
        SecondOrderDynamics(accel, separable=True)(None, (q, qdot))
    with pytest.raises(ValueError, match="of one shape"):
        accel(None, q, qdot[:, :1])
    with pytest.raises(ValueError, match="one value per sample"):
        LagrangianAcceleration(lambda_module(lambda q, v: q * v))(None, q, qdot)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="under torch.no_grad"):
        accel(None, q, qdot)


def lambda_module(fn) -> nn.Module:
    class Wrapped(nn.Module):
        def forward(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
            return fn(q, qdot)

    return Wrapped()


@pytest.mark.parametrize("gradient", ["adjoint", "checkpointed"])
def test_gradients_through_a_solve_match_direct_backpropagation(gradient: str) -> None:
    # the adjoint and checkpointed strategies evaluate the field under no_grad in their
    # forward pass and differentiate it again in their backward pass
    accel = LagrangianAcceleration(Learned(2, hidden=8))
    f = SecondOrderDynamics(accel)
    y0 = torch.cat(_states(batch=3, d=2, seed=9), -1).requires_grad_()
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    controller = no.PIController(rtol=1e-10, atol=1e-12)
    params = [y0, *f.parameters()]
    grads = []
    for options in ({}, {"gradient": gradient}):
        ys = no.solve(f, y0, ts, controller=controller, **options).ys
        grads.append(torch.autograd.grad(ys[-1].square().sum(), params, allow_unused=True))
    for got, want, x in zip(*grads, params):
        # (None or zeros for the MLP's output bias: a constant in L moves nothing)
        got = torch.zeros_like(x) if got is None else got
        want = torch.zeros_like(x) if want is None else want
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9)
