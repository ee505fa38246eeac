"""Runs a script as ``python script.py args`` would, without paying its imports each time.

Importing torch, torch._dynamo (the first optimiser imports it), neuralode and matplotlib
takes about 7 CPU seconds, more than most tutorial scripts' small runs compute. A fork server
imports them once; each script runs in a child forked from it, as ``__main__``, with its
stdout and stderr in files. The server forks before any computation, so the children start
without OpenMP threads to inherit. Where there is no fork server (Windows, macOS without it),
each script runs in a fresh interpreter instead. ``preloaded_context`` gives tests that start
worker processes the same server.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRELOAD = ["torch", "torch._dynamo", "neuralode", "matplotlib.pyplot", "_pytest", "pytest"]
ENVIRONMENT = {"MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}


@dataclass
class Done:
    """What ``subprocess.run`` reports: the exit status and the captured output."""

    returncode: int
    stdout: str
    stderr: str


def _child(script: str, args: list[str], stdout: str, stderr: str) -> None:
    """In the forked child: output into the files, then the script as ``__main__``."""
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    os.environ.update(ENVIRONMENT)
    import matplotlib
    import torch

    matplotlib.use("Agg")
    torch.set_num_threads(1)
    sys.argv = [script, *args]
    sys.path.insert(0, str(Path(script).parent))  # as ``python script.py`` does
    runpy.run_path(script, run_name="__main__")


def _start_server() -> None:
    """Starts the fork server (once per process) with the imports done and the environment
    the scripts run in (the server's environment is the one it starts with)."""
    multiprocessing.set_forkserver_preload(PRELOAD)
    saved = {name: os.environ.get(name) for name in ENVIRONMENT}
    os.environ.update(ENVIRONMENT)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def preloaded_context() -> multiprocessing.context.BaseContext:
    """A start method for worker processes (a run's ``--workers``, DDP ranks) that start
    without paying the imports: children of the fork server, which has imported them once;
    ``spawn`` where there is no fork server. Like ``spawn``, its children start without
    OpenMP threads and get their target and arguments pickled."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    _start_server()
    return multiprocessing.get_context("forkserver")


def run_script(script: Path, args: list[str], scratch: Path, timeout: float = 600) -> Done:
    """Runs ``python script args`` (``src`` importable, matplotlib's Agg backend, one
    thread) and returns its exit status and output; a run past ``timeout`` seconds is killed
    and reported with status -9."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        env = dict(os.environ, **ENVIRONMENT)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
        try:
            done = subprocess.run(
                [sys.executable, str(script), *args],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:  # its output is bytes, even with text=True
            stdout = (error.stdout or b"").decode(errors="replace")
            return Done(-9, stdout, f"timed out after {timeout} s")
        return Done(done.returncode, done.stdout, done.stderr)
    _start_server()
    stdout, stderr = scratch / f"{script.stem}.stdout", scratch / f"{script.stem}.stderr"
    context = multiprocessing.get_context("forkserver")
    process = context.Process(target=_child, args=(str(script), args, str(stdout), str(stderr)))
    process.start()
    process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join()
    return Done(process.exitcode, stdout.read_text(), stderr.read_text())
