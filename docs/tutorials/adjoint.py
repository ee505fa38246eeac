"""The adjoint method: the course's exercise (the gradient of g(y(T; p)) for y' = A(p) y,
y(0) = b(p), by the chain rule and by the adjoint, checked against each other), then memory
and NFE of backpropagation vs the adjoint vs checkpointing vs reversible steps on a real
model.

Run: python docs/tutorials/adjoint.py [--small] [--out DIR]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from neuralode import Backsolve, Checkpointed, Direct, PIController, Reversible, solve  # noqa: E402
from neuralode.models import ODENet  # noqa: E402
from neuralode.training import autograd_memory_mb  # noqa: E402

T = 1.5
TARGET = torch.tensor([0.5, -0.3], dtype=torch.float64)
# the gradient strategies compared on the ODE-Net, by ODENet's names for them
STRATEGIES = ("direct", "adjoint", "checkpointed", "reversible")


def A(p: torch.Tensor) -> torch.Tensor:
    """A damped rotation with a shear: A and dA/dp_i do not commute."""
    return torch.stack([torch.stack([-p[0], p[1] + p[2]]), torch.stack([-p[1], -p[0] + p[2] ** 2])])


def b(p: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.cos(p[2]), torch.sin(p[2])])


def g(y: torch.Tensor) -> torch.Tensor:
    return ((y - TARGET) ** 2).sum()


def chain_rule(p: torch.Tensor) -> torch.Tensor:
    """dg/dp = dg/dy [e^{TA} db/dp + (d e^{TA}/dp) b] with y(T) = e^{TA(p)} b(p).

    d e^{TA}/dp_i is the Frechet derivative of the matrix exponential in the direction
    T dA/dp_i: the upper-right block of exp([[TA, T dA/dp_i], [0, TA]]). (The shortcut
    T dA/dp_i e^{TA} holds only when A and dA/dp_i commute.)"""
    a = A(p)
    jac_a = torch.autograd.functional.jacobian(A, p)  # (2, 2, 3)
    jac_b = torch.autograd.functional.jacobian(b, p)  # (2, 3)
    expm = torch.linalg.matrix_exp(T * a)
    y_T = expm @ b(p)
    dg_dy = 2 * (y_T - TARGET)
    grad = []
    for i in range(len(p)):
        block = torch.zeros(4, 4, dtype=p.dtype)
        block[:2, :2], block[2:, 2:], block[:2, 2:] = T * a, T * a, T * jac_a[..., i]
        d_expm = torch.linalg.matrix_exp(block)[:2, 2:]
        grad.append(dg_dy @ (expm @ jac_b[:, i] + d_expm @ b(p)))
    return torch.stack(grad)


def adjoint_by_hand(p: torch.Tensor) -> torch.Tensor:
    """The adjoint equations solved with neuralode.solve: y forward, then backwards from T
    lambda' = -A^T lambda with lambda(T) = (dg/dy)^T and mu' = -lambda^T dA/dp y, mu(T) = 0;
    dg/dp = lambda(0)^T db/dp + mu(0)."""
    a, jac_a = A(p), torch.autograd.functional.jacobian(A, p)
    controller = PIController(rtol=1e-10, atol=1e-12)
    y_T = solve(lambda t, y: a @ y, b(p), torch.tensor([0.0, T], dtype=p.dtype),
                controller=controller).ys[-1]  # fmt: skip

    def backward(t, state):
        y, lam, _ = state
        return a @ y, -a.T @ lam, -torch.einsum("i,ijk,j->k", lam, jac_a, y)

    start = (y_T, 2 * (y_T - TARGET), torch.zeros_like(p))
    ts = torch.tensor([T, 0.0], dtype=p.dtype)
    _, lam, mu = solve(backward, start, ts, controller=controller).ys
    jac_b = torch.autograd.functional.jacobian(b, p)
    return lam[-1] @ jac_b + mu[-1]


def library_gradient(p: torch.Tensor, strategy) -> torch.Tensor:
    """The same gradient from the library: solve with a gradient strategy, then autograd.
    ``func`` is a closure over p, so the adjoint strategies are told its parameters."""
    p = p.detach().requires_grad_(True)
    gradient = strategy() if strategy is Direct else strategy(params=(p,))
    ts = torch.tensor([0.0, T], dtype=p.dtype)
    sol = solve(
        lambda t, y: A(p) @ y,
        b(p),
        ts,
        controller=PIController(rtol=1e-10, atol=1e-12),
        gradient=gradient,
    )
    return torch.autograd.grad(g(sol.ys[-1]), p)[0]


def gradient_strategies(small: bool) -> list[tuple]:
    """Memory saved for backward, NFE and the warnings of one training step of an
    MNIST-sized ODE-Net (Reversible's warns where the halves of its pair part)."""
    torch.manual_seed(0)
    x = torch.randn(8 if small else 32, 1, 28, 28)
    y = torch.randint(0, 10, (len(x),))
    rows = []
    tolerances = [1e-2] if small else [1e-2, 1e-3, 1e-4]
    for tol in tolerances:
        for name in STRATEGIES:
            torch.manual_seed(0)
            model = ODENet(channels=16 if small else 32, gradient=name, rtol=tol, atol=tol)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                memory = autograd_memory_mb(
                    lambda model=model: torch.nn.functional.cross_entropy(model(x), y)
                )
            block = model.ode
            messages = [str(w.message) for w in caught]
            rows.append((tol, name, memory, block.nfe_forward, block.nfe_backward, messages))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", action="store_true", help="a smaller model, one tolerance")
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float64)

    p = torch.tensor([0.3, 2.0, 0.4])
    reference = chain_rule(p)
    print(f"dg/dp by the chain rule:      {reference.tolist()}")
    candidates = {
        "adjoint, by hand": adjoint_by_hand(p),
        "library, Backsolve (adjoint)": library_gradient(p, Backsolve),
        "library, Direct (backprop)": library_gradient(p, Direct),
        "library, Checkpointed": library_gradient(p, Checkpointed),
        "library, Reversible": library_gradient(p, Reversible),
    }
    for name, grad in candidates.items():
        error = float((grad - reference).norm() / reference.norm())
        print(f"{name:<29} relative difference {error:.1e}")

    # Gradient descent on p with the adjoint gradient
    steps = 4 if args.small else 150
    losses, q = [], p.clone()
    for _ in range(steps):
        q_req = q.detach().requires_grad_(True)
        sol = solve(
            lambda t, y, q_req=q_req: A(q_req) @ y,
            b(q_req),
            torch.tensor([0.0, T]),
            gradient=Backsolve(params=(q_req,)),
            controller=PIController(rtol=1e-8, atol=1e-8),
        )
        loss = g(sol.ys[-1])
        (grad,) = torch.autograd.grad(loss, q_req)
        losses.append(float(loss.detach()))
        q = q - 0.2 * grad
    print(f"gradient descent: g from {losses[0]:.4f} to {losses[-1]:.2e} in {steps} steps")
    torch.set_default_dtype(torch.float32)

    rows = gradient_strategies(args.small)
    print("tol     gradient      memory MB  NFE forward  NFE backward  warnings")
    for tol, name, memory, nfe_f, nfe_b, messages in rows:
        print(f"{tol:<7.0e} {name:<13} {memory:9.2f} {nfe_f:12d} {nfe_b:13d} {len(messages):9d}")
    for tol, name, *_, messages in rows:
        for message in messages:
            print(f"warning at tol {tol:.0e}, {name}: {message}")

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    axes[0].semilogy(losses)
    axes[0].set_xlabel("gradient step")
    axes[0].set_ylabel("g(y(T; p))")
    axes[0].set_title("Optimising p with the adjoint gradient")
    for name in STRATEGIES:
        mine = [r for r in rows if r[1] == name]
        axes[1].plot([r[3] + r[4] for r in mine], [r[2] for r in mine], "o-", label=name)
    axes[1].set_xlabel("NFE per training step (forward + backward)")
    axes[1].set_ylabel("memory saved for backward (MB)")
    axes[1].set_title("ODE-Net on 28x28 images, tolerances 1e-2..1e-4")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "adjoint.png", dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
