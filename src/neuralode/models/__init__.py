"""Models built on the core API, as ordinary ``torch.nn.Module``s."""

from .classifiers import Augment, ODENet, ResBlock, ResNet, RKNet
from .dynamics import ConcatConv2d, ConvDynamics, MLPDynamics
from .latent import (
    ELBO,
    ODERNN,
    RNNVAE,
    GapRNN,
    LatentODE,
    RNNBaseline,
    collate_irregular,
    extrapolation_masks,
)
from .ode_block import ODEBlock

__all__ = [
    "Augment",
    "ConcatConv2d",
    "ConvDynamics",
    "ELBO",
    "GapRNN",
    "LatentODE",
    "MLPDynamics",
    "ODEBlock",
    "ODENet",
    "ODERNN",
    "RNNBaseline",
    "RNNVAE",
    "RKNet",
    "ResBlock",
    "ResNet",
    "collate_irregular",
    "extrapolation_masks",
]
