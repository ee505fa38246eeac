"""Hybrid neural PDEs by the method of lines: learn the unknown term of a PDE from data.

``--equation burgers``: viscous Burgers u_t = nu u_xx - u u_x on a periodic 1-D grid; the
diffusion is known and the advection -u u_x is learned by a pointwise MLP of (u, u_x).
``--equation reaction-diffusion``: FitzHugh-Nagumo on a periodic 2-D grid; the diffusion of
(u, v) is known and the reaction term is learned by a pointwise MLP of (u, v).

Data are generated on the fly: smooth random initial conditions, solved by a reference solve
(FFT derivatives on a grid ``--refine`` times finer, dopri5 at rtol 1e-8) and sampled at the
model grid's nodes every ``dt`` up to twice the training horizon T. The model trains on
``--train-ics`` trajectories up to T (windows of ``--window`` saved steps started from the
true state every ``--window-stride`` saved steps, solved by RK4 with backpropagation through
the steps), then forecasts
``--test-ics`` held-out initial conditions to T and 2T from the initial state alone, with
dopri5. The baseline is a discrete-time ConvNet u(t + dt) = u(t) + net(u(t)) with (about) the
same number of parameters, trained on the same windows and rolled out autoregressively. The
trained model is also solved with an explicit (dopri5), an implicit (Radau with
Jacobian-free Newton-Krylov, preconditioned by the known diffusion) and an IMEX solver
(KenCarp4, the known diffusion solved exactly in each stage, the rest explicit), for NFE and
time. Writes ``metrics.json``, the weights and PNGs of the space-time fields (truth,
prediction, error) to ``--out``.

Defaults: Burgers on 64 nodes, nu = 0.1, T = 1, dt = 0.05, 12 training initial conditions,
800 iterations; reaction-diffusion on 16 x 16 nodes, T = 2, dt = 0.1, 6 training initial
conditions, 300 iterations; 4 held-out initial conditions; one thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._cli_types import (
    int_at_least,
    non_negative_float,
    open_unit,
    positive_float,
    positive_int,
)
from .._solve import solve
from ..controllers.fixed import FixedGrid
from ..controllers.pi import PIController
from ..pde import (
    Burgers,
    ConvNet,
    Diffusion,
    FitzHughNagumo,
    Grid,
    NeuralPDE,
    PointwiseMLP,
    random_fourier_field,
    reference_solve,
)
from ..solvers.dopri5 import Dopri5
from ..solvers.kencarp4 import KenCarp4
from ..solvers.radau import Radau
from ..solvers.rk4 import RK4
from ..training.runtime import machine
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    open_experiment,
)
from ..viz.plots import require_matplotlib

EQUATIONS = ("burgers", "reaction-diffusion")


@dataclass
class Setting:
    """What one equation needs: grids, the true right-hand side and the hybrid model."""

    grid: Grid
    fine: Grid
    truth: nn.Module
    model: NeuralPDE
    channels: int
    amplitude: float
    offset: float


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--equation", choices=EQUATIONS, default="burgers", help="the PDE (default %(default)s)"
    )
    parser.add_argument("--out", default=None, help="output directory (default out/pde-EQUATION)")
    parser.add_argument(
        "--grid",
        type=int_at_least(5),
        default=None,
        help="nodes per axis (default 64 for burgers, 16 for reaction-diffusion)",
    )
    parser.add_argument(
        "--refine",
        type=positive_int,
        default=4,
        help="reference grid: this many times finer (default %(default)s)",
    )
    parser.add_argument(
        "--horizon",
        type=positive_float,
        default=None,
        help="training horizon T (default 1.0 for burgers, 2.0 for reaction-diffusion)",
    )
    parser.add_argument(
        "--dt",
        type=positive_float,
        default=None,
        help="time between saved states (default 0.05 for burgers, 0.1 for reaction-diffusion)",
    )
    parser.add_argument(
        "--viscosity",
        type=non_negative_float,
        default=0.1,
        help="Burgers' nu (default %(default)s)",
    )
    parser.add_argument(
        "--train-ics",
        type=positive_int,
        default=None,
        help="training initial conditions (default 12 for burgers, 6 for reaction-diffusion)",
    )
    parser.add_argument(
        "--test-ics",
        type=positive_int,
        default=4,
        help="held-out initial conditions (default %(default)s)",
    )
    parser.add_argument(
        "--window",
        type=positive_int,
        default=4,
        help="saved steps per training window (default %(default)s)",
    )
    parser.add_argument(
        "--window-stride",
        type=positive_int,
        default=2,
        help="saved steps between window starts (default %(default)s)",
    )
    parser.add_argument(
        "--substeps",
        type=positive_int,
        default=2,
        help="RK4 steps per saved step in training (default %(default)s)",
    )
    parser.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="optimiser steps, each model (default 800 for burgers, 300 for reaction-diffusion)",
    )
    parser.add_argument(
        "--lr", type=positive_float, default=1e-2, help="Adam learning rate (default %(default)s)"
    )
    parser.add_argument(
        "--hidden",
        type=positive_int,
        default=24,
        help="hidden width of the pointwise MLP (default %(default)s)",
    )
    parser.add_argument(
        "--rtol",
        type=open_unit,
        default=1e-6,
        help="tolerance of the forecast solves (default %(default)s)",
    )
    add_seed_and_threads(parser)
    add_run_arguments(parser)


def build_setting(args: argparse.Namespace) -> Setting:
    """The grids, the true equation and the hybrid model for ``args.equation``."""
    if args.equation == "burgers":
        n = args.grid or 64
        grid = Grid((n,), lengths=(2 * torch.pi,))
        fine = Grid((n * args.refine,), lengths=(2 * torch.pi,))
        truth = Burgers(fine, args.viscosity, spectral=True)
        known = Diffusion(grid, args.viscosity, order=4)
        learned = PointwiseMLP(grid, 1, args.hidden, 2, ("u", "gradient"), order=4)
        return Setting(grid, fine, truth, NeuralPDE(known, learned), 1, 1.0, 0.0)
    n = args.grid or 16
    grid = Grid((n, n), lengths=(2.0, 2.0), origin=(-1.0, -1.0))
    fine = Grid((n * args.refine,) * 2, lengths=(2.0, 2.0), origin=(-1.0, -1.0))
    truth = FitzHughNagumo(fine, spectral=True)
    reference = FitzHughNagumo(grid)
    known = Diffusion(grid, reference.diffusion.diffusivity, order=2)
    learned = PointwiseMLP(grid, 2, args.hidden, 2, ("u",))
    return Setting(grid, fine, truth, NeuralPDE(known, learned), 2, 0.5, 0.0)


def make_data(setting: Setting, batch: int, ts: torch.Tensor, seed: int) -> torch.Tensor:
    """Reference trajectories of ``batch`` random initial conditions, sampled on the model
    grid: (len(ts), batch, channels, *grid.shape)."""
    generator = torch.Generator().manual_seed(seed)
    _, on = random_fourier_field(
        setting.grid, batch, setting.channels, 3, setting.amplitude, setting.offset, generator
    )
    ys = reference_solve(setting.truth, on(setting.fine), ts)
    step = setting.fine.shape[0] // setting.grid.shape[0]
    index = (slice(None),) * 3 + (slice(None, None, step),) * setting.grid.ndim
    return ys[index].contiguous()


def windows(data: torch.Tensor, length: int, stride: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows from every ``stride``-th saved state up to T: starts (W, ...) and the
    next ``length`` true states (length, W, ...)."""
    steps = data.shape[0] - 1
    length = min(length, steps)
    first = range(0, steps - length + 1, stride)
    starts = [data[k] for k in first]
    targets = [data[k + 1 : k + 1 + length] for k in first]
    return torch.cat(starts), torch.cat(targets, 1)


class DiscreteBaseline(nn.Module):
    """u(t + dt) = u(t) + ConvNet(u(t)): the discrete-time baseline, rolled out step by step."""

    def __init__(self, grid: Grid, channels: int, hidden: int, kernel_size: int = 5):
        super().__init__()
        self.net = ConvNet(grid, channels, hidden, layers=2, kernel_size=kernel_size)

    def forward(self, u: torch.Tensor, steps: int) -> torch.Tensor:
        out = []
        for _ in range(steps):
            u = u + self.net(None, u)
            out.append(u)
        return torch.stack(out)


def matched_baseline(setting: Setting, target: int) -> DiscreteBaseline:
    """The baseline whose hidden width and kernel size (3 or 5) give the parameter count
    closest to ``target``."""
    best = None
    for kernel_size in (5, 3):
        for hidden in range(1, 128):
            model = DiscreteBaseline(setting.grid, setting.channels, hidden, kernel_size)
            gap = abs(count(model) - target)
            if best is None or gap < best[0]:
                best = (gap, model)
    return best[1]  # type: ignore[index]


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def rollout_model(
    model: nn.Module, u0: torch.Tensor, dt: float, length: int, substeps: int
) -> torch.Tensor:
    ts = torch.arange(length + 1, dtype=u0.dtype) * dt
    sol = solve(model, u0, ts, solver=RK4(), controller=FixedGrid(step_size=dt / substeps))
    return sol.ys[1:]


def train(
    name: str,
    predict: Any,
    module: nn.Module,
    starts: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
    run: Run | None = None,
) -> dict[str, Any]:
    """Adam with a cosine schedule on the MSE of the windows, on ``module``'s trainable
    parameters, as a job of ``run`` (checkpointed, resumable); returns the loss summary."""
    optimiser = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.iterations)
    objects = {"model": module, "optimizer": optimiser, "schedule": schedule}
    state: dict[str, Any] = {"losses": [], "train_time_s": 0.0}
    trainer = Trainer(f"train {name}", args.iterations, objects, None, state, run=run)
    if trainer.done:
        return trainer.result
    log_every = max(1, args.iterations // 50)
    for step in trainer:
        tick = time.perf_counter()
        optimiser.zero_grad()
        loss = torch.mean((predict(starts) - targets) ** 2)
        trainer.check_loss(loss)
        loss.backward()
        optimiser.step()
        schedule.step()
        state["losses"].append(float(loss.detach()))
        state["train_time_s"] += time.perf_counter() - tick
        trainer.show(loss=state["losses"][-1])
        if step == args.iterations or step % log_every == 0:
            trainer.log({"loss": state["losses"][-1]})
    losses = state["losses"]
    return trainer.finish(
        {"loss_first": losses[0], "loss_last": losses[-1], "train_time_s": state["train_time_s"]}
    )


def relative_l2(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """||prediction - truth|| / ||truth|| per initial condition (dims after the batch)."""
    diff = (prediction - truth).flatten(1).norm(dim=1)
    return diff / truth.flatten(1).norm(dim=1)


def timed_solve(
    model: nn.Module, u0: torch.Tensor, ts: torch.Tensor, solver: Any, rtol: float
) -> dict[str, Any]:
    """Solve without gradients; count the calls of ``model`` (NFE), the steps and time.

    An implicit solver's Jacobian-vector products (double backward through one evaluation
    per Jacobian) are not calls of ``model``: its ``counters`` (Jacobians, Newton
    iterations) come back with the result."""
    calls = [0]

    def counted(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return model(t, u)

    start = time.perf_counter()
    with torch.no_grad():
        sol = solve(
            counted, u0, ts, solver=solver, controller=PIController(rtol=rtol, atol=rtol * 1e-2)
        )
    seconds = time.perf_counter() - start
    return {
        "ys": sol.ys,
        "nfe": calls[0],
        "steps": sol.stats.n_accepted + sol.stats.n_rejected,
        "time_s": seconds,
        "counters": dict(getattr(solver, "counters", {})),
    }


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    burgers = args.equation == "burgers"
    defaults = {"horizon": 1.0, "dt": 0.05, "iterations": 800, "train_ics": 12}
    if not burgers:
        defaults = {"horizon": 2.0, "dt": 0.1, "iterations": 300, "train_ics": 6}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    horizon, dt = args.horizon, args.dt
    problem = _check(args, horizon, dt)
    if problem:
        print(f"neuralode experiment pde: error: {problem}", file=sys.stderr)
        return 2
    args.out = args.out or f"out/pde-{args.equation}"
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        return _run(args, run)


def _run(args: argparse.Namespace, run: Run) -> int:
    """Data, both trainings (jobs of ``run``), the forecasts, metrics.json and the plots."""
    horizon, dt = args.horizon, args.dt
    steps = round(horizon / dt)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    setting = build_setting(args)
    ts = torch.arange(2 * steps + 1, dtype=torch.float64) * dt
    print(f"pde {args.equation}: grid {setting.grid.shape}, T={horizon}, dt={dt} -> {out}/")
    start = time.perf_counter()
    train_data = make_data(setting, args.train_ics, ts[: steps + 1], 1000 + args.seed)
    test_data = make_data(setting, args.test_ics, ts, 2000 + args.seed)
    data_time = time.perf_counter() - start
    starts, targets = windows(train_data, args.window, args.window_stride)
    length = targets.shape[0]

    model = setting.model.double()
    learned_params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in learned_params)
    baseline = matched_baseline(setting, n_params).double()
    history = train(
        "hybrid PDE",
        lambda u: rollout_model(model, u, dt, length, args.substeps),
        model,
        starts,
        targets,
        args,
        run,
    )
    baseline_history = train(
        "baseline", lambda u: baseline(u, length), baseline, starts, targets, args, run
    )

    u0, truth = test_data[0], test_data
    explicit = timed_solve(model, u0, ts, Dopri5(), args.rtol)
    # GMRES preconditioned by the known diffusion, inverted exactly
    krylov = Radau(linear_solver="krylov", krylov_tol=1e-3, preconditioner=model.preconditioner())
    implicit = timed_solve(model, u0, ts, krylov, args.rtol)
    imex = timed_solve(model, u0, ts, KenCarp4(linear=model.linear_part()), args.rtol)
    prediction = explicit["ys"]
    with torch.no_grad():
        baseline_prediction = torch.cat([u0[None], baseline(u0, 2 * steps)])
    error_t = relative_l2(prediction[steps], truth[steps])
    error_2t = relative_l2(prediction[-1], truth[-1])
    base_t = relative_l2(baseline_prediction[steps], truth[steps])
    base_2t = relative_l2(baseline_prediction[-1], truth[-1])
    metrics = {
        "equation": args.equation,
        "grid": list(setting.grid.shape),
        "horizon": horizon,
        "dt": dt,
        "forecast_rel_l2": float(error_t.mean()),
        "forecast_rel_l2_2x": float(error_2t.mean()),
        "forecast_rel_l2_per_ic": error_t.tolist(),
        "forecast_rel_l2_2x_per_ic": error_2t.tolist(),
        "baseline_forecast_rel_l2": float(base_t.mean()),
        "baseline_forecast_rel_l2_2x": float(base_2t.mean()),
        "parameters": n_params,
        "baseline_parameters": count(baseline),
        "train": history,
        "baseline_train": baseline_history,
        "solvers": {
            name: {
                "nfe": r["nfe"],
                "steps": r["steps"],
                "time_s": r["time_s"],
                "newton": r["counters"],
                "forecast_rel_l2_2x": float(relative_l2(r["ys"][-1], truth[-1]).mean()),
            }
            for name, r in (
                ("dopri5", explicit),
                ("radau_krylov", implicit),
                ("kencarp4_imex", imex),
            )
        },
        "rtol": args.rtol,
        "data_time_s": data_time,
        "config": {k: v for k, v in vars(args).items() if k != "run"},
        "torch_threads": torch.get_num_threads(),
        "machine": machine(),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    torch.save({"model": model.state_dict(), "baseline": baseline.state_dict()}, out / "model.pt")
    _plot(setting, ts, truth, prediction, baseline_prediction, horizon, out)
    print(
        f"forecast relative L2 on {args.test_ics} held-out ICs: at T "
        f"{metrics['forecast_rel_l2']:.4f}, at 2T {metrics['forecast_rel_l2_2x']:.4f}; baseline "
        f"({metrics['baseline_parameters']} vs {n_params} parameters) "
        f"{metrics['baseline_forecast_rel_l2']:.4f} / {metrics['baseline_forecast_rel_l2_2x']:.4f}"
    )
    for name, r in metrics["solvers"].items():
        print(f"  {name}: NFE {r['nfe']}, {r['steps']} steps, {r['time_s']:.2f} s")
    print(f"wrote {out}/metrics.json, model.pt and PNGs")
    return 0


def _check(args: argparse.Namespace, horizon: float, dt: float) -> str | None:
    """The first problem with the arguments, as a message naming the fix, or None."""
    positive = ("train_ics", "test_ics", "window", "window_stride", "substeps", "iterations")
    positive += ("hidden", "refine")
    for name in positive:
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
    if args.grid is not None and args.grid < 5:
        return f"--grid must be at least 5 nodes per axis, got {args.grid}"
    if not (dt > 0 and horizon > 0):
        return f"--horizon and --dt must be positive, got {horizon} and {dt}"
    steps = round(horizon / dt)
    if steps < 1 or abs(steps * dt - horizon) > 1e-9 * horizon:
        return f"--horizon must be a multiple of --dt, got {horizon} and {dt}"
    if args.window > steps:
        return (
            f"--window ({args.window}) is longer than the {steps} saved steps of the training "
            f"horizon (--horizon {horizon:g} / --dt {dt:g}); give --window {steps} or less"
        )
    if not 0 < args.rtol < 1:
        return f"--rtol must be in (0, 1), got {args.rtol}"
    return None


def _plot(
    setting: Setting,
    ts: torch.Tensor,
    truth: torch.Tensor,
    prediction: torch.Tensor,
    baseline: torch.Tensor,
    horizon: float,
    out: Path,
) -> None:
    from ..viz.plots import figure

    fields = {
        "truth": truth[:, 0, 0],
        "prediction": prediction[:, 0, 0],
        "error": prediction[:, 0, 0] - truth[:, 0, 0],
        "baseline error": baseline[:, 0, 0] - truth[:, 0, 0],
    }
    if setting.grid.ndim == 1:
        x = setting.grid.axis_points(0)
        fig = figure(figsize=(16, 3.6))
        axes = fig.subplots(1, 4, sharey=True)
        extent = (float(x[0]), float(x[-1]), float(ts[0]), float(ts[-1]))
        for ax, (name, field) in zip(axes, fields.items()):
            limit = float(field.abs().max())  # symmetric colours: white is zero
            image = ax.imshow(
                field.numpy(),
                aspect="auto",
                origin="lower",
                extent=extent,
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit,
            )
            ax.axhline(horizon, color="k", lw=0.8, ls="--")
            ax.set_title(name)
            ax.set_xlabel("x")
            fig.colorbar(image, ax=ax)
        axes[0].set_ylabel("t (dashed: training horizon)")
        fig.tight_layout()
        fig.savefig(out / "spacetime.png", dpi=100)
        return
    steps = (len(ts) - 1) // 2
    fig = figure(figsize=(16, 7))
    axes = fig.subplots(2, 4)
    for row, k in enumerate((steps, len(ts) - 1)):
        for ax, (name, field) in zip(axes[row], fields.items()):
            limit = float(field[k].abs().max())
            image = ax.imshow(
                field[k].numpy().T, origin="lower", cmap="RdBu_r", vmin=-limit, vmax=limit
            )
            ax.set_title(f"u {name}, t={float(ts[k]):g}")
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out / "fields.png", dpi=100)
