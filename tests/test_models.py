"""Models: shapes, parameter counts, NFE reporting, gradient strategies, a tiny training run."""

from __future__ import annotations

import math

import pytest
import torch

from neuralode.models import (
    AccelerationMLP,
    Augment,
    CDEDiscriminator,
    ConvDynamics,
    DataControlledMLP,
    DEQNet,
    EnergyMLP,
    EquilibriumCell,
    GalerkinConv2d,
    GalerkinLinear,
    GalerkinMLPDynamics,
    HamiltonianDynamics,
    LagrangianAcceleration,
    MLPDynamics,
    ODEBlock,
    ODENet,
    PlanarLayer,
    ResBlock,
    ResNet,
    RKNet,
    SDEGenerator,
    SecondOrderDynamics,
    TimeEmbedding,
    TransformerDynamics,
    UNetDynamics,
    VariationalDropout,
)


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_classifier_shapes_and_the_papers_parameter_counts() -> None:
    x = torch.randn(3, 1, 28, 28)
    for model in (ODENet(), ResNet(), RKNet()):
        assert model(x).shape == (3, 10)
    # Paper, Table 1: ResNet 0.60M, ODE-Net and RK-Net 0.22M parameters.
    assert _count(ODENet()) == _count(RKNet())
    assert 0.19e6 < _count(ODENet()) < 0.23e6
    assert 0.55e6 < _count(ResNet()) < 0.62e6
    assert _count(ODENet()) < 0.4 * _count(ResNet())


def test_ode_block_reports_forward_and_backward_nfe() -> None:
    block = ODEBlock(MLPDynamics(2, 16), gradient="adjoint", rtol=1e-5, atol=1e-5)
    y = block(torch.randn(5, 2))
    assert block.nfe_forward > 0 and block.nfe_backward == 0
    y.sum().backward()
    assert block.nfe_backward > 0
    rk = RKNet(step_size=0.25)
    rk(torch.randn(1, 1, 28, 28))
    assert rk.ode.nfe_forward == 16  # 4 steps of the 4-stage rk4


def test_ode_block_trajectory_and_errors() -> None:
    block = ODEBlock(MLPDynamics(3), gradient="direct")
    ts = torch.linspace(0, 1, 6)
    x = torch.randn(4, 3)
    trajectory = block(x, ts)
    assert trajectory.shape == (6, 4, 3)
    torch.testing.assert_close(trajectory[0], x)
    torch.testing.assert_close(trajectory[-1], block(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown method"):
        ODEBlock(MLPDynamics(3), method="rk45")
    with pytest.raises(ValueError, match="gradient must be one of"):
        ODEBlock(MLPDynamics(3), gradient="magic")


def test_gradient_strategies_agree_in_an_ode_net() -> None:
    """Checkpointed equals direct to round-off; the adjoint converges to it with the tolerance.

    Smooth dynamics (softplus): with ReLU the vector field has kinks and every gradient
    converges at low order, so the strategies differ by ~1e-2 at rtol 1e-5.
    """
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    grads = {}
    for gradient in ("direct", "checkpointed", "adjoint"):
        torch.manual_seed(1)
        model = ODENet(channels=8, gradient=gradient, rtol=1e-7, atol=1e-7, activation="softplus")
        loss = model.double()(x).logsumexp(1).sum()
        parameters = torch.autograd.grad(loss, list(model.parameters()))
        grads[gradient] = torch.cat([g.flatten() for g in parameters])
    torch.testing.assert_close(grads["direct"], grads["checkpointed"], rtol=1e-10, atol=1e-14)
    difference = (grads["direct"] - grads["adjoint"]).norm() / grads["direct"].norm()
    assert difference < 1e-5


def test_a_float64_block_integrates_over_its_exact_interval() -> None:
    """dy/dt = y from 0 to t1 = 0.1 in float64 reaches exp(0.1) to the tolerance: the
    interval is not rounded through float32 on the way (float32(0.1) is 1.5e-9 off)."""

    class Growth(torch.nn.Module):
        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return y

    for t0, t1 in ((0.0, 0.1), (0.1, 1.0 / 3.0)):
        block = ODEBlock(Growth(), t0=t0, t1=t1, rtol=1e-12, atol=1e-12, gradient="direct")
        y = block(torch.ones(2, 1, dtype=torch.float64))
        torch.testing.assert_close(y, torch.full_like(y, math.exp(t1 - t0)), rtol=1e-11, atol=0)
    assert ODEBlock(Growth())(torch.ones(2, 1)).dtype == torch.float32


def test_augment_adds_zero_channels() -> None:
    x = torch.randn(2, 3, 4, 4)
    out = Augment(2)(x)
    assert out.shape == (2, 5, 4, 4) and out[:, 3:].abs().sum() == 0
    assert ODENet(channels=8, augment=4)(torch.randn(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError):
        Augment(-1)


def test_classifier_sizes_that_are_not_positive_integers_are_named() -> None:
    for make, kwargs, message in (
        (ODENet, dict(channels=0), "channels must be an integer >= 1, got 0"),
        (ODENet, dict(channels=-4), "channels must be an integer >= 1, got -4"),
        (ODENet, dict(channels=8.0), "channels must be an integer >= 1, got 8.0"),
        (ODENet, dict(classes=0), "classes must be an integer >= 1, got 0"),
        (ODENet, dict(augment=-1), "augment must be an integer >= 0, got -1"),
        (RKNet, dict(channels=0), "channels must be an integer >= 1, got 0"),
        (ResNet, dict(channels=0), "channels must be an integer >= 1, got 0"),
        (ResNet, dict(classes=-1), "classes must be an integer >= 1, got -1"),
        (ResNet, dict(blocks=0), "blocks must be an integer >= 1, got 0"),
    ):
        with pytest.raises(ValueError, match=message):
            make(**kwargs)


# (the argument's name, the error, the construction): each bad argument is refused when the
# model is built, by an error that starts with the argument's name
_BAD_CONSTRUCTIONS = [
    ("channels", ValueError, lambda: ResBlock(0)),
    ("channels", ValueError, lambda: ConvDynamics(0)),
    ("channels", ValueError, lambda: EquilibriumCell(0)),
    ("channels", ValueError, lambda: DEQNet(channels=0)),
    ("classes", ValueError, lambda: DEQNet(channels=4, classes=0)),
    ("dim", ValueError, lambda: MLPDynamics(-2)),
    ("dim", ValueError, lambda: MLPDynamics(0)),
    ("hidden", ValueError, lambda: MLPDynamics(2, hidden=0)),
    ("layers", ValueError, lambda: MLPDynamics(2, layers=-1)),
    ("layers", ValueError, lambda: MLPDynamics(2, layers=1.5)),
    ("in_features", ValueError, lambda: EnergyMLP(-2)),
    ("in_features", ValueError, lambda: EnergyMLP(0)),
    ("layers", ValueError, lambda: EnergyMLP(2, layers=-1)),
    ("dim", ValueError, lambda: AccelerationMLP(0)),
    ("data_dim", ValueError, lambda: DataControlledMLP(2, data_dim=-1)),
    ("in_features", ValueError, lambda: GalerkinLinear(-1, 5)),
    ("in_features", ValueError, lambda: GalerkinLinear(0, 5)),
    ("kernel_size", ValueError, lambda: GalerkinConv2d(2, 3, kernel_size=0)),
    ("layers", ValueError, lambda: GalerkinMLPDynamics(3, layers=-1)),
    ("hidden", ValueError, lambda: TransformerDynamics(8, hidden=-1)),
    ("dropout", ValueError, lambda: TransformerDynamics(8, dropout=1.5)),
    ("hidden_size", ValueError, lambda: SDEGenerator(hidden_size=-1)),
    ("layers", ValueError, lambda: SDEGenerator(layers=-1)),
    ("data_size", ValueError, lambda: SDEGenerator(data_size=0)),
    ("width", ValueError, lambda: CDEDiscriminator(width=-1)),
    ("data_size", ValueError, lambda: CDEDiscriminator(data_size=0)),
    ("depth", ValueError, lambda: UNetDynamics(2, depth=1.5)),
    ("max_frequency", ValueError, lambda: TimeEmbedding(4, max_frequency=0)),
    ("max_frequency", ValueError, lambda: TimeEmbedding(4, max_frequency=-1.0)),
    ("max_frequency", ValueError, lambda: TimeEmbedding(4, max_frequency=math.nan)),
    ("features", ValueError, lambda: TimeEmbedding(4, features=4.0)),
    ("init_std", ValueError, lambda: EquilibriumCell(4, init_std=-1.0)),
    ("init_scale", ValueError, lambda: PlanarLayer(2, init_scale=math.nan)),
    ("regularisation", ValueError, lambda: LagrangianAcceleration(EnergyMLP(4), "a")),
    ("p", ValueError, lambda: VariationalDropout("0.5")),
    ("hamiltonian", TypeError, lambda: HamiltonianDynamics(None)),
    ("separable", TypeError, lambda: SecondOrderDynamics(AccelerationMLP(2), separable="no")),
    ("velocity", TypeError, lambda: AccelerationMLP(2, velocity="no")),
    ("autonomous", TypeError, lambda: MLPDynamics(2, autonomous="no")),
    ("rtol", ValueError, lambda: ODEBlock(MLPDynamics(2), rtol=math.nan)),
    ("atol", ValueError, lambda: ODEBlock(MLPDynamics(2), atol=-1.0)),
    ("step_size", ValueError, lambda: ODEBlock(MLPDynamics(2), method="rk4", step_size=-0.1)),
    ("compile_step", TypeError, lambda: ODEBlock(MLPDynamics(2), compile_step="no")),
]


@pytest.mark.parametrize(
    ("name", "error", "make"),
    _BAD_CONSTRUCTIONS,
    ids=[f"{i}-{row[0]}" for i, row in enumerate(_BAD_CONSTRUCTIONS)],
)
def test_bad_model_arguments_are_refused_at_construction_by_name(name, error, make) -> None:
    with pytest.raises(error, match=rf"^{name} must be "):
        make()


def test_mlp_dynamics_takes_a_python_number_as_the_time() -> None:
    f, y = MLPDynamics(2, hidden=8), torch.randn(3, 2, dtype=torch.float64)
    f = f.double()
    torch.testing.assert_close(f(0.5, y), f(torch.tensor(0.5), y), rtol=0, atol=0)
    assert f(1, y).dtype == torch.float64


def test_tiny_training_run_reduces_the_loss() -> None:
    """Separate two concentric rings with an augmented MLP neural ODE."""
    torch.manual_seed(0)
    angles = torch.rand(256) * 6.283
    radius = torch.where(torch.arange(256) < 128, 0.5, 1.5)
    points = torch.stack([radius * angles.cos(), radius * angles.sin()], 1)
    labels = (radius > 1).long()
    model = torch.nn.Sequential(
        torch.nn.ConstantPad1d((0, 1), 0.0),  # one extra (augmented) dimension
        ODEBlock(MLPDynamics(3, 32), gradient="adjoint", rtol=1e-3, atol=1e-4),
        torch.nn.Linear(3, 2),
    )
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(points), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.slow  # compiles forward (and, for "direct", backward) graphs: about a minute
@pytest.mark.parametrize("gradient", ["direct", "adjoint"])
def test_ode_block_compile_step_matches_eager(gradient):
    from neuralode.models import KineticEnergy

    results = []
    for compile_step in (False, True):
        torch.manual_seed(0)
        block = ODEBlock(MLPDynamics(2, 16), gradient=gradient, rtol=1e-5, atol=1e-6,
                         regularisers=[KineticEnergy(0.01)], compile_step=compile_step)  # fmt: skip
        y = block(torch.randn(8, 2))
        (y.pow(2).sum() + block.regularisation).backward()
        grads = [p.grad for p in block.parameters()]
        results.append((y.detach(), grads, block.nfe_forward, block.nfe_backward))
    (y, grads, nfe, nfe_back), (y_c, grads_c, nfe_c, nfe_back_c) = results
    assert (nfe_c, nfe_back_c) == (nfe, nfe_back)
    torch.testing.assert_close(y_c, y, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads_c, grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_ode_block_compile_step_rejects_the_derivative_penalty():
    from neuralode.models import DerivativePenalty

    with pytest.raises(ValueError, match="does not work with DerivativePenalty"):
        ODEBlock(MLPDynamics(2, 4), regularisers=[DerivativePenalty(2, 0.1)], compile_step=True)


def test_repr_shows_the_solver_settings() -> None:
    """``print(model)`` shows how each differential-equation layer solves, not only its
    submodules (the settings live in plain attributes, which ``nn.Module``'s repr omits)."""
    from neuralode.models import CNF, DEQ, ConcatSquashMLP, KineticEnergy, NeuralCDE

    text = repr(ODENet(channels=4, rtol=1e-4, gradient="checkpointed"))
    assert "method='dopri5', rtol=0.0001, atol=0.001, gradient='checkpointed'" in text
    assert "step_size=0.25" in repr(RKNet(channels=4))
    block = ODEBlock(MLPDynamics(2), regularisers=[KineticEnergy(0.1)])
    assert "regularisers=[KineticEnergy(weight=0.1)]" in repr(block)
    flow = CNF(ConcatSquashMLP(2, (4,)), T=0.5, train_T=True, method="rk4", steps=4)
    assert "T=0.5 (trained), trace='exact', method='rk4', steps=4" in repr(flow)
    assert "T=?" in repr(flow.to("meta"))
    layer = DEQ(torch.nn.Linear(2, 2), method="broyden", tol=1e-5, backward_method="gmres")
    assert "method='broyden', tol=1e-05" in repr(layer)
    assert "backward_method='gmres'" in repr(layer)
    assert "interpolation='hermite'" in repr(NeuralCDE(3, 4, 1, interpolation="hermite"))
