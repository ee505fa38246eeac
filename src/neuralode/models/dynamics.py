"""Vector fields f(t, y) for neural ODEs; each takes time as an input."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._args import count, flag

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name; smooth ones keep the ODE's vector field smooth."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def mlp(
    n_in: int,
    hidden: int,
    layers: int,
    activation: str,
    n_out: int,
    linear: Callable[[int, int], nn.Module] = nn.Linear,
) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden``, each a linear map and the activation
    ``activation``, then a linear map to ``n_out`` outputs (the vector fields' and energies'
    networks); ``linear(n_in, n_out)`` builds each linear map.

    ``hidden`` and ``layers`` are checked here under those names, the callers' arguments
    (each caller checks its own input and output sizes).

    Raises:
        ValueError: ``hidden`` not an integer >= 1, ``layers`` not an integer >= 0, or an
            unknown ``activation``.
    """
    hidden, layers = count("hidden", hidden), count("layers", layers, minimum=0)
    sizes = [n_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        blocks += [linear(a, b), activation_layer(activation)]
    blocks.append(linear(sizes[-1], n_out))
    return nn.Sequential(*blocks)


class MLPDynamics(nn.Module):
    """f(t, y) = MLP([y, t]) for states of shape (..., dim); MLP(y) when ``autonomous``
    (time-invariant dynamics, which extrapolate beyond the training times).

    Arguments:
        dim: the state's last dimension.
        hidden: the hidden width.
        layers: the number of hidden layers.
        activation: the activation's name.
        autonomous: leave t out of the input.

    Raises:
        ValueError: ``dim`` or ``hidden`` not an integer >= 1, ``layers`` not an integer
            >= 0, or an unknown activation.
        TypeError: ``autonomous`` not a bool.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        layers: int = 2,
        activation: str = "tanh",
        autonomous: bool = False,
    ):
        super().__init__()
        dim, autonomous = count("dim", dim), flag("autonomous", autonomous)
        self.autonomous = autonomous
        self.net = mlp(dim + (0 if autonomous else 1), hidden, layers, activation, dim)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar (a tensor or a Python number) or one per sample (batch,)
                (ignored when ``autonomous``).
            y: the state, (..., dim).

        Returns:
            dy/dt, of the shape of ``y``.
        """
        if self.autonomous:
            return self.net(y)
        time = batch_time(t, y).expand(*y.shape[:-1], 1)
        return self.net(torch.cat([y, time], dim=-1))


def batch_time(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s dtype with ``like``'s number of dimensions, to broadcast against it:
    a scalar time as (1, ..., 1), one time per sample (per-sample mode's ``(batch,)``) as
    (batch, 1, ..., 1).

    Arguments:
        t: the time, a scalar (a tensor or a Python number, made a tensor on ``like``'s
            device) or one per sample (dimension 0 of ``like``).
        like: the state (or a tensor with its batch dimension first).

    Returns:
        The reshaped time.
    """
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    t = t.to(like.dtype)
    return t.reshape(-1 if t.ndim == 1 else 1, *([1] * (like.ndim - 1)))


class ConcatConv2d(nn.Module):
    """A convolution that sees time as an extra constant input channel.

    Arguments:
        channels_in: the input channels (time is added as one more).
        channels_out: the output channels.
        kernel_size: the kernel size.
        padding: the padding.
        stride: the stride.

    Raises:
        ValueError: ``channels_in``, ``channels_out``, ``kernel_size`` or ``stride`` not an
            integer >= 1, or ``padding`` not an integer >= 0.
    """

    def __init__(
        self,
        channels_in: int,
        channels_out: int,
        kernel_size: int = 3,
        padding: int = 1,
        stride: int = 1,
    ):
        super().__init__()
        channels_in, channels_out = (
            count("channels_in", channels_in),
            count("channels_out", channels_out),
        )
        kernel_size, stride = count("kernel_size", kernel_size), count("stride", stride)
        padding = count("padding", padding, minimum=0)
        self.conv = nn.Conv2d(
            channels_in + 1, channels_out, kernel_size, stride=stride, padding=padding
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` with the time as a constant first channel.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            x: features (batch, channels_in, height, width).

        Returns:
            (batch, channels_out, height', width'), as ``nn.Conv2d`` gives.
        """
        time = batch_time(t, x).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([time, x], dim=1))


def group_norm(channels: int, name: str = "channels") -> nn.GroupNorm:
    """GroupNorm with the most groups, up to 32, that divide ``channels`` (32 for 64 channels,
    13 for 65: an augmented state's channels need not be a multiple of 32); a ``ValueError``
    naming ``name`` (the caller's argument) unless ``channels`` is an integer >= 1."""
    channels = count(name, channels)
    groups = max(g for g in range(1, min(32, channels) + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class ConvDynamics(nn.Module):
    """The ODE-Net paper's dynamics: norm-ReLU-ConcatConv-norm-ReLU-ConcatConv-norm (GroupNorm).

    Arguments:
        channels: the feature channels.
        activation: the activation's name.

    Raises:
        ValueError: ``channels`` not an integer >= 1, or an unknown activation.
    """

    def __init__(self, channels: int = 64, activation: str = "relu"):
        super().__init__()
        channels = count("channels", channels)
        self.act = activation_layer(activation)
        self.norm1 = group_norm(channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = group_norm(channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = group_norm(channels)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            x: features (batch, channels, height, width).

        Returns:
            dx/dt, of the shape of ``x``.
        """
        out = self.conv1(t, self.act(self.norm1(x)))
        out = self.conv2(t, self.act(self.norm2(out)))
        return self.norm3(out)
