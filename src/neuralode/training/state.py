"""Checkpoints that load with ``torch.load(weights_only=True)``: RNG states as tensors and
plain types, and the exact position in training (epoch, batch, partial epoch sums)."""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or written by an incompatible run."""


def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states as tensors and plain types."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any]) -> Path:
    """Writes atomically (temporary file, then rename), so an interrupted save never leaves
    a truncated checkpoint."""
    state = {"format": CHECKPOINT_FORMAT, **state}
    partial = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, partial)
        partial.replace(path)
    except (OSError, RuntimeError) as error:  # torch reports a failed write as RuntimeError
        partial.unlink(missing_ok=True)
        kept = f"; the last good checkpoint {path} is kept" if path.is_file() else ""
        raise CheckpointError(write_failure(partial, error) + kept) from error
    return path


def write_failure(path: Path, error: BaseException) -> str:
    """A one-line message for a failed write of ``path``, saying so when the disk is full."""
    full = getattr(error, "errno", None) == errno.ENOSPC or "file write failed" in str(error)
    try:
        free: int | None = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if full or (free is not None and free < 2**20):
        shown = "" if free is None else f" ({free // 2**10} KiB free)"
        return f"the disk is full{shown}: writing {path} failed; free some space and --resume"
    detail = (str(error).splitlines() or [""])[0]
    return f"writing {path} failed ({type(error).__name__}: {detail})"


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Reads a checkpoint of ``neuralode train`` (``torch.load`` with ``weights_only=True``).

    Arguments:
        path: the checkpoint file (``OUT/checkpoint.pt``).

    Returns:
        The checkpoint's dict: model, optimiser, schedule, RNG states, position in the epoch
            and the run's settings.

    Raises:
        CheckpointError: no file there, a file torch cannot read, or not a checkpoint of
            this format.
    """
    experiment = _experiment_of(path.parent)
    if experiment is not None and not path.is_file():  # (experiments keep checkpoints/JOB.pt)
        raise _not_a_train_run(path.parent, experiment)
    if not path.is_file():
        others = [
            name for name in ("config.json", "metrics.jsonl") if (path.parent / name).exists()
        ]
        if others:  # a run stopped before its first checkpoint (killed): nothing to continue
            raise CheckpointError(
                f"--resume: no checkpoint at {path}, though {path.parent} holds "
                f"{' and '.join(others)}: the run there "
                "stopped before its first checkpoint (killed?), so there is nothing to "
                "continue; start it again with --overwrite (which replaces its files), or "
                "point --out at the directory of the run to continue"
            )
        raise CheckpointError(
            f"--resume: no checkpoint at {path}; start without --resume or point --out at the "
            "directory of the run to continue"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unpickling errors have many types
        # torch's messages run to paragraphs: their first sentence names the fault
        detail = " ".join(str(error).split()).split(". ")[0][:200]
        raise CheckpointError(
            f"{path} cannot be read as a neuralode checkpoint ({type(error).__name__}: "
            f"{detail}); start the run again with --overwrite, or use another --out"
        ) from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        if experiment is not None:
            raise _not_a_train_run(path.parent, experiment)
        raise CheckpointError(
            f"{path} is not a neuralode training checkpoint of format {CHECKPOINT_FORMAT}; "
            "start the run again with --overwrite, or use another --out"
        )
    return state


def _not_a_train_run(out: Path, experiment: str) -> CheckpointError:
    """The refusal to resume another command's run (``--overwrite`` would delete it: not
    suggested)."""
    return CheckpointError(
        f"--resume: {out} holds a `neuralode experiment {experiment}` run, not a `neuralode "
        "train` run; point --out at the train run to continue, or use another --out for a new one"
    )


def _experiment_of(out: Path) -> str | None:
    """The experiment whose run ``out`` holds (its config.json says so), else ``None``."""
    try:
        config = json.loads((out / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if isinstance(config, dict) and config.get("command") == "experiment":
        return str(config.get("experiment"))
    return None


def _argument(key: str) -> str:
    """How the command line spells a configuration key: the positional ``model`` as the
    model, every other key as its option."""
    return "the model" if key == "model" else f"--{key.replace('_', '-')}"


def check_compatible(saved: dict[str, Any], current: dict[str, Any], keys: tuple[str, ...]) -> None:
    """Refuses to resume when an option that shapes the model or the data order differs."""
    different = [
        f"{_argument(key)} was {saved.get(key)!r}, now {current.get(key)!r}"
        for key in keys
        if saved.get(key) != current.get(key)
    ]
    if different:
        raise CheckpointError(
            "the checkpoint comes from an incompatible run: "
            + "; ".join(different)
            + ". Resume with the same options or use another --out"
        )
