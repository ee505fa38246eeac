"""The adjoints' backward passes keep nothing per step in Python's memory (issue 22: the
adjoint's memory flat in the number of steps): the peak that tracemalloc traces during
``backward()`` grows by less than 64 bytes a step (the reversed copy of the forward grid takes
8) for the stochastic adjoint (Itô milstein and euler, Stratonovich midpoint), reversible
Heun's and the ODE ``Backsolve``."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
import torch

import neuralode as no
from neuralode import sde as nsde

F64 = torch.float64


class _Net(torch.nn.Module):
    """A small neural SDE (drift MLP; diffusion (batch, d) or (batch, d, 2))."""

    def __init__(self, sde_type: str, noise_type: str, d: int = 3):
        super().__init__()
        self.sde_type, self.noise_type = sde_type, noise_type
        m = d if noise_type == "diagonal" else 2 * d
        self.drift = torch.nn.Sequential(
            torch.nn.Linear(d, 8), torch.nn.Tanh(), torch.nn.Linear(8, d)
        ).to(F64)
        self.scale = torch.nn.Parameter(torch.full((m,), 0.3, dtype=F64))
        self.d = d

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        if self.noise_type == "diagonal":
            return self.scale * torch.sigmoid(y)
        return (self.scale * torch.sigmoid(torch.cat([y, -y], dim=-1))).view(-1, self.d, 2)


def _backward_growth(sde_type: str, noise_type: str, method: str, steps: int) -> int:
    """Bytes the traced peak of ``backward()`` rises above its start (``sde_type`` "ode": an
    ODE with ``Backsolve``, ``method`` ignored)."""
    torch.manual_seed(0)
    sde = _Net(sde_type, noise_type)
    y0 = torch.randn(4, 3, dtype=F64, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], dtype=F64)
    if sde_type == "ode":
        controller = no.FixedGrid(step_size=1 / steps)
        gradient = no.Backsolve(sde.parameters())
        sol = no.solve(sde.f, y0, ts, solver=no.Euler(), controller=controller, gradient=gradient)
        ys = sol.ys
    else:
        size = (4, 3) if noise_type == "diagonal" else (4, 2)
        bm = nsde.BrownianInterval(0, 1, size=size, dtype=F64, entropy=1)
        ys = nsde.sdeint_adjoint(sde, y0, ts, bm=bm, method=method, dt=1 / steps)
    loss = ys[-1].square().sum()
    gc.collect()  # (a full collection also empties CPython's free lists)
    gc.disable()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        loss.backward()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.enable()
    assert y0.grad is not None and torch.isfinite(y0.grad).all()
    return peak - start


@pytest.mark.parametrize(
    "sde_type, noise_type, method",
    [
        ("ito", "diagonal", "euler"),  # the milstein adjoint
        ("ito", "general", "euler"),  # the euler adjoint
        ("stratonovich", "general", "midpoint"),  # the midpoint adjoint
        ("stratonovich", "general", "reversible_heun"),  # adjoint_reversible_heun
        ("ode", "diagonal", None),  # Backsolve
    ],
)
def test_adjoint_backward_memory_is_flat_in_the_steps(sde_type, noise_type, method):
    _backward_growth(sde_type, noise_type, method, 400)  # (first calls fill torch's caches)
    small = _backward_growth(sde_type, noise_type, method, 150)
    large = _backward_growth(sde_type, noise_type, method, 400)
    per_step = (large - small) / 250
    # 140-280 bytes a step by torch.autograd.grad (the tuples it leaves in CPython's free
    # lists: see neuralode._autograd); 0-45 here
    assert per_step < 64, f"{per_step:.0f} bytes a step ({small} at 150 steps, {large} at 400)"


def test_grad_equals_torch_autograd_grad():
    from neuralode._autograd import grad

    torch.manual_seed(0)
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)
    unused = torch.randn(2, dtype=F64, requires_grad=True)
    y = torch.randn(4, 3, dtype=F64, requires_grad=True)
    out = torch.tanh(y @ w)
    cot = torch.randn(4, 3, dtype=F64)
    ours = grad([out, out.sum()], [y, w, unused], [cot, None], retain_graph=True)
    theirs = torch.autograd.grad(
        [out, out.sum()], [y, w, unused], [cot, torch.ones(())], allow_unused=True
    )
    assert ours[2] is None and theirs[2] is None
    assert all(torch.equal(a, b) for a, b in zip(ours[:2], theirs[:2]))
    # create_graph: a second derivative through the result
    (dy,) = grad([torch.sin(y).sum()], [y], [None], create_graph=True)
    (d2y,) = grad([dy.sum()], [y], [None])
    assert torch.allclose(d2y, -torch.sin(y))
    # torch's errors: a missing cotangent of a non-scalar output, a mismatched one
    with pytest.raises(RuntimeError, match="scalar outputs"):
        grad([torch.tanh(y @ w)], [y], [None])
    with pytest.raises(RuntimeError, match="shape"):
        grad([torch.tanh(y @ w)], [y], [torch.ones(3, dtype=F64)])


def test_grad_leaves_nothing_behind_per_call():
    """A loop of ``torch.autograd.grad`` calls leaves two tuples a call in CPython's free lists
    (for its first 2000 calls); ``_autograd.grad`` none."""
    from neuralode._autograd import grad

    y = torch.randn(4, 3, dtype=F64, requires_grad=True)
    w = torch.randn(3, 3, dtype=F64, requires_grad=True)

    def retained(vjp, calls: int) -> int:
        gc.collect()  # (empties the free lists)
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for _ in range(calls):
                vjp([torch.tanh(y @ w)], [y, w], [torch.ones(4, 3, dtype=F64)])
            return tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()

    def torch_grad(outputs, inputs, cotangents):
        return torch.autograd.grad(outputs, inputs, cotangents)

    for vjp in (torch_grad, grad):
        retained(vjp, 100)  # (first calls fill torch's caches)
    # a 1-tuple and a 2-tuple a call: 104 bytes
    assert (retained(torch_grad, 500) - retained(torch_grad, 100)) / 400 > 64
    assert (retained(grad, 500) - retained(grad, 100)) / 400 < 8
