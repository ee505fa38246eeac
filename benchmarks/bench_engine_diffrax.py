"""diffrax on the engine issue's problems, with bench_engine.py's weights and initial states.

Run by ``bench_engine.py --diffrax PYTHON``, or in an environment with jax and diffrax (not
neuralode's), after ``python benchmarks/bench_engine.py --dump DIR`` wrote the MLP weights to
DIR: ``flock /tmp/neuralode-timing.lock taskset -c 1 python bench_engine_diffrax.py DIR``
(``BATCHES=1,16`` for some batches only; ``MLP_ONLY=1``: the forward MLP rows only).
Single-threaded XLA, jitted; the compile time (first call) is reported apart. Times in the
state's dtype, as neuralode's ``ts``.
"""

import os
import statistics
import sys
import time

os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
import diffrax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)
DIR = sys.argv[1] if len(sys.argv) > 1 else "."


def mlp_field(d):
    layers = [(jnp.asarray(d[f"W{i}"]), jnp.asarray(d[f"b{i}"])) for i in range(3)]

    def vf(t, y, args):
        for i, (w, b) in enumerate(layers):
            y = y @ w + b
            if i < 2:
                y = jnp.tanh(y)
        return y

    return vf


def vdp_field(mu):
    def vf(t, y, args):
        x, v = y[..., 0], y[..., 1]
        return jnp.stack([v, mu * (1 - x * x) * v - x], -1)

    return vf


def solve_fn(vf, t1, adjoint=None):
    """The solve from 0 to t1, its times in the state's dtype (as neuralode's ts are: with
    float64 times and x64 on, diffrax would promote a float32 state to float64)."""
    ctrl = diffrax.PIDController(rtol=1e-6, atol=1e-8)
    options = {} if adjoint is None else {"adjoint": adjoint}

    def f(y0, args=None):
        t0, t_end = jnp.asarray(0.0, y0.dtype), jnp.asarray(t1, y0.dtype)
        s = diffrax.diffeqsolve(
            diffrax.ODETerm(vf), diffrax.Dopri5(), t0, t_end, None, y0, args,
            stepsize_controller=ctrl, max_steps=100000, **options,
        )  # fmt: skip
        return s.ys[-1], s.stats["num_steps"]

    return f


def mlp_gradient(d, y0):
    """d sum(y(1)) / d weights by BacksolveAdjoint with the seminorm (neuralode's Backsolve()),
    the weights passed as diffrax's ``args`` (what BacksolveAdjoint differentiates)."""
    adjoint = diffrax.BacksolveAdjoint(
        stepsize_controller=diffrax.PIDController(
            rtol=1e-6, atol=1e-8, norm=diffrax.adjoint_rms_seminorm
        )
    )

    def vf(t, y, layers):
        for i, (w, b) in enumerate(layers):
            y = y @ w + b
            if i < 2:
                y = jnp.tanh(y)
        return y

    def loss(weights):
        y1, steps = solve_fn(vf, 1.0, adjoint)(y0, weights)
        return jnp.sum(y1), steps

    weights = [(jnp.asarray(d[f"W{i}"]), jnp.asarray(d[f"b{i}"])) for i in range(3)]
    return jax.jit(jax.grad(loss, has_aux=True)), weights


def timeit(fn, y0, repeats=11):
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(y0))
    first = time.perf_counter() - t0
    for _ in range(2):
        jax.block_until_ready(fn(y0))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(y0))
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), 1e3 * statistics.median(times), first, out[1]


def row(name, r, steps):
    print(f"| {name} | {r[0]:.3f} | {r[1]:.3f} | {r[2]:.1f} | {steps} |", flush=True)


print("| problem | diffrax best ms | median ms | compile s | steps |")
for b in map(int, os.environ.get("BATCHES", "1,16,256,1024").split(",")):
    d = np.load(os.path.join(DIR, f"mlp_{b}.npz"))
    r = timeit(jax.jit(solve_fn(mlp_field(d), 1.0)), jnp.asarray(d[f"y0_{b}"]))
    row(f"MLP batch {b}", r, int(r[3]))
if os.environ.get("MLP_ONLY"):  # (bench_whole_graph.py: the forward MLP rows only)
    sys.exit()
d = np.load(os.path.join(DIR, "mlp_16.npz"))
fn, weights = mlp_gradient(d, jnp.asarray(d["y0_16"]))
r = timeit(fn, weights)
row("MLP batch 16 forward + Backsolve backward", r, int(r[3]))
mu = jnp.linspace(1.0, 25.0, 256)
y0 = jnp.tile(jnp.array([2.0, 0.0]), (256, 1))
r = timeit(jax.jit(solve_fn(vdp_field(mu), 10.0)), y0, 5)
row("VdP 256 one system", r, int(r[3]))
per = jax.jit(jax.vmap(lambda m, y: solve_fn(vdp_field(m), 10.0)(y)))
r = timeit(lambda y: per(mu, y), y0, 5)
row("VdP 256 per sample", r, f"max {int(np.max(r[3]))}")
