"""RNODE regularisation on a CNF: NFE and training time with and without it (markdown table).

FFJORD's 8gaussians model (one CNF block, concat-squash MLP 2 -> 64 -> 64 -> 64 -> 2, tanh,
exact trace, learnable T from 0.5) is trained by maximum likelihood with dopri5 at
rtol = atol = ``--tol`` (direct backpropagation through the solver), once without and once
with RNODE's kinetic-energy and Jacobian-Frobenius penalties (Finlay et al. 2020), from the
same initialisation and data. Reported: mean forward NFE per step over the run and over its
last quarter, CPU and wall time, and the held-out NLL (dopri5 at 1e-6, 5,000 test points).
The step-size controller measures z and log p only (``CNF.error_norm``); ``--all-channels``
adds a regularised run whose controller also measures the two penalty channels, as the CNF
did before, to show what that costs.
Usage: PYTHONPATH=src python benchmarks/bench_cnf_rnode.py [--iters 200] [--weight 0.01]
"""

from __future__ import annotations

import argparse
import time

import torch

from neuralode._cli_types import non_negative_float, positive_float, positive_int
from neuralode.data.toy2d import sample_toy
from neuralode.experiments import toy2d
from neuralode.training.trainer import fill_defaults


def run_case(args: argparse.Namespace, weight: float, all_channels: bool = False) -> dict:
    parser = argparse.ArgumentParser()
    toy2d.add_arguments(parser)
    config = parser.parse_args(
        ["--method", "dopri5", "--iters", str(args.iters), "--batch", str(args.batch),
         "--tol", str(args.tol),
         "--kinetic", str(weight), "--jacobian", str(weight), "--lr", str(args.lr)]
        + (["--fixed-T", "--T", str(args.fixed_T)] if args.fixed_T else [])
    )  # fmt: skip
    fill_defaults(config, toy2d.DEFAULTS)
    torch.manual_seed(0)
    model = toy2d.build_model(config)
    nfes = []

    def log(line: str) -> None:
        print(f"  [weight {weight}] {line}", flush=True)

    if all_channels:  # the default mixed norm: every channel of the state is measured
        for block in model.blocks:
            block.error_norm = lambda y: None
    start, cpu_start = time.perf_counter(), time.process_time()
    history = toy2d.train(model, config, log=log, nfe_trace=nfes)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    for block in model.blocks:
        block.__dict__.pop("error_norm", None)
    toy2d.set_tolerance(model, 1e-6)
    test = torch.from_numpy(sample_toy("8gaussians", 5000, 10_000))
    nll = float(-toy2d.evaluate(model, test).double().mean())
    tail = nfes[len(nfes) * 3 // 4 :]
    return {
        "weight": weight,
        "norm": "z, log p, penalties" if all_channels else "z, log p",
        "cpu": cpu_seconds,
        "nfe": history["nfe_forward_per_step"],
        "nfe_last": sum(tail) / max(len(tail), 1),
        "time": seconds,
        "nll": nll,
        "eval_nfe": model.nfe_forward,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=positive_int, default=200)
    parser.add_argument("--batch", type=positive_int, default=256)
    parser.add_argument("--tol", type=positive_float, default=1e-5)
    parser.add_argument("--lr", type=positive_float, default=3e-3)
    parser.add_argument(
        "--weight", type=non_negative_float, default=0.01, help="lambda_K = lambda_J"
    )
    parser.add_argument(
        "--all-channels", action="store_true",
        help="add a regularised run whose error norm also measures the penalty channels",
    )  # fmt: skip
    parser.add_argument("--fixed-T", type=positive_float, default=None, help="fix T (RNODE: 1.0)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [run_case(args, 0.0), run_case(args, args.weight)]
    if args.all_channels:
        rows.append(run_case(args, args.weight, all_channels=True))
    print(
        f"\n8gaussians, {args.iters} Adam steps of {args.batch}, dopri5 rtol=atol={args.tol}, "
        f"T {'learned' if args.fixed_T is None else args.fixed_T}, torch threads 1\n"
    )
    print("| RNODE weight (kinetic = Jacobian) | error norm over | NFE/step (mean) "
          "| NFE/step (last quarter) | train CPU (s) | train wall (s) | held-out NLL "
          "| eval NFE (tol 1e-6) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['weight']} | {r['norm']} | {r['nfe']:.1f} | {r['nfe_last']:.1f} "
            f"| {r['cpu']:.0f} | {r['time']:.0f} | {r['nll']:.3f} | {r['eval_nfe']} |"
        )
    base, reg = rows[:2]
    print(f"\nNFE reduction {base['nfe'] / reg['nfe']:.2f}x, "
          f"training CPU-time reduction {base['cpu'] / reg['cpu']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
