"""Benchmarks against torchdiffeq, torchode and SciPy (needs the ``bench`` extra installed).

``neuralode bench`` runs them; ``benchmarks/*.py`` are thin scripts around the same code.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
from pathlib import Path

import torch


def environment() -> str:
    """The machine and the versions of everything timed, for the reports."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    gpu = f"GPU: {torch.cuda.get_device_name()}; " if torch.cuda.is_available() else ""
    versions = ", ".join(
        f"{name} {_version(name)}"
        for name in ("neuralode", "torchdiffeq", "torchode", "torchsde", "torchcde", "scipy")
    )
    return (
        f"{gpu}CPU: {cpu}, {os.cpu_count()} logical cores, torch threads "
        f"{torch.get_num_threads()}; Python {platform.python_version()}, torch "
        f"{torch.__version__}, {versions}"
    )


def imports(name: str) -> bool:
    """Whether the library ``name`` imports here: installed, and not broken.

    Arguments:
        name: a module name.

    Returns:
        True when ``import name`` succeeds.
    """
    try:
        importlib.import_module(name)
    except Exception:  # a broken install fails with anything: the caller goes without it
        return False
    return True


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def device_option(name: str | None) -> torch.device | None:
    """``--device`` of the benchmarks, checked before anything runs.

    Arguments:
        name: the option's text, or ``None`` (each part's default).

    Returns:
        The CPU or an available CUDA device, or ``None``.

    Raises:
        ValueError: ``name`` is not a device, another kind than cpu or cuda, or a CUDA device
            torch does not see here (the message names the fix).
    """
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; give cpu or cuda[:N]") from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ValueError(
                f"--device {name}: torch sees {count or 'no'} CUDA device{'s' * (count != 1)} "
                "here; give --device cpu or run on a machine with one"
            )
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: the benchmarks run on cpu or cuda[:N]")
    return device


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out FILE`` and ``--overwrite``: where a benchmark script writes its markdown report.

    An existing ``FILE`` is refused unless ``--overwrite``, as the CLI's ``--out`` directories
    are (``check_report_arguments`` checks it right after the parse, before anything is timed).

    Arguments:
        parser: the script's parser.
    """
    parser.add_argument(
        "--out",
        help="write the markdown report to this file (an existing one is refused unless "
        "--overwrite)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def check_report_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop the parse with a one-line error unless ``args.out`` (if given) can take the report:
    not a directory, in a directory that exists, and new unless ``args.overwrite``.

    Arguments:
        parser: the parser that read ``args`` (its ``error`` exits with status 2).
        args: the parsed options of ``add_report_arguments``.
    """
    if args.out is None:
        return
    out = Path(args.out)
    if out.is_dir():
        parser.error(f"--out {out} is a directory; give a file name for the report")
    if out.exists() and not args.overwrite:
        parser.error(f"--out {out} exists; replace it with --overwrite, or choose another --out")
    if not out.parent.is_dir():
        parser.error(f"--out {out}: the directory {out.parent} does not exist; create it first")
    existed = out.exists()
    try:  # (a probe: permissions alone do not say it, e.g. for root on a read-only mount)
        with open(out, "a"):
            pass
    except OSError as error:
        parser.error(f"--out {out}: cannot write there ({error.strerror}); choose another --out")
    if not existed:
        out.unlink()


def write_report(args: argparse.Namespace, report: str) -> None:
    """Write ``report`` to ``args.out`` (checked by ``check_report_arguments``), if given.

    Arguments:
        args: the parsed options of ``add_report_arguments``.
        report: the markdown.
    """
    if args.out is not None:
        Path(args.out).write_text(report + "\n")
