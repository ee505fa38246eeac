"""Density matching (Neural ODE paper, Fig. 4): CNF vs planar flow fit to U1-U4 by KL(q||p).

The targets are Rezende & Mohamed's unnormalised 2-D energies p(x) ~ exp(-U(x)). Each flow
draws x ~ q with log q(x) in one pass and minimises E_q[log q(x) + U(x)] = KL(q||p) - log Z;
log Z is computed by quadrature so the table reports the KL itself. K planar layers (5K
parameters) meet a CNF with M = K gated planar units (7M parameters).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch

from .._cli_types import open_unit, positive_float, positive_int, widths
from ..models.cnf import CNF, FlowDensity, GatedPlanarDynamics
from ..models.planar import PlanarFlow
from ..training.trainer import (
    Run,
    Trainer,
    add_run_arguments,
    add_seed_and_threads,
    fill_defaults,
    open_experiment,
    quick_help,
)
from ..viz.plots import require_matplotlib

EXTENT = (-4.0, 4.0, -4.0, 4.0)


def _w1(z: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _u1(z: torch.Tensor) -> torch.Tensor:
    radius = z.norm(dim=1)
    modes = torch.stack(
        [-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2], 1
    ).logsumexp(1)
    return 0.5 * ((radius - 2) / 0.4) ** 2 - modes


def _u2(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def _u3(z: torch.Tensor) -> torch.Tensor:
    w2 = 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.35) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + w2) / 0.35) ** 2
    return -torch.stack([a, b], 1).logsumexp(1)


def _u4(z: torch.Tensor) -> torch.Tensor:
    w3 = 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)
    a = -0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2
    b = -0.5 * ((z[:, 1] - _w1(z) + w3) / 0.35) ** 2
    return -torch.stack([a, b], 1).logsumexp(1)


ENERGIES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "U1": _u1,
    "U2": _u2,
    "U3": _u3,
    "U4": _u4,
}


def _grid(points: int, lim: float = 4.0, dtype: torch.dtype = torch.float64):
    axis = torch.linspace(-lim, lim, points, dtype=dtype)
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], 1), float(axis[1] - axis[0])


def log_normaliser(energy: Callable[[torch.Tensor], torch.Tensor], points: int = 801) -> float:
    """log int exp(-U) over [-4, 4]^2 (U2-U4 are not integrable in x1 over the plane: like
    Rezende & Mohamed, the targets live on this box), by the rectangle rule."""
    grid, h = _grid(points)
    return float(torch.logsumexp(-energy(grid), 0) + 2 * math.log(h))


# The defaults of the options that --quick shrinks: (full run, --quick); an option given
# explicitly keeps its value.
DEFAULTS = {
    "targets": ("U1,U2,U3,U4", "U1"),
    "sizes": ("1,8,32", "1,2"),
    "iters": (400, 3),
    "batch": (256, 32),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="out/density-matching", help="output directory (default %(default)s)"
    )
    parser.add_argument(
        "--targets",
        default=None,
        help=quick_help("comma-separated energies", DEFAULTS["targets"]),
    )
    parser.add_argument(
        "--sizes",
        type=widths,
        default=None,
        help=quick_help("K planar layers = M CNF units, comma-separated", DEFAULTS["sizes"]),
    )
    parser.add_argument(
        "--iters",
        type=positive_int,
        default=None,
        help=quick_help("Adam steps per model", DEFAULTS["iters"]),
    )
    parser.add_argument(
        "--batch",
        type=positive_int,
        default=None,
        help=quick_help("samples per step", DEFAULTS["batch"]),
    )
    parser.add_argument(
        "--lr",
        type=positive_float,
        default=1e-2,
        help="Adam learning rate, cosine (default %(default)s)",
    )
    parser.add_argument(
        "--T", type=positive_float, default=1.0, help="CNF integration time (default %(default)s)"
    )
    parser.add_argument(
        "--tol",
        type=open_unit,
        default=1e-3,
        help="CNF training rtol = atol (default %(default)s)",
    )
    add_seed_and_threads(parser)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: the small defaults marked 'with --quick' (options given are kept)",
    )
    add_run_arguments(parser)


def make_model(kind: str, size: int, args: argparse.Namespace) -> FlowDensity:
    if kind == "planar":
        return PlanarFlow(2, size)
    return CNF(
        GatedPlanarDynamics(2, size),
        T=args.T,
        rtol=args.tol,
        atol=args.tol,
        event_shape=(2,),
    )


def fit(
    model: FlowDensity,
    energy: Callable,
    args: argparse.Namespace,
    run: Run | None = None,
    name: str = "fit",
) -> Trainer:
    """Minimise E_q[log q + U] by Adam for ``--iters`` steps; returns the job's trainer
    (``state["time_s"]``: the training time; with a ``run`` it is checkpointed and a finished
    job's ``result`` comes back on --resume)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(args.iters, 1))
    objects = {"model": model, "optimizer": optimizer, "schedule": schedule}
    trainer = Trainer(name, args.iters, objects, state={"time_s": 0.0}, run=run)
    log_every = max(1, args.iters // 20)
    for step in trainer:
        tick = time.perf_counter()
        x, log_q = model.sample_with_log_prob(args.batch)
        loss = (log_q + energy(x)).mean()
        optimizer.zero_grad()
        trainer.check_loss(loss)
        loss.backward()
        optimizer.step()
        schedule.step()
        trainer.state["time_s"] += time.perf_counter() - tick
        trainer.show(loss=loss.item())
        if step % log_every == 0 or step == args.iters:
            trainer.log({"loss": loss.item(), "time_s": trainer.state["time_s"]})
    return trainer


def kl_estimate(model: FlowDensity, energy: Callable, log_z: float, n: int) -> tuple[float, float]:
    """KL(q||p) = E_q[log q + U] + log Z by Monte Carlo, with its standard error."""
    if isinstance(model, CNF):
        model.rtol = model.atol = 1e-6
    with torch.no_grad():
        x, log_q = model.sample_with_log_prob(n, generator=torch.Generator().manual_seed(99))
        terms = (log_q + energy(x)).double() + log_z
    return float(terms.mean()), float(terms.std() / math.sqrt(n))


def model_density(model: FlowDensity, points: int) -> torch.Tensor:
    """q on the plotting grid: log_prob of grid points (CNF: reverse solve; planar: bisection)."""
    grid, _ = _grid(points, dtype=torch.float32)
    with torch.no_grad():
        return model.log_prob(grid).exp().reshape(points, points)


def run(args: argparse.Namespace) -> int:
    fill_defaults(args, DEFAULTS)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    targets = [t.strip() for t in args.targets.split(",")]
    unknown = [t for t in targets if t not in ENERGIES]
    if unknown:
        raise ValueError(f"unknown targets {unknown}; available: {', '.join(ENERGIES)}")
    sizes = [int(s) for s in args.sizes.split(",")]
    require_matplotlib()  # the plots come last: fail before the work
    with open_experiment(args) as run:
        n_eval = 200 if args.quick else 5000
        points = 40 if args.quick else 100
        rows, panels, labels = [], [], []
        for target in targets:
            energy = ENERGIES[target]
            log_z = log_normaliser(energy)
            grid, _ = _grid(points)
            row = [
                {
                    "title": f"{target} target",
                    "density": (-energy(grid) - log_z).exp().reshape(points, points),
                    "extent": EXTENT,
                }
            ]
            for kind in ("planar", "cnf"):
                for size in sizes:
                    torch.manual_seed(args.seed)
                    model = make_model(kind, size, args)
                    n_params = sum(p.numel() for p in model.parameters())
                    name = f"{'planar K' if kind == 'planar' else 'CNF M'}={size}"
                    trainer = fit(model, energy, args, run, f"{target} {name}")
                    if trainer.done:  # finished before an interruption: its result, not a rerun
                        result, density = trainer.result["row"], trainer.result["density"]
                    else:
                        kl, stderr = kl_estimate(model, energy, log_z, n_eval)
                        result = {"target": target, "model": kind, "size": size,
                                  "parameters": n_params, "kl": kl, "kl_stderr": stderr,
                                  "train_time_s": trainer.state["time_s"]}  # fmt: skip
                        density = model_density(model, points)
                        trainer.finish({"row": result, "density": density})
                    rows.append(result)
                    kl, stderr, seconds = result["kl"], result["kl_stderr"], result["train_time_s"]
                    print(f"{target} {name:12s} params {n_params:4d}  KL {kl:.4f} +- {stderr:.4f}"
                          f"  ({seconds:.1f}s)")  # fmt: skip
                    row.append(
                        {"title": f"{name}: KL {kl:.2f}", "density": density, "extent": EXTENT}
                    )
            panels.append(row)
            labels.append(target)
        (out / "results.json").write_text(json.dumps(rows, indent=2))
        table = format_table(rows, sizes, args)
        (out / "table.md").write_text(table)
        from ..viz.flows import save_density_grid

        save_density_grid(out / "densities.png", panels, labels)
    print()
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'}, {out / 'densities.png'}")
    return 0


def format_table(rows: list[dict], sizes: list[int], args: argparse.Namespace) -> str:
    head = ["target"] + [f"planar K={s}" for s in sizes] + [f"CNF M={s}" for s in sizes]
    lines = [
        f"KL(q||p) in nats (Monte Carlo, +- standard error), {args.iters} Adam steps of "
        f"{args.batch} samples; parameters in brackets.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for target in dict.fromkeys(r["target"] for r in rows):
        cells = [target]
        for kind in ("planar", "cnf"):
            for size in sizes:
                r = next(
                    r for r in rows if (r["target"], r["model"], r["size"]) == (target, kind, size)
                )
                cells.append(f"{r['kl']:.3f} +- {r['kl_stderr']:.3f} ({r['parameters']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
