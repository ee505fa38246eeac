"""``neuralode train``: the training product (config, loop, checkpoints, DDP, plots)."""

from .config import MODELS, TrainConfig, add_train_arguments, build_model
from .loop import INTERRUPTED, TrainingDiverged, TrainResult, evaluate, train
from .runtime import autograd_memory_mb, peak_memory_mb
from .state import CheckpointError, load_checkpoint

__all__ = [
    "INTERRUPTED",
    "MODELS",
    "CheckpointError",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "add_train_arguments",
    "autograd_memory_mb",
    "build_model",
    "evaluate",
    "load_checkpoint",
    "peak_memory_mb",
    "train",
]
