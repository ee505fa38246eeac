"""A step function captured once as a CUDA graph and replayed (``cuda_graph=True``).

A CUDA graph records every kernel one call launches; a replay launches them all at once,
so a step costs one launch from Python instead of one per operation (dozens per step of an
explicit Runge-Kutta method, plus f's). The price is static memory: a replay reads its
inputs from the tensors it was captured with and writes its outputs into the same tensors
every time. ``GraphedStep`` therefore copies each call's inputs into the captured ones and
returns copies of the outputs, which the loop may keep for as long as it likes (the
per-sample loop keeps steps until their outputs and events are done); a solve that keeps no
step (only the end state, no event) takes the captured outputs themselves, as it is done
with them when it feeds them back as the next step's inputs.

What is captured must launch the same kernels every time and never read back to the host:
the per-sample step attempt does both (static shapes, decisions as tensors); f must too
(no ``.item()``, no CPU tensors, no data-dependent shapes). Values f reads from Python
objects are frozen at capture; its parameters are read from their memory at each replay,
so in-place updates (an optimizer's) are seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_WARMUP = 3  # calls on a side stream before the capture (lazy initialisation of libraries)


class CudaGraphs:
    """Captures and replays with ``torch.cuda.CUDAGraph`` (the default backend)."""

    def capture(self, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]) -> Any:
        """Run ``fn(*inputs)`` a few times, then capture one call; return its outputs."""
        device = inputs[0].device
        if device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the state on a CUDA device, got {device}")
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(_WARMUP):
                fn(*inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return fn(*inputs)

    def replay(self) -> None:
        self.graph.replay()


class GraphedStep:
    """``fn`` (tensors in; a tuple or NamedTuple of tensors and ``None`` out) captured on the
    first call and replayed on every call, with fresh output tensors each time; with
    ``copy_outputs=False`` the captured ones (overwritten by the next call: for a caller
    done with them by then, such as a loop feeding them back as the next inputs)."""

    backend: type = CudaGraphs  # tests substitute a stand-in that runs without a GPU

    def __init__(self, fn: Callable[..., Any], copy_outputs: bool = True):
        self.fn = fn
        self.copy_outputs = copy_outputs
        self.inputs: tuple[torch.Tensor, ...] | None = None
        self.outputs: Any = None
        self.graphs: Any = None

    def __call__(self, *args: torch.Tensor) -> Any:
        if self.inputs is None:
            self.inputs = tuple(a.clone() for a in args)
            self.graphs = self.backend()
            try:
                self.outputs = self.graphs.capture(self.fn, self.inputs)
            except RuntimeError as error:
                raise RuntimeError(
                    "cuda_graph=True could not capture the step as a CUDA graph; f must run "
                    "on the GPU without reading values back to the host (no .item(), no "
                    f"printing of tensors, no CPU tensors, no data-dependent shapes): {error}"
                ) from error
        else:
            for static, value in zip(self.inputs, args, strict=True):
                static.copy_(value)
        self.graphs.replay()  # a capture records the kernels without running them
        if not self.copy_outputs:
            return self.outputs
        fields = [None if x is None else x.clone() for x in self.outputs]
        return type(self.outputs)(*fields) if hasattr(self.outputs, "_fields") else fields
