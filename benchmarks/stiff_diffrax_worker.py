"""The diffrax side of ``bench_stiff.py --diffrax-python``, run in its own process.

``python -I stiff_diffrax_worker.py SPEC.json`` solves Robertson's problem and van der Pol
(the same y0, output times and tolerances as ``bench_stiff.py``) with diffrax's ``Kvaerno3``
(``PIDController(rtol, atol)``, float64), jitted: the compile time apart, then the median
of ``repeats`` timed calls. It prints one JSON line per case: accepted and rejected steps,
seconds, compile seconds and the outputs. It needs numpy, jax and diffrax only (no torch);
the parent sets ``XLA_FLAGS`` for one thread and keeps this process on its cores.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

MU = 1000.0


def main(spec_path: str) -> None:
    import diffrax
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def robertson(t, y, args):
        fast, slow = 1e4 * y[1] * y[2], 3e7 * y[1] ** 2
        return jnp.stack([-0.04 * y[0] + fast, 0.04 * y[0] - fast - slow, slow])

    def vdp(t, y, args):
        return jnp.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])

    fields = {"robertson": robertson, "vdp1000": vdp}
    with open(spec_path) as file:
        spec = json.load(file)
    for case in spec["cases"]:
        ts = jnp.array(case["ts"])
        controller = diffrax.PIDController(rtol=case["rtol"], atol=case["atol"])

        @jax.jit
        def solve(y0, ts=ts, field=fields[case["problem"]], controller=controller):
            return diffrax.diffeqsolve(
                diffrax.ODETerm(field),
                diffrax.Kvaerno3(),
                ts[0],
                ts[-1],
                None,
                y0,
                saveat=diffrax.SaveAt(ts=ts),
                stepsize_controller=controller,
                max_steps=100_000,
            )

        y0 = jnp.array(case["y0"])
        start = time.perf_counter()
        solution = jax.block_until_ready(solve(y0))
        compile_seconds = time.perf_counter() - start
        times = []
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            jax.block_until_ready(solve(y0))
            times.append(time.perf_counter() - start)
        answer = {
            "accepted": int(solution.stats["num_accepted_steps"]),
            "rejected": int(solution.stats["num_rejected_steps"]),
            "seconds": statistics.median(times),
            "compile_seconds": compile_seconds,
            "ys": solution.ys.tolist(),
            "versions": f"jax {jax.__version__}, diffrax {diffrax.__version__}",
        }
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
