"""Hamiltonian neural networks (Greydanus, Dzamba & Yosinski, 2019): a network learns a
scalar energy H(q, p) and the vector field is its symplectic gradient, dq/dt = dH/dp,
dp/dt = -dH/dq, so the exact flow conserves the learned H."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .._args import count, function
from .._host import transform_active
from ._pair_state import on_pair_state
from .dynamics import mlp


class EnergyMLP(nn.Module):
    """A scalar function of its inputs, E(x_1, ..., x_k) = MLP([x_1, ..., x_k]): one energy
    per sample. ``EnergyMLP(2 * d, ...)(q, p)`` is a Hamiltonian for ``HamiltonianDynamics``;
    ``EnergyMLP(d, ...)(p)`` a kinetic and ``EnergyMLP(d, ...)(q)`` a potential energy for
    ``SeparableHamiltonian``.

    Arguments:
        in_features: the inputs' last dimensions, added up (2 d for (q, p) of d each).
        hidden: the hidden width.
        layers: the number of hidden layers.
        activation: the activation's name (a smooth one: the vector field is its gradient).

    Raises:
        ValueError: ``in_features`` or ``hidden`` not an integer >= 1, ``layers`` not an
            integer >= 0, or an unknown activation.
    """

    def __init__(
        self, in_features: int, hidden: int = 64, layers: int = 2, activation: str = "tanh"
    ):
        super().__init__()
        in_features = count("in_features", in_features)
        self.net = mlp(in_features, hidden, layers, activation, 1)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        """Evaluate the energy.

        Arguments:
            *parts: tensors of shape (..., d_i), concatenated on the last dimension
                (the d_i add up to ``in_features``).

        Returns:
            The energy per sample, of shape (...).
        """
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1)


def _gradients(
    energy: Any, inputs: tuple[torch.Tensor, ...], create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """The gradients of ``energy(*inputs)`` summed over the batch with respect to ``inputs``
    (zeros where it does not depend on one): autograd is switched on here, so this also works
    under ``torch.no_grad()``; ``create_graph`` keeps the graph for backpropagation through
    the gradients (training). Inside ``torch.func`` transforms (``vmap``, ``jacrev``, ...)
    ``torch.func.grad`` computes them, differentiable by the transforms and by autograd
    outside them."""
    _require_autograd("a Hamiltonian field needs autograd for dH")
    if transform_active():  # (autograd.grad is refused inside torch.func transforms)
        argnums = tuple(range(len(inputs)))
        return torch.func.grad(lambda *xs: _per_sample(energy(*xs), xs[0]).sum(), argnums)(*inputs)
    with torch.enable_grad():
        leaves = _leaves(inputs, create_graph)
        value = _per_sample(energy(*leaves), leaves[0])
        grads = torch.autograd.grad(
            value.sum(), leaves, create_graph=create_graph, allow_unused=True
        )
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(leaves, grads))


def _require_autograd(need: str) -> None:
    """Refuse ``torch.inference_mode()``, which switches autograd off for good; ``need``
    says what the caller differentiates."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            f"{need}, which torch.inference_mode() switches off; roll out under "
            "torch.no_grad() instead"
        )


def _leaves(inputs: tuple[torch.Tensor, ...], create_graph: bool) -> tuple[torch.Tensor, ...]:
    """The ``inputs`` to differentiate an energy at, for use under ``torch.enable_grad()``:
    each gets a node of its own, so dH/dq never flows through p (p computed from q, or q
    itself); without a graph to keep, a detached copy, since a view taken under no_grad of a
    tensor that requires grad is not in the graph of what it feeds."""
    return tuple(
        x.view_as(x) if create_graph and x.requires_grad else x.detach().requires_grad_()
        for x in inputs
    )


def _per_sample(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` as one energy per sample of the state ``like`` (batch, d): shape (batch,)."""
    batch = like.shape[:-1]
    if not isinstance(value, torch.Tensor) or value.numel() != batch.numel():
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(
            f"an energy must return one value per sample ({batch.numel()} for states of shape "
            f"{tuple(like.shape)}), got {shape}; return shape (batch,) or (batch, 1)"
        )
    return value.reshape(batch)


class HamiltonianDynamics(nn.Module):
    """The vector field of a learned Hamiltonian H(q, p): f(t, (q, p)) = (dH/dp, -dH/dq).

    The derivatives come from autograd of H summed over the batch (the samples must be
    independent: no batch statistics in H). With grad mode on, their graph is kept
    (``create_graph``) so that a loss on f, or on a solve of f, backpropagates to H's
    parameters; under ``torch.no_grad()`` grad mode is switched on inside for dH only and
    the result carries no graph. Inside ``torch.func`` transforms (``vmap`` of a solve,
    ``jacrev``) ``torch.func.grad`` takes them. Under ``torch.inference_mode()``, which
    switches autograd off for good, it raises: use ``torch.no_grad()``.

    The state is a tuple ``(q, p)`` of two tensors of shape (batch, d), or one tensor
    (batch, 2 d) holding q then p on its last dimension; f returns the same form. The time
    is ignored (H does not depend on it).

    Arguments:
        hamiltonian: a module called as ``hamiltonian(q, p)`` returning the energy per sample,
            shape (batch,) or (batch, 1), e.g. ``EnergyMLP(2 * d, hidden)``.

    Raises:
        TypeError: ``hamiltonian`` not an ``nn.Module`` or other callable.
    """

    def __init__(self, hamiltonian: nn.Module):
        super().__init__()
        self.hamiltonian = function("hamiltonian", hamiltonian)

    def energy(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The learned energy H(q, p) per sample.

        Arguments:
            q: the positions, (batch, d).
            p: the momenta, (batch, d).

        Returns:
            H, of shape (batch,).

        Raises:
            ValueError: ``hamiltonian`` returns other than one value per sample.
        """
        return _per_sample(self.hamiltonian(q, p), q)

    def field(self, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The symplectic gradient of H at (q, p).

        Arguments:
            q: the positions, (batch, d).
            p: the momenta, (batch, d).

        Returns:
            ``(dq/dt, dp/dt) = (dH/dp, -dH/dq)``, each of the shape of ``q``.
        """
        dh_dq, dh_dp = _gradients(self.energy, (q, p), torch.is_grad_enabled())
        return dh_dp, -dh_dq

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        """Evaluate the vector field.

        Arguments:
            t: the time (ignored).
            y: the state: a tuple ``(q, p)`` of tensors (batch, d), or a tensor (batch, 2 d)
                with q then p on the last dimension.

        Returns:
            dy/dt in the form of ``y``: ``(dq/dt, dp/dt)`` or their concatenation.

        Raises:
            ValueError: ``y`` is neither form (a tuple of other than two tensors of one
                shape, a tensor with an odd last dimension or fewer than two dimensions).
            RuntimeError: called under ``torch.inference_mode()``.
        """
        return on_pair_state(y, self.field, "Hamiltonian", ("q", "p"), "(batch, d)", 2)


class _SeparableEnergy(nn.Module):
    """H(q, p) = T(p) + V(q)."""

    def __init__(self, kinetic: nn.Module, potential: nn.Module):
        super().__init__()
        self.kinetic = function("kinetic", kinetic)
        self.potential = function("potential", potential)

    def forward(self, q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return _per_sample(self.kinetic(p), p) + _per_sample(self.potential(q), q)


class SeparableHamiltonian(HamiltonianDynamics):
    """A separable Hamiltonian H(q, p) = T(p) + V(q): dq/dt = dT/dp depends on p only and
    dp/dt = -dV/dq on q only, each computed from its own network. This is the structure the
    explicit symplectic methods (Stormer-Verlet/leapfrog and its compositions) need. The
    field offers its two halves as ``dq_dt(t, p)`` and ``dp_dt(t, q)``, the protocol of a
    separable field (the guide's "Symplectic methods for Hamiltonian systems"): on a state
    ``(q, p)`` those methods call only the half a kick or drift needs, one network's
    gradient instead of both.

    States, grad mode and time as for ``HamiltonianDynamics``.

    Arguments:
        kinetic: a module called as ``kinetic(p)`` returning T per sample, (batch,) or
            (batch, 1).
        potential: a module called as ``potential(q)`` returning V per sample, (batch,) or
            (batch, 1).

    Raises:
        TypeError: ``kinetic`` or ``potential`` not an ``nn.Module`` or other callable.
    """

    def __init__(self, kinetic: nn.Module, potential: nn.Module):
        super().__init__(_SeparableEnergy(kinetic, potential))

    @property
    def kinetic(self) -> nn.Module:
        """The kinetic energy T(p)."""
        return self.hamiltonian.kinetic

    @property
    def potential(self) -> nn.Module:
        """The potential energy V(q)."""
        return self.hamiltonian.potential

    def dq_dt(self, t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """The half of the field that depends on p: dq/dt = dT/dp.

        Arguments:
            t: the time (ignored).
            p: the momenta, (batch, d).

        Returns:
            dT/dp, of the shape of ``p``.

        Raises:
            ValueError: ``p`` has fewer than two dimensions.
            RuntimeError: called under ``torch.inference_mode()``.
        """
        return self._dq_dt(_half_state(p, "p"))

    def dp_dt(self, t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The half of the field that depends on q: dp/dt = -dV/dq.

        Arguments:
            t: the time (ignored).
            q: the positions, (batch, d).

        Returns:
            -dV/dq, of the shape of ``q``.

        Raises:
            ValueError: ``q`` has fewer than two dimensions.
            RuntimeError: called under ``torch.inference_mode()``.
        """
        return self._dp_dt(_half_state(q, "q"))

    def _dq_dt(self, p: torch.Tensor) -> torch.Tensor:
        (dt_dp,) = _gradients(self.kinetic, (p,), torch.is_grad_enabled())
        return dt_dp

    def _dp_dt(self, q: torch.Tensor) -> torch.Tensor:
        (dv_dq,) = _gradients(self.potential, (q,), torch.is_grad_enabled())
        return -dv_dq

    def field(self, q: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The symplectic gradient of T(p) + V(q) at (q, p): its two halves.

        Arguments:
            q: the positions, (batch, d).
            p: the momenta, (batch, d).

        Returns:
            ``(dT/dp, -dV/dq)``, each of the shape of ``q``.
        """
        return self._dq_dt(p), self._dp_dt(q)


def _half_state(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` (q or p) checked as a half of a state (q, p): (batch, d)."""
    if x.ndim < 2:
        raise ValueError(
            f"{name} must be (batch, d), as in a Hamiltonian state (q, p), got shape "
            f"{tuple(x.shape)}; give it a batch dimension (e.g. {name}[None])"
        )
    return x
