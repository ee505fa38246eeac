"""metrics.jsonl (one JSON record per line) and, optionally, TensorBoard beside it."""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .rundir import write_text_atomically
from .state import CheckpointError, write_failure

TENSORBOARD_DIR = "tensorboard"


def open_tensorboard(log_dir: Path | None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` writing to ``log_dir``.

    Arguments:
        log_dir: the event files' directory; ``None`` only checks that TensorBoard is there.

    Returns:
        The writer (``None`` when ``log_dir`` is ``None``).

    Raises:
        ValueError: the tensorboard package is not installed (the message says how to get it).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise ValueError(
            "--tensorboard needs the tensorboard package, which is not installed: "
            "pip install 'neuralode[tensorboard]' (or pip install tensorboard), or leave out "
            "--tensorboard (metrics.jsonl is always written)"
        ) from error
    return None if log_dir is None else SummaryWriter(log_dir=str(log_dir))


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (not bools, not the step), as TensorBoard scalars."""
    return {
        key: float(value)
        for key, value in record.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step"
    }


class MetricsLog:
    """Appends records to ``OUT/metrics.jsonl`` (and TensorBoard).

    Arguments:
        out: the run directory.
        tensorboard: also write each record's numbers to ``OUT/tensorboard/<job>``.
        job: the records' job (``None`` for single-job runs).
        shared: several processes write the file (an experiment's workers): every write
            then holds an exclusive lock on ``OUT/.metrics.lock``.
    """

    def __init__(
        self,
        out: Path,
        tensorboard: bool = False,
        job: str | None = None,
        shared: bool = False,
    ):
        self.path = out / "metrics.jsonl"
        self._lock_path = out / ".metrics.lock" if shared else None
        self.job = job
        self._writer = None
        if tensorboard:
            sub = out / TENSORBOARD_DIR / (job.replace("/", "_") if job else "")
            self._writer = open_tensorboard(sub)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        with open(self._lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any], step: int | None = None) -> None:
        """Writes ``record`` as one line (and its numbers to TensorBoard at ``step``).

        Arguments:
            record: JSON-able values.
            step: the TensorBoard step (default ``record["step"]``, else ``record["epoch"]``).

        Raises:
            CheckpointError: the line could not be written (the checkpoint keeps the record).
        """
        try:
            with self._locked(), open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as error:
            raise CheckpointError(
                write_failure(self.path, error) + "; the checkpoint holds the record, "
                "--resume restores it"
            ) from error
        if self._writer is not None:
            at = step if step is not None else record.get("step", record.get("epoch", 0))
            for key, value in scalars(record).items():
                self._writer.add_scalar(key, value, int(at))
            self._writer.flush()

    def reconcile(self, history: list[dict[str, Any]]) -> None:
        """Makes this job's lines of metrics.jsonl exactly ``history`` (its checkpoint's),
        keeping other jobs' lines: lines written after the checkpoint are dropped.

        Arguments:
            history: the records stored in the job's checkpoint.
        """
        with self._locked():
            lines = self.path.read_text().splitlines() if self.path.is_file() else []
            others = [line for line in lines if json.loads(line).get("job") != self.job]
            mine = [json.dumps(record) for record in history]
            if len(others) + len(mine) != len(lines) or any(line not in lines for line in mine):
                write_text_atomically(self.path, "".join(f"{x}\n" for x in others + mine))

    def close(self) -> None:
        """Closes the TensorBoard writer, if any."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
