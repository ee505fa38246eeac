"""RNODE regularisation on a CNF: NFE and training time with and without it (markdown table).

FFJORD's 8gaussians model (one CNF block, concat-squash MLP 2 -> 64 -> 64 -> 64 -> 2, tanh,
exact trace, learnable T from 0.5) is trained by maximum likelihood with dopri5 at
rtol = atol = ``--tol`` (direct backpropagation through the solver), once without and once
with RNODE's kinetic-energy and Jacobian-Frobenius penalties (Finlay et al. 2020), from the
same initialisation and data. Reported: mean forward NFE per step over the run and over its
last quarter, wall time, and the held-out NLL (dopri5 at 1e-6, 5,000 test points).
Usage: PYTHONPATH=src python benchmarks/bench_cnf_rnode.py [--iters 200] [--weight 0.05]
"""

from __future__ import annotations

import argparse
import time

import torch

from neuralode.data.toy2d import sample_toy
from neuralode.experiments import toy2d


def run_case(args: argparse.Namespace, weight: float) -> dict:
    parser = argparse.ArgumentParser()
    toy2d.add_arguments(parser)
    config = parser.parse_args(
        ["--method", "dopri5", "--iters", str(args.iters), "--batch", str(args.batch),
         "--tol", str(args.tol),
         "--kinetic", str(weight), "--jacobian", str(weight), "--lr", str(args.lr)]
        + (["--fixed-T", "--T", str(args.fixed_T)] if args.fixed_T else [])
    )  # fmt: skip
    torch.manual_seed(0)
    model = toy2d.build_model(config)
    nfes = []

    def log(line: str) -> None:
        print(f"  [weight {weight}] {line}", flush=True)

    start = time.perf_counter()
    history = toy2d.train(model, config, log=log, nfe_trace=nfes)
    seconds = time.perf_counter() - start
    toy2d.set_tolerance(model, 1e-6)
    test = torch.from_numpy(sample_toy("8gaussians", 5000, 10_000))
    nll = float(-toy2d.evaluate(model, test).double().mean())
    tail = nfes[len(nfes) * 3 // 4 :]
    return {
        "weight": weight,
        "nfe": history["nfe_forward_per_step"],
        "nfe_last": sum(tail) / max(len(tail), 1),
        "time": seconds,
        "nll": nll,
        "eval_nfe": model.nfe_forward,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight", type=float, default=0.05, help="lambda_K = lambda_J")
    parser.add_argument("--fixed-T", type=float, default=None, help="fix T (RNODE: 1.0)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [run_case(args, 0.0), run_case(args, args.weight)]
    print(
        f"\n8gaussians, {args.iters} Adam steps of {args.batch}, dopri5 rtol=atol={args.tol}, "
        f"T {'learned' if args.fixed_T is None else args.fixed_T}, torch threads 1\n"
    )
    print("| RNODE weight (kinetic = Jacobian) | NFE/step (mean) | NFE/step (last quarter) "
          "| train time (s) | held-out NLL | eval NFE (tol 1e-6) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['weight']} | {r['nfe']:.1f} | {r['nfe_last']:.1f} | {r['time']:.0f} "
              f"| {r['nll']:.3f} | {r['eval_nfe']} |")  # fmt: skip
    base, reg = rows
    print(f"\nNFE reduction {base['nfe'] / reg['nfe']:.2f}x, "
          f"training-time reduction {base['time'] / reg['time']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
