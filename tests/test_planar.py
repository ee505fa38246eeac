"""Planar flows: the invertibility constraint, log-determinants, inverse and density."""

from __future__ import annotations

import pytest
import torch

from neuralode.models import PlanarFlow, PlanarLayer

F64 = torch.float64


def _layer(w: list[float], u: list[float], b: float = 0.3) -> PlanarLayer:
    layer = PlanarLayer(2).double()
    with torch.no_grad():
        layer.w.copy_(torch.tensor(w))
        layer.u.copy_(torch.tensor(u))
        layer.b.fill_(b)
    return layer


@pytest.mark.parametrize("u", [[-10.0, -4.0], [0.5, 0.1], [3.0, -8.0]])
def test_u_hat_keeps_the_layer_invertible(u: list[float]) -> None:
    layer = _layer([1.5, 0.5], u)
    assert (layer.w @ layer.u_hat()).item() > -1.0
    # monotone along w: the map restricted to a line along w is increasing
    line = torch.linspace(-6, 6, 2001, dtype=F64)[:, None] * layer.w.detach() / 1.58
    out, _ = layer.transform(line)
    assert bool(((out @ layer.w.detach()).diff() > 0).all())


def test_logdet_matches_the_autograd_jacobian_and_inverse_round_trips() -> None:
    layer = _layer([1.2, -0.7], [-3.0, 2.0])
    z = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    out, logdet = layer.transform(z)
    for zi, ld in zip(z, logdet):
        jac = torch.autograd.functional.jacobian(lambda v: layer.transform(v[None])[0][0], zi)
        torch.testing.assert_close(ld, torch.linalg.slogdet(jac)[1])
    torch.testing.assert_close(layer.invert(out.detach()), z, atol=1e-10, rtol=0)


def test_flow_sample_log_prob_round_trip_and_normalisation() -> None:
    torch.manual_seed(0)
    flow = PlanarFlow(2, 6).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(5.0)  # far from the identity, not near-singular
        x, log_q = flow.sample_with_log_prob(32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(flow.log_prob(x), log_q, atol=1e-8, rtol=0)
    axis = torch.linspace(-8, 8, 161, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        mass = flow.log_prob(grid).exp().sum() * (axis[1] - axis[0]) ** 2
    assert abs(float(mass) - 1) < 1e-2


def test_gradients_reach_every_parameter_and_bad_sizes_fail() -> None:
    flow = PlanarFlow(2, 3)
    x, log_q = flow.sample_with_log_prob(16)
    (log_q.mean() + x.pow(2).mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in flow.parameters())
    with pytest.raises(ValueError, match="layers must be an integer >= 1"):
        PlanarFlow(2, 0)


def test_points_of_the_wrong_shape_or_dtype_are_named() -> None:
    flow = PlanarFlow(3, 2)
    with pytest.raises(ValueError, match=r"batches of shape \(batch, 3\), got x of shape \(4, 2\)"):
        flow.log_prob(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"got z of shape \(3,\); add the batch dimension"):
        flow.inverse(torch.randn(3))
    with pytest.raises(ValueError, match="floating-point points, got x of dtype torch.int64"):
        flow(torch.ones(2, 3, dtype=torch.long))
    for dim, layers, message in (("3", 2, "dim must be an integer >= 1, got '3'"),
                                 (3, 0, "layers must be an integer >= 1, got 0")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            PlanarFlow(dim, layers)


def test_log_prob_of_data_is_differentiable_and_apply_is_nn_modules() -> None:
    """log_prob(x) of given points carries the implicit function theorem's gradients with
    respect to x and every parameter (maximum likelihood on data), equal to finite
    differences; ``Module.apply(fn)`` is torch's (the layer map is ``transform``)."""
    torch.manual_seed(0)
    flow = PlanarFlow(2, 3).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(5.0)
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    params = tuple(flow.parameters())

    def log_likelihood(x, *values):
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, v in zip(params, values):
                p.copy_(v)
        try:
            return flow.log_prob(x).sum()
        finally:
            with torch.no_grad():
                for p, v in zip(params, saved):
                    p.copy_(v)

    x.requires_grad_()
    grads = torch.autograd.grad(flow.log_prob(x).sum(), (x, *params))
    eps = 1e-6
    inputs = [x.detach(), *[p.detach() for p in params]]
    for k, (value, grad) in enumerate(zip(inputs, grads)):
        flat = value.reshape(-1)
        for i in range(flat.numel()):
            plus, minus = [v.clone() for v in inputs], [v.clone() for v in inputs]
            plus[k].reshape(-1)[i] += eps
            minus[k].reshape(-1)[i] -= eps
            with torch.no_grad():
                numeric = (log_likelihood(*plus) - log_likelihood(*minus)) / (2 * eps)
            assert abs(float(numeric) - float(grad.reshape(-1)[i])) < 1e-6 * (1 + abs(numeric))
    visited = []
    flow.apply(visited.append)
    assert len(visited) == 1 + 1 + 3  # the flow, its ModuleList, the layers
