"""A small U-Net vector field for image states (batch, channels, height, width)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional

from .._args import count
from .dynamics import ConcatConv2d, activation_layer


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups that divide ``channels`` (concatenated skips: 3w)."""
    return nn.GroupNorm(math.gcd(channels, 32), channels)


class _Block(nn.Module):
    """GroupNorm, activation, then a convolution that sees time as an extra channel."""

    def __init__(self, channels_in: int, channels_out: int, activation: str, stride: int = 1):
        super().__init__()
        self.norm = _group_norm(channels_in)
        self.act = activation_layer(activation)
        self.conv = ConcatConv2d(channels_in, channels_out, stride=stride)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv(t, self.act(self.norm(x)))


class UNetDynamics(nn.Module):
    """f(t, y) by a U-Net: ``depth`` stride-2 downsamplings doubling the width, a middle
    block, then upsampling with skip connections from the same resolution.

    Every convolution sees time as an extra constant channel; GroupNorm normalises each
    sample on its own (so samples stay independent, as regularisers and batching assume).
    ``activation`` defaults to the smooth SiLU: smooth vector fields are easier for adaptive
    solvers and give accurate adjoint gradients. Any image size works (odd sizes included).

    Arguments:
        channels: the image's channels.
        width: the first level's width.
        depth: the number of stride-2 downsamplings.
        activation: the activation's name.

    Raises:
        ValueError: ``channels`` or ``width`` not an integer >= 1, ``depth`` not an integer
            >= 0, or an unknown activation.
    """

    def __init__(self, channels: int, width: int = 32, depth: int = 2, activation: str = "silu"):
        super().__init__()
        channels, width = count("channels", channels), count("width", width)
        depth = count("depth", depth, minimum=0)
        widths = [width * 2**i for i in range(depth + 1)]
        self.inlet = ConcatConv2d(channels, width)
        self.down = nn.ModuleList(_Block(w, w, activation) for w in widths[:-1])
        self.downsample = nn.ModuleList(
            _Block(w, w_next, activation, stride=2) for w, w_next in zip(widths, widths[1:])
        )
        self.middle = _Block(widths[-1], widths[-1], activation)
        self.up = nn.ModuleList(
            _Block(w_next + w, w, activation) for w, w_next in zip(widths, widths[1:])
        )
        self.outlet = _Block(width, channels, activation)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Evaluate the vector field.

        Arguments:
            t: the time, a scalar or one per sample (batch,).
            y: the state, images (batch, channels, H, W).

        Returns:
            dy/dt, of the shape of ``y``.

        Raises:
            ValueError: ``y`` is not 4-D.
        """
        if y.ndim != 4:
            raise ValueError(
                f"UNetDynamics needs states (batch, channels, H, W), got {tuple(y.shape)}"
            )
        h = self.inlet(t, y)
        skips = []
        for block, downsample in zip(self.down, self.downsample):
            h = block(t, h)
            skips.append(h)
            h = downsample(t, h)
        h = self.middle(t, h)
        for block, skip in zip(reversed(self.up), reversed(skips)):
            h = functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = block(t, torch.cat([h, skip], dim=1))
        return self.outlet(t, h)
