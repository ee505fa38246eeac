"""The U-Net and Transformer vector fields: shapes, time dependence, adjoint gradients."""

from __future__ import annotations

import pytest
import torch

import neuralode
from neuralode.models import (
    ConcatSquashConvNet,
    ConcatSquashMLP,
    ConvDynamics,
    GatedPlanarDynamics,
    KineticEnergy,
    MLPDynamics,
    ODEBlock,
    TransformerDynamics,
    UNetDynamics,
)
from neuralode.models.dynamics import group_norm


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP contention on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("size", "depth"), [((8, 8), 2), ((7, 9), 2), ((5, 5), 1), ((4, 4), 0)])
def test_unet_shapes_and_time_dependence(size: tuple[int, int], depth: int) -> None:
    torch.manual_seed(0)
    f = UNetDynamics(3, width=8, depth=depth)
    y = torch.randn(2, 3, *size)
    out0 = f(torch.tensor(0.0), y)
    assert out0.shape == y.shape
    assert not torch.allclose(out0, f(torch.tensor(1.0), y))
    # samples are independent (GroupNorm, no batch statistics)
    torch.testing.assert_close(f(torch.tensor(0.0), y[:1]), out0[:1])


def test_transformer_shapes_time_dependence_and_token_mixing() -> None:
    torch.manual_seed(0)
    f = TransformerDynamics(16, heads=4)
    y = torch.randn(3, 5, 16)
    out0 = f(torch.tensor(0.0), y)
    assert out0.shape == y.shape
    assert not torch.allclose(out0, f(torch.tensor(0.5), y))
    torch.testing.assert_close(f(torch.tensor(0.0), y[1:2]), out0[1:2])
    changed = y.clone()
    changed[:, 0] += torch.randn(16)  # attention: one token changes the others' updates
    assert not torch.allclose(f(torch.tensor(0.0), changed)[:, 1:], out0[:, 1:])


def _grads(dynamics: torch.nn.Module, x: torch.Tensor, gradient: str) -> torch.Tensor:
    block = ODEBlock(dynamics, gradient=gradient, rtol=1e-6, atol=1e-6)
    loss = block(x).pow(2).sum()
    grads = torch.autograd.grad(loss, list(dynamics.parameters()), allow_unused=True)
    return torch.cat([g.flatten() for g in grads if g is not None])


@pytest.mark.parametrize("name", ["unet", "transformer"])
def test_adjoint_gradients_inside_an_ode_block(name: str) -> None:
    torch.manual_seed(0)
    if name == "unet":
        dynamics = UNetDynamics(2, width=4, depth=1).double()
        x = torch.randn(2, 2, 6, 6, dtype=torch.float64)
    else:
        dynamics = TransformerDynamics(8, heads=2, hidden=16).double()
        x = torch.randn(2, 3, 8, dtype=torch.float64)
    for p in dynamics.parameters():  # keep the flow gentle so the solves stay short
        p.data.mul_(0.5)
    direct = _grads(dynamics, x, "direct")
    adjoint = _grads(dynamics, x, "adjoint")
    assert direct.norm() > 0
    assert (adjoint - direct).norm() / direct.norm() < 1e-4


@pytest.mark.parametrize("name", ["unet", "transformer"])
def test_zoo_with_a_regulariser_and_the_adjoint(name: str) -> None:
    torch.manual_seed(0)
    if name == "unet":
        dynamics, x = UNetDynamics(1, width=4, depth=1), torch.randn(2, 1, 6, 6)
    else:
        dynamics, x = TransformerDynamics(8, heads=2), torch.randn(2, 3, 8)
    block = ODEBlock(dynamics, regularisers=[KineticEnergy(0.1)])
    loss = block(x).sum() + block.regularisation
    loss.backward()
    assert block.nfe_backward > 0 and block.regularisation.item() > 0
    assert all(p.grad is not None for p in dynamics.parameters())


def test_zoo_errors() -> None:
    with pytest.raises(ValueError, match="multiple of heads"):
        TransformerDynamics(10, heads=4)
    with pytest.raises(ValueError, match="tokens"):
        TransformerDynamics(8, heads=2)(torch.tensor(0.0), torch.randn(2, 8))
    with pytest.raises(ValueError, match="depth"):
        UNetDynamics(1, depth=-1)
    with pytest.raises(ValueError, match="H, W"):
        UNetDynamics(1, width=4)(torch.tensor(0.0), torch.randn(2, 1, 6))


_TIMED_FIELDS = {  # every time-dependent vector field of the zoo, with a state it takes
    "mlp": (lambda: MLPDynamics(3, hidden=8), (4, 3)),
    "concat_squash_mlp": (lambda: ConcatSquashMLP(3, hidden=(8, 8)), (4, 3)),
    "gated_planar": (lambda: GatedPlanarDynamics(3, width=5), (4, 3)),
    "concat_squash_conv": (lambda: ConcatSquashConvNet(2, hidden=(4,)), (4, 2, 5, 5)),
    "conv": (lambda: ConvDynamics(4), (4, 4, 5, 5)),
    "unet": (lambda: UNetDynamics(2, width=4, depth=1), (4, 2, 6, 6)),
    "transformer": (lambda: TransformerDynamics(8, heads=2, hidden=16), (4, 3, 8)),
}


@pytest.mark.parametrize("name", list(_TIMED_FIELDS))
def test_fields_take_one_time_per_sample(name: str) -> None:
    """Per-sample mode calls f with t of shape (batch,): each row is f at its own time, and
    the per-sample solve of the batch equals that of each sample alone."""
    torch.manual_seed(0)
    make, shape = _TIMED_FIELDS[name]
    field = make().double()
    y = torch.randn(*shape, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=torch.float64)
    rows = field(t, y)
    for i in range(len(t)):
        torch.testing.assert_close(rows[i : i + 1], field(t[i], y[i : i + 1]))
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    controller = neuralode.PIController(1e-8, 1e-10)
    with torch.no_grad():
        batch = neuralode.solve(field, y, ts, controller=controller, per_sample=True).ys[-1]
        alone = neuralode.solve(field, y[1:2], ts, controller=controller, per_sample=True)
    torch.testing.assert_close(batch[1:2], alone.ys[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("channels", "groups"), [(1, 1), (16, 16), (24, 24), (40, 20), (64, 32),
                                                  (65, 13), (96, 32), (97, 1)])  # fmt: skip
def test_group_norm_takes_the_most_groups_up_to_32_that_divide_the_channels(
    channels: int, groups: int
) -> None:
    assert group_norm(channels).num_groups == groups
