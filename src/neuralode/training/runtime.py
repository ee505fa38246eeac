"""Where training runs: device, process group under torchrun, memory and signal handling."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.context import BaseContext
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
            raise ValueError(
                f"--device {name}: this machine has {count} CUDA device(s); use cuda:0 to "
                f"cuda:{count - 1}"
            )
        torch.cuda.set_device(device)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "mps"):
        raise ValueError(f"--device {name}: training runs on cpu, cuda or mps; use one of them")
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
    """The peak memory: CUDA max allocated since the last reset, else the process's peak
    resident set size (over the whole process lifetime).

    Arguments:
        device: the device the run uses.

    Returns:
        ``(megabytes, what)``: the peak in MiB (2**20 bytes) and ``"cuda_max_allocated"``
            or ``"process_peak_rss"``.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 2**20 if sys.platform == "darwin" else 2**10  # bytes on macOS, KiB on Linux
    return rss / scale, "process_peak_rss"


def autograd_memory_mb(loss_fn: Any) -> float:
    """Megabytes of distinct tensors autograd saves for the backward pass while ``loss_fn()``
    runs (parameters excluded): the activation memory of a training step, which grows with
    the number of solver steps when backpropagating through the solver and does not with the
    adjoint. Deterministic, so usable on a shared CPU where process RSS is not.

    Arguments:
        loss_fn: a function of no arguments returning a scalar loss; it is called once and
            ``backward()`` is run on its result (gradients accumulate as in a training step).

    Returns:
        The megabytes (2**20 bytes) of the distinct storages saved for backward.
    """
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


# The stop flag of a run whose jobs train in worker processes (see ``shared_stop``): set by
# the main process's StopRequest, read by the workers' StopRequests.
_shared_flag: Any = None


@contextlib.contextmanager
def shared_stop(context: BaseContext) -> Iterator[Any]:
    """Passes this process's stop requests on to worker processes while the block runs: a
    SIGINT or SIGTERM that only this process receives (``kill PID``, ``docker stop``) then
    stops the workers' jobs too, after their current step. A stop requested while the block
    runs, which ends without an error (the workers had finished their training), ends it
    with ``KeyboardInterrupt`` as a stop outside the block does at once.

    Arguments:
        context: the multiprocessing context the workers start in.

    Yields:
        The flag to give each worker's ``follow_stop`` (for example
        ``ProcessPoolExecutor(..., initializer=follow_stop, initargs=(flag,))``).

    Raises:
        KeyboardInterrupt: a stop was requested while the block ran.
    """
    global _shared_flag
    previous, _shared_flag = _shared_flag, context.RawValue("b", 0)
    try:
        with StopRequest() as stop:  # the workers save their checkpoints before they stop
            yield _shared_flag
        if stop.requested:
            raise KeyboardInterrupt
    finally:
        _shared_flag = previous


def follow_stop(flag: Any, command: str | None = None) -> None:
    """In a worker process: its ``StopRequest`` also reports the stops of the process that
    made ``flag`` with ``shared_stop``, and its warnings print as the command line's do.

    Arguments:
        flag: what ``shared_stop`` yielded.
        command: the command the worker runs for (e.g. ``"experiment spirals"``): its
            warnings print as one line each (``one_line_warnings``); None leaves them as
            they are.
    """
    global _shared_flag
    _shared_flag = flag
    if command is not None:
        warnings.showwarning = one_line_warnings(command)


def one_line_warnings(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints each warning as one line on stderr:
    ``neuralode COMMAND: warning: MESSAGE``.

    Arguments:
        command: the command as the user typed it, e.g. ``"train"`` or
            ``"experiment spirals"``.

    Returns:
        The function to assign to ``warnings.showwarning``.
    """

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        text = " ".join(str(message).split())
        try:
            print(f"neuralode {command}: warning: {text}", file=file or sys.stderr)
        except OSError:  # stderr closed: the warning is lost, as with Python's own
            pass

    return show


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks between batches (so the checkpoint is
    consistent); a second SIGINT or SIGTERM interrupts at once (``KeyboardInterrupt``).

    Within ``shared_stop`` a request also sets the flag that worker processes follow, and in
    a worker (``follow_stop``) ``requested`` is also true once that flag is set.
    """

    def __init__(self) -> None:
        self._requested = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """Whether this process, or the one that started it as a worker, was asked to stop."""
        return self._requested or (_shared_flag is not None and bool(_shared_flag.value))

    def _handle(self, signum: int, frame: Any) -> None:
        # asked twice: this process's own signals count, not the flag it follows (a Ctrl-C
        # reaches a worker and the process that sets that flag at once)
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        if _shared_flag is not None:
            _shared_flag.value = 1
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
