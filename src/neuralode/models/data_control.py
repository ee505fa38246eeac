"""Data-controlled neural ODEs: the vector field sees the input x as well as the state,
dy/dt = f(t, y, x), y(t0) = x (Massaroli et al., "Dissecting Neural ODEs", 2020).

The input rides along in the state as a constant: the field acts on the pair ``(y, x)`` (or
their concatenation) and returns ``(f(t, y, x), 0)``. So x is a constant of the solve that
every gradient strategy reaches (the continuous adjoint carries x's adjoint,
a_x(t0) = ∫ a_y ∂f/∂x dt, like any state's), and per-sample mode and ``torch.func.vmap`` see
one state per sample as usual.
"""

from __future__ import annotations

import torch
from torch import nn

from .._args import count, function
from .dynamics import mlp


class DataControlled(nn.Module):
    """The vector field (f(t, [y, x]), 0) on the state ``(y, x)``: ``net`` sees the state y
    and the input x concatenated along ``dim``; x stays constant over the solve. Start a
    solve at ``initial_state(x)``; ``ODEBlock(DataControlled(net))`` does, and returns y.
    The state may also be one tensor z = cat([y, x], dim) (``initial_state(x, flat=True)``);
    the default error norm then averages over x's channels too, whose error is zero (on the
    pair it is the max of y's and x's RMS, so y's alone).

    Arguments:
        net: a module called as ``net(t, z)`` with z = cat([y, x], dim), returning dy/dt of
            y's shape (for vectors (..., d) and inputs (..., d_x): a map of d + d_x features
            to d).
        dim: the dimension to concatenate along (-1 for vectors, 1 for images
            (batch, channels, H, W)).

    Raises:
        TypeError: ``net`` not an ``nn.Module`` or other callable.
    """

    def __init__(self, net: nn.Module, dim: int = -1):
        super().__init__()
        self.net = function("net", net)
        self.dim = dim

    def initial_state(
        self, x: torch.Tensor, y0: torch.Tensor | None = None, flat: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """The state to start a solve from: the pair ``(y0, x)``, or with ``flat`` the one
        tensor cat([y0, x], dim).

        Arguments:
            x: the input.
            y0: the initial state; ``x`` itself when ``None`` (the paper's choice).
            flat: return the concatenation instead of the pair.

        Returns:
            ``(y0, x)``, or cat([y0, x], dim).
        """
        y0 = x if y0 is None else y0
        return torch.cat([y0, x], dim=self.dim) if flat else (y0, x)

    def forward(
        self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            state: ``(y, x)``, the state and the input, or their concatenation z along
                ``dim`` (y's part as long as ``net``'s output).

        Returns:
            ``(dy/dt, 0)`` (zeros of the shape of ``x``), or for a flat state
            cat([dy/dt, 0], dim) of z's shape.

        Raises:
            TypeError: ``state`` neither a pair ``(y, x)`` nor a tensor.
            ValueError: for a flat state, ``net``'s output not shorter than z along ``dim``
                or of another shape elsewhere.
        """
        if isinstance(state, torch.Tensor):
            dy = self.net(t, state)
            n_y = dy.shape[self.dim] if dy.ndim == state.ndim else 0
            expected = list(state.shape)
            expected[self.dim] = n_y
            if list(dy.shape) != expected or not 0 < n_y < state.shape[self.dim]:
                raise ValueError(
                    f"a flat data-controlled state z = cat([y, x], dim={self.dim}) of shape "
                    f"{tuple(state.shape)} needs net(t, z) of z's shape but shorter along "
                    f"dim {self.dim} (y's part), got {tuple(dy.shape)}"
                )
            x = state.narrow(self.dim, n_y, state.shape[self.dim] - n_y)
            return torch.cat([dy, torch.zeros_like(x)], dim=self.dim)
        if not (isinstance(state, (tuple, list)) and len(state) == 2):
            raise TypeError(
                "DataControlled's state is the pair (y, x) or one tensor cat([y, x], dim): "
                f"start the solve at field.initial_state(x), got {type(state).__name__}"
            )
        y, x = state
        dy = self.net(t, torch.cat([y, x], dim=self.dim))
        return type(state)((dy, torch.zeros_like(x)))


class _StateMLP(nn.Module):
    """An MLP of z alone, called as ``net(t, z)``."""

    def __init__(self, net: nn.Sequential):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class DataControlledMLP(DataControlled):
    """``DataControlled`` with an autonomous MLP: dy/dt = MLP([y, x]) for states (..., dim)
    and inputs (..., data_dim). For time-dependent or depth-variant fields, wrap a module of
    your own (``GalerkinLinear`` layers, say) in ``DataControlled``.

    Arguments:
        dim: the state's last dimension.
        data_dim: the input's last dimension (default: ``dim``, for y(t0) = x).
        hidden: the hidden width.
        layers: the number of hidden layers.
        activation: the activation's name.

    Raises:
        ValueError: ``dim``, ``data_dim`` (given) or ``hidden`` not an integer >= 1,
            ``layers`` not an integer >= 0, or an unknown activation.
    """

    def __init__(
        self,
        dim: int,
        data_dim: int | None = None,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
    ):
        dim = count("dim", dim)
        data_dim = dim if data_dim is None else count("data_dim", data_dim)
        super().__init__(_StateMLP(mlp(dim + data_dim, hidden, layers, activation, dim)))
