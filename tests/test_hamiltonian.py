"""Hamiltonian neural networks: the field is the symplectic gradient of H (checked against
the pendulum's analytic field), its flow conserves H to solver accuracy, gradients through
the field and through a solve match finite differences, and bad states are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import neuralode as no
from neuralode.models import EnergyMLP, HamiltonianDynamics, SeparableHamiltonian

F64 = torch.float64


class Pendulum(nn.Module):
    """H = p^2 / 2 + (1 - cos q), summed over the dimensions."""

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (p**2 / 2 + 1 - torch.cos(q)).sum(-1)


class Quadratic(nn.Module):
    """H = |L [q, p]|^2 / 2 with a fixed random L: a quadratic form, positive definite."""

    def __init__(self, d: int):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(2 * d, 2 * d, bias=False).double()
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(2 * d, 2 * d, generator=generator, dtype=F64))
            self.linear.weight.add_(2 * torch.eye(2 * d, dtype=F64))

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return (self.linear(torch.cat([q, p], -1)) ** 2).sum(-1) / 2


def _states(batch: int = 6, d: int = 1, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(2, batch, d, generator=generator, dtype=F64).unbind()


def test_pendulum_field_is_the_analytic_one_in_both_state_forms_and_under_no_grad() -> None:
    f = HamiltonianDynamics(Pendulum())
    q, p = _states(d=2)
    dq, dp = f(torch.tensor(0.0), (q, p))
    torch.testing.assert_close(dq, p, rtol=0, atol=1e-15)
    torch.testing.assert_close(dp, -torch.sin(q), rtol=0, atol=1e-15)
    flat = f(torch.tensor(0.0), torch.cat([q, p], -1))
    torch.testing.assert_close(flat, torch.cat([p, -torch.sin(q)], -1), rtol=0, atol=1e-15)
    with torch.no_grad():
        dq0, dp0 = f(torch.tensor(0.0), (q, p))
    assert not dq0.requires_grad and not dp0.requires_grad
    torch.testing.assert_close(dp0, -torch.sin(q), rtol=0, atol=1e-15)
    # the separable form: the same field from T(p) = p^2 / 2 and V(q) = 1 - cos q
    separable = SeparableHamiltonian(
        lambda_module(lambda p: (p**2 / 2).sum(-1)),
        lambda_module(lambda q: (1 - torch.cos(q)).sum(-1)),
    )
    dq1, dp1 = separable(torch.tensor(0.0), (q, p))
    torch.testing.assert_close(dq1, p, rtol=0, atol=1e-15)
    torch.testing.assert_close(dp1, -torch.sin(q), rtol=0, atol=1e-15)
    torch.testing.assert_close(separable.energy(q, p), Pendulum()(q, p))


def lambda_module(fn) -> nn.Module:
    class Wrapped(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return fn(x)

    return Wrapped()


def test_flow_conserves_a_quadratic_hamiltonian_to_solver_accuracy() -> None:
    """RK4 on a linear system y' = M y with the eigenvalues of M imaginary (a quadratic H)
    multiplies each mode's energy by |R(i h w)|^2 = 1 - (h w)^6 / 72 + O(h^8) per step, so
    H decreases by O(h^5) over a fixed span: halving h divides the loss by about 32."""
    f = HamiltonianDynamics(Quadratic(2))
    q, p = _states(d=2)
    ts = torch.linspace(0, 1, 3, dtype=F64)  # a short span: q still moves by ~10 in it
    start = f.energy(q, p)
    losses = []
    with torch.no_grad():
        for step in (0.04, 0.02, 0.01):
            sol = no.solve(f, (q, p), ts, solver=no.RK4(), controller=no.FixedGrid(step_size=step))
            losses.append((start - f.energy(sol.ys[0][-1], sol.ys[1][-1])) / start)
        sol = no.solve(f, (q, p), ts, controller=no.PIController(rtol=1e-10, atol=1e-12))
    assert all((loss > 0).all() for loss in losses)  # RK4 damps a linear oscillator
    for coarse, fine in zip(losses, losses[1:]):
        assert ((coarse / fine > 28) & (coarse / fine < 36)).all(), coarse / fine
    assert losses[-1].max() < 1e-7
    drift = (f.energy(sol.ys[0][-1], sol.ys[1][-1]) - start).abs() / start
    assert drift.max() < 1e-7  # dopri5 at rtol 1e-10
    # and the state moved: conservation is not a frozen flow
    assert (sol.ys[0][-1] - q).abs().max() > 0.1


def test_separable_halves_depend_on_their_own_variable_only() -> None:
    torch.manual_seed(0)
    f = SeparableHamiltonian(EnergyMLP(2, 8), EnergyMLP(2, 8)).double()
    q, p = _states(d=2)
    q.requires_grad_()
    p.requires_grad_()
    dq, dp = f(None, (q, p))
    (gq,) = torch.autograd.grad(dq.sum(), q, allow_unused=True, retain_graph=True)
    (gp,) = torch.autograd.grad(dp.sum(), p, allow_unused=True)
    assert gq is None and gp is None
    # the same field as the general form of H = T(p) + V(q)
    general = HamiltonianDynamics(f.hamiltonian)
    for a, b in zip(general(None, (q, p)), (dq, dp)):
        torch.testing.assert_close(a, b)


def test_gradients_through_the_field_and_a_solve_match_finite_differences() -> None:
    torch.manual_seed(0)
    energy = EnergyMLP(2, 3, layers=1).double()
    f = HamiltonianDynamics(energy)
    names = [name for name, _ in energy.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in energy.parameters())
    q, p = _states(batch=3)

    def field(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *weights, q_, p_ = values
        state = dict(zip(names, weights))
        return functional_call(
            f, {f"hamiltonian.{k}": v for k, v in state.items()}, (None, (q_, p_))
        )

    inputs = (*params, q.clone().requires_grad_(), p.clone().requires_grad_())
    assert torch.autograd.gradcheck(field, inputs)

    def rollout(*values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        *weights, q_, p_ = values
        state = {f"hamiltonian.{k}": v for k, v in zip(names, weights)}
        ts = torch.tensor([0.0, 0.3], dtype=F64)

        def vector_field(t, y):
            return functional_call(f, state, (t, y))

        sol = no.solve(
            vector_field, (q_, p_), ts, solver=no.RK4(), controller=no.FixedGrid(step_size=0.1)
        )
        return sol.ys[0][-1], sol.ys[1][-1]

    assert torch.autograd.gradcheck(rollout, inputs)


def test_bad_states_and_energies_are_refused_with_the_fix() -> None:
    f = HamiltonianDynamics(Pendulum())
    q, p = _states()
    with pytest.raises(ValueError, match=r"tuple \(q, p\) of two tensors of one shape"):
        f(None, (q, p, p))
    with pytest.raises(ValueError, match=r"tuple \(q, p\) of two tensors of one shape"):
        f(None, (q, p[:3]))
    with pytest.raises(ValueError, match="even last dimension"):
        f(None, torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="even last dimension"):
        f(None, torch.zeros(4, dtype=F64))
    bad = HamiltonianDynamics(lambda_module_2(lambda q, p: q * p))  # (batch, 2): not per sample
    with pytest.raises(
        ValueError, match=r"one value per sample \(6 for states of shape \(6, 2\)\)"
    ):
        bad(None, _states(d=2))


def lambda_module_2(fn) -> nn.Module:
    class Wrapped(nn.Module):
        def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return fn(q, p)

    return Wrapped()


def test_inference_mode_is_refused_with_the_fix() -> None:
    f = HamiltonianDynamics(Pendulum())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="under torch.no_grad"):
        f(None, _states())


def test_the_field_is_exact_whatever_the_state_s_autograd_history() -> None:
    # H = (q^2 + p^2) / 2 + q p: f = (dH/dp, -dH/dq) = (p + q, -(q + p))
    def exact(q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return p + q, -(q + p)

    f = HamiltonianDynamics(lambda_module_2(lambda q, p: ((q**2 + p**2) / 2 + q * p).sum(-1)))
    y = torch.cat(_states(d=2), -1).requires_grad_()
    with torch.no_grad():  # (views taken here of a tensor that requires grad)
        q, p = y.chunk(2, -1)
        flat = f(None, y)
        pair = f(None, (q, p))
    for got in (flat.chunk(2, -1), pair):
        for a, b in zip(got, exact(q.detach(), p.detach())):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)
    # p computed from q, and q itself as p: dH/dq is the partial derivative all the same
    q = y[:, :2]
    for p in (2 * q, q):
        for a, b in zip(f(None, (q, p)), exact(q.detach(), p.detach())):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


@pytest.mark.parametrize("gradient", ["checkpointed", "adjoint"])
def test_strategies_that_solve_without_a_graph_take_direct_s_steps(gradient) -> None:
    # their forward pass sees y0 (which requires grad) under no_grad: f(t0, y0) is the field
    torch.manual_seed(0)
    f = HamiltonianDynamics(EnergyMLP(4, 16)).double()
    y0 = torch.cat(_states(batch=4, d=2), -1).requires_grad_()
    ts = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    controller = no.PIController(rtol=1e-8, atol=1e-10)
    ref = no.solve(f, y0, ts, controller=controller)
    sol = no.solve(f, y0, ts, controller=controller, gradient=gradient)
    assert sol.stats.n_steps == ref.stats.n_steps
    torch.testing.assert_close(sol.ys, ref.ys, rtol=0, atol=1e-14)


def test_the_field_runs_under_torch_func_transforms() -> None:
    # jacrev of the pendulum's field: d(dp/dt)/dq = -cos q, d(dq/dt)/dp = 1
    f = HamiltonianDynamics(Pendulum())
    q, p = _states(batch=1, d=1)
    jac_q, jac_p = torch.func.jacrev(lambda q, p: f(None, (q, p))[1], argnums=(0, 1))(q, p)
    torch.testing.assert_close(jac_q.flatten(), -torch.cos(q).flatten(), rtol=0, atol=1e-15)
    assert jac_p.abs().max() == 0
    # a solve vmapped over initial states: the batched solve's outputs, and the same
    # parameter gradients by autograd outside the transform
    torch.manual_seed(0)
    learned = SeparableHamiltonian(EnergyMLP(1, 8), EnergyMLP(1, 8)).double()
    q, p = _states(batch=3, d=1)
    ts = torch.tensor([0.0, 0.5], dtype=F64)

    def end(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        sol = no.solve(
            learned, (q, p), ts, solver="leapfrog", controller=no.FixedGrid(step_size=0.1)
        )
        return sol.ys[0][-1]

    mapped = torch.func.vmap(end)(q[:, None], p[:, None])[:, 0]
    batched = end(q, p)
    torch.testing.assert_close(mapped, batched, rtol=0, atol=1e-14)
    grads = [torch.autograd.grad(x.sum(), list(learned.parameters()), allow_unused=True)
             for x in (mapped, batched)]  # fmt: skip
    for a, b in zip(*grads):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_separable_field_gives_the_symplectic_methods_its_halves() -> None:
    """leapfrog on SeparableHamiltonian's pair state computes one kinetic gradient a drift and
    one potential gradient a kick (``dq_dt(t, p)``, ``dp_dt(t, q)``), not both networks per
    evaluation: 20 steps run T 20 times and V 21 times (the first step's opening kick), where
    the whole field runs each 41 times, with the same states and parameter gradients."""
    torch.manual_seed(0)
    f = SeparableHamiltonian(EnergyMLP(2, 8), EnergyMLP(2, 8)).double()
    runs = {"kinetic": 0, "potential": 0}

    def counter(name: str):
        def hook(*_) -> None:
            runs[name] += 1

        return hook

    for name in runs:
        getattr(f, name).register_forward_hook(counter(name))
    q, p = _states(d=2)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    grid = no.FixedGrid(step_size=0.05)
    results = []
    for field in (f, lambda t, y: f(t, y)):  # the halves, then f whole
        runs.update(kinetic=0, potential=0)
        sol = no.solve(field, (q, p), ts, solver="leapfrog", controller=grid)
        loss = sum(x[-1].pow(2).sum() for x in sol.ys)
        grads = torch.autograd.grad(loss, list(f.parameters()), allow_unused=True)
        grads = [torch.zeros(()) if g is None else g for g in grads]  # (the last biases)
        results.append((sol, dict(runs), grads))
    (halves, halves_runs, halves_grads), (whole, whole_runs, whole_grads) = results
    assert halves_runs == {"kinetic": 20, "potential": 21} and halves.stats.nfe == 41
    assert whole_runs == {"kinetic": 41, "potential": 41} and whole.stats.nfe == 41
    for a, b in zip((*halves.ys, *halves_grads), (*whole.ys, *whole_grads)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-15)


def test_separable_halves_are_the_fields_parts() -> None:
    torch.manual_seed(0)
    f = SeparableHamiltonian(EnergyMLP(2, 8), EnergyMLP(2, 8)).double()
    q, p = _states(d=2)
    dq, dp = f(None, (q, p))
    torch.testing.assert_close(f.dq_dt(None, p), dq, rtol=0, atol=0)
    torch.testing.assert_close(f.dp_dt(None, q), dp, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"q must be \(batch, d\).*got shape \(2,\).*q\[None\]"):
        f.dp_dt(None, q[0])
