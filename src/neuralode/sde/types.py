"""torchsde's ``types``: the type aliases its signatures use, for code that imports them
(``from torchsde import types`` becomes ``from neuralode.sde import types``). They are
torchsde's own ``typing`` forms, so that they compare equal to torchsde's."""

# ruff: noqa: UP006, UP007, UP035
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

import torch

Tensor = torch.Tensor
Tensors = Sequence[Tensor]
TensorOrTensors = Union[Tensor, Tensors]

Scalar = Union[float, Tensor]
Vector = Union[Sequence[float], Tensor]

Module = torch.nn.Module
Modules = Sequence[Module]
ModuleOrModules = Union[Module, Modules]

Size = torch.Size
Sizes = Sequence[Size]

__all__ = [
    "Any",
    "Callable",
    "Dict",
    "Module",
    "ModuleOrModules",
    "Modules",
    "Optional",
    "Scalar",
    "Sequence",
    "Size",
    "Sizes",
    "Tensor",
    "TensorOrTensors",
    "Tensors",
    "Tuple",
    "Union",
    "Vector",
]
