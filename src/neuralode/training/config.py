"""Options of ``neuralode train``: one dataclass, its command-line form, and the models."""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field, fields

from torch import nn

from .._cli_types import (
    fraction,
    int_at_least,
    method_name,
    non_negative_float,
    non_negative_int,
    open_unit,
    positive_float,
    positive_int,
    random_seed,
    thread_count,
    warmup_epochs,
)
from ..data import DATASETS
from ..implicit import FIXED_POINT_METHODS
from ..models import (
    DEQNet,
    DerivativePenalty,
    JacobianFrobenius,
    KineticEnergy,
    ODENet,
    RandomEndTime,
    Regulariser,
    ResNet,
    RKNet,
)
from ..models.deq import BACKWARD_METHODS as DEQ_BACKWARD_METHODS

MODELS = ("odenet", "resnet", "rknet", "deq")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")
GRADIENTS = ("adjoint", "direct", "checkpointed", "reversible")

# Options that shape the model, the data or their order: resuming with others is refused.
RESUME_KEYS = (
    "model", "data", "channels", "augment", "batch_size", "optimizer", "seed",
    "train_subset", "test_subset", "crop_padding", "schedule", "pool",
    "kinetic", "jacobian", "jacobian_noise", "derivative", "derivative_order", "ema",
    "blocks", "steer",
)  # fmt: skip
NOISES = ("gaussian", "rademacher")
CACHE_DIR_HELP = (
    "download cache (default $NEURALODE_DATA, else $XDG_CACHE_HOME/neuralode, else "
    "~/.cache/neuralode)"
)


@dataclass
class TrainConfig:
    """Everything that defines a training run (plain types, stored in the checkpoint).

    Each field is the command-line option of ``neuralode train`` with dashes for the
    underscores (``batch_size``: ``--batch-size``; ``plots``: ``--no-plots`` turns it off).
    The options named in ``RESUME_KEYS`` (those that shape the model, the data or their
    order) must equal the checkpoint's when resuming.

    Attributes:
        model: the classifier: ``"odenet"`` (convolutional ODE-Net), ``"resnet"``,
            ``"rknet"`` (an ODE-Net with fixed RK4 steps) or ``"deq"`` (deep equilibrium).
        data: the data set, one of ``DATASETS``: ``"mnist5k"``, ``"digits"`` or ``"mnist"``.
        out: the output directory (checkpoint, config.json, metrics.jsonl, plots);
            ``neuralode train`` makes it ``out/train-MODEL``.
        epochs: training epochs, at least 1.
        batch_size: training images per optimiser step, per process (under torchrun), at
            least 1.
        test_batch_size: images per batch of the evaluations, at least 1.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
        lr: the peak learning rate (reached after the warm-up), positive.
        momentum: the momentum of ``"sgd"`` (unused by the others), non-negative.
        weight_decay: the optimiser's weight decay, non-negative.
        schedule: the learning-rate schedule after the warm-up, per optimiser step:
            ``"cosine"`` (decay to zero over the run), ``"step"`` (times 0.1 at 1/2 and
            again at 3/4 of the steps) or ``"constant"``.
        warmup_epochs: the length of the linear warm-up from ``lr / warm-up steps`` to
            ``lr``, in epochs (a fraction of one allowed; rounded to optimiser steps; 0:
            none), non-negative.
        label_smoothing: the label smoothing of the training loss, in [0, 1) (0: off; the
            test loss is never smoothed).
        ema: the decay of an exponential moving average of the weights that is evaluated
            (and plotted) instead of the trained weights, in [0, 1), e.g. 0.99 (0: off).
        method: the solver of the ODE block (a name of ``neuralode.METHODS``; odenet).
        rtol: the relative tolerance of an adaptive ``method``, in (0, 1).
        atol: the absolute tolerance of an adaptive ``method``, positive.
        step_size: the step of a fixed-step ``method`` and of rknet's RK4 over [0, 1],
            positive.
        gradient: how odenet's ODE block is differentiated: ``"adjoint"`` (O(1) memory),
            ``"direct"`` (backpropagation through the solver), ``"checkpointed"`` or
            ``"reversible"`` (exact, O(1) memory; an explicit Runge-Kutta ``method``).
        deq_method: the fixed-point solver of the deq's forward pass: ``"anderson"``,
            ``"broyden"`` or ``"picard"``.
        deq_backward: the solver of the deq's adjoint equation (one of the fixed-point
            methods or ``"gmres"``); ``None``: ``deq_method``.
        deq_tol: the relative residual at which both deq solves stop, in (0, 1).
        deq_max_iter: the most iterations of each deq solve, at least 1.
        deq_dropout: the probability of the variational dropout in the equilibrium cell
            (one mask per solve), in [0, 1) (0: none).
        channels: the feature channels of the models, at least 1.
        blocks: the residual blocks of resnet, at least 1.
        augment: extra zero channels of the ODE state (augmented neural ODE; odenet),
            non-negative.
        pool: the global pooling of the head, ``"max"`` or ``"avg"`` (the paper's).
        kinetic: the weight of the kinetic-energy penalty int ||f||^2 dt (Finlay et al.
            2020; odenet, rknet), non-negative (0: off).
        jacobian: the weight of the Jacobian Frobenius penalty int ||df/dy||_F^2 dt
            (Hutchinson's estimate; for a deq, ||df/dz||_F^2 at the fixed point),
            non-negative (0: off).
        jacobian_noise: the Hutchinson noise of ``jacobian``: ``"gaussian"`` or
            ``"rademacher"``.
        derivative: the weight of the penalty int ||d^K y/dt^K||^2 dt (Kelly et al. 2020;
            odenet, rknet), non-negative (0: off).
        derivative_order: K of ``derivative``, at least 2.
        steer: STEER's spread b (Ghosh et al. 2020; odenet, rknet): each training solve of the
            ODE block ends at a random time in [1 - b, 1 + b) instead of 1 (evaluation: 1),
            in [0, 1) (0: off).
        crop_padding: the padding of the random-crop augmentation in pixels; 0: no
            cropping; -1: automatic (4 for images of 28 pixels or more, else the image size
            // 7, at least 1: 1 for 8x8 digits).
        seed: the random seed, an integer in [0, 2**32 - 1] (model initialisation, data
            order and crops).
        device: ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"``,
            ``"cuda:1"``, ...
        threads: torch's CPU threads for the run; 0: torch's default.
        resume: continue from ``out/checkpoint.pt``.
        overwrite: replace an earlier run's files in ``out`` (without it, or ``resume``,
            such an ``out`` is refused).
        data_dir: the directory with the MNIST IDX files (``data="mnist"``).
        download: download MNIST (checksummed; ``data="mnist"``).
        cache_dir: the download cache; ``None``: ``$NEURALODE_DATA``, else
            ``$XDG_CACHE_HOME/neuralode``, else ``~/.cache/neuralode``.
        train_subset: train on the first N training images (0: all), non-negative.
        test_subset: evaluate on the first N test images (0: all), non-negative.
        plots: write the PNG plots (learning curves each epoch; trajectories and the
            tolerance sweep, or the deq's residuals, at the end).
        tensorboard: also log each epoch's metrics to ``out/tensorboard`` (needs the
            tensorboard extra).
        sweep_tolerances: the test-time tolerances (rtol = atol) of the error-vs-NFE plot of
            an adaptive ODE block, each in (0, 1).
        sweep_images: the test images of the tolerance sweep and of the deq's residual
            plot, at least 1.

    Raises:
        ValueError: an option outside its choices or range, a regulariser the model does
            not take (any on resnet; ``kinetic``, ``derivative`` or ``steer`` on a deq), or the
            ``"reversible"`` gradient with a method that is not explicit Runge-Kutta.
    """

    model: str = "odenet"
    data: str = "mnist5k"
    out: str = "out/train"
    epochs: int = 8
    batch_size: int = 64
    test_batch_size: int = 500
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.25
    label_smoothing: float = 0.0
    ema: float = 0.0
    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    step_size: float = 0.25
    gradient: str = "adjoint"
    deq_method: str = "anderson"
    deq_backward: str | None = None
    deq_tol: float = 1e-2
    deq_max_iter: int = 30
    deq_dropout: float = 0.0
    channels: int = 64
    blocks: int = 6
    augment: int = 0
    pool: str = "max"
    kinetic: float = 0.0
    jacobian: float = 0.0
    jacobian_noise: str = "gaussian"
    derivative: float = 0.0
    derivative_order: int = 2
    steer: float = 0.0
    crop_padding: int = -1
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    resume: bool = False
    overwrite: bool = False
    data_dir: str | None = None
    download: bool = False
    cache_dir: str | None = None
    train_subset: int = 0
    test_subset: int = 0
    plots: bool = True
    tensorboard: bool = False
    sweep_tolerances: list[float] = field(default_factory=lambda: [1e-1, 1e-2, 1e-3, 1e-4])
    sweep_images: int = 500

    def __post_init__(self) -> None:
        choices = {
            "model": MODELS, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
            "gradient": GRADIENTS, "data": DATASETS, "jacobian_noise": NOISES,
            "deq_method": tuple(FIXED_POINT_METHODS),
        }  # fmt: skip
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.deq_backward is not None and self.deq_backward not in DEQ_BACKWARD_METHODS:
            raise ValueError(
                f"deq_backward must be one of {DEQ_BACKWARD_METHODS}, got {self.deq_backward!r}"
            )
        for name in ("epochs", "batch_size", "test_batch_size", "channels", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.deq_max_iter < 1:
            raise ValueError(f"deq_max_iter must be at least 1, got {self.deq_max_iter}")
        if not 0 <= self.deq_dropout < 1:
            raise ValueError(f"deq_dropout must be in [0, 1), got {self.deq_dropout}")
        for name in ("lr", "atol", "step_size"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("rtol", "deq_tol"):  # relative: 1 or more accepts any error
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        for name in (
            "kinetic", "jacobian", "derivative", "train_subset", "test_subset", "warmup_epochs",
            "momentum", "weight_decay", "threads",
        ):  # fmt: skip
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        for name in ("label_smoothing", "ema"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.crop_padding < -1:
            raise ValueError(
                f"crop_padding must be -1 (automatic), 0 (off) or positive, got {self.crop_padding}"
            )
        if self.sweep_images < 1 or not all(0 < tol < 1 for tol in self.sweep_tolerances):
            raise ValueError(
                "sweep_images must be at least 1 and sweep_tolerances in (0, 1), got "
                f"{self.sweep_images} and {self.sweep_tolerances}"
            )
        if not 0.0 <= self.steer < 1.0:
            raise ValueError(
                f"steer must lie in [0, 1) (the ODE block's t1 - t0 is 1), got {self.steer}"
            )
        if self.derivative_order < 2:
            raise ValueError(f"derivative_order must be at least 2, got {self.derivative_order}")
        if self.model == "resnet" and (self.regularisers() or self.steer > 0):
            raise ValueError(
                "--kinetic, --jacobian, --derivative and --steer regularise an ODE block; "
                "resnet has none (use odenet or rknet)"
            )
        if self.model == "odenet" and self.gradient == "reversible":
            from ..solvers import METHODS
            from ..solvers.explicit_rk import ExplicitRK

            method = METHODS.get(self.method)
            if method is not None and not issubclass(method, ExplicitRK):
                raise ValueError(
                    f"--gradient reversible needs an explicit Runge-Kutta --method (dopri5, "
                    f"tsit5, bosh3, rk4, ...), got {self.method}; use such a method, or "
                    "--gradient checkpointed or adjoint with this one"
                )
        if self.model == "deq" and (self.kinetic > 0 or self.derivative > 0 or self.steer > 0):
            raise ValueError(
                "--kinetic, --derivative and --steer regularise an ODE block; a deq is "
                "regularised by "
                "--jacobian (the Jacobian at the fixed point)"
            )

    def regularisers(self) -> list[Regulariser]:
        """The regularisers of the model's ODE block (or equilibrium layer): those with a
        positive weight.

        Returns:
            In this order, a ``KineticEnergy(kinetic)``, a
                ``JacobianFrobenius(jacobian, noise=jacobian_noise)`` and a
                ``DerivativePenalty(derivative_order, derivative)``, each where its weight is
                positive; empty when none is.
        """
        chosen: list[Regulariser] = []
        if self.kinetic > 0:
            chosen.append(KineticEnergy(self.kinetic))
        if self.jacobian > 0:
            chosen.append(JacobianFrobenius(self.jacobian, noise=self.jacobian_noise))
        if self.derivative > 0:
            chosen.append(DerivativePenalty(self.derivative_order, self.derivative))
        return chosen

    def end_time(self) -> RandomEndTime | None:
        """STEER's random end time of the model's ODE block.

        Returns:
            ``RandomEndTime(steer)`` when ``steer`` is positive, else ``None``.
        """
        return RandomEndTime(self.steer) if self.steer > 0 else None

    def as_dict(self) -> dict:
        """The options as plain values (what config.json and the checkpoint store).

        Returns:
            A dict of every field's name and value (``sweep_tolerances`` a copy).
        """
        return asdict(self)

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> TrainConfig:
        """The configuration of parsed command-line options (``add_train_arguments``).

        Arguments:
            args: the parsed options; attributes that are not fields are ignored, and so are
                those that are ``None`` (the field keeps its default: e.g. ``out`` when
                ``--out`` is not given).

        Returns:
            The ``TrainConfig``.

        Raises:
            ValueError: an option outside its choices or range (see ``TrainConfig``).
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in vars(args).items() if k in names and v is not None})


# The options each model reads (``build_model``); the others of ``MODEL_OPTIONS`` have no
# effect on it.
MODEL_OPTIONS = {
    "resnet": ("blocks",),
    "rknet": ("step_size",),
    "odenet": ("augment", "method", "rtol", "atol", "step_size", "gradient"),
    "deq": ("deq_method", "deq_backward", "deq_tol", "deq_max_iter", "deq_dropout"),
}  # fmt: skip


def ignored_options(config: TrainConfig) -> list[str]:
    """The options given a value other than their default that this run never reads: another
    model's (``--blocks`` for an ODE-Net, ``--method`` for a ResNet), ``--step-size`` with an
    adaptive method, ``--momentum`` without SGD, and the MNIST file options with another data
    set.

    Arguments:
        config: the run's options.

    Returns:
        Each ignored option with the reason, such as ``"--blocks (read only by resnet)"``.
    """
    from .. import METHODS

    default = TrainConfig()
    readers = {key: model for model, keys in MODEL_OPTIONS.items() for key in keys}
    ignored = []

    def given(key: str) -> bool:
        return getattr(config, key) != getattr(default, key)

    for key, model in readers.items():
        if model != config.model and given(key) and key not in MODEL_OPTIONS[config.model]:
            users = [m for m, keys in MODEL_OPTIONS.items() if key in keys]
            ignored.append(f"--{key.replace('_', '-')} (read only by {' and '.join(users)})")
    method = METHODS.get(config.method)
    if config.model == "odenet" and given("step_size") and method and method().adaptive:
        ignored.append(f"--step-size (the adaptive {config.method} chooses its steps)")
    if config.optimizer != "sgd" and given("momentum"):
        ignored.append(f"--momentum (read only by --optimizer sgd, not {config.optimizer})")
    if config.data != "mnist":
        for key in ("data_dir", "download", "cache_dir"):
            if given(key):
                ignored.append(f"--{key.replace('_', '-')} (read only with --data mnist)")
    return ignored


def build_model(config: TrainConfig, in_channels: int = 1, classes: int = 10) -> nn.Module:
    """The classifier named by ``config.model`` with the paper's shapes.

    Arguments:
        config: the options: ``model``, ``channels``, ``pool``, the regularisers and
            ``steer``, with ``blocks`` (resnet), the ``deq_*`` options and ``deq_dropout`` (deq),
            ``step_size`` (rknet), or ``augment``, ``method``, ``rtol``, ``atol``,
            ``step_size`` and ``gradient`` (odenet).
        in_channels: the images' channels; only 1 is supported.
        classes: the number of classes (the logits' size).

    Returns:
        A ``ResNet``, ``DEQNet``, ``RKNet`` or ``ODENet`` that maps images
            (batch, 1, height, width) to logits (batch, classes).

    Raises:
        ValueError: ``in_channels`` other than 1, or an option the model refuses (e.g. an
            unknown ``method``).
    """
    if in_channels != 1:
        raise ValueError(f"the classifiers take one input channel, got {in_channels}")
    if config.model == "resnet":
        return ResNet(config.channels, classes, blocks=config.blocks, pool=config.pool)
    if config.model == "deq":
        return DEQNet(
            config.channels,
            classes,
            method=config.deq_method,
            tol=config.deq_tol,
            max_iter=config.deq_max_iter,
            backward_method=config.deq_backward,
            pool=config.pool,
            dropout=config.deq_dropout,
            regularisers=config.regularisers(),
        )
    if config.model == "rknet":
        return RKNet(
            config.channels,
            classes,
            step_size=config.step_size,
            pool=config.pool,
            regularisers=config.regularisers(),
            end_time=config.end_time(),
        )
    return ODENet(
        config.channels,
        classes,
        augment=config.augment,
        method=config.method,
        rtol=config.rtol,
        atol=config.atol,
        step_size=config.step_size,
        gradient=config.gradient,
        pool=config.pool,
        regularisers=config.regularisers(),
        end_time=config.end_time(),
    )


def add_train_arguments(parser: argparse.ArgumentParser, model_positional: bool = True) -> None:
    """Add the command-line options of ``neuralode train`` to ``parser`` (defaults from
    ``TrainConfig``; ``TrainConfig.from_namespace`` reads the parsed result).

    The options come in the groups data, optimisation, model and solver, equilibrium layer
    (deq), regularisation and run; ``--out`` and ``--deq-backward`` default to ``None``.

    Arguments:
        parser: the parser (or subcommand parser) to add them to.
        model_positional: add the positional ``model`` argument (one of ``MODELS``); an
            experiment that reuses the options passes ``False`` and sets its own ``--out``
            default.
    """
    d = TrainConfig()
    if model_positional:
        parser.add_argument("model", choices=MODELS, help="classifier to train")
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data", default=d.data, choices=DATASETS, help="data set (default %(default)s)"
    )
    g.add_argument("--data-dir", help="directory with the MNIST IDX files (--data mnist)")
    g.add_argument("--download", action="store_true", help="download MNIST (checksummed)")
    g.add_argument("--cache-dir", help=CACHE_DIR_HELP)
    g.add_argument(
        "--crop-padding",
        type=int_at_least(-1),
        default=d.crop_padding,
        help="random-crop padding, 0 = off (default %(default)s: -1 = 4 for 28x28, 1 for 8x8)",
    )
    g.add_argument(
        "--train-subset",
        type=non_negative_int,
        default=0,
        help="use the first N training images (default %(default)s: all)",
    )
    g.add_argument(
        "--test-subset",
        type=non_negative_int,
        default=0,
        help="use the first N test images (default %(default)s: all)",
    )
    g = parser.add_argument_group("optimisation")
    g.add_argument(
        "--epochs",
        type=positive_int,
        default=d.epochs,
        help="training epochs (default %(default)s)",
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=d.batch_size,
        help="per process (default %(default)s)",
    )
    g.add_argument(
        "--test-batch-size",
        type=positive_int,
        default=d.test_batch_size,
        help="batch of the evaluations (default %(default)s)",
    )
    g.add_argument(
        "--optimizer",
        default=d.optimizer,
        choices=OPTIMIZERS,
        help="optimiser (default %(default)s)",
    )
    g.add_argument(
        "--lr", type=positive_float, default=d.lr, help="peak learning rate (default %(default)s)"
    )
    g.add_argument(
        "--momentum",
        type=non_negative_float,
        default=d.momentum,
        help="for sgd (default %(default)s)",
    )
    g.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=d.weight_decay,
        help="weight decay (default %(default)s)",
    )
    g.add_argument(
        "--schedule",
        default=d.schedule,
        choices=SCHEDULES,
        help="per-step cosine decay, x0.1 steps at 1/2 and 3/4, or constant (default %(default)s)",
    )
    g.add_argument(
        "--warmup-epochs",
        type=warmup_epochs,
        default=d.warmup_epochs,
        help="linear warm-up length (default %(default)s)",
    )
    g.add_argument(
        "--label-smoothing",
        type=fraction,
        default=d.label_smoothing,
        help="label smoothing of the training loss (0 = off; the test loss is never smoothed; "
        "default %(default)s)",
    )
    g.add_argument(
        "--ema",
        type=fraction,
        default=d.ema,
        help="evaluate an exponential moving average of the weights with this decay, "
        "e.g. 0.99 (0 = off, evaluate the trained weights; default %(default)s)",
    )
    g = parser.add_argument_group("model and solver")
    g.add_argument(
        "--channels",
        type=positive_int,
        default=d.channels,
        help="feature channels of the models (default %(default)s)",
    )
    g.add_argument(
        "--blocks",
        type=positive_int,
        default=d.blocks,
        help="residual blocks of resnet (default %(default)s)",
    )
    g.add_argument(
        "--augment",
        type=non_negative_int,
        default=d.augment,
        help="extra zero channels of the ODE state (augmented neural ODE; default %(default)s)",
    )
    g.add_argument(
        "--pool",
        default=d.pool,
        choices=("max", "avg"),
        help="global pooling of the head (paper: avg; max learns faster; default %(default)s)",
    )
    g.add_argument(
        "--method",
        type=method_name,
        default=d.method,
        help="solver of the ODE block (default %(default)s)",
    )
    g.add_argument("--rtol", type=open_unit, default=d.rtol, help="default %(default)s")
    g.add_argument("--atol", type=positive_float, default=d.atol, help="default %(default)s")
    g.add_argument(
        "--step-size",
        type=positive_float,
        default=d.step_size,
        help="fixed-step methods and rknet (default %(default)s)",
    )
    g.add_argument(
        "--gradient",
        default=d.gradient,
        choices=GRADIENTS,
        help="adjoint (O(1) memory), direct backprop, checkpointed, or reversible (exact, O(1) "
        "memory; explicit Runge-Kutta methods) (default %(default)s)",
    )
    g = parser.add_argument_group("equilibrium layer (deq)")
    g.add_argument(
        "--deq-method",
        default=d.deq_method,
        choices=tuple(FIXED_POINT_METHODS),
        help="fixed-point solver of the forward pass (default %(default)s)",
    )
    g.add_argument(
        "--deq-backward",
        default=None,
        choices=DEQ_BACKWARD_METHODS,
        help="solver of the implicit-function adjoint equation (default: --deq-method)",
    )
    g.add_argument(
        "--deq-tol",
        type=open_unit,
        default=d.deq_tol,
        help="relative residual of both solves (default %(default)s)",
    )
    g.add_argument(
        "--deq-max-iter",
        type=positive_int,
        default=d.deq_max_iter,
        help="most iterations of each solve (default %(default)s)",
    )
    g.add_argument(
        "--deq-dropout",
        type=fraction,
        default=d.deq_dropout,
        help="variational dropout in the equilibrium cell: one mask per solve "
        "(default %(default)s)",
    )
    g = parser.add_argument_group(
        "regularisation of the ODE block (odenet, rknet; deq: --jacobian)"
    )
    g.add_argument(
        "--kinetic",
        type=non_negative_float,
        default=d.kinetic,
        help="weight of the kinetic energy int ||f||^2 dt (Finlay et al. 2020; 0 = off; "
        "default %(default)s)",
    )
    g.add_argument(
        "--jacobian",
        type=non_negative_float,
        default=d.jacobian,
        help="weight of the Jacobian Frobenius norm int ||df/dy||_F^2 dt (Hutchinson; 0 = off; "
        "default %(default)s)",
    )
    g.add_argument(
        "--jacobian-noise",
        default=d.jacobian_noise,
        choices=NOISES,
        help="Hutchinson noise of --jacobian (default %(default)s)",
    )
    g.add_argument(
        "--derivative",
        type=non_negative_float,
        default=d.derivative,
        help="weight of int ||d^K y/dt^K||^2 dt (Kelly et al. 2020; 0 = off; default %(default)s)",
    )
    g.add_argument(
        "--derivative-order",
        type=int_at_least(2),
        default=d.derivative_order,
        help="K of --derivative; the time grows steeply with K (nested double-backward "
        "products, and a backward solve of more steps): each order about 5-10x the last on "
        "a small digits run (default %(default)s)",
    )
    g.add_argument(
        "--steer",
        type=fraction,
        default=d.steer,
        metavar="B",
        help="STEER (Ghosh et al. 2020): each training solve ends at a random time in "
        "[1 - B, 1 + B) instead of 1, evaluation at 1; B in [0, 1) (0 = off; default "
        "%(default)s)",
    )
    g = parser.add_argument_group("run")
    # neuralode train writes to out/train-MODEL; an experiment sets its own default
    out = "out/train-MODEL" if model_positional else "%(default)s"
    g.add_argument("--out", default=None, help=f"output directory (default {out})")
    # neuralode train checkpoints into OUT; an experiment of several models into OUT/MODEL
    where = "OUT/checkpoint.pt" if model_positional else "each model's OUT/MODEL/checkpoint.pt"
    g.add_argument("--resume", action="store_true", help=f"continue from {where}")
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run's files in OUT (without it, such an OUT is refused)",
    )
    g.add_argument(
        "--seed", type=random_seed, default=d.seed, help="random seed (default %(default)s)"
    )
    g.add_argument(
        "--device", default=d.device, help="auto, cpu, cuda, cuda:1, ... (default %(default)s)"
    )
    g.add_argument(
        "--threads",
        type=thread_count,
        default=0,
        help="torch CPU threads, 0 = torch default (default %(default)s)",
    )
    g.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    g.add_argument(
        "--tensorboard",
        action="store_true",
        help="also log each epoch's metrics to OUT/tensorboard (needs the tensorboard extra)",
    )
    g.add_argument(
        "--sweep-tolerances",
        type=open_unit,
        nargs="+",
        default=d.sweep_tolerances,
        help="test-time tolerances of the error-vs-NFE plot (default "
        + " ".join(map(str, d.sweep_tolerances))
        + ")",
    )
    g.add_argument(
        "--sweep-images",
        type=positive_int,
        default=d.sweep_images,
        help="test images used by the tolerance sweep (default %(default)s)",
    )
