"""Regularisers: closed forms on linear ODEs, Hutchinson's bias, gradients, NFE reduction."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad
from scipy.linalg import expm

from neuralode._norms import seminorm
from neuralode.adjoint import Backsolve, Checkpointed, Direct
from neuralode.models import (
    DerivativePenalty,
    JacobianFrobenius,
    KineticEnergy,
    MLPDynamics,
    ODEBlock,
    ODENet,
)
from neuralode.models.regularisers import Point, time_derivative

TIGHT = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Linear(torch.nn.Module):
    """dy/dt = A y on states (batch, dim)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = torch.nn.Parameter(a.clone())

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ self.a.T


def _linear_problem(seed: int = 0, dim: int = 3, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    x = torch.randn(batch, dim, generator=g, dtype=torch.float64)
    return a, x


def _integral_of_squared_norm(a: np.ndarray, power: int, y0: np.ndarray, t1: float) -> float:
    """∫_0^t1 ||A^power exp(A t) y0||^2 dt by quadrature."""
    ap = np.linalg.matrix_power(a, power)
    return quad(lambda t: float(np.sum((ap @ expm(a * t) @ y0) ** 2)), 0.0, t1, epsabs=1e-13)[0]


@functools.cache
def _linear_expected(t1: float) -> dict[str, float]:
    a, x = _linear_problem()
    a_np, x_np = a.numpy(), x.numpy()
    return {
        name: float(np.mean([_integral_of_squared_norm(a_np, k, y0, t1) for y0 in x_np]))
        for name, k in (("kinetic", 1), ("derivative2", 2), ("derivative3", 3))
    }


# (Direct is compared with these strategies in the gradient tests below.)
@pytest.mark.parametrize("gradient", ["checkpointed", "adjoint"])
def test_kinetic_energy_and_derivative_penalties_match_the_linear_closed_forms(
    gradient: str,
) -> None:
    a, x = _linear_problem()
    t1 = 1.5
    block = ODEBlock(
        Linear(a),
        t1=t1,
        gradient=gradient,
        regularisers=[KineticEnergy(2.0), DerivativePenalty(2, 0.5), DerivativePenalty(3, 0.25)],
        **TIGHT,
    )
    y1 = block(x)
    torch.testing.assert_close(y1, x @ torch.from_numpy(expm(a.numpy() * t1)).T)
    expected = _linear_expected(t1)
    terms = block.regularisation_terms
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value, rel=1e-8)
    weights = {"kinetic": 2.0, "derivative2": 0.5, "derivative3": 0.25}
    total = sum(weights[name] * value for name, value in expected.items())
    assert block.regularisation.item() == pytest.approx(total, rel=1e-8)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_jacobian_frobenius_is_exact_for_one_draw_and_unbiased(noise: str) -> None:
    a, _ = _linear_problem(seed=1)
    t1 = 2.0
    batch = 2000  # each sample draws its own noise: many independent estimates in one solve
    x = torch.randn(batch, 3, dtype=torch.float64)
    # the integrand is constant in time, so any tolerance integrates it exactly
    block = ODEBlock(Linear(a), t1=t1, regularisers=[JacobianFrobenius(noise=noise)])
    torch.manual_seed(5)
    eps = block.regularisers[0].draw_noise(x)
    torch.manual_seed(5)
    block(x)
    # For dy/dt = A y the integrand ||eps^T A||^2 is constant in time.
    per_sample = (eps @ a).pow(2).sum(1) * t1
    torch.testing.assert_close(block.regularisation_terms["jacobian"], per_sample.mean())
    exact = a.pow(2).sum().item() * t1  # ||A||_F^2 (t1 - t0)
    standard_error = per_sample.std().item() / math.sqrt(batch)
    assert abs(per_sample.mean().item() - exact) < 4 * standard_error
    if noise == "rademacher":  # Rademacher noise has the lower variance for a fixed A
        gaussian = JacobianFrobenius(noise="gaussian").draw_noise(x)
        assert per_sample.var() < ((gaussian @ a).pow(2).sum(1) * t1).var()


def test_second_derivative_includes_the_time_derivative_of_f() -> None:
    """f = sin(t) y gives y'' = sin(t)^2 y + cos(t) y; y''' by differentiating once more."""
    t = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 2, dtype=torch.float64, requires_grad=True)
    f = torch.sin(t) * y
    point = Point(t, y, f, create_graph=True)
    s, c = math.sin(0.7), math.cos(0.7)
    torch.testing.assert_close(time_derivative(point, 2), (s * s + c) * y)
    torch.testing.assert_close(time_derivative(point, 3), (s**3 + 3 * s * c - s) * y)
    # f independent of (t, y): all higher derivatives vanish
    const = torch.ones(4, 2, dtype=torch.float64)
    zero = time_derivative(Point(t, y, const, create_graph=True), 2)
    assert zero.shape == (4, 2) and not zero.any()


def _parameter_gradient(gradient, regularisers, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    dynamics = MLPDynamics(2, 8, activation="tanh").double()
    x = torch.randn(3, 2, dtype=torch.float64)
    block = ODEBlock(dynamics, gradient=gradient, regularisers=regularisers, **TIGHT)
    torch.manual_seed(seed + 1)  # the same noise for every strategy
    y1 = block(x)
    loss = y1.pow(2).sum() + block.regularisation
    grads = torch.autograd.grad(loss, list(dynamics.parameters()))
    return torch.cat([g.flatten() for g in grads])


def test_adjoint_and_checkpointed_gradients_agree_with_direct() -> None:
    regularisers = [KineticEnergy(0.3), JacobianFrobenius(0.2), DerivativePenalty(2, 0.1)]
    direct = _parameter_gradient("direct", regularisers)
    checkpointed = _parameter_gradient("checkpointed", regularisers)
    adjoint = _parameter_gradient("adjoint", regularisers)
    torch.testing.assert_close(checkpointed, direct, rtol=1e-10, atol=1e-13)
    assert (adjoint - direct).norm() / direct.norm() < 1e-7
    # and the regularisers do change the gradient
    plain = _parameter_gradient("direct", [])
    assert (plain - direct).norm() > 1e-3 * direct.norm()


class _Tanh(torch.nn.Module):
    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.w = w  # a plain tensor, so gradcheck can perturb it

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w.T) * (1 + t)


@pytest.mark.parametrize("gradient", ["direct", "checkpointed"])
def test_gradcheck_through_the_regularisers(gradient: str) -> None:
    """Exact derivatives of a fixed-step solve (the adjoint is compared with direct above)."""
    torch.manual_seed(0)
    w = (0.5 * torch.randn(2, 2, dtype=torch.float64)).requires_grad_(True)
    x = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    strategy = Direct() if gradient == "direct" else Checkpointed(params=(w,))
    options = {"method": "rk4", "step_size": 0.25, "gradient": strategy}
    regularisers = [KineticEnergy(), JacobianFrobenius(noise="rademacher"), DerivativePenalty()]
    block = ODEBlock(_Tanh(w), regularisers=regularisers, **options)

    def fn(x: torch.Tensor, w: torch.Tensor):
        torch.manual_seed(3)
        y1 = block(x)
        return y1, block.regularisation

    assert torch.autograd.gradcheck(fn, (x, w))


def test_regulariser_channels_do_not_change_the_steps_and_eval_mode_skips_them() -> None:
    torch.manual_seed(0)
    dynamics = MLPDynamics(2, 16)
    x = torch.randn(8, 2)
    plain = ODEBlock(dynamics, rtol=1e-6, atol=1e-6)
    y_plain = plain(x)
    block = ODEBlock(dynamics, rtol=1e-6, atol=1e-6, regularisers=[KineticEnergy(0.1)])
    y_reg = block(x)
    assert block.nfe_forward == plain.nfe_forward
    torch.testing.assert_close(y_reg, y_plain)
    assert block.regularisation.item() > 0 and block.regularisation.requires_grad
    block.eval()
    block(x)
    assert block.regularisation.item() == 0 and block.regularisation_terms == {}
    assert plain.regularisation.item() == 0


def test_trajectory_output_and_duplicate_names() -> None:
    block = ODEBlock(MLPDynamics(2), regularisers=[KineticEnergy(1.0), KineticEnergy(2.0)])
    x = torch.randn(3, 2)
    ts = torch.linspace(0, 1, 5)
    trajectory = block(x, ts)
    assert trajectory.shape == (5, 3, 2)
    terms = block.regularisation_terms
    assert set(terms) == {"kinetic", "kinetic_2"}
    torch.testing.assert_close(terms["kinetic"], terms["kinetic_2"])
    torch.testing.assert_close(block.regularisation, 3 * terms["kinetic"])


class Decay(torch.nn.Module):
    """dy/dt = -y, for a state of any shape (it never sees the batch)."""

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -y


@pytest.mark.parametrize("gradient", ["direct", "checkpointed", "adjoint"])
def test_a_one_dimensional_state_is_one_sample(gradient: str) -> None:
    """A 1-D state (n,) is one sample, as nn.Linear reads it: its regularisers are integrals
    of the whole state. For dy/dt = -y on [0, 1]: ∫ ||f||^2 dt = ∫ ||y||^2 dt
    = ||y0||^2 (1 - e^-2) / 2 (kinetic energy and the second derivative alike), and with
    Rademacher noise ||eps^T df/dy||^2 = ||eps||^2 = n exactly (not their means over the n
    entries, as for a batch of n scalars)."""
    x = torch.tensor([1.0, 2.0, 2.0], dtype=torch.float64, requires_grad=True)
    block = ODEBlock(
        Decay(),
        gradient=gradient,
        regularisers=[
            KineticEnergy(1.0),
            JacobianFrobenius(0.5, noise="rademacher"),
            DerivativePenalty(2, 0.25),
        ],
        **TIGHT,
    )
    y1 = block(x)
    assert y1.shape == (3,)
    torch.testing.assert_close(y1, x * math.exp(-1))
    integral = 9.0 * (1.0 - math.exp(-2.0)) / 2.0
    terms = block.regularisation_terms
    assert terms["kinetic"].item() == pytest.approx(integral, rel=1e-8)
    assert terms["derivative2"].item() == pytest.approx(integral, rel=1e-8)
    assert terms["jacobian"].item() == pytest.approx(3.0, rel=1e-10)
    total = 1.25 * integral + 0.5 * 3.0
    assert block.regularisation.item() == pytest.approx(total, rel=1e-8)
    # d/dx of 1.25 ||x||^2 (1 - e^-2) / 2: the regularisation's gradient is 1.25 (1 - e^-2) x
    (gradient_x,) = torch.autograd.grad(block.regularisation, x)
    torch.testing.assert_close(gradient_x, 1.25 * (1.0 - math.exp(-2.0)) * x.detach())
    # a dynamics that mixes the entries: the same as the batch of one x[None]
    a, _ = _linear_problem(seed=2)
    one = ODEBlock(Linear(a), gradient=gradient, regularisers=[KineticEnergy()], **TIGHT)
    one(x)
    batched = ODEBlock(Linear(a), gradient=gradient, regularisers=[KineticEnergy()], **TIGHT)
    batched(x[None])
    torch.testing.assert_close(one.regularisation, batched.regularisation)


def test_regulariser_errors() -> None:
    with pytest.raises(ValueError, match="weight"):
        KineticEnergy(-1.0)
    with pytest.raises(ValueError, match="noise"):
        JacobianFrobenius(noise="uniform")
    with pytest.raises(ValueError, match="order"):
        DerivativePenalty(order=1)
    with pytest.raises(TypeError, match="Regulariser"):
        ODEBlock(MLPDynamics(2), regularisers=["kinetic"])
    with pytest.raises(ValueError, match="batch"):
        ODEBlock(MLPDynamics(2), regularisers=[KineticEnergy()])(torch.tensor(1.0))


def _train_rings(regularisers: list, iterations: int = 40) -> ODEBlock:
    """Full-batch training on two concentric rings (augmented by one dimension)."""
    torch.manual_seed(0)
    n = 128
    labels = torch.arange(n) % 2
    angles = torch.rand(n) * 2 * math.pi
    radius = torch.where(labels == 0, 0.5, 1.5)
    points = torch.stack([radius * angles.cos(), radius * angles.sin()], 1)
    block = ODEBlock(MLPDynamics(3, 32), rtol=1e-5, atol=1e-5, regularisers=regularisers)
    model = torch.nn.Sequential(torch.nn.ConstantPad1d((0, 1), 0.0), block, torch.nn.Linear(3, 2))
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(iterations):
        loss = torch.nn.functional.cross_entropy(model(points), labels) + block.regularisation
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return block


def test_kinetic_regularisation_reduces_the_nfe_of_training() -> None:
    """Without a regulariser the NFE grows during training (50-56 forward at the end for
    seeds 0-2 when this was written); with kinetic energy it stays near the minimum (26-32).
    The margin asserted is a fraction of that gap."""
    plain = _train_rings([])
    regularised = _train_rings([KineticEnergy(0.1)])
    assert regularised.nfe_forward <= 0.8 * plain.nfe_forward
    assert regularised.nfe_backward <= 0.8 * plain.nfe_backward


def test_ode_net_with_every_regulariser_and_the_adjoint() -> None:
    """GroupNorm and convolutions through double backward inside the adjoint."""
    torch.manual_seed(0)
    regularisers = [KineticEnergy(0.1), JacobianFrobenius(0.1), DerivativePenalty(2, 0.1)]
    model = ODENet(channels=8, activation="softplus", regularisers=regularisers)
    loss = model(torch.randn(2, 1, 28, 28)).logsumexp(1).sum() + model.ode.regularisation
    loss.backward()
    assert set(model.ode.regularisation_terms) == {"kinetic", "jacobian", "derivative2"}
    assert model.ode.nfe_backward > 0
    assert all(p.grad is not None and p.grad.isfinite().all() for p in model.parameters())


def test_the_adjoint_leaves_the_regulariser_channels_out_of_its_error_norm() -> None:
    """Forward seminorm over y's 3 entries of a 5-entry state: the backward norm of
    [y, a, g] measures y[:3] and a[:3] only (and g too without the adjoint seminorm)."""
    forward = seminorm([3, 1, 1], 1)
    numels = (5, 5, 2)
    base = torch.tensor([1.0, 2, 3, 0, 0, 4, 5, 6, 0, 0, 7, 8])
    noisy = base.clone()
    noisy[[3, 4, 8, 9]] = 1e6  # regulariser channels of y and of a
    rms_y, rms_a = base[:3].pow(2).mean().sqrt(), base[5:8].pow(2).mean().sqrt()
    for semi in (True, False):
        norm = Backsolve(seminorm=semi).backward_norm(numels, forward)
        assert norm(noisy) == norm(base)
        if semi:
            assert norm(base).item() == pytest.approx(max(rms_y, rms_a).item())
        else:
            assert norm(base).item() == pytest.approx(base[10:].pow(2).mean().sqrt().item())
    # without a forward seminorm: the whole state and adjoint are measured
    assert Backsolve().backward_norm(numels)(noisy) > 1e5


def test_a_regularised_block_deep_copies_and_pickles_after_a_training_step() -> None:
    """The regularisation of the last forward pass is part of its graph; a copy of the model
    after a training step (a best-weights snapshot, an EMA copy) keeps its values detached."""
    import copy
    import pickle

    torch.manual_seed(0)
    net = ODENet(channels=4, method="rk4", step_size=0.5, regularisers=[KineticEnergy(0.1)])
    block = ODEBlock(
        MLPDynamics(2, 8),
        regularisers=[KineticEnergy(0.1), JacobianFrobenius(0.1), DerivativePenalty(2, 0.1)],
    )
    x = torch.randn(4, 2)
    loss = block(x).square().sum() + block.regularisation
    net(torch.randn(2, 1, 28, 28))
    for clone in (copy.deepcopy(block), pickle.loads(pickle.dumps(block))):
        assert torch.equal(clone.regularisation, block.regularisation.detach())
        assert not clone.regularisation.requires_grad
        assert clone.regularisation_terms.keys() == block.regularisation_terms.keys()
        t = torch.tensor(0.5)
        assert torch.equal(clone.dynamics(t, x), block.dynamics(t, x))
    loss.backward()  # the original's graph is untouched
    copy.deepcopy(block)
    assert copy.deepcopy(net).ode.regularisation == net.ode.regularisation


def test_a_single_regulariser_outside_a_list_is_a_clear_error() -> None:
    from neuralode.models import DEQ

    with pytest.raises(TypeError, match=r"put a single one in a list: regularisers=\[Kinetic"):
        ODEBlock(MLPDynamics(2), regularisers=KineticEnergy(0.1))
    with pytest.raises(TypeError, match=r"regularisers=\[JacobianFrobenius"):
        DEQ(torch.nn.Linear(2, 2), regularisers=JacobianFrobenius(0.1))
    with pytest.raises(TypeError, match="sequence of Regulariser instances"):
        ODENet(channels=4, regularisers=DerivativePenalty(2, 0.1))
    block = ODEBlock(MLPDynamics(2), regularisers=(KineticEnergy(0.1),))  # any sequence
    assert [r.name for r in block.regularisers] == ["kinetic"]


def test_regularisers_under_inference_mode_match_no_grad() -> None:
    """A block in training mode evaluated under torch.inference_mode() integrates the same
    regularisers as under no_grad (their derivatives of f run out of inference mode)."""
    torch.manual_seed(0)
    block = ODEBlock(
        MLPDynamics(2, 8), regularisers=[JacobianFrobenius(0.1), DerivativePenalty(2, 0.1)]
    )
    x = torch.randn(4, 2)
    results = []
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.manual_seed(1)
            results.append((block(x), block.regularisation))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["leapfrog", "semi_implicit_euler", "hyper"])
def test_methods_that_take_the_state_apart_are_refused_with_regularisers(method) -> None:
    """The regularised state is the tuple (y, r_1, ...): a partitioned method would read it
    as (q, p) (a wrong trajectory, silently), a hypersolver would hand it to its correction."""
    from neuralode.solvers import HyperEuler

    solver = HyperEuler(torch.nn.Linear(3, 3)) if method == "hyper" else method
    field = MLPDynamics(3, hidden=8)
    with pytest.raises(ValueError, match="regularisers do not work with .*use a Runge-Kutta"):
        ODEBlock(field, method=solver, step_size=0.25, gradient="direct",
                 regularisers=[KineticEnergy(0.1)])  # fmt: skip
    ODEBlock(field, method=solver, step_size=0.25, gradient="direct")  # (without: accepted)
