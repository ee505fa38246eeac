"""Second-order neural ODEs (SONODEs; Norcliffe, Bodnar, Day, Simidjievski & Lio 2020): a
network learns the acceleration, x'' = a(t, x, x'), solved as the first-order system
(x, v)' = (v, a(t, x, v)) on the pair state (x, v). The initial velocity v0 is zero or a
function of x0 (a network, as in the paper)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .._args import count, flag, function
from ._pair_state import on_pair_state
from .dynamics import batch_time, mlp


class AccelerationMLP(nn.Module):
    """a(t, x, v) = MLP([x, v, t]), or MLP([x, t]) without ``velocity``, leaving t out when
    ``autonomous``: an acceleration for ``SecondOrderDynamics`` on states (..., dim).

    Arguments:
        dim: the position's last dimension d (the output's too).
        hidden: the hidden width.
        layers: the number of hidden layers.
        activation: the activation's name.
        autonomous: leave t out of the input.
        velocity: take v as an input (``False``: called as ``acceleration(t, x)``, for
            ``SecondOrderDynamics(..., separable=True)``).

    Raises:
        ValueError: ``dim`` or ``hidden`` not an integer >= 1, ``layers`` not an integer
            >= 0, or an unknown activation.
        TypeError: ``autonomous`` or ``velocity`` not a bool.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
        autonomous: bool = False,
        velocity: bool = True,
    ):
        super().__init__()
        dim = count("dim", dim)
        autonomous, velocity = flag("autonomous", autonomous), flag("velocity", velocity)
        self.autonomous, self.velocity = autonomous, velocity
        n_in = dim * (2 if velocity else 1) + (0 if autonomous else 1)
        self.net = mlp(n_in, hidden, layers, activation, dim)

    def forward(self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor | None = None) -> Any:
        """Evaluate the acceleration.

        Arguments:
            t: the time, a scalar or one per sample (batch,) (ignored when ``autonomous``).
            x: the position, (..., dim).
            v: the velocity, of the shape of ``x`` (only with ``velocity``).

        Returns:
            d^2x/dt^2, of the shape of ``x``.

        Raises:
            ValueError: ``v`` given without ``velocity`` or missing with it.
        """
        if v is None and self.velocity:
            raise ValueError(
                "this AccelerationMLP takes v (velocity=True) but was called as (t, x): make "
                "it with velocity=False for SecondOrderDynamics(..., separable=True)"
            )
        if v is not None and not self.velocity:
            raise ValueError(
                "this AccelerationMLP takes (t, x) only (velocity=False) but was given v: make "
                "it with velocity=True for a SecondOrderDynamics that is not separable"
            )
        parts = [x] if v is None else [x, v]
        if not self.autonomous:
            parts.append(batch_time(t, x).expand(*x.shape[:-1], 1))
        return self.net(torch.cat(parts, dim=-1))


class SecondOrderDynamics(nn.Module):
    """The vector field of a second-order ODE x'' = a(t, x, v) with v = x':
    f(t, (x, v)) = (v, a(t, x, v)).

    The state is a tuple ``(x, v)`` of two tensors of one shape (batch, ..., d), or one tensor
    (batch, 2 d) holding x then v on its last dimension; f returns the same form. With
    ``separable=True`` the acceleration is called as ``acceleration(t, x)``: dx/dt depends on
    v only and dv/dt on (t, x) only, the structure of the explicit symplectic methods
    (``leapfrog``, ``yoshida4``, ``neuralode.solvers.PARTITIONED_METHODS``), which take the
    tuple state; ``dq_dt(t, v)`` and ``dp_dt(t, x)`` give each half of the field alone.

    ``initial_state(x0)`` gives the state to solve from: v0 from the ``initial_velocity``
    network (the paper learns it from x0), or zero without one.

    Arguments:
        acceleration: a module called as ``acceleration(t, x, v)`` (or ``acceleration(t, x)``
            when ``separable``) returning a tensor of the shape of ``x``, e.g.
            ``AccelerationMLP(d, hidden)``.
        separable: the acceleration depends on (t, x) only.
        initial_velocity: a module mapping x0 to v0 (of the shape of x0), or ``None`` for
            v0 = 0.

    Raises:
        TypeError: ``acceleration`` (or a given ``initial_velocity``) not an ``nn.Module``
            or other callable, or ``separable`` not a bool.
    """

    def __init__(
        self,
        acceleration: nn.Module,
        separable: bool = False,
        initial_velocity: nn.Module | None = None,
    ):
        super().__init__()
        self.acceleration = function("acceleration", acceleration)
        self.separable = flag("separable", separable)
        if initial_velocity is not None:
            function("initial_velocity", initial_velocity, "an nn.Module, a callable or None")
        self.initial_velocity = initial_velocity

    def initial_state(self, x0: torch.Tensor, flat: bool = False) -> Any:
        """The state (x0, v0) to solve from.

        Arguments:
            x0: the initial position, (batch, ..., d).
            flat: return one tensor (batch, 2 d), x0 then v0 on the last dimension, instead
                of the tuple.

        Returns:
            ``(x0, v0)`` or its concatenation; v0 is ``initial_velocity(x0)``, or zeros.

        Raises:
            ValueError: ``initial_velocity`` returns a tensor of another shape than ``x0``.
        """
        if self.initial_velocity is None:
            v0 = torch.zeros_like(x0)
        else:
            v0 = self.initial_velocity(x0)
            if not isinstance(v0, torch.Tensor) or v0.shape != x0.shape:
                got = tuple(v0.shape) if isinstance(v0, torch.Tensor) else type(v0).__name__
                raise ValueError(
                    f"initial_velocity must return v0 of the shape of x0 {tuple(x0.shape)}, "
                    f"got {got}; give its last layer d outputs"
                )
        return torch.cat([x0, v0], dim=-1) if flat else (x0, v0)

    @property
    def dq_dt(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The half of a ``separable`` field that depends on v: ``dq_dt(t, v)`` returns
        dx/dt = v. With ``dp_dt`` it is the protocol of a separable field on a pair (the
        guide's "Symplectic methods for Hamiltonian systems"), by which the symplectic
        methods evaluate only the half a kick or drift needs; a field that is not
        ``separable`` has neither (``hasattr`` is false), so they evaluate it whole.

        Returns:
            A function of ``(t, v)`` returning ``v``.

        Raises:
            AttributeError: the field is not ``separable``.
        """
        if not self.separable:
            raise AttributeError("dq_dt: only a separable SecondOrderDynamics has the halves")
        return self._dq_dt

    @property
    def dp_dt(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The half of a ``separable`` field that depends on (t, x): ``dp_dt(t, x)`` returns
        dv/dt = a(t, x), of the shape of ``x`` (see ``dq_dt``).

        Returns:
            A function of ``(t, x)`` returning the acceleration.

        Raises:
            AttributeError: the field is not ``separable``.
        """
        if not self.separable:
            raise AttributeError("dp_dt: only a separable SecondOrderDynamics has the halves")
        return self._dp_dt

    def _dq_dt(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return v

    def _dp_dt(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self._checked(self.acceleration(t, x), x)

    def field(
        self, t: torch.Tensor, x: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The field at (t, x, v).

        Arguments:
            t: the time, a scalar or one per sample.
            x: the position, (batch, ..., d).
            v: the velocity, of the shape of ``x``.

        Returns:
            ``(dx/dt, dv/dt) = (v, a(t, x, v))`` (``a(t, x)`` when ``separable``).

        Raises:
            ValueError: the acceleration's shape is not ``x``'s.
        """
        a = self.acceleration(t, x) if self.separable else self.acceleration(t, x, v)
        return v, self._checked(a, x)

    @staticmethod
    def _checked(a: Any, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(a, torch.Tensor) or a.shape != x.shape:
            got = tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__
            raise ValueError(
                f"the acceleration must return a tensor of the position's shape "
                f"{tuple(x.shape)}, got {got}; give its last layer d outputs"
            )
        return a

    def forward(self, t: torch.Tensor, y: Any) -> Any:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            y: the state: a tuple ``(x, v)`` of two tensors of one shape (batch, ..., d), or
                a tensor (batch, 2 d) with x then v on the last dimension.

        Returns:
            dy/dt in the form of ``y``: ``(v, a)`` or their concatenation.

        Raises:
            ValueError: ``y`` is neither form (a tuple of other than two tensors of one
                shape, a tensor with an odd last dimension or fewer than two dimensions),
                or the acceleration's shape is not the position's.
        """
        return on_pair_state(
            y, lambda x, v: self.field(t, x, v), "second-order", ("x", "v"), "(batch, ..., d)", 1
        )
