"""The training loop of ``neuralode train``: exact resume, Ctrl-C checkpoints, DDP, metrics."""

from __future__ import annotations

import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import DistributedSampler

from ..data import ImageDataset, load_dataset, random_crop
from ..viz.plots import require_matplotlib
from .config import RESUME_KEYS, TrainConfig, build_model
from .ema import WeightAverage
from .metrics import MetricsLog, open_tensorboard
from .progress import progress_bar
from .rundir import (
    RunDirectoryError,
    RunLock,
    open_run_directory,
    reconcile_metrics,
    remove_run_outputs,
    run_outputs,
)
from .runtime import Runtime, StopRequest, peak_memory_mb, reset_peak_memory, start, stop
from .state import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_failure,
)
from .trainer import TrainingDiverged

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (after saving)
SUMS = 9  # per-epoch sums before the per-regulariser ones (see the training loop)
# Optimiser settings a resumed run may change: applied from the next step, recorded in
# config.json and the checkpoint.
OPTIMISER_KEYS = ("lr", "momentum", "weight_decay", "warmup_epochs", "label_smoothing")
# Solver settings a resumed run may change, per model (those its model uses): announced like
# the optimiser's, as they change the steps from the next one.
SOLVER_KEYS = {
    "odenet": ("method", "rtol", "atol", "step_size", "gradient"),
    "rknet": ("step_size",),
    "deq": ("deq_method", "deq_backward", "deq_tol", "deq_max_iter", "deq_dropout"),
}


@dataclass
class TrainResult:
    """The result of ``train``.

    Attributes:
        model: the trained model (unwrapped from distributed data parallelism).
        history: one metrics dict per epoch.
        status: the exit status (0 on success).
        out: the run's output directory.
        is_main: whether this process is rank 0 (the one that prints and writes).
        average: the weight average of ``--ema``, the model evaluated (``None`` without).
        trained: whether the run trained: ``False`` when ``--resume`` found it complete
            (its model, average and history are then the checkpoint's and no file changed).
    """

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    status: int = 0
    out: Path = Path(".")
    is_main: bool = True  # rank 0 (the process that prints and writes)
    average: nn.Module | None = None
    trained: bool = True

    @property
    def evaluated(self) -> nn.Module:
        """The model whose test metrics are reported: the weight average, else the model."""
        return self.average if self.average is not None else self.model


def solver_block(model: nn.Module) -> Any:
    """The model's ODE block or equilibrium layer (its NFE and regularisation), or None
    (ResNet)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    block = getattr(model, "ode", None)
    return getattr(model, "deq", None) if block is None else block


def load_data(config: TrainConfig) -> ImageDataset:
    data = load_dataset(config.data, config.data_dir, config.download, config.cache_dir)
    return data.subset(config.train_subset or None, config.test_subset or None)


def crop_padding(config: TrainConfig, data: ImageDataset) -> int:
    if config.crop_padding >= 0:
        return config.crop_padding
    return 4 if data.image_size >= 28 else max(1, data.image_size // 7)


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to zero, x0.1 steps at 1/2 and 3/4, or constant."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "cosine":
            return 0.5 * (
                1 + math.cos(math.pi * min(step - warmup, total) / max(total - warmup, 1))
            )
        if config.schedule == "step":
            return 0.1 ** sum(step >= total * f for f in (0.5, 0.75))
        return 1.0

    return factor


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params, config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, config.lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, config.lr, weight_decay=config.weight_decay)


def augment_generator(config: TrainConfig, epoch: int, rank: int) -> torch.Generator:
    """The random-crop generator of one epoch on one rank, independent of the global RNG."""
    return torch.Generator().manual_seed(((config.seed * 1_000_003) + epoch) * 1009 + rank)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, runtime: Runtime
) -> dict[str, float]:
    """Test loss, accuracy and mean forward NFE, over this rank's share, summed over ranks.

    Runs without gradients in eval mode and leaves the model in training mode.

    Arguments:
        model: the classifier, returning logits (batch, classes).
        x: the test images, (N, C, H, W).
        y: the test labels, (N,).
        batch_size: the examples per forward pass.
        runtime: the device and the process's rank among ``world`` ranks (every
            ``world``-th example from ``rank`` on is this rank's share).

    Returns:
        ``{"loss", "accuracy", "nfe"}``: the mean cross-entropy and accuracy over the
            examples, and the solver block's forward evaluations per batch (``None`` without a
            block, e.g. a ResNet).
    """
    model.eval()
    block = solver_block(model)
    shard = slice(runtime.rank, None, runtime.world)
    x, y = x[shard], y[shard]
    sums = torch.zeros(5, dtype=torch.float64)  # loss, correct, count, nfe * batches, batches
    for start_index in range(0, len(y), batch_size):
        xb = x[start_index : start_index + batch_size].to(runtime.device)
        yb = y[start_index : start_index + batch_size].to(runtime.device)
        logits = model(xb)
        sums[0] += cross_entropy(logits, yb, reduction="sum").item()
        sums[1] += (logits.argmax(1) == yb).sum().item()
        sums[2] += len(yb)
        sums[3] += block.nfe_forward if block is not None else 0
        sums[4] += 1
    if runtime.distributed:  # (on the device: nccl reduces only CUDA tensors)
        sums = sums.to(runtime.device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.train()
    n = max(sums[2].item(), 1.0)
    return {
        "loss": sums[0].item() / n,
        "accuracy": sums[1].item() / n,
        "nfe": sums[3].item() / max(sums[4].item(), 1.0) if block is not None else None,
    }


class Trainer:
    """One training run; ``run()`` returns a ``TrainResult``. ``on_batch(epoch, batch)`` is
    called after every optimiser step (tests use it to interrupt)."""

    def __init__(self, config: TrainConfig, on_batch: Callable[[int, int], None] | None = None):
        self.config = config
        self.on_batch = on_batch
        self.out = Path(config.out)
        self._lock: RunLock | None = None
        # a fresh run's outputs already in --out when it starts (None: nothing to clean up)
        self._found: set[Path] | None = None

    def run(self) -> TrainResult:
        config = self.config
        runtime = start(config.device)
        threads = torch.get_num_threads()
        try:
            return self._run(config, runtime)
        except BaseException:
            self._remove_unfinished_run()
            raise
        finally:
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            torch.set_num_threads(threads)
            stop(runtime)

    def _run(self, config: TrainConfig, runtime: Runtime) -> TrainResult:
        if config.threads > 0:
            torch.set_num_threads(config.threads)
        if config.tensorboard:
            open_tensorboard(None)  # a clear error before any work when it is missing
        if config.plots:  # the same for matplotlib, which the first epoch's plot needs
            require_matplotlib("pass --no-plots")
        data = load_data(config)
        padding = crop_padding(config, data)
        torch.manual_seed(config.seed)
        np.random.seed(config.seed)
        random.seed(config.seed)
        model = build_model(config, data.channels, data.classes).to(runtime.device)
        optimizer = make_optimizer(config, model)
        average = WeightAverage(model, config.ema) if config.ema > 0 else None
        averaged = average.model if average is not None else None  # evaluated when set
        sampler = DistributedSampler(
            range(len(data.train_y)), runtime.world, runtime.rank, shuffle=True, seed=config.seed
        )
        steps_per_epoch = math.ceil(len(sampler) / config.batch_size)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
        position = {"epoch": 0, "batch": 0, "sums": None, "augment_rng": None}
        self._claim_run_directory(config, runtime)  # the options are valid
        history: list[dict[str, Any]] = []
        checkpoint_path = self.out / "checkpoint.pt"
        if config.resume:
            saved = load_checkpoint(checkpoint_path)
            # options added since the checkpoint was written take their defaults
            saved_config = {**TrainConfig().as_dict(), **saved["config"]}
            check_compatible(saved_config, config.as_dict(), RESUME_KEYS)
            _check_world_size(saved, runtime, self.out)
            started = saved["epoch"] + (saved["batch"] > 0)  # epochs finished or begun
            if config.epochs < started:
                raise CheckpointError(
                    f"--resume --epochs {config.epochs}: the run in {self.out} has already "
                    f"{'begun' if saved['batch'] > 0 else 'finished'} epoch {started}; give "
                    f"--epochs {started} or more to continue it, or --overwrite to start again"
                )
            if saved["config"]["epochs"] != config.epochs and runtime.is_main:
                print(
                    f"resuming with --epochs {config.epochs} (was {saved['config']['epochs']}): "
                    "the learning-rate schedule is stretched to the new length",
                    file=sys.stderr,
                )
            try:
                model.load_state_dict(saved["model"])
                optimizer.load_state_dict(saved["optimizer"])
                scheduler.load_state_dict(saved["scheduler"])
                if average is not None:
                    average.load_state_dict(saved["ema"])
            except (RuntimeError, ValueError, KeyError) as error:
                detail = " ".join(str(error).split())[:300]
                raise CheckpointError(
                    f"{checkpoint_path} does not fit this model ({type(error).__name__}: "
                    f"{detail}); resume with the options of that run or use another --out"
                ) from error
            if saved["epoch"] == config.epochs and saved["batch"] == 0:
                return self._complete(config, runtime, model, averaged, saved, data)
            changed = apply_optimiser_settings(saved_config, config, optimizer, scheduler)
            if changed and runtime.is_main:
                print(
                    f"resuming with {changed}: applied from the next step and recorded in "
                    "config.json",
                    file=sys.stderr,
                )
            own = saved["ranks"][runtime.rank] if "ranks" in saved else saved
            set_rng_state(own["rng"])
            position = {"epoch": saved["epoch"], "batch": saved["batch"]}
            position |= {"sums": own["sums"], "augment_rng": own["augment_rng"]}
            history = list(saved["history"])
        if runtime.is_main:
            if config.resume:
                self._repair_metrics(history)
            else:
                self._found = set(run_outputs(self.out))  # (--overwrite removed the old run)
            _write(self.out / "config.json", json.dumps(config.as_dict(), indent=2) + "\n")
            if not config.resume:
                _write(self.out / "metrics.jsonl", "")
        metrics = MetricsLog(self.out, config.tensorboard and runtime.is_main)
        network: nn.Module = model
        if runtime.distributed:
            ids = [runtime.device.index] if runtime.device.type == "cuda" else None
            network = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if runtime.is_main and position["epoch"] < config.epochs:
            params = sum(p.numel() for p in model.parameters())
            print(
                f"training {config.model} ({params:,} parameters) on {config.data} "
                f"({len(data.train_y)} train / {len(data.test_y)} test images), "
                f"{runtime.world} process(es) on {runtime.device}, writing to {self.out}/",
                file=sys.stderr,
            )

        def snapshot(epoch: int, batch: int, sums: Any, generator: Any) -> dict[str, Any] | None:
            """The checkpoint, on rank 0 (``None`` on the others). Every rank calls it: each
            rank's random states and partial sums are gathered, as its shard's crops and
            metrics depend on them."""
            own = {"rng": rng_state(), "sums": sums, "augment_rng": generator}
            ranks: list[Any] = [own]
            if runtime.distributed:
                ranks = [None] * runtime.world
                dist.all_gather_object(ranks, own)
            if not runtime.is_main:
                return None
            return {
                "config": config.as_dict(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "ema": average.state_dict() if average is not None else None,
                "epoch": epoch,
                "batch": batch,
                "history": history,
                "world_size": runtime.world,
                "ranks": ranks,  # (a checkpoint without them holds its one rank's at the top)
            }

        block = solver_block(model)
        terms = regulariser_names(block)
        status = 0
        with StopRequest() as stop_request:
            for epoch in range(position["epoch"], config.epochs):
                sampler.set_epoch(epoch)
                batches = torch.tensor(list(sampler)).split(config.batch_size)
                generator = augment_generator(config, epoch, runtime.rank)
                first = 0
                # loss, correct, count, nfe forward, nfe backward, batches, seconds, CPU seconds,
                # weighted regularisation, then each regulariser's unweighted integral
                sums = torch.zeros(SUMS + len(terms), dtype=torch.float64)
                if position["sums"] is not None and epoch == position["epoch"]:
                    first = position["batch"]
                    saved_sums = position["sums"]
                    sums[: len(saved_sums)] = saved_sums  # checkpoints before regularisers: 8
                    generator.set_state(position["augment_rng"])
                with progress_bar(
                    len(batches),
                    f"epoch {epoch + 1}/{config.epochs}",
                    enabled=runtime.is_main,
                    initial=first,
                ) as bar:  # closed on an error too: the error message starts a new line
                    reset_peak_memory(runtime.device)
                    for b in range(first, len(batches)):
                        tick, cpu_tick = time.perf_counter(), time.process_time()
                        index = batches[b]
                        x = random_crop(data.train_x[index], padding, generator).to(runtime.device)
                        y = data.train_y[index].to(runtime.device)
                        logits = network(x)
                        loss = cross_entropy(logits, y, label_smoothing=config.label_smoothing)
                        if not math.isfinite(loss.item()):
                            # before the first checkpoint the run's files are removed
                            kept = checkpoint_path.exists()
                            raise TrainingDiverged(
                                f"the training diverged: the loss is {loss.item()} at epoch "
                                f"{epoch + 1}, batch {b + 1}; try a lower --lr (now {config.lr:g})"
                                + (", with --overwrite to replace this run" if kept else "")
                            )
                        penalty = block.regularisation if terms else None
                        nfe_forward = block.nfe_forward if block is not None else 0
                        optimizer.zero_grad(set_to_none=True)
                        (loss if penalty is None else loss + penalty).backward()
                        optimizer.step()
                        scheduler.step()
                        if average is not None:
                            average.update(model)
                        nfe_backward = block.nfe_backward if block is not None else 0
                        correct = (logits.argmax(1) == y).sum().item()
                        step = [loss.item() * len(y), correct, len(y), nfe_forward, nfe_backward, 1]
                        sums[:6] += torch.tensor(step, dtype=torch.float64)
                        sums[6] += time.perf_counter() - tick
                        sums[7] += time.process_time() - cpu_tick
                        shown = {}
                        if penalty is not None:
                            sums[8] += penalty.item()
                            for i, name in enumerate(terms, start=SUMS):
                                sums[i] += block.regularisation_terms[name].item()
                            shown["reg"] = f"{sums[8] / sums[5]:.3g}"
                        bar.set_postfix(
                            loss=f"{sums[0] / sums[2]:.3f}",
                            acc=f"{100 * sums[1] / sums[2]:.1f}%",
                            nfe=f"{nfe_forward}/{nfe_backward}" if block is not None else "-",
                            **shown,
                            refresh=False,
                        )
                        bar.update(1)
                        if self.on_batch is not None:
                            self.on_batch(epoch, b)
                        if self._should_stop(stop_request, runtime):
                            bar.close()
                            state = snapshot(epoch, b + 1, sums, generator.get_state())
                            if runtime.is_main:
                                save_checkpoint(checkpoint_path, state)
                                print(
                                    f"interrupted: checkpoint saved to {checkpoint_path} "
                                    f"(epoch {epoch + 1}, batch {b + 1}); continue with --resume",
                                    file=sys.stderr,
                                )
                            status = INTERRUPTED
                            break
                if status:
                    break
                evaluated = averaged if averaged is not None else network
                record = self._epoch_record(epoch, sums, evaluated, model, data, runtime, terms)
                if average is not None and epoch + 1 == config.epochs:
                    # the trained weights too, once, to show what the average changes
                    raw = evaluate(
                        network, data.test_x, data.test_y, config.test_batch_size, runtime
                    )
                    record["test_error_raw"] = 1 - raw["accuracy"]
                record["lr"] = scheduler.get_last_lr()[0]
                history.append(record)
                state = snapshot(epoch + 1, 0, None, None)
                if runtime.is_main:
                    if epoch + 1 == config.epochs and config.plots:
                        state["plots"] = "pending"  # (the end-of-training plots, below)
                    # checkpoint first: a failed save leaves no metrics line past the last
                    # checkpoint, and a missing line is restored from it on --resume
                    save_checkpoint(checkpoint_path, state)
                    metrics.append(record, step=epoch + 1)
                    print(_summary(record), file=sys.stderr)
                    if config.plots:
                        from ..viz.training import save_curves

                        save_curves(self.out, history)
        if status == 0 and runtime.is_main and config.plots:
            self._end_plots(state, model, averaged, data, config, runtime)
        metrics.close()
        return TrainResult(
            model,
            history,
            status,
            self.out,
            runtime.is_main,
            averaged,
        )

    def _repair_metrics(self, history: list[dict[str, Any]]) -> bool:
        """Make metrics.jsonl agree with the checkpoint's history: drop the lines past it (a
        run stopped between writing them and its checkpoint), saying so, and restore a
        garbled or missing file. Returns whether the file was rewritten."""
        dropped, rewritten = reconcile_metrics(self.out / "metrics.jsonl", history)
        if dropped:
            print(
                f"metrics.jsonl: dropped {dropped} line(s) past the checkpoint "
                f"(epoch {len(history)})",
                file=sys.stderr,
            )
        return rewritten

    def _end_plots(
        self,
        state: dict[str, Any],
        model: nn.Module,
        averaged: nn.Module | None,
        data: ImageDataset,
        config: TrainConfig,
        runtime: Runtime,
    ) -> None:
        """The end-of-training plots of the model (its weight average where there is one),
        then the final checkpoint ``state`` marked as having them: a run stopped while they
        were drawn is complete, and its ``--resume`` draws them."""
        from ..viz.training import save_model_plots

        shown = averaged if averaged is not None else model
        save_model_plots(self.out, shown, data, config, runtime.device)
        state["plots"] = "written"
        save_checkpoint(self.out / "checkpoint.pt", state)

    def _complete(
        self,
        config: TrainConfig,
        runtime: Runtime,
        model: nn.Module,
        averaged: nn.Module | None,
        saved: dict[str, Any],
        data: ImageDataset,
    ) -> TrainResult:
        """The result of ``--resume`` on a run that has finished its ``--epochs``: the
        checkpoint's, with no file written (metrics.jsonl only repaired where it disagrees
        with the checkpoint, the end-of-training plots drawn where the run stopped before
        them) and one line that says how to continue."""
        history = saved["history"]
        if runtime.is_main:
            rewritten = self._repair_metrics(history)
            kept = (
                "its checkpoint is left as it is (metrics.jsonl rebuilt from it)"
                if rewritten
                else "its files are left as they are"
            )
            if saved.get("plots") == "pending" and config.plots:
                self._end_plots(saved, model, averaged, data, config, runtime)
                kept = "its end-of-training plots, which it stopped before, are drawn now"
            print(
                f"the run in {self.out} is already complete ({config.epochs} epoch(s)); "
                f"{kept}: give --epochs {config.epochs + 1} or more with --resume to train "
                "it further",
                file=sys.stderr,
            )
        return TrainResult(
            model, list(history), 0, self.out, runtime.is_main, averaged, trained=False
        )

    def _claim_run_directory(self, config: TrainConfig, runtime: Runtime) -> None:
        """Rank 0 locks and checks ``--out``; under DDP every rank learns whether it refused
        (so that the others stop too instead of waiting for it)."""
        refusal = None
        if runtime.is_main:
            try:
                self._lock = open_run_directory(self.out, config.resume, config.overwrite)
            except (RunDirectoryError, CheckpointError) as error:  # (no run to --resume)
                refusal = error
        if runtime.distributed:
            flag = torch.tensor([float(refusal is not None)], device=runtime.device)
            dist.broadcast(flag, 0)
            refused = bool(flag.item())
            if refused:  # every rank is past the broadcast before any tears the group down
                dist.barrier()
            if refusal is None and refused:
                raise RunDirectoryError(f"rank 0 refused --out {self.out} (see its message)")
        if refusal is not None:
            raise refusal

    def _remove_unfinished_run(self) -> None:
        """A fresh run that fails before its first checkpoint removes the files it wrote
        (config.json, metrics.jsonl, tensorboard/ ...), so that a plain rerun is not refused;
        the directory stays."""
        if self._found is None or (self.out / "checkpoint.pt").exists():
            return
        with contextlib.suppress(OSError, RunDirectoryError):  # the failure is what matters
            remove_run_outputs(self.out, keep=self._found)

    @staticmethod
    def _should_stop(stop_request: StopRequest, runtime: Runtime) -> bool:
        """All ranks stop at the same batch when any of them was asked to."""
        if not runtime.distributed:
            return stop_request.requested
        flag = torch.tensor([float(stop_request.requested)], device=runtime.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _epoch_record(
        self,
        epoch: int,
        sums: torch.Tensor,
        network: nn.Module,
        model: nn.Module,
        data: ImageDataset,
        runtime: Runtime,
        terms: list[str],
    ) -> dict[str, Any]:
        train_seconds = sums[6].item()
        totals = torch.cat([sums[:6], sums[8:]]).to(runtime.device)
        if runtime.distributed:
            dist.all_reduce(totals)
        totals = totals.cpu()
        regularisation = None
        if terms:  # batch means over all ranks: totals[6] weighted, then each term
            batches_all = max(totals[5].item(), 1.0)
            regularisation = {"total": totals[6].item() / batches_all}
            for i, name in enumerate(terms, start=7):
                regularisation[name] = totals[i].item() / batches_all
        tick, cpu_tick = time.perf_counter(), time.process_time()
        test = evaluate(network, data.test_x, data.test_y, self.config.test_batch_size, runtime)
        memory, memory_kind = peak_memory_mb(runtime.device)
        has_ode = solver_block(model) is not None
        batches = max(totals[5].item(), 1.0)
        return {
            "epoch": epoch + 1,
            "train_loss": totals[0].item() / totals[2].item(),
            "train_accuracy": totals[1].item() / totals[2].item(),
            "test_loss": test["loss"],
            "test_accuracy": test["accuracy"],
            "test_error": 1 - test["accuracy"],
            "nfe_forward": totals[3].item() / batches if has_ode else None,
            "nfe_backward": totals[4].item() / batches if has_ode else None,
            "test_nfe": test["nfe"],
            "time_s": train_seconds,
            "cpu_time_s": sums[7].item(),
            "eval_time_s": time.perf_counter() - tick,
            "eval_cpu_time_s": time.process_time() - cpu_tick,
            "peak_memory_mb": memory,
            "memory_kind": memory_kind,
            "world_size": runtime.world,
            "regularisation": regularisation,
        }


def _check_world_size(saved: dict[str, Any], runtime: Runtime, out: Path) -> None:
    """A run resumes with the number of processes it ran with: the shards, the data order
    and the steps per epoch (the learning-rate schedule) depend on it."""
    world = saved.get("world_size")
    if world is None and saved["history"]:  # (a checkpoint from before it was recorded)
        world = saved["history"][-1].get("world_size")
    if world is not None and world != runtime.world:
        raise CheckpointError(
            f"--resume: the run in {out} trained with {world} process(es), this one has "
            f"{runtime.world}; resume it with {world} (torchrun --nproc_per_node {world}"
            + (", or without torchrun)" if world == 1 else ")")
            + ": the data order and the learning-rate schedule depend on the number"
        )


def apply_optimiser_settings(
    saved: dict[str, Any],
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
) -> str:
    """Puts the resumed run's optimiser settings (``OPTIMISER_KEYS``) into the restored
    optimiser and schedule, and names them and the changed solver settings of its model
    (``SOLVER_KEYS``, which the model built from ``config`` already uses).

    Arguments:
        saved: the checkpoint's configuration.
        config: this run's configuration.
        optimizer: the optimiser, its state loaded from the checkpoint.
        scheduler: the learning-rate schedule, its state loaded from the checkpoint; its
            factor function is this run's (``lr_factor(config, ...)``).

    Returns:
        The changes as "--lr X (was Y), --method 'rk4' (was 'dopri5'), ..." ("" if none).
    """
    changed = [
        f"--{key.replace('_', '-')} {getattr(config, key)!r} (was {saved.get(key)!r})"
        for key in OPTIMISER_KEYS + SOLVER_KEYS.get(config.model, ())
        if saved.get(key) != getattr(config, key)
        and not (key == "momentum" and config.optimizer != "sgd")
    ]
    scheduler.base_lrs = [config.lr for _ in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["initial_lr"] = config.lr
        group["weight_decay"] = config.weight_decay
        if "momentum" in group:
            group["momentum"] = config.momentum
    for group, lr_lambda in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = config.lr * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return ", ".join(changed)


def _write(path: Path, text: str) -> None:
    try:
        path.write_text(text)
    except OSError as error:
        raise CheckpointError(write_failure(path, error)) from error


def regulariser_names(block: Any) -> list[str]:
    """Names of the ODE block's regularisation terms, as in ``regularisation_terms``."""
    names: list[str] = []
    for r in getattr(block, "regularisers", None) or []:
        name, k = r.name, 2
        while name in names:
            name, k = f"{r.name}_{k}", k + 1
        names.append(name)
    return names


def _summary(record: dict[str, Any]) -> str:
    nfe = ""
    if record["nfe_forward"] is not None:
        nfe = f", NFE fwd {record['nfe_forward']:.1f} bwd {record['nfe_backward']:.1f}"
    if record.get("regularisation"):
        nfe += ", regularisation " + " ".join(
            f"{k} {v:.4g}" for k, v in record["regularisation"].items()
        )
    raw = ""
    if record.get("test_error_raw") is not None:
        raw = f" (trained weights without the average: {100 * (1 - record['test_error_raw']):.2f}%)"
    return (
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f} "
        f"acc {100 * record['train_accuracy']:.2f}%, test loss {record['test_loss']:.4f} "
        f"acc {100 * record['test_accuracy']:.2f}%{raw}{nfe}, {record['time_s']:.1f} s"
    )


def train(config: TrainConfig, on_batch: Callable[[int, int], None] | None = None) -> TrainResult:
    """Trains ``config.model`` as configured: the function behind ``neuralode train``.

    Arguments:
        config: the run's settings (`TrainConfig`; the command-line options).
        on_batch: called as ``on_batch(epoch, batch)`` after every optimiser step.

    Returns:
        A `TrainResult`: the model, one metrics dict per epoch (the lines of
            ``metrics.jsonl``) and the exit status (0, or `INTERRUPTED` after Ctrl-C, with
            the checkpoint saved).

    Raises:
        RunDirectoryError: ``config.out`` holds an earlier run (without ``resume`` or
            ``overwrite``), is in use by another run, or cannot be written.
        CheckpointError: a checkpoint cannot be read, does not fit the model or the
            settings, or cannot be written.
        TrainingDiverged: the loss became NaN or infinite.
    """
    return Trainer(config, on_batch).run()
