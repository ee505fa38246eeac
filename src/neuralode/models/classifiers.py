"""Image classifiers with the Neural ODE paper's shapes: ODE-Net, ResNet and RK-Net."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._args import count
from .dynamics import ConvDynamics, group_norm
from .ode_block import ODEBlock
from .regularisers import RandomEndTime, Regulariser


class Augment(nn.Module):
    """Appends ``extra`` zero channels (dim 1): augmented neural ODEs (Dupont et al. 2019).

    Arguments:
        extra: the number of zero channels.

    Raises:
        ValueError: ``extra`` is not an integer >= 0.
    """

    def __init__(self, extra: int):
        super().__init__()
        self.extra = count("extra", extra, minimum=0)  # (an integer: not 1.5, not a bool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Append the zero channels.

        Arguments:
            x: a tensor (batch, channels, ...).

        Returns:
            (batch, channels + extra, ...): ``x`` followed by zeros along dim 1 (``x``
                itself when ``extra`` is 0).
        """
        if self.extra == 0:
            return x
        zeros = x.new_zeros(x.shape[0], self.extra, *x.shape[2:])
        return torch.cat([x, zeros], dim=1)


def downsampling(channels: int = 64, in_channels: int = 1) -> nn.Sequential:
    """28x28 images to ``channels`` x 6 x 6 features (26, 13, then 6 pixels a side), as in
    the paper's code."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
        group_norm(channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, channels, 4, 2, 1),
    )


POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


def head(channels: int, classes: int, pool: str = "avg") -> nn.Sequential:
    """GroupNorm, ReLU, global pooling, linear. The paper pools by average; after GroupNorm
    with 2 channels per group a channel's spatial average carries little information, and
    max pooling learns several times faster in short trainings (same parameters)."""
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {sorted(POOLS)}, got {pool!r}")
    classes = count("classes", classes)
    return nn.Sequential(
        group_norm(channels),
        nn.ReLU(inplace=True),
        POOLS[pool](1),
        nn.Flatten(),
        nn.Linear(channels, classes),
    )


class ResBlock(nn.Module):
    """x + conv(relu(norm(conv(relu(norm(x)))))): one Euler step of learned dynamics.

    Arguments:
        channels: the feature channels.

    Raises:
        ValueError: ``channels`` not an integer >= 1.
    """

    def __init__(self, channels: int):
        super().__init__()
        channels = count("channels", channels)
        self.body = nn.Sequential(
            group_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
            group_norm(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One residual step.

        Arguments:
            x: features (batch, channels, height, width).

        Returns:
            ``x`` plus the residual, of the shape of ``x``.
        """
        return x + self.body(x)


class ODENet(nn.Module):
    """The paper's MNIST model: down-sampling, one ODE block, GroupNorm, pooling, a linear layer.

    Arguments:
        channels: the feature channels of the ODE block (28x28 images become channels x 6 x 6).
        classes: the number of classes.
        augment: extra zero channels appended before the ODE block (an augmented ODE-Net).
        method: the ODE block's solver (a name of ``neuralode.METHODS``).
        rtol: the relative tolerance of adaptive methods.
        atol: the absolute tolerance of adaptive methods.
        step_size: the step of fixed-step methods.
        gradient: ``"adjoint"``, ``"direct"``, ``"checkpointed"`` or ``"reversible"``.
        activation: the dynamics' activation.
        regularisers: go to the ODE block: add ``model.ode.regularisation`` to the loss.
        pool: ``"avg"`` or ``"max"`` pooling in the head.
        end_time: STEER's [`RandomEndTime`][neuralode.models.RandomEndTime] of the ODE block
            (t in [0, 1]), or ``None``.

    Raises:
        ValueError: ``channels`` or ``classes`` not an integer >= 1, ``augment`` not an
            integer >= 0, or a bad option of the ODE block or the head.
    """

    def __init__(
        self,
        channels: int = 64,
        classes: int = 10,
        augment: int = 0,
        method: str = "dopri5",
        rtol: float = 1e-3,
        atol: float = 1e-3,
        step_size: float | None = None,
        gradient: str = "adjoint",
        activation: str = "relu",
        regularisers: Sequence[Regulariser] = (),
        pool: str = "avg",
        end_time: RandomEndTime | None = None,
    ):
        super().__init__()
        channels, classes = count("channels", channels), count("classes", classes)
        augment = count("augment", augment, 0)
        width = channels + augment
        self.features = nn.Sequential(downsampling(channels), Augment(augment))
        self.ode = ODEBlock(
            ConvDynamics(width, activation),
            method=method,
            rtol=rtol,
            atol=atol,
            step_size=step_size,
            gradient=gradient,
            regularisers=regularisers,
            end_time=end_time,
        )
        self.head = head(width, classes, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images.

        Arguments:
            x: images (batch, 1, 28, 28).

        Returns:
            The logits, (batch, classes).
        """
        return self.head(self.ode(self.features(x)))


class RKNet(ODENet):
    """ODE-Net dynamics integrated by fixed-step RK4, differentiated by backpropagation.

    Arguments:
        channels: the feature channels.
        classes: the number of classes.
        step_size: the RK4 step over [0, 1].
        pool: ``"avg"`` or ``"max"`` pooling in the head.
        regularisers: as for ``ODENet``.
        end_time: as for ``ODENet``.

    Raises:
        ValueError: as for ``ODENet``.
    """

    def __init__(
        self,
        channels: int = 64,
        classes: int = 10,
        step_size: float = 0.25,
        pool: str = "avg",
        regularisers: Sequence[Regulariser] = (),
        end_time: RandomEndTime | None = None,
    ):
        super().__init__(
            channels,
            classes,
            method="rk4",
            step_size=step_size,
            gradient="direct",
            pool=pool,
            regularisers=regularisers,
            end_time=end_time,
        )


class ResNet(nn.Module):
    """The paper's baseline: residual blocks in place of the ODE block.

    Arguments:
        channels: the feature channels.
        classes: the number of classes.
        blocks: the number of residual blocks (the paper: 6).
        pool: ``"avg"`` or ``"max"`` pooling in the head.

    Raises:
        ValueError: ``channels``, ``classes`` or ``blocks`` not an integer >= 1, or an unknown
            ``pool``.
    """

    def __init__(self, channels: int = 64, classes: int = 10, blocks: int = 6, pool: str = "avg"):
        super().__init__()
        channels, classes = count("channels", channels), count("classes", classes)
        blocks = count("blocks", blocks)
        self.features = downsampling(channels)
        self.blocks = nn.Sequential(*(ResBlock(channels) for _ in range(blocks)))
        self.head = head(channels, classes, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify images.

        Arguments:
            x: images (batch, 1, 28, 28).

        Returns:
            The logits, (batch, classes).
        """
        return self.head(self.blocks(self.features(x)))
