"""Neural CDE classifying irregularly sampled spirals with missing values (Kidger et al. 2020).

Data are generated: each series is a noisy 2-D spiral, turning anticlockwise (class 1) or
clockwise (class 0), with a random radius, phase and decay, observed at ``--length`` times of
its own drawn uniformly on [0, 4 pi] (sorted; every series has different times). The channels
are (time / 4 pi, x, y); a ``--missing`` fraction of the x and y values is dropped (NaN). The
time channel tells the model how each series is sampled, so the CDE's own time is the
observation index. A ``NeuralCDE`` (``neuralode.models.NeuralCDE``) reads the interpolation
of each series (``--interpolation``: natural cubic spline, Hermite cubic with backward
differences, linear; several are trained one after the other and compared) and a linear
readout of its final state is the logit of the class (binary cross-entropy, Adam).
``--log-ode DEPTH WINDOW`` (repeatable) adds a model of the log-ODE method (Morrill et al.
2021): the series' depth-DEPTH log-signatures over windows of WINDOW observations,
interpolated linearly (``NeuralCDE(log_ode=(DEPTH, WINDOW))``), one CDE time unit per
window; with a large ``--length`` it takes far fewer solver steps than the models above.

Writes ``metrics.json`` (per model, named by its interpolation or ``log-ode-dDEPTH-wWINDOW``:
the training loss, test accuracy and loss, the
mean NFE of the forward and backward passes, training time, and the histories),
``model.pt`` (the weights, by model) and ``cde_spirals.png`` (a test series of each
class with the cubic spline the model reads, and the loss and accuracy curves) to
``--out``; a stopped run continues with ``--resume``.

Defaults: 256 training and 256 test series of 24 observations, 30 % missing, noise 0.3,
hidden state 8, vector field width 32, 150 Adam steps (lr 1e-2, cosine schedule) of batches
of 32, dopri5 at rtol 1e-3 / atol 1e-5 with backpropagation through the solver
(``--adjoint``: the continuous adjoint), all three interpolations, one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from .._cli_types import (
    fraction,
    int_at_least,
    non_negative_float,
    open_unit,
    positive_float,
    positive_int,
)
from ..cde import CubicSpline, natural_cubic_coeffs
from ..models.cde import INTERPOLATIONS, NeuralCDE
from ..solvers import METHODS
from ..training.runtime import machine
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    open_experiment,
)
from ..viz.plots import require_matplotlib

SPAN = 4 * math.pi  # the spirals' time span: two turns


class _LogOde(argparse.Action):
    """``--log-ode DEPTH WINDOW``, repeatable: appends ``(depth, window)`` to the list."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        try:
            depth = positive_int(values[0])
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, f"DEPTH {error}") from None
        try:
            window = positive_float(values[1])
        except argparse.ArgumentTypeError as error:
            raise argparse.ArgumentError(self, f"WINDOW {error}") from None
        chosen = list(getattr(namespace, self.dest) or [])
        setattr(namespace, self.dest, [*chosen, (depth, window)])


def log_ode_name(depth: int, window: float) -> str:
    """The name of a log-ODE model in the results: ``log-ode-d2-w20``."""
    return f"log-ode-d{depth}-w{window:g}"


def make_data(
    series: int, length: int, missing: float, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Irregularly sampled spirals with missing values.

    Arguments:
        series: how many series.
        length: observations per series.
        missing: the fraction of the x and y values replaced by NaN (the time channel is
            always observed).
        noise: the standard deviation of the Gaussian noise on x and y.
        generator: the random generator.

    Returns:
        ``(x, labels)``: x of shape (series, length, 3), channels (time / 4 pi, x, y), NaN
        where missing; labels (series,), 1.0 for anticlockwise and 0.0 for clockwise.
    """
    labels = (torch.rand(series, generator=generator) < 0.5).float()
    direction = 2 * labels - 1
    times = torch.rand(series, length, generator=generator).sort(dim=1).values * SPAN
    radius = 0.8 + 0.4 * torch.rand(series, 1, generator=generator)
    decay = 0.3 + 0.4 * torch.rand(series, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(series, 1, generator=generator)
    r = radius * (1 - decay * times / SPAN)
    angle = phase + direction[:, None] * times
    xy = torch.stack([r * torch.cos(angle), r * torch.sin(angle)], -1)
    xy = xy + noise * torch.randn(xy.shape, generator=generator)
    drop = torch.rand(xy.shape, generator=generator) < missing
    xy = xy.masked_fill(drop, float("nan"))
    return torch.cat([(times / SPAN)[..., None], xy], -1), labels


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/cde", help="output directory (default %(default)s)")
    parser.add_argument(
        "--interpolation",
        nargs="+",
        choices=INTERPOLATIONS,
        default=list(INTERPOLATIONS),
        help="the interpolations to train and compare, one model each (default: all three)",
    )
    parser.add_argument(
        "--log-ode",
        nargs=2,
        action=_LogOde,
        metavar=("DEPTH", "WINDOW"),
        help="also train a log-ODE model: depth-DEPTH log-signatures over windows of WINDOW "
        "observations, interpolated linearly; repeat for several (default: none)",
    )
    parser.add_argument(
        "--train", type=positive_int, default=256, help="training series (default %(default)s)"
    )
    parser.add_argument(
        "--test", type=positive_int, default=256, help="test series (default %(default)s)"
    )
    parser.add_argument(
        "--length",
        type=int_at_least(2),
        default=24,
        help="observations per series (default %(default)s)",
    )
    parser.add_argument(
        "--missing",
        type=fraction,
        default=0.3,
        help="fraction of the x, y values dropped to NaN (default %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=non_negative_float,
        default=0.3,
        help="observation noise std (default %(default)s)",
    )
    parser.add_argument(
        "--iterations", type=positive_int, default=150, help="Adam steps (default %(default)s)"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=32, help="series per step (default %(default)s)"
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-2, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--hidden", type=positive_int, default=8, help="CDE state size (default %(default)s)"
    )
    parser.add_argument(
        "--width",
        type=positive_int,
        default=32,
        help="vector field MLP width (default %(default)s)",
    )
    parser.add_argument(
        "--method",
        choices=sorted(METHODS),
        default="dopri5",
        metavar="METHOD",
        help="ODE method of the CDE solve (default %(default)s)",
    )
    parser.add_argument(
        "--rtol", type=open_unit, default=1e-3, help="relative tolerance (default %(default)s)"
    )
    parser.add_argument(
        "--atol", type=positive_float, default=1e-5, help="absolute tolerance (default %(default)s)"
    )
    parser.add_argument(
        "--adjoint",
        action="store_true",
        help="gradients by the continuous adjoint (default: backpropagation through the solver)",
    )
    parser.add_argument(
        "--eval-every",
        type=positive_int,
        default=25,
        help="steps between test evaluations (default %(default)s)",
    )
    add_seed_and_threads(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    args.interpolation = list(dict.fromkeys(args.interpolation))  # each once, in order
    if args.log_ode:  # (None without the option: the config of a run from before it)
        args.log_ode = list(dict.fromkeys(args.log_ode))
    if args.threads:
        torch.set_num_threads(args.threads)
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _run(args, run)


def _evaluate(model: NeuralCDE, coeffs: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """Test loss, accuracy, the predicted classes and the forward NFE, without gradients."""
    with torch.no_grad():
        logits = model(coeffs).squeeze(-1)
    predicted = (logits > 0).float()
    return {
        "loss": float(F.binary_cross_entropy_with_logits(logits, labels)),
        "accuracy": float((predicted == labels).float().mean()),
        "predicted": predicted.tolist(),
        "nfe": model.nfe_forward,
    }


def train_one(
    interpolation: str,
    data: dict[str, torch.Tensor],
    args: argparse.Namespace,
    run: Run | None = None,
    log_ode: tuple[int, float] | None = None,
) -> tuple[NeuralCDE, dict[str, Any]]:
    """Trains a neural CDE with ``interpolation`` (or, with ``log_ode=(depth, window)``, the
    log-ODE method's linear path; ``interpolation`` must then be ``"linear"``) as a job of
    ``run`` (checkpointed, resumable); returns the model and its results (losses, accuracy,
    NFE, time)."""
    name = interpolation if log_ode is None else log_ode_name(*log_ode)
    torch.manual_seed(args.seed)
    model = NeuralCDE(
        input_channels=data["train_x"].size(-1),
        hidden_channels=args.hidden,
        output_channels=1,
        width=args.width,
        interpolation=interpolation,
        adjoint=args.adjoint,
        method=args.method,
        rtol=args.rtol,
        atol=args.atol,
        log_ode=log_ode,
    )
    start = time.perf_counter()
    train_coeffs = model.coefficients(data["train_x"])
    test_coeffs = model.coefficients(data["test_x"])
    coeff_time = time.perf_counter() - start
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iterations)
    objects = {"model": model, "optimizer": optimiser, "schedule": schedule}
    state: dict[str, Any] = {"history": [], "evaluations": [], "time_s": 0.0}
    state |= {"nfe_forward": 0, "nfe_backward": 0}
    generator = torch.Generator().manual_seed(args.seed + 1)
    trainer = Trainer(
        f"cde {name}", args.iterations, objects, {"batches": generator}, state, run=run
    )
    if trainer.done:
        return model, trainer.result
    labels = data["train_y"]
    batch = min(args.batch, args.train)
    for step in trainer:
        tick = time.perf_counter()
        index = torch.randperm(args.train, generator=generator)[:batch]
        logits = model(train_coeffs[index]).squeeze(-1)
        loss = F.binary_cross_entropy_with_logits(logits, labels[index])
        optimiser.zero_grad()
        trainer.check_loss(loss)
        loss.backward()
        optimiser.step()
        schedule.step()
        state["time_s"] += time.perf_counter() - tick
        state["nfe_forward"] += model.nfe_forward
        state["nfe_backward"] += model.nfe_backward
        state["history"].append(float(loss.detach()))
        trainer.show(loss=state["history"][-1], nfe=model.nfe_forward)
        if step == args.iterations or step % args.eval_every == 0:
            test = _evaluate(model, test_coeffs, data["test_y"])
            record = {"loss": state["history"][-1], "test_accuracy": test["accuracy"]}
            state["evaluations"].append({"step": step, **record})
            trainer.log(record)
    test = _evaluate(model, test_coeffs, data["test_y"])
    history = state["history"]
    tail = history[-max(1, len(history) // 10) :]
    result = {
        "train_loss": sum(tail) / len(tail),
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "test_predicted": test["predicted"],
        "nfe_forward": state["nfe_forward"] / args.iterations,
        "nfe_backward": state["nfe_backward"] / args.iterations,
        "nfe_test": test["nfe"],
        "train_time_s": state["time_s"],
        "coefficients_time_s": coeff_time,
        "loss_history": history,
        "evaluations": state["evaluations"],
    }
    return model, trainer.finish(result)


def _run(args: argparse.Namespace, run: Run) -> int:
    out = Path(args.out)
    generator = torch.Generator().manual_seed(args.seed)
    train_x, train_y = make_data(args.train, args.length, args.missing, args.noise, generator)
    test_x, test_y = make_data(args.test, args.length, args.missing, args.noise, generator)
    data = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    print(
        f"cde: {args.train} + {args.test} spirals of {args.length} irregular observations, "
        f"{100 * args.missing:.0f}% missing -> {out}/"
    )
    results, weights, parameters = {}, {}, {}
    jobs = [(name, None) for name in args.interpolation]
    jobs += [(log_ode_name(*log_ode), log_ode) for log_ode in args.log_ode or []]
    for name, log_ode in jobs:
        interpolation = name if log_ode is None else "linear"
        model, result = train_one(interpolation, data, args, run, log_ode)
        weights[name] = model.state_dict()
        parameters[name] = sum(p.numel() for p in model.parameters())
        results[name] = result
    torch.save(weights, out / "model.pt")
    metrics = {
        "experiment": "cde",
        "data": "spirals, anticlockwise (1) vs clockwise (0), channels (t / 4 pi, x, y)",
        "train_series": args.train,
        "test_series": args.test,
        "length": args.length,
        "missing": args.missing,
        "observed_fraction": float((~test_x[..., 1:].isnan()).float().mean()),
        "method": args.method,
        "rtol": args.rtol,
        "atol": args.atol,
        "gradient": "adjoint" if args.adjoint else "backpropagation",
        "parameters": sum(p.numel() for p in model.parameters()),
        "interpolations": {
            name: {k: v for k, v in r.items() if k != "test_predicted"}
            | {"parameters": parameters[name]}
            | ({"log_ode": list(log_ode)} if log_ode else {})
            for (name, log_ode), r in zip(jobs, results.values())
        },
        "config": {k: v for k, v in vars(args).items() if not callable(v)},
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot(data, results, out)
    for name, r in results.items():
        print(
            f"  {name}: test accuracy {100 * r['test_accuracy']:.1f}%, train loss "
            f"{r['train_loss']:.4f}, NFE forward {r['nfe_forward']:.1f} backward "
            f"{r['nfe_backward']:.1f} per step, {r['train_time_s']:.1f} s"
        )
    print(f"wrote {out}/metrics.json, model.pt and cde_spirals.png")
    return 0


def _plot(data: dict[str, torch.Tensor], results: dict[str, Any], out: Path) -> None:
    from ..viz.plots import figure

    first = next(iter(results))
    predicted = results[first]["test_predicted"]
    x, labels = data["test_x"], data["test_y"]
    fig = figure(figsize=(14, 4.2))
    axes = fig.subplots(1, 3)
    ax = axes[0]
    colours = ("tab:orange", "tab:blue")  # clockwise, anticlockwise
    # one test series of each class: its observations and the natural cubic spline the
    # model reads, drawn densely in the CDE's time (the observation index)
    shown = [int(i) for c in (1.0, 0.0) for i in (labels == c).nonzero()[:1, 0]]
    for i in shown:
        observed = ~x[i, :, 1:].isnan().any(-1)
        spline = CubicSpline(natural_cubic_coeffs(x[i]))
        path = spline.evaluate(torch.linspace(0, x.shape[1] - 1, 400))[:, 1:]
        colour = colours[int(labels[i])]
        kind = "anticlockwise" if labels[i] else "clockwise"
        verdict = "right" if predicted[i] == float(labels[i]) else "wrong"
        ax.plot(path[:, 0], path[:, 1], color=colour, lw=1, label=f"{kind} (predicted {verdict})")
        ax.scatter(x[i, observed, 1], x[i, observed, 2], color=colour, s=10)
        ax.scatter(x[i, :1, 1], x[i, :1, 2], marker="o", facecolor="none", edgecolor="k", s=50)
    ax.set_title("a test series of each class, its cubic spline (o: start)")
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="upper right")
    for name, r in results.items():
        axes[1].plot(range(1, len(r["loss_history"]) + 1), r["loss_history"], lw=1, label=name)
        steps = [e["step"] for e in r["evaluations"]]
        axes[2].plot(steps, [e["test_accuracy"] for e in r["evaluations"]], "o-", label=name)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_title("training loss (binary cross-entropy)")
    axes[1].legend(fontsize=8)
    axes[2].set_xlabel("step")
    axes[2].set_ylim(0, 1.02)
    axes[2].set_title("test accuracy")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "cde_spirals.png", dpi=100)
