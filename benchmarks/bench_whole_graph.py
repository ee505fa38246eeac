"""compile=True's graph against the engine issue's 60-line while_loop prototype, and diffrax.

``bench_engine.py``'s MLP (2-64-64-2 tanh, float32, seed 0), t in [0, 1], dopri5 rtol 1e-6
atol 1e-8, under ``torch.no_grad()``, one thread. Each child process times, per batch,
``no.solve(..., compile=True)`` and the prototype (``prototype`` below: integral control,
first step 0.1, end point only, compiled with ``fullgraph=True`` and inductor's C++ wrapper,
as in the issue) alternately, the minimum of ``--repeats`` calls after two warm-ups. The
children: ``fused`` (neuralode's whole-solve backend: fused float32 tanh and small matrix
products) and ``plain`` (the same graph through plain inductor with its C++ wrapper); with
``--diffrax PYTHON`` diffrax runs the same problems in its own process afterwards
(``bench_engine_diffrax.py``). ``--child fused`` or ``--child plain`` runs one child and
prints, per batch and solver, [best ms, steps, first call s] as JSON. ``--tanh``: a
(batch, 64) float32 tanh compiled by plain inductor, by the whole-solve backend and with
inductor's decomposed tanh, and each one's largest error in ulp over every 61st float32 in
[-20, 20]. ``--products``: the prototype compiled by the whole-solve backend with and
without its fused small matrix products, alternately in one process, at batches 1, 4, 16 and 64.

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_whole_graph.py
--diffrax /work/venv-jax/bin/python``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from torch._higher_order_ops import while_loop

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from bench_engine import ATOL, RTOL, dump, mlp  # noqa: E402

from neuralode._cli_types import positive_int, widths  # noqa: E402

BATCHES = (1, 16, 256, 1024)
# dopri5's tableau, for the prototype
A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
     [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
     [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
     [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]  # fmt: skip
C = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
B = [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0]
E = [35 / 384 - 1951 / 21600, 0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
     -2187 / 6784 + 12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60]  # fmt: skip


def prototype(f):
    """The issue's measurement prototype: a whole dopri5 solve to t1 as one while_loop."""

    def solve(y0, t1, dt0):
        def cond(t, dt, y, k1, n, nacc):
            return t < t1

        def body(t, dt, y, k1, n, nacc):
            dt = torch.minimum(dt, t1 - t)
            ks = [k1]
            for i in range(1, 7):
                yi = y
                for j, a in enumerate(A[i]):
                    if a != 0:
                        yi = yi + (dt * a) * ks[j]
                ks.append(f(t + C[i] * dt, yi))
            ynew = y
            for j, b in enumerate(B):
                if b != 0:
                    ynew = ynew + (dt * b) * ks[j]
            err = 0
            for j, e in enumerate(E):
                err = err + (dt * e) * ks[j]
            scale = ATOL + RTOL * torch.maximum(y.abs(), ynew.abs())
            r = torch.sqrt(torch.mean((err / scale) ** 2))
            acc = r <= 1
            fac = torch.clamp(0.9 * r.clamp_min(1e-10) ** -0.2, 0.2, 10.0)
            return (
                torch.where(acc, t + dt, t), dt * fac, torch.where(acc, ynew, y),
                torch.where(acc, ks[6], k1), n + 1, nacc + acc.to(n.dtype),
            )  # fmt: skip

        t0 = torch.zeros((), dtype=y0.dtype)
        n = torch.zeros((), dtype=torch.int64)
        return while_loop(cond, body, (t0, dt0.clone(), y0, f(t0, y0), n, n.clone()))

    return solve


def child(mode: str, repeats: int, batches: list[int]) -> None:
    import neuralode as no
    import neuralode._whole_plan as whole_plan

    torch.set_num_threads(1)
    if mode == "plain":  # the same graph through plain inductor with its C++ wrapper
        from torch._inductor.compile_fx import compile_fx

        whole_plan.whole_solve_backend = lambda gm, inputs: compile_fx(
            gm, inputs, config_patches={"cpp_wrapper": True}
        )
    controller = no.PIController(rtol=RTOL, atol=ATOL)
    out = {}
    for batch in batches:
        f, y0, ts = mlp(batch)
        proto = torch.compile(prototype(f), fullgraph=True, options={"cpp_wrapper": True})
        t1, dt0 = torch.tensor(1.0), torch.tensor(0.1)
        with torch.no_grad():
            runs = {
                "ours": lambda f=f, y0=y0, ts=ts: no.solve(
                    f, y0, ts, controller=controller, compile=True
                ),
                "prototype": lambda proto=proto, y0=y0, t1=t1, dt0=dt0: proto(y0, t1, dt0),
            }
            first = {}
            for name, run in runs.items():
                start = time.perf_counter()
                result = run()
                first[name] = time.perf_counter() - start
                run()
            steps = {"ours": result_steps(runs["ours"]()), "prototype": int(result[4])}
            best = dict.fromkeys(runs, float("inf"))
            for _ in range(repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    best[name] = min(best[name], time.perf_counter() - start)
        out[batch] = {n: (1e3 * best[n], steps[n], first[n]) for n in runs}
    print(json.dumps(out))


def result_steps(sol) -> int:
    return int(sol.stats.n_steps)


def tanh_table(batches: list[int]) -> None:
    import numpy as np
    import torch._inductor.config as inductor_config
    from torch._inductor.compile_fx import compile_fx

    from neuralode._whole_backend import whole_solve_backend

    torch.set_num_threads(1)

    def plain(gm, inputs):
        return compile_fx(gm, inputs, config_patches={"cpp_wrapper": True})

    def tanh(x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)

    def copy():  # one code object per backend: torch.compile caches per code object
        return types.FunctionType(tanh.__code__.replace(), globals(), "tanh")

    fns = {
        "eager": torch.tanh,
        "plain inductor": torch.compile(copy(), backend=plain, dynamic=False),
        "whole-solve backend": torch.compile(copy(), backend=whole_solve_backend, dynamic=False),
    }
    bits = np.arange(0, 0x41A00000, 61, dtype=np.uint32)
    grid = torch.from_numpy(bits.view(np.float32).copy())
    grid = torch.cat([grid, -grid])
    exact = torch.tanh(grid.double())
    spacing = torch.from_numpy(np.spacing(exact.abs().float().numpy()).astype(np.float64))
    with inductor_config.patch({"cpp.use_decompose_tanh": True}):
        decomposed = torch.compile(copy(), backend=plain, dynamic=False)
        for n in (*batches, grid.shape[0]):  # compiled here, where the setting holds
            decomposed(grid[: n * 64].reshape(-1, 64) if n != grid.shape[0] else grid)
    fns["inductor decomposed"] = decomposed

    def error(y: torch.Tensor) -> str:
        ulps = (y.reshape(-1).double() - exact).abs() / spacing.clamp_min(2.0**-149)
        return f"{float(ulps.max()):.2f}"

    errors = {name: error(fn(grid)) for name, fn in fns.items()}
    print("| (batch, 64) float32 tanh | " + " | ".join(f"{n} (us)" for n in fns) + " |")
    print("|---:|" + "---:|" * len(fns))
    for batch in batches:
        x = 3 * torch.randn(batch, 64, generator=torch.Generator().manual_seed(0))
        for fn in fns.values():
            fn(x)
            fn(x)
        best = dict.fromkeys(fns, float("inf"))
        for _ in range(200 if batch < 256 else 50):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn(x)
                best[name] = min(best[name], time.perf_counter() - start)
        print(f"| {batch} | " + " | ".join(f"{1e6 * best[n]:.1f}" for n in fns) + " |")
    print("| max error (ulp) | " + " | ".join(errors[n] for n in fns) + " |")


def products_table(repeats: int) -> None:
    import neuralode._whole_backend as backend

    torch.set_num_threads(1)
    print("| MLP batch | prototype, fused products (ms) | prototype, ATen's addmm (ms) |")
    print("|---:|---:|---:|")
    for batch in (1, 4, 16, 64):
        f, y0, _ = mlp(batch)
        t1, dt0 = torch.tensor(1.0), torch.tensor(0.1)
        runs = {}
        for rows in (backend.SMALL_ROWS, 0):  # compiled at the first call: rows read then
            solve = prototype(f)
            copy = types.FunctionType(solve.__code__.replace(), solve.__globals__, "solve",
                                      None, solve.__closure__)  # fmt: skip
            run = torch.compile(copy, fullgraph=True, backend=backend.whole_solve_backend)
            default, backend.SMALL_ROWS = backend.SMALL_ROWS, rows
            try:
                with torch.no_grad():
                    run(y0, t1, dt0)
            finally:
                backend.SMALL_ROWS = default
            runs[rows] = run
        best = dict.fromkeys(runs, float("inf"))
        with torch.no_grad():
            for _ in range(repeats):
                for rows, run in runs.items():
                    start = time.perf_counter()
                    run(y0, t1, dt0)
                    best[rows] = min(best[rows], time.perf_counter() - start)
        fused, aten = (1e3 * best[r] for r in runs)
        print(f"| {batch} | {fused:.3f} | {aten:.3f} |", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=positive_int, default=21)
    parser.add_argument(
        "--batches",
        type=widths,
        default=",".join(map(str, BATCHES)),
        help="comma-separated batch sizes",
    )
    parser.add_argument("--diffrax", default="", help="a Python with jax and diffrax")
    parser.add_argument("--tanh", action="store_true", help="the tanh table only")
    parser.add_argument("--products", action="store_true", help="the products table only")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.diffrax:  # (a named interpreter that cannot run fails here, at once)
        from neuralode.bench.diffrax_peer import check_python

        try:
            check_python(args.diffrax, "--diffrax")
        except ValueError as error:
            parser.error(str(error))
    batches = [int(b) for b in args.batches.split(",")]
    if args.tanh:
        return tanh_table(batches)
    if args.products:
        return products_table(2 * args.repeats)
    if args.child:
        return child(args.child, args.repeats, batches)
    results = {}
    for mode in ("fused", "plain"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode, "--repeats", str(args.repeats),
             "--batches", args.batches],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        results[mode] = {int(k): v for k, v in json.loads(out.splitlines()[-1]).items()}
    diffrax = {}
    if args.diffrax:
        with tempfile.TemporaryDirectory() as directory:
            dump(directory, batches)
            env = {**os.environ, "BATCHES": args.batches, "MLP_ONLY": "1"}
            out = subprocess.run(
                [args.diffrax, str(HERE / "bench_engine_diffrax.py"), directory],
                env=env, capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
        for line in out.splitlines()[1:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0].startswith("MLP batch ") and cells[0][10:].isdigit():
                diffrax[int(cells[0][10:])] = (float(cells[1]), cells[4])
    head = "| MLP batch | compile=True (ms) | steps | same graph, plain inductor (ms) | "
    head += "prototype (ms) | steps | compile=True / prototype |"
    if diffrax:
        head += " diffrax (ms) | steps | compile=True / diffrax | plain / diffrax |"
    print(head)
    print("|---:" * (head.count("|") - 1) + "|")
    for batch in batches:
        (ours, steps, _), (proto, proto_steps, _) = (results["fused"][batch][k] for k in
                                                      ("ours", "prototype"))  # fmt: skip
        plain = results["plain"][batch]["ours"][0]
        proto = min(proto, results["plain"][batch]["prototype"][0])
        row = f"| {batch} | {ours:.3f} | {steps} | {plain:.3f} | {proto:.3f} | {proto_steps} | "
        row += f"{ours / proto:.2f}x |"
        if batch in diffrax:
            theirs, their_steps = diffrax[batch]
            row += f" {theirs:.3f} | {their_steps} | {ours / theirs:.2f}x | {plain / theirs:.2f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
