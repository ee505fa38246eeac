"""An exponential moving average of a model's weights, used for evaluation (``--ema``)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class WeightAverage:
    """Keeps ``average = d * average + (1 - d) * weights`` after every optimiser step, in a copy
    of the model that is evaluated instead of the trained weights.

    The decay warms up as ``d_n = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so the
    average forgets the random initialisation within the first steps even for ``decay`` close
    to 1. Buffers (normalisation statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        weight = 1.0 - self.current_decay()
        averages = list(self.model.parameters())
        torch._foreach_lerp_(averages, [p.detach() for p in model.parameters()], weight)
        for average, buffer in zip(self.model.buffers(), model.buffers()):
            average.copy_(buffer)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])
