"""``neuralode train``: the training product (config, loop, checkpoints, DDP, plots)."""

from .config import MODELS, TrainConfig, add_train_arguments, build_model
from .hypersolver import fit_hypersolver
from .loop import INTERRUPTED, TrainingDiverged, TrainResult, evaluate, train
from .metrics import MetricsLog, open_tensorboard
from .progress import progress_bar
from .runtime import autograd_memory_mb, peak_memory_mb
from .state import CheckpointError, load_checkpoint
from .trainer import (
    Run,
    RunComplete,
    Trainer,
    TrainingInterrupted,
    add_run_arguments,
    open_experiment,
)

__all__ = [
    "INTERRUPTED",
    "MODELS",
    "CheckpointError",
    "MetricsLog",
    "Run",
    "RunComplete",
    "Trainer",
    "TrainingInterrupted",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "add_run_arguments",
    "add_train_arguments",
    "autograd_memory_mb",
    "build_model",
    "evaluate",
    "fit_hypersolver",
    "load_checkpoint",
    "open_experiment",
    "open_tensorboard",
    "peak_memory_mb",
    "progress_bar",
    "train",
]
