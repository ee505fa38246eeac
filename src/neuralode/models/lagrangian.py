"""Lagrangian neural networks (Cranmer, Greydanus, Hoyer, Battaglia, Spergel & Ho 2020): a
network learns a scalar L(q, qdot) and the acceleration comes from the Euler-Lagrange
equation d/dt dL/dqdot = dL/dq, solved for qddot:

    qddot = (d2L/dqdot2)^-1 [dL/dq - (d2L/dqdot dq) qdot],

so the exact flow of ``SecondOrderDynamics(LagrangianAcceleration(L))`` conserves the energy
E = qdot . dL/dqdot - L (L's Legendre transform) in whatever coordinates q are."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from .._args import function, real
from .._host import transform_active
from .hamiltonian import _gradients, _leaves, _per_sample, _require_autograd

_NEED = "a Lagrangian acceleration needs autograd for the derivatives of L"


class LagrangianAcceleration(nn.Module):
    """The Euler-Lagrange acceleration of a learned Lagrangian L(q, qdot), for
    ``SecondOrderDynamics(LagrangianAcceleration(L))`` on the state (q, qdot).

    Per sample it forms the d x d blocks d2L/dqdot2 (the mass matrix) and d2L/dqdot dq of
    L's Hessian, by autograd of L summed over the batch (d backward passes through dL/dqdot;
    the samples must be independent: no batch statistics in L), and solves
    ``d2L/dqdot2 qddot = dL/dq - (d2L/dqdot dq) qdot`` (a solve, not an inverse). Grad mode as
    for ``HamiltonianDynamics``: with grad mode on, the graph is kept so that a loss on the
    acceleration, or on a solve, backpropagates to L's parameters (a third derivative through
    the network); under ``torch.no_grad()`` grad mode is switched on inside and the result
    carries no graph; inside ``torch.func`` transforms ``torch.func.grad`` and
    ``torch.func.vjp`` take the derivatives; ``torch.inference_mode()`` is refused.

    The mass matrix must be invertible: L strictly convex in qdot, such as a kinetic term
    qdot^T M(q) qdot / 2 with M positive definite. An L whose mass matrix is singular at a
    sample (e.g. one without a kinetic term, d2L/dqdot2 = 0) raises, unless
    ``regularisation`` > 0, which solves with d2L/dqdot2 + regularisation * I instead (the
    acceleration is then that of a changed system: keep it small against the mass matrix).
    A mass matrix that is nearly singular gives large accelerations without an error.

    Arguments:
        lagrangian: a module called as ``lagrangian(q, qdot)`` returning L per sample,
            shape (batch,) or (batch, 1), e.g. ``EnergyMLP(2 * d, hidden)``. The time is not
            an input (L is autonomous).
        regularisation: a multiple of the identity added to d2L/dqdot2 before the solve
            (0: none).

    Raises:
        ValueError: ``regularisation`` not a finite number >= 0.
        TypeError: ``lagrangian`` not an ``nn.Module`` or other callable.
    """

    def __init__(self, lagrangian: nn.Module, regularisation: float = 0.0):
        super().__init__()
        self.lagrangian = function("lagrangian", lagrangian)
        self.regularisation = real(
            "regularisation",
            regularisation,
            ">= 0 and finite (a multiple of the identity added to d2L/dqdot2; 0 for none)",
            lambda x: 0 <= x < math.inf,
        )

    def value(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        """The learned Lagrangian L(q, qdot) per sample.

        Arguments:
            q: the positions, (batch, ..., d).
            qdot: the velocities, of the shape of ``q``.

        Returns:
            L, of shape (batch, ...).

        Raises:
            ValueError: ``lagrangian`` returns other than one value per sample.
        """
        return _per_sample(self.lagrangian(q, qdot), q)

    def energy(self, q: torch.Tensor, qdot: torch.Tensor) -> torch.Tensor:
        """The energy of L (its Legendre transform), E = qdot . dL/dqdot - L, per sample: the
        quantity the exact flow of the Euler-Lagrange equation conserves.

        Arguments:
            q: the positions, (batch, ..., d).
            qdot: the velocities, of the shape of ``q``.

        Returns:
            E, of shape (batch, ...).

        Raises:
            ValueError: ``q`` and ``qdot`` differ in shape, or ``lagrangian`` returns other
                than one value per sample.
            RuntimeError: called under ``torch.inference_mode()``.
        """
        _check_pair(q, qdot)
        _require_autograd(_NEED)
        _, dl_dv = _gradients(self.value, (q, qdot), torch.is_grad_enabled())
        return (qdot * dl_dv).sum(-1) - self.value(q, qdot)

    def forward(self, t: torch.Tensor, q: torch.Tensor, qdot: torch.Tensor | None = None) -> Any:
        """Evaluate the Euler-Lagrange acceleration.

        Arguments:
            t: the time (ignored).
            q: the positions, (batch, ..., d).
            qdot: the velocities, of the shape of ``q``.

        Returns:
            qddot, of the shape of ``q``.

        Raises:
            ValueError: ``qdot`` missing (a ``SecondOrderDynamics(..., separable=True)``),
                ``q`` and ``qdot`` differ in shape, ``lagrangian`` returns other than one
                value per sample, or d2L/dqdot2 is singular at a sample (outside
                ``torch.func`` transforms; inside them torch's ``LinAlgError`` says so).
            RuntimeError: called under ``torch.inference_mode()``.
        """
        if qdot is None:
            raise ValueError(
                "a Lagrangian acceleration depends on the velocity but was called as (t, q): "
                "use SecondOrderDynamics(LagrangianAcceleration(L)) without separable=True"
            )
        _check_pair(q, qdot)
        _require_autograd(_NEED)
        if transform_active():  # (autograd.grad is refused inside torch.func transforms)
            dl_dq, mass, mixed = self._blocks_func(q, qdot)
        else:
            dl_dq, mass, mixed = self._blocks_autograd(q, qdot, torch.is_grad_enabled())
        rhs = dl_dq.unsqueeze(-1) - mixed @ qdot.unsqueeze(-1)  # (..., d, 1)
        if self.regularisation:
            eye = torch.eye(q.shape[-1], dtype=mass.dtype, device=mass.device)
            mass = mass + self.regularisation * eye
        if transform_active():
            return torch.linalg.solve(mass, rhs).squeeze(-1)
        qddot, info = torch.linalg.solve_ex(mass, rhs)
        if bool(info.ne(0).any()):
            bad = info.ne(0)
            raise ValueError(
                f"d2L/dqdot2, the mass matrix the Euler-Lagrange acceleration solves with, is "
                f"singular at {int(bad.sum())} of {bad.numel()} samples (the first at index "
                f"{tuple(int(i) for i in bad.nonzero()[0])}): L must be strictly convex in "
                "qdot; give it a kinetic term (e.g. add qdot^2 / 2), or pass "
                "LagrangianAcceleration(L, regularisation=eps) to solve with d2L/dqdot2 + eps I"
            )
        return qddot.squeeze(-1)

    def _blocks_autograd(
        self, q: torch.Tensor, qdot: torch.Tensor, create_graph: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dL/dq, d2L/dqdot2 and d2L/dqdot dq (rows: d/dqdot_i) by autograd."""
        d = q.shape[-1]
        with torch.enable_grad():
            q_, v_ = _leaves((q, qdot), create_graph)
            total = self.value(q_, v_).sum()
            dl_dq, dl_dv = torch.autograd.grad(
                total, (q_, v_), create_graph=True, allow_unused=True
            )
            mass_rows, mixed_rows = [], []
            for i in range(d):
                if dl_dv is None or dl_dv.grad_fn is None:  # L is linear in qdot or free of it
                    g_q = g_v = None
                else:
                    g_q, g_v = torch.autograd.grad(
                        dl_dv[..., i].sum(),
                        (q_, v_),
                        create_graph=create_graph,
                        retain_graph=True,
                        allow_unused=True,
                    )
                mass_rows.append(torch.zeros_like(qdot) if g_v is None else g_v)
                mixed_rows.append(torch.zeros_like(q) if g_q is None else g_q)
        if dl_dq is None:
            dl_dq = torch.zeros_like(q)
        elif not create_graph:
            dl_dq = dl_dq.detach()
        return dl_dq, torch.stack(mass_rows, -2), torch.stack(mixed_rows, -2)

    def _blocks_func(
        self, q: torch.Tensor, qdot: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """dL/dq, d2L/dqdot2 and d2L/dqdot dq by ``torch.func`` (inside transforms)."""

        def first(q: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            dl_dq, dl_dv = torch.func.grad(lambda a, b: self.value(a, b).sum(), (0, 1))(q, v)
            return dl_dv, dl_dq

        _, pullback, dl_dq = torch.func.vjp(first, q, qdot, has_aux=True)
        basis = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
        mass_rows, mixed_rows = [], []
        for row in basis:
            g_q, g_v = pullback(torch.zeros_like(qdot) + row)
            mass_rows.append(g_v)
            mixed_rows.append(g_q)
        return dl_dq, torch.stack(mass_rows, -2), torch.stack(mixed_rows, -2)


def _check_pair(q: Any, qdot: Any) -> None:
    if not (
        isinstance(q, torch.Tensor)
        and isinstance(qdot, torch.Tensor)
        and q.shape == qdot.shape
        and q.ndim >= 1
    ):
        shapes = [
            tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__ for x in (q, qdot)
        ]
        raise ValueError(
            f"a Lagrangian acceleration needs q and qdot of one shape (batch, ..., d), got "
            f"{shapes[0]} and {shapes[1]}; pass the state (q, qdot) of a SecondOrderDynamics"
        )
