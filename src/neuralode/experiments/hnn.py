"""Hamiltonian neural networks against an MLP vector field on the pendulum (Greydanus et al. 2019).

Data are generated as in the paper: the pendulum H(q, p) = 3 (1 - cos q) + p^2 / 2 (mass 1,
length 1, g = 3); each trajectory starts on a circle of random radius in [1.3, 2.3] of the
(q, p) plane (a random energy), is solved exactly (dopri5 at rtol 1e-10) and sampled at
``--points`` times on [0, 5]; the states get Gaussian noise of standard deviation
``--noise`` and the targets are the true time derivatives at the clean states.
Three models of one width and depth regress the derivatives (mean squared error, full batch,
Adam, as the paper): ``baseline``, an MLP vector field (q, p) -> (dq/dt, dp/dt);
``hnn``, an MLP energy H(q, p) whose symplectic gradient (dH/dp, -dH/dq) is the field
(``HamiltonianDynamics``); ``separable``, T(p) + V(q) with an MLP of one variable for each
(``SeparableHamiltonian``), the structure explicit symplectic solvers need. Then each model
is rolled out from ``--rollouts`` held-out initial states (radii as above) for
``--horizon`` time units (17 to 25 periods by default, by amplitude) with ``--method`` (fixed step
``--step-size``, or tolerance ``--rtol`` for an adaptive method), and the separable model
also with the symplectic ``--symplectic`` (same step).

Writes ``metrics.json`` (per model: the derivative test MSE on the held-out trajectories and
the training summary; per rollout: the mean squared error against the truth, the true-energy
drift |H(x(t)) - H(x(0))| at the end, its mean and maximum over time, the evaluations of the
field and, for the Hamiltonian models, the largest drift of their own learned energy),
``model.pt``, ``hnn_phase.png`` (each rollout of one held-out state in the (q, p) plane over
the truth) and ``hnn_energy.png`` (the true energy along it, and the mean drift of all
rollouts) to ``--out``; a stopped run continues with ``--resume``.

Defaults: 25 training and 25 test trajectories of 75 points, noise 0.1, width 100 (the
paper's is 200: ``--hidden 200``), two hidden layers (tanh), 2000 Adam steps (lr 1e-3, weight
decay 1e-4), 4 rollouts of 100 time units by rk4 and leapfrog with steps of 0.05, float32,
one thread.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._cli_types import method_name, non_negative_float, open_unit, positive_float, positive_int
from .._solve import solve
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..models.dynamics import MLPDynamics
from ..models.hamiltonian import EnergyMLP, HamiltonianDynamics, SeparableHamiltonian
from ..solvers import PARTITIONED_METHODS, method_class
from ..solvers.dopri5 import Dopri5
from ..training.runtime import machine
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    open_experiment,
)
from ..viz.plots import require_matplotlib

GRAVITY = 3.0  # Greydanus et al.'s pendulum: m = l = 1, g = 3
SPAN = 5.0  # each data trajectory covers [0, SPAN]
RADII = (1.3, 2.3)  # the initial states' distance from the origin of the (q, p) plane
MODELS = ("baseline", "hnn", "separable")


def true_energy(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The pendulum's energy 3 (1 - cos q) + p^2 / 2, per sample: (batch, 1) -> (batch,)."""
    return (GRAVITY * (1 - torch.cos(q)) + p**2 / 2).sum(-1)


def true_field(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The pendulum's vector field on flat states (batch, 2): (p, -3 sin q)."""
    q, p = y.chunk(2, dim=-1)
    return torch.cat([p, -GRAVITY * torch.sin(q)], dim=-1)


def initial_states(count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` states (count, 2) in random directions at random radii in ``RADII``."""
    direction = torch.rand(count, 2, generator=generator, dtype=torch.float64) * 2 - 1
    radius = torch.rand(count, 1, generator=generator, dtype=torch.float64)
    radius = RADII[0] + (RADII[1] - RADII[0]) * radius
    return direction / direction.norm(dim=-1, keepdim=True) * radius


def exact(y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    """The pendulum's trajectories from ``y0`` (batch, 2) at ``ts``: (len(ts), batch, 2)."""
    with torch.no_grad():
        return solve(
            true_field, y0, ts, solver=Dopri5(), controller=PIController(rtol=1e-10, atol=1e-12)
        ).ys


def make_data(
    trajectories: int, points: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy states and their true derivatives, (trajectories * points, 2) each."""
    ts = torch.linspace(0, SPAN, points, dtype=torch.float64)
    states = exact(initial_states(trajectories, generator), ts).reshape(-1, 2)
    derivatives = true_field(ts[0], states)
    noisy = states + noise * torch.randn(states.shape, generator=generator, dtype=torch.float64)
    return noisy, derivatives


def build_model(name: str, args: argparse.Namespace) -> nn.Module:
    """The model ``name`` (one of ``MODELS``) at ``args.hidden`` x ``args.layers``: a vector
    field on flat states (batch, 2)."""
    if name == "baseline":
        return MLPDynamics(2, args.hidden, args.layers, "tanh", autonomous=True)
    if name == "hnn":
        return HamiltonianDynamics(EnergyMLP(2, args.hidden, args.layers))
    return SeparableHamiltonian(
        EnergyMLP(1, args.hidden, args.layers), EnergyMLP(1, args.hidden, args.layers)
    )


def derivative_loss(model: nn.Module, x: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The mean squared error of ``model``'s field at the states ``x`` against ``dx``."""
    return torch.mean((model(None, x) - dx) ** 2)


def train(
    name: str,
    model: nn.Module,
    x: torch.Tensor,
    dx: torch.Tensor,
    args: argparse.Namespace,
    run: Run | None = None,
) -> dict[str, Any]:
    """Adam on the derivative MSE, full batch, as a job of ``run`` (checkpointed,
    resumable); returns the loss summary."""
    optimiser = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=1e-4)
    state: dict[str, Any] = {"losses": [], "train_time_s": 0.0}
    trainer = Trainer(
        f"train {name}", args.steps, {"model": model, "optimizer": optimiser}, None, state, run=run
    )
    if trainer.done:
        return trainer.result
    log_every = max(1, args.steps // 50)
    for step in trainer:
        tick = time.perf_counter()
        optimiser.zero_grad()
        loss = derivative_loss(model, x, dx)
        trainer.check_loss(loss)
        loss.backward()
        optimiser.step()
        state["losses"].append(float(loss.detach()))
        state["train_time_s"] += time.perf_counter() - tick
        trainer.show(loss=state["losses"][-1])
        if step == args.steps or step % log_every == 0:
            trainer.log({"loss": state["losses"][-1]})
    losses = state["losses"]
    return trainer.finish(
        {"loss_first": losses[0], "loss_last": losses[-1], "train_time_s": state["train_time_s"]}
    )


def rollout(
    model: nn.Module, method: str, y0: torch.Tensor, ts: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    """``model``'s trajectories from ``y0`` (batch, 2) at ``ts`` by ``method``, without
    gradients: the states (len(ts), batch, 2), the evaluations of the field (``stats.nfe``)
    and the time. A symplectic ``method`` (``PARTITIONED_METHODS``) solves the pair (q, p),
    calling only the half of a ``SeparableHamiltonian`` each kick or drift needs (each half
    one evaluation), the others the flat state; fixed steps are ``args.step_size``,
    adaptive ones keep ``args.rtol``."""
    solver = method_class(method)()  # type: ignore[misc]
    if solver.adaptive:
        controller: Any = PIController(rtol=args.rtol, atol=args.rtol * 1e-2)
    else:
        controller = FixedGrid(step_size=args.step_size)
    pair = method in PARTITIONED_METHODS
    start = time.perf_counter()
    state = tuple(y0.chunk(2, dim=-1)) if pair else y0
    with torch.no_grad():
        sol = solve(model, state, ts, solver=solver, controller=controller, max_steps=None)
    seconds = time.perf_counter() - start
    ys = sol.ys
    return {"ys": torch.cat(ys, dim=-1) if pair else ys, "nfe": sol.stats.nfe, "time_s": seconds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="out/hnn", help="output directory (default out/hnn)")
    parser.add_argument(
        "--train", type=positive_int, default=25, help="training trajectories (default %(default)s)"
    )
    parser.add_argument(
        "--test", type=positive_int, default=25, help="test trajectories (default %(default)s)"
    )
    parser.add_argument(
        "--points",
        type=positive_int,
        default=75,
        help=f"samples per trajectory on [0, {SPAN:g}] (default %(default)s)",
    )
    parser.add_argument(
        "--noise",
        type=non_negative_float,
        default=0.1,
        help="standard deviation of the noise on (q, p) (default %(default)s)",
    )
    parser.add_argument(
        "--hidden", type=positive_int, default=100, help="hidden width (default %(default)s)"
    )
    parser.add_argument(
        "--layers", type=positive_int, default=2, help="hidden layers (default %(default)s)"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=2000,
        help="Adam steps, each model (default %(default)s)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-3, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--rollouts",
        type=positive_int,
        default=4,
        help="held-out initial states rolled out (default %(default)s)",
    )
    parser.add_argument(
        "--horizon",
        type=positive_float,
        default=100.0,
        help="rollout length in time units (default %(default)s)",
    )
    parser.add_argument(
        "--method",
        type=method_name,
        default="rk4",
        help="the rollouts' solver, from neuralode.METHODS (default %(default)s)",
    )
    parser.add_argument(
        "--symplectic",
        choices=tuple(PARTITIONED_METHODS),
        default="leapfrog",
        help="the symplectic solver of the separable model's second rollout (default %(default)s)",
    )
    parser.add_argument(
        "--step-size",
        type=positive_float,
        default=0.05,
        help="the rollouts' step with a fixed-step solver (default %(default)s)",
    )
    parser.add_argument(
        "--rtol",
        type=open_unit,
        default=1e-6,
        help="the rollouts' tolerance with an adaptive --method (default %(default)s)",
    )
    parser.add_argument(
        "--save-every",
        type=positive_float,
        default=0.1,
        help="time between the rollouts' saved states (default %(default)s)",
    )
    parser.add_argument(
        "--float64", action="store_true", help="train and roll out in float64 (default float32)"
    )
    add_seed_and_threads(parser)
    add_run_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.save_every > args.horizon:
        raise ValueError(
            f"--save-every ({args.save_every:g}) is longer than --horizon ({args.horizon:g}); "
            "choose a --save-every of at most the horizon"
        )
    if args.step_size > args.save_every:  # (the symplectic rollout takes fixed steps too)
        raise ValueError(
            f"--step-size ({args.step_size:g}) is longer than --save-every "
            f"({args.save_every:g}): the saved states would be interpolated between steps; "
            "choose a --step-size of at most --save-every"
        )
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _run(args, run)


def _run(args: argparse.Namespace, run: Run) -> int:
    """Data, the three trainings (jobs of ``run``), the rollouts, metrics.json and the plots."""
    out = Path(args.out)
    dtype = torch.float64 if args.float64 else torch.float32
    generator = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    print(
        f"hnn: pendulum, {args.train} + {args.test} trajectories, noise {args.noise:g}, width "
        f"{args.hidden} x {args.layers}, {args.steps} steps -> {out}/"
    )
    x, dx = (t.to(dtype) for t in make_data(args.train, args.points, args.noise, generator))
    x_test, dx_test = (
        t.to(dtype) for t in make_data(args.test, args.points, args.noise, generator)
    )
    count = math.floor(args.horizon / args.save_every + 1e-9)
    ts = torch.arange(count + 1, dtype=torch.float64) * args.save_every
    y0 = initial_states(args.rollouts, generator)
    truth = exact(y0, ts)
    h_truth = true_energy(*truth.chunk(2, dim=-1))  # (time, rollouts)

    results: dict[str, Any] = {}
    models: dict[str, nn.Module] = {}
    for name in MODELS:
        model = build_model(name, args).to(dtype)
        history = train(name, model, x, dx, args, run)
        with torch.no_grad():
            test_mse = float(derivative_loss(model, x_test, dx_test))
        results[name], models[name] = {"derivative_test_mse": test_mse, "train": history}, model
        print(f"  {name}: derivative test MSE {test_mse:.4g}")
    plans = [(name, args.method) for name in MODELS] + [("separable", args.symplectic)]
    rollouts: dict[str, Any] = {}
    first: dict[str, torch.Tensor] = {}  # each rollout's first initial state, for the plots
    curves: dict[str, list[float]] = {}
    for name, method in plans:
        model, label = models[name], f"{name} {method}"
        rolled = rollout(model, method, y0.to(dtype), ts, args)
        ys = rolled["ys"].double()
        drift = (true_energy(*ys.chunk(2, dim=-1)) - h_truth[0]).abs()  # (time, rollouts)
        result = {
            "model": name,
            "method": method,
            "trajectory_mse": float(torch.mean((ys - truth) ** 2)),
            "energy_drift_final": float(drift[-1].mean()),
            "energy_drift_mean": float(drift.mean()),
            "energy_drift_max": float(drift.max()),
            "nfe": rolled["nfe"],
            "time_s": rolled["time_s"],
        }
        if isinstance(model, HamiltonianDynamics):  # how well the solver keeps the learned H
            with torch.no_grad():
                learned = model.energy(*rolled["ys"].chunk(2, dim=-1)).double()
            result["learned_energy_drift_max"] = float((learned - learned[0]).abs().max())
        rollouts[label], first[label], curves[label] = result, ys[:, 0], drift.mean(1).tolist()
        print(
            f"  {label}: trajectory MSE {result['trajectory_mse']:.4g}, true-energy drift at "
            f"t={float(ts[-1]):g} {result['energy_drift_final']:.4g} "
            f"(max {result['energy_drift_max']:.4g}), NFE {result['nfe']}"
        )
    metrics = {
        "system": "pendulum H = 3 (1 - cos q) + p^2 / 2",
        "models": results,
        "rollouts": rollouts,
        "rollout_setting": {
            "step_size": args.step_size,
            "rtol": args.rtol,
            "horizon": float(ts[-1]),
            "initial_energy": h_truth[0].tolist(),
        },
        "dtype": str(dtype).removeprefix("torch."),
        "config": {k: v for k, v in vars(args).items() if not callable(v)},
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save({name: m.state_dict() for name, m in models.items()}, out / "model.pt")
    _plot(ts, truth, first, curves, h_truth, args.rollouts, out)
    print(f"wrote {out}/metrics.json, model.pt, hnn_phase.png and hnn_energy.png")
    return 0


def _plot(
    ts: torch.Tensor,
    truth: torch.Tensor,
    first: dict[str, torch.Tensor],
    drifts: dict[str, list[float]],
    h_truth: torch.Tensor,
    rollouts: int,
    out: Path,
) -> None:
    """hnn_phase.png: each rollout of the first initial state in the (q, p) plane over the
    truth;
    hnn_energy.png: the true energy along it, and the mean energy drift of all rollouts."""
    from ..viz.plots import figure

    fig = figure(figsize=(4.2 * len(first), 4))
    axes = fig.subplots(1, len(first), sharex=True, sharey=True)
    for ax, (name, ys) in zip(axes, first.items()):
        ax.plot(truth[:, 0, 0], truth[:, 0, 1], color="k", lw=2, label="truth")
        ax.plot(ys[:, 0], ys[:, 1], lw=0.8, label=name)
        ax.set_title(f"{name}, t in [0, {float(ts[-1]):g}]")
        ax.set_xlabel("q")
        ax.legend(loc="upper right")
    axes[0].set_ylabel("p")
    fig.tight_layout()
    fig.savefig(out / "hnn_phase.png", dpi=100)
    fig = figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    axes[0].plot(ts, h_truth[:, 0], color="k", lw=2, label="truth")
    for name, ys in first.items():
        axes[0].plot(ts, true_energy(*ys.chunk(2, dim=-1)), lw=1, label=name)
    axes[0].set_title("true energy H(x(t)) along the first rollout")
    axes[0].set_xlabel("t")
    axes[0].legend()
    for name, drift in drifts.items():  # from the first saved time: the drift at t = 0 is 0
        axes[1].plot(ts[1:], drift[1:], lw=1, label=name)
    axes[1].set_title(f"|H(x(t)) - H(x(0))|, mean of {rollouts} rollouts")
    axes[1].set_xlabel("t")
    axes[1].set_yscale("log")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "hnn_energy.png", dpi=100)
