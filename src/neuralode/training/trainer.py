"""One training loop for the experiments: checkpoint/resume, progress, metrics and Ctrl-C.

An experiment opens its run directory once (``open_experiment``: the rules of
``neuralode train``: an existing run is refused unless ``--resume`` or ``--overwrite``, the
directory is locked) and trains one or more *jobs* in it (a model on a setting: spirals trains
two models per observation count and seed, density-matching one per target, model and size).
Each job is a ``Trainer``: the experiment iterates over its steps and logs records; the trainer
keeps ``OUT/checkpoints/<job>.pt`` (the registered modules, optimisers, schedules, random
generators, the experiment's loop state and the history), appends each record to
``OUT/metrics.jsonl`` (and to TensorBoard with ``--tensorboard``), shows a tqdm bar, and on
Ctrl-C saves after the current step and stops with ``TrainingInterrupted``. ``--resume``
continues every job where it stopped, bit for bit, and skips finished ones (their results are
in their checkpoints).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._cli_types import random_seed, thread_count
from .metrics import MetricsLog, open_tensorboard
from .progress import progress_bar
from .rundir import (
    RUN_FILES,
    RunDirectoryError,
    open_run_directory,
    refuse_resume_with_overwrite,
    remove_run_outputs,
    run_outputs,
    write_text_atomically,
)
from .runtime import StopRequest
from .state import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)

CHECKPOINTS = "checkpoints"
# written in OUT/checkpoints/ when an experiment's run has finished (its outputs written):
# --resume then leaves the run as it is
COMPLETE = "complete.txt"
# options that do not change what a run computes: they may differ on --resume (where the
# MNIST files come from included: they are checksummed)
RUN_OPTIONS = (
    "out", "resume", "overwrite", "tensorboard", "progress", "threads", "workers", "download",
    "cache_dir",
)  # fmt: skip


class TrainingInterrupted(Exception):
    """Ctrl-C (or SIGTERM) stopped a run after saving its checkpoints; ``--resume`` goes on."""


class RunComplete(Exception):
    """``--resume`` found the experiment's run finished: nothing was done and no file
    changed (the message says so and how to train further)."""


def add_seed_and_threads(parser: argparse.ArgumentParser, threads: int = 1) -> None:
    """Adds ``--seed`` (the random seed) and ``--threads`` (torch's CPU threads, 0 = torch's
    default), as the experiments that train one setting take them.

    Arguments:
        parser: an experiment's argument parser.
        threads: the default of ``--threads``.
    """
    parser.add_argument(
        "--seed", type=random_seed, default=0, help="random seed (default %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=threads,
        help="torch threads, 0 = torch default (default %(default)s)",
    )


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--resume``, ``--overwrite``, ``--tensorboard`` and ``--no-progress``.

    Arguments:
        parser: an experiment's argument parser.
    """
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --out where it stopped"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's files in --out (without it, such an --out is refused)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log the metrics to OUT/tensorboard (needs the tensorboard extra)",
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


def fill_defaults(args: argparse.Namespace, defaults: dict[str, tuple[Any, Any]]) -> None:
    """Gives each option left unset (``None``) its default: the full run's, or the smoke
    run's with ``--quick``; an option given explicitly keeps its value.

    Arguments:
        args: the parsed options, with ``quick``.
        defaults: option name -> (full run's default, ``--quick``'s default).
    """
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def quick_help(text: str, defaults: tuple[Any, Any]) -> str:
    """The help of an option that ``--quick`` shrinks: ``text`` and both its defaults, from
    the experiment's ``DEFAULTS`` entry (so the help cannot drift from ``fill_defaults``).

    Arguments:
        text: what the option is.
        defaults: (full run's default, ``--quick``'s default).

    Returns:
        ``"TEXT (default FULL; QUICK with --quick)"``.
    """
    full, quick = defaults
    return f"{text} (default {full}; {quick} with --quick)"


@dataclass(frozen=True)
class Run:
    """Where an experiment's jobs write, picklable for worker processes.

    Attributes:
        out: the run directory.
        resume: whether jobs continue from their checkpoints.
        tensorboard: whether records also go to TensorBoard.
        progress: whether jobs show a progress bar.
    """

    out: Path
    resume: bool = False
    tensorboard: bool = False
    progress: bool = True


@contextlib.contextmanager
def open_experiment(
    args: argparse.Namespace, config: dict[str, Any] | None = None
) -> Iterator[Run]:
    """Claims ``args.out`` for an experiment run and yields its ``Run``.

    ``--overwrite`` removes the earlier run (everything runs write there, ``RUN_OUTPUTS``:
    metrics, checkpoints, tables, plots, TensorBoard logs; other files stay); a fresh run
    writes ``config.json`` and an empty ``metrics.jsonl``; ``--resume`` refuses a
    config that differs in an option that changes what is computed (all but ``RUN_OPTIONS``).
    The directory is locked until the block ends. A fresh run that fails before its first
    checkpoint removes what it wrote (a plain rerun is then not refused). A block that ends
    without an exception marks the run complete (``OUT/checkpoints/complete.txt``): a
    ``--resume`` of it then raises ``RunComplete`` before writing anything.

    Arguments:
        args: the parsed options (``out``, ``resume``, ``overwrite``, ``tensorboard``,
            ``progress``).
        config: what goes to ``config.json`` and is compared on ``--resume`` (default:
            ``vars(args)`` without the function ``run``).

    Yields:
        The run, for the jobs' ``Trainer(..., run=run)``.

    Raises:
        RunDirectoryError: ``--out`` holds an earlier run without ``--resume`` or
            ``--overwrite``, or another run holds it.
        CheckpointError: ``--resume`` with no run there, or with different options.
        RunComplete: ``--resume`` of a run that has finished (no file is changed).
        ValueError: ``--tensorboard`` without the tensorboard package.
    """
    out = Path(args.out)
    resume, tensorboard = bool(args.resume), bool(getattr(args, "tensorboard", False))
    if tensorboard:
        open_tensorboard(None)  # the clear error before anything is created
    if config is None:
        config = {k: v for k, v in vars(args).items() if not callable(v)}
    config = json.loads(json.dumps(config, default=str))
    refuse_resume_with_overwrite(resume, bool(args.overwrite))  # (before a missing run)
    if resume and not out.exists():  # (an experiment's run has no checkpoint.pt to name)
        raise CheckpointError(
            f"--resume: no experiment run in {out} (the directory does not exist); start "
            "without --resume or point --out at the run to continue"
        )
    lock = open_run_directory(
        out, resume, bool(args.overwrite), run_files=RUN_FILES + (CHECKPOINTS,)
    )
    found: set[Path] = set()
    try:
        path = out / "config.json"
        if resume:
            if not path.is_file():
                raise CheckpointError(
                    f"--resume: no experiment run in {out} (no config.json); start without "
                    "--resume or point --out at the run to continue"
                )
            saved = saved_config(path)
            kind, saved_kind = _run_kind(config), _run_kind(saved)
            if None not in (kind, saved_kind) and saved_kind != kind:
                raise CheckpointError(
                    f"--resume: {out} holds {saved_kind}, not {kind}; point --out at a run "
                    "of this command, or start a new one with another --out"
                )
            keys = tuple(sorted((set(saved) | set(config)) - set(RUN_OPTIONS)))
            check_compatible(saved, config, keys)
            if (out / CHECKPOINTS / COMPLETE).is_file():
                raise RunComplete(
                    f"the run in {out} is already complete; its files are left as they are "
                    "(its options cannot change on --resume: to train further, start a new "
                    "run with another --out, or replace this one with --overwrite)"
                )
        else:  # (with --overwrite, open_run_directory removed the earlier run)
            found = set(run_outputs(out))
            (out / "metrics.jsonl").write_text("")
        write_text_atomically(path, json.dumps(config, indent=2) + "\n")
        (out / CHECKPOINTS).mkdir(exist_ok=True)
        yield Run(out, resume, tensorboard, bool(getattr(args, "progress", True)))
        write_text_atomically(
            out / CHECKPOINTS / COMPLETE,
            "this run has finished: neuralode's --resume leaves it as it is\n",
        )
    except BaseException:
        # A fresh run that fails before its first checkpoint removes what it wrote, so that
        # a plain rerun (after fixing the cause) is not refused.
        if not resume and not any((out / CHECKPOINTS).glob("*")):
            with contextlib.suppress(OSError, RunDirectoryError):
                remove_run_outputs(out, keep=found)
        raise
    finally:
        lock.release()


def saved_config(path: Path) -> dict[str, Any]:
    """The options of the run in ``path`` (its config.json), or a ``CheckpointError``.

    Arguments:
        path: a run's config.json.

    Returns:
        The options, as the JSON object holds them.

    Raises:
        CheckpointError: the file is not valid JSON or holds no JSON object.
    """
    try:
        saved = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(
            f"--resume: {path} is not valid JSON ({error}); start the run again with --overwrite"
        ) from error
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"--resume: {path} holds no run's options (a JSON {type(saved).__name__}, not an "
            "object); start the run again with --overwrite"
        )
    return saved


def _run_kind(config: dict[str, Any]) -> str | None:
    """The command that wrote a run's options, e.g. "a `neuralode experiment toy2d` run" or
    "a `neuralode train` run" (None when they do not say)."""
    if config.get("command") == "experiment":
        return f"a `neuralode experiment {config.get('experiment')}` run"
    if config.get("command") == "train" or ("model" in config and "command" not in config):
        return "a `neuralode train` run"  # train's config.json: TrainConfig's fields
    return None


def _generator_state(generator: Any) -> Any:
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    if isinstance(generator, np.random.Generator):
        return json.dumps(generator.bit_generator.state)  # 128-bit ints: kept exact as text
    raise TypeError(f"cannot checkpoint a random generator of type {type(generator).__name__}")


def _set_generator_state(generator: Any, state: Any) -> None:
    if isinstance(generator, torch.Generator):
        generator.set_state(state)
    else:
        generator.bit_generator.state = json.loads(state)


class TrainingDiverged(RuntimeError):
    """The training loss, or the parameters, became NaN or infinite."""


class Trainer:
    """The steps of one job, with checkpoints, metrics, progress and Ctrl-C.

    ``for step in trainer:`` yields the steps still to do (1-based, up to ``steps``; none for
    a finished job). The experiment keeps everything its loop carries from step to step in
    ``trainer.state`` (checkpointed with it) and calls ``log`` at its logging points:
    the job is checkpointed there, then the record goes to metrics.jsonl. ``finish(result)``
    ends the job; on ``--resume`` a finished job's ``result`` comes back from its checkpoint
    and its ``objects`` hold their final states. After each step the modules among
    ``objects`` are checked for NaN or infinite parameters (a diverged training stops there,
    with ``TrainingDiverged``, rather than failing later inside a solve or a distribution
    with a message that hides the cause).

    Arguments:
        name: the job's name (in metrics.jsonl records, the checkpoint's file name and the
            progress bar).
        steps: the number of steps.
        objects: what has a ``state_dict()`` / ``load_state_dict()``: modules, optimisers,
            schedules.
        generators: named ``torch.Generator`` or ``numpy.random.Generator`` objects the loop
            draws from (the global torch, numpy and python generators are saved too).
        state: the loop's own state (plain values, tensors, lists, dicts), updated in place
            and saved with the checkpoint.
        run: the run directory; ``None`` trains without files, bar or interruption (tests
            and tutorials call experiments' loops this way).
    """

    def __init__(
        self,
        name: str,
        steps: int,
        objects: dict[str, Any],
        generators: dict[str, Any] | None = None,
        state: dict[str, Any] | None = None,
        run: Run | None = None,
    ):
        self.name, self.steps, self.run = name, int(steps), run
        self.objects, self.generators = objects, dict(generators or {})
        self.state: dict[str, Any] = state if state is not None else {}
        self.history: list[dict[str, Any]] = []
        self.step = 0
        self.done = False
        self.result: Any = None
        self.resumed = False
        self._log: MetricsLog | None = None
        self._bar: Any = None
        if run is not None:
            safe = re.sub(r"[^\w.-]+", "_", name).strip("_")
            self.path = run.out / CHECKPOINTS / f"{safe}.pt"
            self._log = MetricsLog(run.out, tensorboard=run.tensorboard, job=name, shared=True)
            if run.resume and self.path.is_file():
                self._load()
            self._log.reconcile(self.history)

    def _load(self) -> None:
        saved = load_checkpoint(self.path)
        if saved.get("job") != self.name:
            raise CheckpointError(f"{self.path} holds job {saved.get('job')!r}, not {self.name!r}")
        if saved["steps"] != self.steps:
            raise CheckpointError(
                f"{self.path}: job {self.name} had {saved['steps']} steps, now {self.steps}; "
                "resume with the same options or use another --out"
            )
        try:
            for key, obj in self.objects.items():
                obj.load_state_dict(saved["objects"][key])
        except (RuntimeError, ValueError, KeyError) as error:
            raise CheckpointError(
                f"{self.path} does not fit this job ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:200]}); resume with the same options"
            ) from error
        for key, generator in self.generators.items():
            _set_generator_state(generator, saved["generators"][key])
        set_rng_state(saved["rng"])
        self.state.clear()
        self.state.update(saved["state"])
        self.history = list(saved["history"])
        self.step, self.done, self.result = saved["step"], saved["done"], saved["result"]
        self.resumed = True

    def _save(self) -> None:
        if self.run is None:
            return
        save_checkpoint(
            self.path,
            {
                "job": self.name,
                "steps": self.steps,
                "step": self.step,
                "done": self.done,
                "result": self.result,
                "objects": {key: obj.state_dict() for key, obj in self.objects.items()},
                "generators": {k: _generator_state(g) for k, g in self.generators.items()},
                "rng": rng_state(),
                "state": self.state,
                "history": self.history,
            },
        )

    def __iter__(self) -> Iterator[int]:
        if self.done:
            return
        enabled = self.run is not None and self.run.progress
        self._bar = progress_bar(self.steps, self.name, enabled=enabled, initial=self.step)
        stop = StopRequest() if self.run is not None else contextlib.nullcontext()
        try:
            with stop:
                for step in range(self.step + 1, self.steps + 1):
                    yield step
                    self._check_finite(step)
                    self.step = step
                    self._bar.update(1)
                    if isinstance(stop, StopRequest) and stop.requested:
                        self._save()
                        self._bar.close()
                        print(
                            f"interrupted: checkpoint saved to {self.path} (job {self.name}, "
                            f"step {step}/{self.steps}); continue with --resume",
                            file=sys.stderr,
                        )
                        raise TrainingInterrupted(f"{self.name} interrupted at step {step}")
        finally:
            self._bar.close()

    def check_loss(self, loss: torch.Tensor | float) -> None:
        """Stops a training whose loss is NaN or infinite (call it before ``backward``).

        Arguments:
            loss: the step's loss, a number or a one-element tensor.

        Raises:
            TrainingDiverged: the loss is NaN or infinite (the message names the step and
                what to change).
        """
        value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(value):
            raise self._diverged(f"the loss is {value}", self.step + 1)

    def _check_finite(self, step: int) -> None:
        """Raises ``TrainingDiverged`` when a module's parameters are no longer finite."""
        for key, module in self.objects.items():
            if not isinstance(module, torch.nn.Module):
                continue
            params = [p.detach() for p in module.parameters()]
            if params and not bool(torch.stack([p.isfinite().all() for p in params]).all()):
                raise self._diverged(f"the parameters of {key} became NaN or infinite", step)

    def _diverged(self, what: str, step: int) -> TrainingDiverged:
        kept = self.run is not None and self.path.exists()
        return TrainingDiverged(
            f"the training diverged: {what} at step {step}/{self.steps} of {self.name}; try "
            "a lower learning rate" + (" (with --overwrite to replace this run)" if kept else "")
        )

    def show(self, **fields: Any) -> None:
        """Shows ``fields`` beside the progress bar (numbers are formatted to 4 digits).

        Arguments:
            **fields: the values to show, by name; floats are shown to 4 significant
                digits. Nothing is shown without a progress bar.
        """
        if self._bar is not None:
            shown = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in fields.items()}
            self._bar.set_postfix(shown, refresh=False)

    def log(self, record: dict[str, Any]) -> None:
        """Records ``record`` at the current step: history, checkpoint, metrics.jsonl.

        The step being logged counts as done (the checkpoint resumes after it).

        Arguments:
            record: JSON-able values; ``job`` and ``step`` are added.

        Raises:
            CheckpointError: the checkpoint or the metrics line could not be written.
        """
        record = {"job": self.name, "step": self.step + 1, **record}
        self.history.append(record)
        self.show(**{k: v for k, v in record.items() if k not in ("job", "step")})
        if self.run is None:
            return
        saved_step, self.step = self.step, self.step + 1
        try:
            self._save()  # checkpoint first: a line past the checkpoint is never left
        finally:
            self.step = saved_step
        self._log.append(record)

    def finish(self, result: Any = None) -> Any:
        """Ends the job: ``result`` (plain values and tensors) is saved with the checkpoint.

        Arguments:
            result: what the job produced; a resumed finished job gets it back as
                ``trainer.result``.

        Returns:
            ``result``.
        """
        self.done, self.result, self.step = True, result, self.steps
        self._save()
        if self._log is not None:
            self._log.close()
        return result
