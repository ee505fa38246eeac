"""The main paths on a CUDA device, each against the same computation on the CPU: every
execution mode of ``solve``, the gradients, the torchdiffeq and torchsde façades, the DEQ
layer. Marked ``cuda``: skipped without CUDA (``benchmarks/gpu_session.sh`` runs them on a GPU
machine)."""

from __future__ import annotations

import pytest
import torch

import neuralode as no
from neuralode import sde
from neuralode.models import DEQ, MLPDynamics

pytestmark = pytest.mark.cuda

RTOL, ATOL = 1e-7, 1e-9


class VanDerPol(torch.nn.Module):
    """Van der Pol with one mu per sample, mu a parameter (for the gradients)."""

    def __init__(self, batch: int):
        super().__init__()
        self.mu = torch.nn.Parameter(torch.linspace(1.0, 5.0, batch, dtype=torch.float64))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], 1)


def _problem(batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64).repeat(batch, 1)
    y0[:, 1] = torch.linspace(-1.0, 1.0, batch, dtype=torch.float64)
    return y0, torch.linspace(0.0, 3.0, 7, dtype=torch.float64)


def _on_both(run) -> tuple:
    """``run(device)`` on the CPU and on CUDA, the CUDA results moved to the CPU."""
    cpu = run(torch.device("cpu"))
    cuda = run(torch.device("cuda"))
    return cpu, tuple(x.cpu() if isinstance(x, torch.Tensor) else x for x in cuda)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"per_sample": True},
        {"device_loop": True},
        {"per_sample": True, "compile": "cuda_graph"},
        {"compile": "cuda_graph"},
        {"per_sample": True, "compile": "step"},
    ],
    ids=["host", "per_sample", "device_loop", "per_sample_cuda_graph", "cuda_graph", "step"],
)
def test_every_execution_matches_the_cpu(options):
    def run(device):
        y0, ts = _problem()
        field = VanDerPol(len(y0)).to(device)
        with torch.no_grad():
            sol = no.solve(field, y0.to(device), ts.to(device),
                           controller=no.PIController(RTOL, ATOL), **options)  # fmt: skip
        steps = sol.stats.sample_steps if options.get("per_sample") else sol.stats.n_steps
        return sol.ys, steps

    (ys_cpu, steps_cpu), (ys_cuda, steps_cuda) = _on_both(run)
    torch.testing.assert_close(ys_cuda, ys_cpu, rtol=1e-6, atol=1e-8)
    assert torch.equal(torch.as_tensor(steps_cuda), torch.as_tensor(steps_cpu))


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_whole_solve_compiled_on_cuda(per_sample):
    """``compile=True`` on the GPU (inductor's Triton kernels in a host-side while loop)
    against the eager solve there, twice (the second call reuses the graph)."""
    torch.manual_seed(0)
    field = MLPDynamics(2, hidden=64, autonomous=True).cuda()
    y0 = torch.randn(256, 2, device="cuda")
    ts = torch.linspace(0.0, 1.0, 5, device="cuda")
    controller = no.PIController(1e-5, 1e-7)
    with torch.no_grad():
        eager = no.solve(field, y0, ts, controller=controller, per_sample=per_sample)
        for _ in range(2):
            compiled = no.solve(field, y0, ts, controller=controller, per_sample=per_sample,
                                compile=True)  # fmt: skip
            torch.testing.assert_close(compiled.ys, eager.ys, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gradient", ["direct", "backsolve", "checkpointed"])
def test_gradients_match_the_cpu(gradient):
    strategies = {"direct": no.Direct, "backsolve": no.Backsolve, "checkpointed": no.Checkpointed}

    def run(device):
        y0, ts = _problem()
        field = VanDerPol(len(y0)).to(device)
        start = y0.to(device).requires_grad_()
        sol = no.solve(field, start, ts.to(device), controller=no.PIController(RTOL, ATOL),
                       gradient=strategies[gradient]())  # fmt: skip
        sol.ys.pow(2).sum().backward()
        return start.grad, field.mu.grad

    cpu, cuda = _on_both(run)
    for on_cuda, on_cpu in zip(cuda, cpu):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-5, atol=1e-7)


def test_per_sample_gradients_through_non_finite_rejected_attempts_match_the_cpu():
    """A first step of 1 overshoots below y = 0, where f = -k sqrt(y) sqrt(y) is NaN: the
    per-sample loop keeps those rows out of the graph (``_finite_graph``) on CUDA as on the
    CPU, so the gradients are finite and equal."""

    def run(device):
        k = torch.tensor(3.0, dtype=torch.float64, device=device, requires_grad=True)
        start = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64, device=device)
        start.requires_grad_()
        ts = torch.tensor([0.0, 4.0], dtype=torch.float64, device=device)
        controller = no.PIController(1e-6, 1e-8, first_step=1.0)
        field = lambda t, y: -k * torch.sqrt(y) * torch.sqrt(y)  # noqa: E731
        sol = no.solve(field, start, ts, controller=controller, per_sample=True)
        return torch.autograd.grad(sol.ys[-1].sum(), (start, k))

    cpu, cuda = _on_both(run)
    for on_cuda, on_cpu in zip(cuda, cpu):
        assert torch.isfinite(on_cuda).all()
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-9, atol=0)


def test_the_torchdiffeq_facade_with_the_adjoint():
    def run(device):
        y0, ts = _problem()
        field = VanDerPol(len(y0)).to(device)
        start = y0.to(device).requires_grad_()
        ys = no.odeint_adjoint(field, start, ts.to(device), rtol=RTOL, atol=ATOL)
        ys[-1].sum().backward()
        return ys, start.grad, field.mu.grad

    cpu, cuda = _on_both(run)
    for on_cuda, on_cpu in zip(cuda, cpu):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-5, atol=1e-7)


class _OrnsteinUhlenbeck(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(0.7))

    def f(self, t, y):
        return -self.theta * y

    def g(self, t, y):
        return 0.3 * torch.ones_like(y)


@pytest.mark.parametrize("adjoint", [False, True])
def test_sdes_on_cuda_follow_their_brownian_motion(adjoint):
    """Ornstein-Uhlenbeck on CUDA (its Brownian motion drawn there, so not the CPU's
    samples): the mean of 4096 paths against the exact exp(-theta t), and the gradient of
    E[y(1)] against the exact -exp(-theta)."""
    torch.manual_seed(0)
    module = _OrnsteinUhlenbeck().cuda()
    y0 = torch.ones(4096, 1, device="cuda")
    ts = torch.linspace(0.0, 1.0, 5, device="cuda")
    bm = sde.BrownianInterval(0.0, 1.0, size=(4096, 1), device="cuda", entropy=1)
    solve = sde.sdeint_adjoint if adjoint else sde.sdeint
    ys = solve(module, y0, ts, bm=bm, dt=0.01, method="euler")
    assert ys.device.type == "cuda" and ys.shape == (5, 4096, 1)
    mean = torch.exp(-0.7 * ts.cpu())
    torch.testing.assert_close(ys.mean(dim=(1, 2)).cpu(), mean, rtol=0, atol=0.02)
    ys[-1].mean().backward()
    assert abs(float(module.theta.grad) + float(torch.exp(torch.tensor(-0.7)))) < 0.03


def test_deq_on_cuda_matches_the_cpu():
    class Cell(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(8, 8)

        def forward(self, z, x):
            return torch.tanh(0.5 * self.linear(z) + x)

    def run(device):
        torch.manual_seed(0)
        layer = DEQ(Cell(), tol=1e-10, max_iter=200).double().to(device)
        x = torch.randn(4, 8, dtype=torch.float64, device=device, requires_grad=True)
        z = layer(x)
        z.pow(2).sum().backward()
        return z, x.grad, layer.f.linear.weight.grad

    cpu, cuda = _on_both(run)
    for on_cuda, on_cpu in zip(cuda, cpu):
        torch.testing.assert_close(on_cuda, on_cpu, rtol=1e-7, atol=1e-9)


def test_latent_models_sample_their_priors_on_cuda():
    """The generative models' prior samples are drawn where the model lives."""
    from neuralode.models import LatentODE, LatentSDE

    for device in ("cpu", "cuda"):
        ts = torch.linspace(0.0, 1.0, 5, device=device)
        paths = LatentSDE(obs_dim=2).to(device).sample_prior(ts, 6, 0.1)
        assert paths.shape == (5, 6, 2) and paths.device.type == device
        means = LatentODE(obs_dim=2).to(device).sample_prior(3, ts)
        assert means.shape == (3, 5, 2) and means.device.type == device
