"""Where training runs: device, process group under torchrun, memory and signal handling."""

from __future__ import annotations

import os
import platform
import resource
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


def machine(threads: int | None = None) -> str:
    """The processor, torch's version and the thread count, for an experiment's records.

    Arguments:
        threads: torch threads a run uses (default: ``torch.get_num_threads()``).

    Returns:
        For example ``"x86_64, torch 2.13.0, 1 thread(s)"``.
    """
    threads = threads or torch.get_num_threads()
    processor = platform.processor() or platform.machine()
    python = platform.python_version()
    return f"{processor}, Python {python}, torch {torch.__version__}, {threads} thread(s)"


@dataclass
class Runtime:
    """This process's place: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The device named by ``--device`` (``auto``: CUDA when available, else the CPU).

    Raises:
        ValueError: the name is not a device, or names a CUDA device this machine lacks.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: CUDA is not available on this machine; use --device cpu"
            )
        count = torch.cuda.device_count()
        if device.index is None:
            device = torch.device("cuda", local_rank % count)
        elif device.index >= count:
            raise ValueError(f"--device {name}: this machine has {count} CUDA device(s)")
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {name}: neuralode train runs on cpu, cuda or mps")
    return device


def start(device_name: str) -> Runtime:
    """Joins the process group when started by torchrun (WORLD_SIZE > 1): nccl on CUDA,
    gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Runtime(rank, world, device)


def stop(runtime: Runtime) -> None:
    if runtime.distributed and dist.is_initialized():
        dist.destroy_process_group()


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """(megabytes, what was measured): CUDA max allocated since the last reset, else the
    process's peak resident set size (over the whole process lifetime)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return rss / scale, "process_peak_rss"


def autograd_memory_mb(loss_fn: Any) -> float:
    """Megabytes of distinct tensors autograd saves for the backward pass while ``loss_fn()``
    runs (parameters excluded): the activation memory of a training step, which grows with
    the number of solver steps when backpropagating through the solver and does not with the
    adjoint. Deterministic, so usable on a shared CPU where process RSS is not."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if not isinstance(tensor, torch.nn.Parameter):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = loss_fn()
    loss.backward()
    return sum(seen.values()) / 2**20


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between batches (so the checkpoint is
    consistent); a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstop requested: saving a checkpoint after this batch", file=sys.stderr)

    def __enter__(self) -> StopRequest:
        try:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        except ValueError:  # not the main thread: signals stay with their owner
            self._previous.clear()
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
