"""Continuous normalising flows: traces, change of variables, inverses, gradients, RNODE."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralode.models import (
    CNF,
    ConcatSquashMLP,
    GatedPlanarDynamics,
    SequentialFlow,
    exact_trace,
    ffjord_2d,
    hutchinson_trace,
    standard_normal_log_prob,
)
from neuralode.models.cnf import FlowDensity, draw_noise

F64 = torch.float64


class _Linear(nn.Module):
    """f(t, z) = c z + a: known traces, log-determinants and RNODE integrals."""

    def __init__(self, c: float, a: tuple[float, ...] = (0.0, 0.0)):
        super().__init__()
        self.c = nn.Parameter(torch.tensor(c, dtype=F64))
        self.a = nn.Parameter(torch.tensor(a, dtype=F64))

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.c * z + self.a


def _random_field(dim: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return ConcatSquashMLP(dim, (16, 16), "tanh").double()


def _small_flow(**options) -> SequentialFlow:
    torch.manual_seed(1)
    flow = ffjord_2d(hidden=(16, 16), T=0.7, rtol=1e-8, atol=1e-8, **options).double()
    with torch.no_grad():  # a visibly non-trivial random flow
        for p in flow.parameters():
            p.mul_(2.0)
    return flow


def _jacobians(net: nn.Module, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda v: net(t, v[None])[0], zi) for zi in z]
    )


def test_exact_trace_and_frobenius_match_the_autograd_jacobian() -> None:
    net = _random_field(3)
    t = torch.tensor(0.3, dtype=F64)
    z = torch.randn(5, 3, dtype=F64, requires_grad=True)
    trace, frobenius = exact_trace(net(t, z), z)
    jac = _jacobians(net, t, z.detach())
    torch.testing.assert_close(trace, jac.diagonal(dim1=1, dim2=2).sum(1))
    torch.testing.assert_close(frobenius, jac.pow(2).sum((1, 2)))


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_estimates_are_unbiased(kind: str) -> None:
    net = _random_field(3)
    t = torch.tensor(0.1, dtype=F64)
    draws = 20000
    z0 = torch.randn(1, 3, dtype=F64)
    z = z0.expand(draws, 3).clone().requires_grad_(True)
    f = net(t, z)
    noise = draw_noise(z, kind, torch.Generator().manual_seed(3))
    trace_est, frob_est = hutchinson_trace(f, z, noise)
    exact_tr, exact_frob = exact_trace(net(t, z[:1]), z)
    for estimate, exact in ((trace_est, exact_tr[0]), (frob_est, exact_frob[0])):
        stderr = estimate.detach().std() / math.sqrt(draws)
        assert abs((estimate.mean() - exact).item()) < 4 * stderr.item() + 1e-12
    if kind == "rademacher":
        assert set(noise.unique().tolist()) == {-1.0, 1.0}


def test_linear_field_logdet_and_rnode_integrals_are_exact() -> None:
    c, T, a = 0.4, 0.8, (0.3, -0.5)
    cnf = CNF(_Linear(c), T=T, rtol=1e-10, atol=1e-10, kinetic=1.0, jacobian=1.0)
    z0 = torch.randn(4, 2, dtype=F64)
    x, logdet = cnf.inverse(z0)
    torch.testing.assert_close(x, z0 * math.exp(c * T))
    torch.testing.assert_close(logdet, torch.full((4,), 2 * c * T, dtype=F64))
    # kinetic: int |c z0 e^{ct}|^2 dt / dim; Jacobian: int c^2 dim dt / dim
    kinetic = c * z0.pow(2).sum(1) * (math.exp(2 * c * T) - 1) / 2 / 2
    torch.testing.assert_close(cnf.regularization, kinetic + c**2 * T)
    # a constant field: kinetic T |a|^2 / dim, no Jacobian; the same sign backwards in time
    const = CNF(_Linear(0.0, a), T=T, rtol=1e-10, atol=1e-10, kinetic=1.0, jacobian=1.0)
    const(z0)
    expected = torch.full((4,), T * (a[0] ** 2 + a[1] ** 2) / 2, dtype=F64)
    torch.testing.assert_close(const.regularization, expected)


def test_random_cnf_density_integrates_to_one() -> None:
    flow = _small_flow()
    flow.blocks[0].rtol = flow.blocks[0].atol = 1e-6
    n, lim = 70, 7.0
    axis = torch.linspace(-lim, lim, n, dtype=F64)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        density = flow.log_prob(grid).exp()
    h = (axis[1] - axis[0]).item()
    assert abs(float(density.sum()) * h * h - 1.0) < 5e-3
    # the flow is not the identity: the density differs from the base's
    base = standard_normal_log_prob(grid).exp()
    assert float((density - base).abs().max()) > 1e-2


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_sample_log_prob_round_trip_and_inverse(trace: str) -> None:
    flow = SequentialFlow([_small_flow(trace=trace).blocks[0], _small_flow().blocks[0]])
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        x, log_q = flow.sample_with_log_prob(16, generator=generator)
        z, logdet = flow(x)
        x_back, logdet_back = flow.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=0)
    if trace == "exact":  # log-dets and densities: Hutchinson's noise differs between solves
        torch.testing.assert_close(logdet, -logdet_back, atol=1e-6, rtol=0)
        with torch.no_grad():
            log_p = flow.log_prob(x)
        torch.testing.assert_close(log_p, log_q, atol=1e-6, rtol=0)
        torch.testing.assert_close(log_p, standard_normal_log_prob(z) + logdet)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradients_match_direct_gradients(trace: str) -> None:
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    grads = {}
    for gradient in ("direct", "adjoint"):
        flow = _small_flow(trace=trace, gradient=gradient, kinetic=0.1, jacobian=0.1, train_T=True)
        torch.manual_seed(7)  # the same Hutchinson noise for both
        loss = -flow.log_prob(x).mean() + flow.regularization.mean()
        loss.backward()
        grads[gradient] = [p.grad.clone() for p in flow.parameters()]
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads[gradient])
    for direct, adjoint in zip(grads["direct"], grads["adjoint"]):
        torch.testing.assert_close(adjoint, direct, atol=1e-5, rtol=1e-4)


def test_gated_planar_dynamics_train_in_float32() -> None:
    torch.manual_seed(0)
    cnf = CNF(GatedPlanarDynamics(2, 4), rtol=1e-4, atol=1e-4, event_shape=(2,))
    x, log_q = cnf.sample_with_log_prob(8)
    (-log_q.mean()).backward()
    assert x.dtype == torch.float32 and cnf.net.u.grad is not None
    assert sum(p.numel() for p in cnf.parameters()) == 4 * (2 * 2 + 3)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="trace must be one of"):
        CNF(_Linear(0.1), trace="approx")
    with pytest.raises(ValueError, match="noise must be one of"):
        CNF(_Linear(0.1), noise="uniform")
    with pytest.raises(ValueError, match="T must be positive"):
        CNF(_Linear(0.1), T=0.0)
    with pytest.raises(ValueError, match="shape of one sample"):
        CNF(_Linear(0.1)).sample(3)


@pytest.mark.parametrize("activation", ["tanh", "softplus", "silu", "elu", "relu", "gelu"])
def test_forward_mode_jacobian_matches_autograd(activation: str) -> None:
    torch.manual_seed(0)
    net = ConcatSquashMLP(3, (16, 16), activation).double()
    t = torch.tensor(0.3, dtype=F64)
    z = torch.randn(5, 3, dtype=F64)
    f, jac = net.forward_with_jacobian(t, z)
    torch.testing.assert_close(f, net(t, z))
    torch.testing.assert_close(jac, _jacobians(net, t, z))


def test_forward_mode_jacobian_per_sample_times_and_softplus_threshold() -> None:
    """One time per sample (per-sample mode's t), and a Softplus that turns linear early
    (threshold 1: slope 1 where beta * x > 1, not sigmoid(beta * x))."""
    torch.manual_seed(0)
    net = ConcatSquashMLP(3, (16, 16), "softplus").double()
    for act in net.acts:
        act.beta, act.threshold = 3.0, 1.0
    t = torch.linspace(0.0, 1.0, 5, dtype=F64)
    z = torch.randn(5, 3, dtype=F64)
    f, jac = net.forward_with_jacobian(t, z)
    torch.testing.assert_close(f, net(t, z))
    for i in range(5):
        torch.testing.assert_close(jac[i : i + 1], _jacobians(net, t[i], z[i : i + 1]))


class _Opaque(nn.Module):
    """The same field without ``forward_with_jacobian``: the CNF falls back to autograd."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(t, z)


def test_forward_mode_and_vector_jacobian_traces_give_the_same_loss_and_gradients() -> None:
    x = torch.randn(6, 2, dtype=F64, generator=torch.Generator().manual_seed(4))
    results = []
    for wrap in (False, True):
        torch.manual_seed(1)
        net = ConcatSquashMLP(2, (16, 16)).double()
        cnf = CNF(_Opaque(net) if wrap else net, T=0.7, rtol=1e-8, atol=1e-8, train_T=True,
                  kinetic=0.1, jacobian=0.1)  # fmt: skip
        loss = -cnf.log_prob(x).mean() + cnf.regularization.mean()
        loss.backward()
        results.append((loss.detach(), [p.grad for p in cnf.parameters()]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b)


def test_rnode_channels_are_left_out_of_the_error_norm() -> None:
    """The penalties change neither the steps nor the density; measuring them would."""
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))
    flow = _small_flow()
    block = flow.blocks[0]
    block.rtol = block.atol = 1e-6
    runs = {}
    for weight in (0.0, 0.5):
        block.kinetic = block.jacobian = weight
        with torch.no_grad():
            runs[weight] = (flow.log_prob(x), block.last_stats.nfe)
    torch.testing.assert_close(runs[0.5][0], runs[0.0][0], rtol=0, atol=0)
    assert runs[0.5][1] == runs[0.0][1]
    block.error_norm = lambda y: None  # the default norm measures every channel
    with torch.no_grad():
        flow.log_prob(x)
    assert block.last_stats.nfe > runs[0.0][1]


def test_bad_numbers_and_shapes_are_named() -> None:
    """Non-finite T and penalty weights, fractional steps, inputs without a batch dimension
    or of another shape than the samples, and sample counts below 1: each a ValueError
    naming the problem (NaN compared False with every bound; the shapes failed deep in the
    vector field)."""
    for T in (float("nan"), float("inf"), -1.0, "a", None):
        with pytest.raises(ValueError, match="T must be positive and finite"):
            CNF(_Linear(0.1), T=T)
    for weight in (float("nan"), "a"):
        with pytest.raises(
            ValueError, match=f"kinetic must be a finite number >= 0, got {weight!r}"
        ):
            CNF(_Linear(0.1), kinetic=weight)
    with pytest.raises(ValueError, match="give steps or step_size, not both"):
        CNF(_Linear(0.1), method="rk4", steps=2, step_size=0.1)
    with pytest.raises(ValueError, match="jacobian must be a finite number >= 0"):
        CNF(_Linear(0.1), jacobian=-1.0)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got 2.5"):
        CNF(_Linear(0.1), method="rk4", steps=2.5)
    flow = _small_flow()
    with pytest.raises(ValueError, match=r"\(batch, \*event_shape\), got \(2,\); add the batch"):
        flow(torch.zeros(2, dtype=F64))
    with pytest.raises(ValueError, match=r"event_shape=\(2,\), got a batch of shape \(4, 3\)"):
        flow.inverse(torch.zeros(4, 3, dtype=F64))
    for n in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            flow.sample(n)
    assert flow.sample(2).shape == (2, 2)


def test_a_float64_flows_end_time_is_exact_to_float64() -> None:
    """sqrt(T) is held in the flow's dtype, whether the field is float64 when the flow is
    built or the flow is cast afterwards: T = 0.8 to float64 (float32's sqrt(0.8) squared is
    1e-8 off). The log-determinant of f = c z, d log|det| / dt = 2c (dim 2), is integrated
    exactly by any Runge-Kutta method: 2 c T to float64 round-off."""
    c, T = 0.375, 0.8  # (c exact in float32 too)
    tight = 4 * torch.finfo(F64).eps
    for build in (
        lambda: CNF(_Linear(c), T=T),
        lambda: CNF(_Linear(c).float(), T=T).double(),
        lambda: CNF(_Linear(c), T=T, train_T=True),
        lambda: CNF(_Linear(c).float(), T=T, train_T=True).to(F64),
    ):
        cnf = build()
        assert cnf.sqrt_T.dtype == F64
        assert abs(cnf.T.item() - T) <= tight * T
        _, logdet = cnf.inverse(torch.randn(3, 2, dtype=F64))
        torch.testing.assert_close(
            logdet, torch.full((3,), 2 * c * T, dtype=F64), rtol=tight, atol=0
        )
    # a float32 flow holds it in float32; a changed (trained, loaded) sqrt_T is cast as it is
    assert CNF(_Linear(c).float(), T=T).sqrt_T.dtype == torch.float32
    trained = CNF(_Linear(c).float(), T=T, train_T=True)
    with torch.no_grad():
        trained.sqrt_T.fill_(1.3)
    assert trained.double().sqrt_T.item() == float(torch.tensor(1.3, dtype=torch.float32))


def test_base_draws_are_made_in_the_flows_dtype() -> None:
    """A float64 flow's base noise is drawn in float64, not drawn in float32 and cast up
    (which leaves every draw on float32's coarser grid)."""

    class _Identity(FlowDensity):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones((), dtype=F64))

        def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return z, z.new_zeros(z.shape[0])

    flow = _Identity()
    for generator in (None, torch.Generator().manual_seed(0)):
        z, log_p = flow.sample_with_log_prob(256, (2,), generator=generator)
        assert z.dtype == F64 and log_p.dtype == F64
        assert not torch.equal(z.float().double(), z)
        torch.testing.assert_close(log_p, standard_normal_log_prob(z), rtol=0, atol=0)


@pytest.mark.cuda
def test_seeded_sampling_with_a_cpu_generator_works_on_cuda() -> None:
    """A CPU generator seeds the base draws of a flow on CUDA (torch.randn refuses a CPU
    generator for a CUDA tensor), and gives the samples it gives on the CPU."""
    flow = _small_flow()
    on_cpu = flow.sample(8, generator=torch.Generator().manual_seed(0))
    on_cuda = flow.to("cuda").sample(8, generator=torch.Generator().manual_seed(0))
    assert on_cuda.device.type == "cuda"
    torch.testing.assert_close(on_cuda.cpu(), on_cpu, atol=1e-6, rtol=0)


def test_a_regularised_flow_deep_copies_after_a_training_step():
    """``regularization`` after a pass is part of its graph; the model still deep-copies and
    pickles (a best-weights snapshot, an EMA copy), the copy holding the values detached."""
    import copy
    import pickle

    torch.manual_seed(0)
    flow = ffjord_2d(hidden=(8,), method="rk4", steps=2, kinetic=0.1, jacobian=0.1)
    loss = -flow.log_prob(torch.randn(5, 2)).mean() + flow.regularization.mean()
    for clone in (copy.deepcopy(flow), pickle.loads(pickle.dumps(flow))):
        assert torch.equal(clone.regularization, flow.regularization.detach())
    loss.backward()
    x = torch.randn(3, 2)
    assert torch.equal(copy.deepcopy(flow).log_prob(x), flow.log_prob(x))


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_log_prob_and_sampling_under_inference_mode(trace):
    """Evaluation under torch.inference_mode() (not only no_grad) gives the same densities
    and samples: the trace's vector-Jacobian products run on copies of the solver's
    inference tensors, out of inference mode; training afterwards still works."""
    torch.manual_seed(0)
    flow = CNF(GatedPlanarDynamics(2, 8), trace=trace, kinetic=0.1, event_shape=(2,))
    x = torch.randn(5, 2)
    results = []
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            torch.manual_seed(1)
            log_p = flow.log_prob(x)
            results.append((log_p, flow.sample(3, generator=torch.Generator().manual_seed(2))))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    flow.log_prob(x).mean().backward()
    assert all(p.grad is not None for p in flow.parameters())


class Shift(nn.Module):
    """dz/dt = c: a translation by c over [0, 1] (base to data), whose Jacobian is zero."""

    def __init__(self):
        super().__init__()
        self.c = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

    def forward(self, t, z):
        return self.c.expand_as(z)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_a_field_that_does_not_read_z_has_a_zero_trace(trace):
    # (torch.autograd.grad raised: "One of the differentiated Tensors appears to not have
    # been used in the graph")
    x = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    cnf = CNF(Shift(), trace=trace)
    expected = standard_normal_log_prob(x - cnf.net.c.detach())  # (data -> base: back)
    torch.testing.assert_close(cnf.log_prob(x), expected, rtol=1e-6, atol=1e-6)


def test_sampling_a_field_without_parameters_and_scalar_events_refused():
    class Still(nn.Module):
        def forward(self, t, z):
            return -z

    x = CNF(Still(), event_shape=(2,)).sample(3)  # (next(parameters()) raised StopIteration)
    assert x.shape == (3, 2) and x.dtype == torch.get_default_dtype()
    with pytest.raises(ValueError, match=r"event_shape=\(\) \(scalar samples\)"):
        CNF(Still(), event_shape=())
