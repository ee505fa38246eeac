"""The diffrax side of ``neuralode bench --parts diffrax``, run in its own process.

``python -I diffrax_worker.py PROBLEMS.npz SPEC.json`` loads the problems that
``neuralode.bench.diffrax_peer`` exported (the same weights, initial states and parameters)
and, on the parent's requests (``main``), solves them with diffrax (dopri5, ``PIDController``
at the same rtol/atol, ``dt0=None`` so that diffrax picks the first step), jitted: the compile
time, the steps and the results once, then timed blocks that the parent interleaves with its
own. It needs numpy, jax and diffrax only (no torch, no neuralode): the
interpreter is any Python that has them; the parent sets ``XLA_FLAGS`` for one thread and
keeps this process on its own cores. The module imports nothing but numpy at the top, so the
parent shares its loading and timing helpers.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable

import numpy as np

MLP_LAYERS = 3  # 2-64-64-2: w0, b0, w1, b1, w2, b2 in the archive


def load_problems(path: str) -> dict[str, np.ndarray]:
    """The exported arrays: ``w{i}``/``b{i}`` of the MLP, ``mlp_y0_{batch}``, ``vdp_mu``,
    ``vdp_y0``."""
    with np.load(path) as archive:
        return {name: archive[name] for name in archive.files}


def mlp_weights(arrays: dict[str, np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(MLP_LAYERS)]


def mlp_numpy(weights: list[tuple[np.ndarray, np.ndarray]], y: np.ndarray) -> np.ndarray:
    """The MLP field (tanh between the layers) in numpy, as the worker's jax field computes it."""
    for i, (w, b) in enumerate(weights):
        y = y @ w.T + b
        if i < len(weights) - 1:
            y = np.tanh(y)
    return y


def jax_fields() -> tuple[Callable, Callable]:
    """The MLP and Van der Pol fields in jax, as diffrax takes them (``(t, y, args)``; the
    MLP's ``args`` its ``[(w, b), ...]``, Van der Pol's its mu)."""
    import jax.numpy as jnp

    def mlp(t, y, params):
        for i, (w, b) in enumerate(params):
            y = y @ w.T + b
            if i < len(params) - 1:
                y = jnp.tanh(y)
        return y

    def vdp(t, y, mu):
        x, v = y[..., 0], y[..., 1]
        return jnp.stack([v, mu * (1 - x * x) * v - x], -1)

    return mlp, vdp


def block_size(call: Callable[[], object], block_seconds: float) -> int:
    """Calls of ``call`` (after one to time it) that take about ``block_seconds``, at least
    one: calls of tens of microseconds are timed over many calls."""
    start = time.perf_counter()
    call()
    return max(1, int(block_seconds / max(time.perf_counter() - start, 1e-7)))


def time_block(call: Callable[[], object], calls: int) -> float:
    """Seconds per call over ``calls`` consecutive calls."""
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return (time.perf_counter() - start) / calls


def _cases(arrays: dict[str, np.ndarray], spec: dict) -> dict[str, Callable[[], tuple]]:
    """One function per case: it compiles the case and returns its record (compile time,
    steps, results) and a call that runs the compiled solve once."""
    import diffrax
    import jax
    import jax.numpy as jnp

    rtol, atol = spec["rtol"], spec["atol"]
    weights = [(jnp.asarray(w), jnp.asarray(b)) for w, b in mlp_weights(arrays)]

    mlp, vdp = jax_fields()

    def solve(field, y0, args, t1, adjoint=None):
        zero, t1 = jnp.zeros((), y0.dtype), jnp.asarray(t1, y0.dtype)  # times in y0's dtype
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field),
            diffrax.Dopri5(),
            zero,
            t1,
            None,
            y0,
            args=args,
            stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
            adjoint=adjoint or diffrax.RecursiveCheckpointAdjoint(),
            max_steps=spec["max_steps"],
        )
        stats = sol.stats
        return sol.ys[-1], (stats["num_accepted_steps"], stats["num_rejected_steps"])

    def record(fn, *args) -> tuple[dict, Callable[[], object]]:
        jitted = jax.jit(fn)
        start = time.perf_counter()
        jitted.lower(*args).compile()
        compile_seconds = time.perf_counter() - start
        # timed through the jitted function, whose calls dispatch in C++ (the Compiled
        # object's own __call__ adds a Python round of ~0.25 ms, more than a small solve)
        out = jax.block_until_ready(jitted(*args))
        value, (accepted, rejected) = out[0], out[1]
        result = {
            "compile_seconds": compile_seconds,
            "accepted": np.asarray(accepted).tolist(),
            "rejected": np.asarray(rejected).tolist(),
        }
        if isinstance(value, tuple):  # (y1, gradients)
            value, grads = value
            result["grads"] = [np.asarray(g).tolist() for pair in grads for g in pair]
        result["dtype"] = str(np.asarray(value).dtype)
        result["y1"] = np.asarray(value).tolist()
        return result, lambda: jax.block_until_ready(jitted(*args))

    cases: dict[str, Callable[[], tuple]] = {}
    for batch in spec["mlp_batches"]:
        y0 = jnp.asarray(arrays[f"mlp_y0_{batch}"])
        cases[f"mlp forward {batch}"] = lambda y0=y0: record(
            lambda p, y: solve(mlp, y, p, 1.0), weights, y0
        )
    mu, vdp_y0 = jnp.asarray(arrays["vdp_mu"]), jnp.asarray(arrays["vdp_y0"])
    t1 = float(spec["vdp_t1"])
    cases["vdp one system"] = lambda: record(lambda m, y: solve(vdp, y, m, t1), mu, vdp_y0)
    cases["vdp per sample"] = lambda: record(
        jax.vmap(lambda m, y: solve(vdp, y, m, t1)), mu, vdp_y0
    )
    grad_y0 = jnp.asarray(arrays[f"mlp_y0_{spec['grad_batch']}"])
    adjoints = {
        "backsolve": diffrax.BacksolveAdjoint(
            stepsize_controller=diffrax.PIDController(
                rtol=rtol, atol=atol, norm=diffrax.adjoint_rms_seminorm
            )
        ),
        "recursive checkpoint": diffrax.RecursiveCheckpointAdjoint(),
    }
    for name, adjoint in adjoints.items():

        def loss(p, y, adjoint=adjoint):
            y1, steps = solve(mlp, y, p, 1.0, adjoint)
            return jnp.sum(y1), (y1, steps)

        def value_and_grad(p, y, loss=loss):
            (_, (y1, steps)), grads = jax.value_and_grad(loss, has_aux=True)(p, y)
            return (y1, grads), steps

        cases[f"mlp gradient {name}"] = lambda f=value_and_grad: record(f, weights, grad_y0)
    return cases


def main(argv: list[str]) -> int:
    """Serve the parent: one JSON request per line on stdin, one JSON answer per line on
    stdout. ``{"op": "cases"}`` lists the cases (and the versions); ``{"op": "prepare",
    "case": C, "block_seconds": S}`` compiles C and answers its record with ``calls``, the
    calls per timed block; ``{"op": "time", "case": C}`` answers one block's seconds per call;
    ``{"op": "quit"}`` ends. The parent interleaves the blocks with its own."""
    problems, spec_path = argv
    import jax

    jax.config.update("jax_enable_x64", True)  # Van der Pol in float64; the MLP stays float32
    import diffrax

    with open(spec_path) as fh:
        spec = json.load(fh)
    cases = _cases(load_problems(problems), spec)
    prepared: dict[str, tuple[Callable[[], object], int]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        if op == "quit":
            break
        if op == "cases":
            versions = {"jax": jax.__version__, "diffrax": diffrax.__version__}
            answer = {"cases": list(cases), "versions": versions}
        elif op == "prepare":
            answer, call = cases[request["case"]]()
            answer["calls"] = block_size(call, request["block_seconds"])
            prepared[request["case"]] = (call, answer["calls"])
        else:
            answer = {"seconds": time_block(*prepared[request["case"]])}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
