"""One (rows, 64) x (64, 64) linear layer with bias (and tanh) inside the whole-solve backend:
``neuralode::linear``'s kernel against ATen's ``mm`` with inductor's loop after it.

A chain of 20 layers ``h = act(h @ W.t() + b)`` (``act`` none or tanh) compiled with the
backend twice in one process, once with the kernel and once with it switched off (the
products then go to ATen's ``mm``, the bias and the tanh to inductor's loop), timed
alternately: per layer, the minimum over ``--rounds`` rounds of one chain call (us), one
thread. With ``--jax PYTHON`` the same chain runs in XLA (jitted ``fori_loop`` of
``jnp.tanh(h @ W + b)``, single-threaded, in its own process; its loop's own cost is left
in, about 3 us per layer at 1024 rows).

Run: ``flock /tmp/neuralode-timing.lock taskset -c 1 env OMP_NUM_THREADS=1 python
benchmarks/bench_linear.py [--rows 256,1024] [--jax /path/to/python-with-jax]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time

from neuralode._cli_types import positive_int, widths

LAYERS = 20

JAX_SCRIPT = """
import json, sys, time
LAYERS = int(sys.argv[3])
import jax, jax.numpy as jnp, numpy as np
out = {}
for rows in json.loads(sys.argv[1]):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.standard_normal((rows, 64), dtype=np.float32))
    w = jnp.asarray(rng.standard_normal((64, 64), dtype=np.float32) * 0.1)
    b = jnp.asarray(rng.standard_normal(64, dtype=np.float32))
    for name, layer in (("none", lambda h: h @ w + b), ("tanh", lambda h: jnp.tanh(h @ w + b))):
        run = jax.jit(lambda h, layer=layer: jax.lax.fori_loop(0, LAYERS, lambda i, h: layer(h), h))
        run(h).block_until_ready()
        best = float("inf")
        for _ in range(int(sys.argv[2])):
            start = time.perf_counter()
            run(h).block_until_ready()
            best = min(best, time.perf_counter() - start)
        out[f"{rows}/{name}"] = best / LAYERS * 1e6
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=widths, default="256,1024", help="comma-separated rows")
    parser.add_argument("--rounds", type=positive_int, default=15)
    parser.add_argument("--jax", default=None, help="a Python with jax, for XLA's column")
    args = parser.parse_args(argv)
    if args.jax:  # (a named interpreter that cannot run fails here, at once)
        from neuralode.bench.diffrax_peer import check_python

        try:
            check_python(args.jax, "--jax", ("jax",))
        except ValueError as error:
            parser.error(str(error))
    rows_list = [int(r) for r in args.rows.split(",")]
    # (the two variants have the same cache keys: compile both)
    os.environ["TORCHINDUCTOR_FORCE_DISABLE_CACHES"] = "1"

    import torch

    from neuralode import _whole_backend, _whole_linear

    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight, bias = torch.randn(64, 64) * 0.1, torch.randn(64)
    activations = {"none": lambda h: h, "tanh": torch.tanh}
    width = _whole_linear.vector_width
    results: dict[str, dict[str, float]] = {}
    for rows in rows_list:
        h = torch.randn(rows, 64)
        for name, act in activations.items():

            def chain(h, act=act):
                for _ in range(LAYERS):
                    h = act(torch.nn.functional.linear(h, weight, bias))
                return h

            variants = {}
            for variant, vector_width in (("kernel", width), ("aten", lambda: 0)):
                _whole_linear.vector_width = vector_width  # (read when the graph is lowered)

                def backend(gm, inputs):  # (one per variant: dynamo keeps a graph per backend)
                    return _whole_backend.whole_solve_backend(gm, inputs)

                compiled = torch.compile(chain, backend=backend, fullgraph=True)
                with torch.no_grad():
                    compiled(h)
                variants[variant] = compiled
            _whole_linear.vector_width = width
            best = dict.fromkeys(variants, float("inf"))
            with torch.no_grad():
                for _ in range(args.rounds):
                    for variant, compiled in variants.items():
                        start = time.perf_counter()
                        compiled(h)
                        elapsed = (time.perf_counter() - start) / LAYERS * 1e6
                        best[variant] = min(best[variant], elapsed)
            results[f"{rows}/{name}"] = best
    if args.jax:
        env = {
            **os.environ,
            "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        }
        run = subprocess.run(
            [args.jax, "-c", JAX_SCRIPT, json.dumps(rows_list), str(args.rounds), str(LAYERS)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        for key, value in json.loads(run.stdout.strip().splitlines()[-1]).items():
            results[key]["xla"] = value
    print(f"{'rows/activation':>16} {'kernel':>9} {'aten':>9} {'xla':>9}  (us per layer)"
          f"  {'kernel/aten':>11} {'kernel/xla':>10}")  # fmt: skip
    for key, best in results.items():
        xla = f"{best['xla']:9.1f}" if "xla" in best else f"{'':>9}"
        to_xla = f"{best['kernel'] / best['xla']:10.2f}" if "xla" in best else f"{'':>10}"
        print(f"{key:>16} {best['kernel']:9.1f} {best['aten']:9.1f} {xla}  "
              f"{best['kernel'] / best['aten']:11.2f} {to_xla}")  # fmt: skip


if __name__ == "__main__":
    main()
