"""The run directory of ``neuralode train``: refusal to overwrite, an exclusive lock, and
metrics.jsonl kept consistent with the checkpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from .state import CheckpointError, load_checkpoint, write_failure

RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "config.json", "demo.json")
LOCK_NAME = ".neuralode-train.lock"
# The names of RUN_OUTPUTS that were the user's own files before any run wrote to --out
# (adopted by an --overwrite into a directory without a run): --overwrite leaves them.
USER_FILES_RECORD = ".neuralode-user-files.json"
# Everything a run of ``neuralode train``, ``demo`` or an experiment writes at the top of its
# --out (names or glob patterns; a directory goes with its contents). ``--overwrite`` removes
# these and nothing else, so a user's own files there survive; a new output is listed here
# (every test that runs a command checks that what it wrote is: tests/conftest.py).
RUN_OUTPUTS = (
    # neuralode train (and the .tmp of its atomic writes)
    "checkpoint.pt", "checkpoint.pt.tmp", "metrics.jsonl", "metrics.jsonl.tmp", "config.json",
    "config.json.tmp", "tensorboard", "curves.png", "nfe.png", "trajectories.png",
    "tolerance.png", "tolerance.json", "residuals.png", "residuals.json",
    # the experiments
    "checkpoints", ".metrics.lock", "metrics.json", "results.json", "table.md", "table1.md",
    "table1.json", "table2.md", "memory.png", "model.pt", "samples.png", "densities.png",
    "posterior.png", "prior.png", "spacetime.png", "fields.png", "marginals.png", "toy2d.png",
    "nll_curve.png", "latent_ode_*.pt", "rnn_*.pt", "spirals_*.png", "cde_spirals.png",
    "hnn_phase.png", "hnn_energy.png",
    # the per-model training runs of table1 and implicit
    "resnet", "rknet", "odenet", "deq",
    # neuralode demo
    "demo.json", "work_precision.png",
    # open_run_directory
    USER_FILES_RECORD,
)  # fmt: skip


class RunDirectoryError(ValueError):
    """The ``--out`` directory cannot be used for this run (a file, not writable, locked by
    another run, or holding a run that would be overwritten)."""


class RunLock:
    """An exclusive ``fcntl.flock`` on ``OUT/.neuralode-train.lock``, held for the run.

    The operating system releases the lock when its process ends, however it ends, so the
    lock of a killed run never blocks a later one. The file holds the owner's process id
    (for the message) and is removed on release.
    """

    def __init__(self, directory: Path):
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Takes the lock or raises ``RunDirectoryError`` naming the process that holds it.

        Returns:
            This lock, held.

        Raises:
            RunDirectoryError: another process holds the lock, or the file cannot be created.
        """
        import fcntl

        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise RunDirectoryError(
                    f"--out {self.path.parent}: cannot create files there ({error.strerror}); "
                    "use a writable directory"
                ) from error
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    # a file system without locks (some network mounts): run unprotected
                    print(
                        f"warning: cannot lock {self.path} ({error.strerror}); another run "
                        "writing to this --out at the same time would not be detected",
                        file=sys.stderr,
                    )
                    self._fd = fd
                    return self
                owner = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirectoryError(
                    f"--out {self.path.parent} is in use by another neuralode train (process "
                    f"{owner}); wait for it to finish or use another --out"
                ) from error
            # A releasing run unlinks the file while holding the lock: a lock taken on the
            # unlinked file protects nothing, so take it again on the current file.
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            if os.fstat(fd).st_ino != current.st_ino:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return self

    def release(self) -> None:
        """Removes the lock file and releases the lock (no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None


def run_outputs(out: Path) -> list[Path]:
    """The files and directories in ``out`` that a run writes (``RUN_OUTPUTS``).

    Arguments:
        out: a run directory.

    Returns:
        The existing paths, sorted.
    """
    return sorted({path for pattern in RUN_OUTPUTS for path in out.glob(pattern)})


def remove_run_outputs(out: Path, keep: set[Path] | frozenset[Path] = frozenset()) -> None:
    """Removes what runs write in ``out`` (``RUN_OUTPUTS``), leaving every other file.

    Arguments:
        out: a run directory, locked by this process.
        keep: paths to leave in place (those that were there before this run).

    Raises:
        RunDirectoryError: a file could not be removed.
    """
    for path in run_outputs(out):
        if path in keep:
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as error:
            raise RunDirectoryError(
                f"--out {out}: cannot remove the earlier run's {path.name} "
                f"({error.strerror}); remove it yourself or choose another --out"
            ) from error


def ensure_directory(out: Path) -> None:
    """Creates ``out`` (and its parents) unless it exists as a directory, and checks that
    files can be created in it (a probe file, removed at once), before any work.

    Arguments:
        out: the run directory (``--out``).

    Raises:
        RunDirectoryError: ``out`` is a file, or the directory cannot be created, or no file
            can be created in it (a read-only directory or file system).
    """
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} is a file, not a directory; choose a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(
            f"--out {out}: cannot create the directory ({error.strerror}); use a writable location"
        ) from error
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise RunDirectoryError(
            f"--out {out}: cannot create files there ({error.strerror}); use a writable directory"
        ) from error


def refuse_resume_with_overwrite(resume: bool, overwrite: bool) -> None:
    """Refuse ``--resume`` with ``--overwrite``, before anything else is said of ``--out``.

    Arguments:
        resume: ``--resume`` was given.
        overwrite: ``--overwrite`` was given.

    Raises:
        RunDirectoryError: both were given.
    """
    if resume and overwrite:
        raise RunDirectoryError("--resume and --overwrite contradict each other; give one")


def open_run_directory(
    out: Path,
    resume: bool,
    overwrite: bool,
    run_files: tuple[str, ...] = RUN_FILES,
    resumable: bool = True,
) -> RunLock:
    """Creates ``out`` if needed, locks it, and checks that this run may write there.

    A run without ``resume`` or ``overwrite`` is refused where ``out`` holds an earlier run
    (``run_files``) or any file with a name runs write (``RUN_OUTPUTS``): nothing of the
    user's is written over unasked. With ``overwrite`` the earlier run is removed: every
    file and directory of ``RUN_OUTPUTS`` (the user's other files stay). Where ``out`` holds
    no run yet, ``overwrite`` removes nothing: the files found there are recorded as the
    user's (``USER_FILES_RECORD``), and later ``--overwrite`` runs leave them too.

    Arguments:
        out: the run directory (``--out``).
        resume: whether the run continues the checkpoint there (``--resume``).
        overwrite: whether an earlier run there is replaced (``--overwrite``).
        run_files: the names whose presence marks an earlier run.
        resumable: whether the command has ``--resume`` (the refusal then suggests it).

    Returns:
        The held lock; release it when the run ends.

    Raises:
        CheckpointError: ``resume`` is set and ``out`` does not exist.
        RunDirectoryError: ``out`` is a file or not writable, another run holds it, it
            holds an earlier run or files a run writes and neither ``resume`` nor
            ``overwrite`` is set, or the earlier run's files cannot be removed.
    """
    refuse_resume_with_overwrite(resume, overwrite)
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"--out {out} is a file, not a directory; choose a directory")
    if resume and not out.exists():
        load_checkpoint(out / "checkpoint.pt")  # raises "no checkpoint at ...", creates nothing
    ensure_directory(out)
    lock = RunLock(out).acquire()
    try:
        _claim(out, resume, overwrite, run_files, resumable)
    except BaseException:
        lock.release()
        raise
    return lock


def _claim(
    out: Path, resume: bool, overwrite: bool, run_files: tuple[str, ...], resumable: bool
) -> None:
    """``open_run_directory``'s checks and removal, with ``out`` locked."""
    existing = [name for name in run_files if (out / name).exists()]
    users = user_files(out)
    if not (resume or overwrite):
        if existing:
            resume_it = "continue it with --resume, " if resumable else ""
            raise RunDirectoryError(
                f"--out {out} holds an earlier run ({', '.join(existing)}); {resume_it}replace "
                "it with --overwrite, or choose another --out"
            )
        clashing = [p.name for p in run_outputs(out) if p.name not in users | {USER_FILES_RECORD}]
        if clashing:
            raise RunDirectoryError(
                f"--out {out} holds files with the names runs write ({', '.join(clashing)}); "
                "move them, choose another --out, or pass --overwrite to let this run write "
                "over them (it removes nothing there)"
            )
    if overwrite:
        if not existing and not (out / USER_FILES_RECORD).exists():
            users = {p.name for p in run_outputs(out)}  # no run here yet: the user's own
            if users:
                write_text_atomically(out / USER_FILES_RECORD, json.dumps(sorted(users)) + "\n")
        remove_run_outputs(out, keep={out / name for name in users | {USER_FILES_RECORD}})


def user_files(out: Path) -> set[str]:
    """The names in ``out`` recorded as the user's own (``USER_FILES_RECORD``; empty if none).

    Arguments:
        out: a run directory.

    Returns:
        The recorded names (an unreadable record counts as none).
    """
    try:
        names = json.loads((out / USER_FILES_RECORD).read_text())
    except (OSError, ValueError):
        return set()
    return {name for name in names if isinstance(name, str)} if isinstance(names, list) else set()


def write_text_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file, then renames it over ``path``.

    Raises:
        CheckpointError: the write failed (the old file is kept, the temporary removed).
    """
    partial = path.with_name(path.name + ".tmp")
    try:
        partial.write_text(text)
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise CheckpointError(write_failure(path, error)) from error


def reconcile_metrics(path: Path, history: list[dict[str, Any]]) -> tuple[int, bool]:
    """Makes metrics.jsonl hold exactly the checkpoint's epochs (one line per record).

    Lines past the checkpoint (written before a failed checkpoint save) are dropped and
    missing ones restored from the checkpoint's history.

    Arguments:
        path: metrics.jsonl.
        history: the per-epoch records stored in the checkpoint.

    Returns:
        The number of lines dropped, and whether the file was rewritten.
    """
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    wanted = [json.dumps(record) for record in history]
    if lines != wanted:
        write_text_atomically(path, "".join(line + "\n" for line in wanted))
    return max(len(lines) - len(wanted), 0), lines != wanted
