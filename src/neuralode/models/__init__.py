"""Models built on the core API, as ordinary ``torch.nn.Module``s."""

from .classifiers import Augment, ODENet, ResBlock, ResNet, RKNet
from .dynamics import ConcatConv2d, ConvDynamics, MLPDynamics
from .ode_block import ODEBlock

__all__ = [
    "Augment",
    "ConcatConv2d",
    "ConvDynamics",
    "MLPDynamics",
    "ODEBlock",
    "ODENet",
    "RKNet",
    "ResBlock",
    "ResNet",
]
