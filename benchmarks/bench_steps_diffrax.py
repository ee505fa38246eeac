"""neuralode's and diffrax's step sequences side by side on the engine issue's problems.

For the MLP 2-64-64-2 (float32, t in [0, 1]) at batch 1 and 16 and Van der Pol (mu 1..25,
batch 256, one system, float64, t in [0, 10]), dopri5 at rtol 1e-6, atol 1e-8, with the
weights and initial states of ``neuralode bench`` (``bench.diffrax_peer.export_problems``),
this prints each attempt's t, h, error ratio and accept/reject for

- ``ours``: ``PIController(rtol, atol)`` with its defaults;
- ``ours as diffrax``: ``PIController(rtol, atol, first_step=0.01, shrink_after_accept=False)``;
- ``diffrax``: ``PIDController(rtol, atol)`` with ``dt0=None`` (diffrax 0.7), logged by a
  subclass of the controller (``jax.debug.callback``);

and Van der Pol per sample (neuralode ``per_sample=True``, diffrax ``jax.vmap``): each
sample's accepted and rejected steps.

Run (no timing, no lock needed)::

    PYTHONPATH=src python benchmarks/bench_steps_diffrax.py \\
        --diffrax-python /work/venv-jax/bin/python [--rows 12]

The diffrax side is this file run by that interpreter with ``--diffrax-side PROBLEMS.npz``
(it imports numpy, jax and diffrax only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RTOL, ATOL = 1e-6, 1e-8
CASES = {"mlp 1": 1.0, "mlp 16": 1.0, "vdp 256": 10.0}  # case: t1
XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _by_path(name: str):
    """``src/neuralode/NAME.py`` loaded by its path, without the ``neuralode`` package (the
    jax interpreter, without torch and neuralode, runs this file and these modules: the
    diffrax worker imports numpy only, the argument types the standard library only)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "src/neuralode" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(Path(name).name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _diffrax_worker():
    """``neuralode/bench/diffrax_worker.py``, loaded by its path."""
    return _by_path("bench/diffrax_worker")


def diffrax_side(problems: str) -> dict[str, list]:
    """Each case's diffrax attempts: ``[h0, [t, h, ratio, accepted], ...]``."""
    import diffrax
    import jax
    import jax.numpy as jnp
    import numpy as np

    jax.config.update("jax_enable_x64", True)  # Van der Pol in float64; the MLP stays float32
    log: list = []

    class Logged(diffrax.PIDController):
        def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
            out = super().init(terms, t0, t1, y0, dt0, args, func, error_order)
            jax.debug.callback(lambda a, b: log.append(float(b - a)), t0, out[0])
            return out

        def adapt_step_size(self, t0, t1, y0, y1, args, y_error, error_order, state):
            out = super().adapt_step_size(t0, t1, y0, y1, args, y_error, error_order, state)
            scale = self.atol + jnp.maximum(jnp.abs(y0), jnp.abs(y1)) * self.rtol
            ratio = self.norm(y_error / scale)  # the controller's own scaled error
            jax.debug.callback(
                lambda a, b, r, k: log.append([float(a), float(b - a), float(r), bool(k)]),
                t0, t1, ratio, out[0],
            )  # fmt: skip
            return out

    worker = _diffrax_worker()  # the fields and problems of ``neuralode bench``'s worker
    arrays = worker.load_problems(problems)
    weights = [(jnp.asarray(w), jnp.asarray(b)) for w, b in worker.mlp_weights(arrays)]
    mu = jnp.asarray(arrays["vdp_mu"])
    mlp, vdp = worker.jax_fields()

    out = {}
    for case, t1 in CASES.items():
        name, batch = case.split()
        y0 = jnp.asarray(arrays[f"mlp_y0_{batch}"] if name == "mlp" else arrays["vdp_y0"])
        log.clear()
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(mlp if name == "mlp" else vdp),
            diffrax.Dopri5(),
            jnp.zeros((), y0.dtype),
            jnp.asarray(t1, y0.dtype),  # times in the state's dtype, as neuralode's ts
            None,
            y0,
            args=weights if name == "mlp" else mu,
            stepsize_controller=Logged(rtol=RTOL, atol=ATOL),
            max_steps=100_000,
        )
        jax.block_until_ready(sol.ys)
        accepted = int(sol.stats["num_accepted_steps"])
        assert accepted == sum(1 for a in log[1:] if a[3]), "the log missed steps"
        out[case] = list(log)

    def alone(m, y):  # one sample's solve, vmapped: the per-sample counts
        def field(t, y, args):
            return jnp.stack([y[1], m * (1 - y[0] ** 2) * y[1] - y[0]])

        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), diffrax.Dopri5(), 0.0, CASES["vdp 256"], None, y,
            stepsize_controller=diffrax.PIDController(rtol=RTOL, atol=ATOL),
            max_steps=100_000,
        )  # fmt: skip
        return sol.stats["num_accepted_steps"], sol.stats["num_rejected_steps"]

    accepted, rejected = jax.vmap(alone)(mu, jnp.asarray(arrays["vdp_y0"]))
    out["vdp 256 per sample"] = [np.asarray(accepted).tolist(), np.asarray(rejected).tolist()]
    return out


def ours_per_sample(**options: object) -> list:
    """Van der Pol per sample (``per_sample=True``): each sample's accepted and rejected
    steps."""
    import torch

    import neuralode
    from neuralode.bench import core

    problem = core.vdp_problem(256)
    ts = torch.tensor([0.0, CASES["vdp 256"]], dtype=torch.float64)
    with torch.no_grad():
        sol = neuralode.solve(problem.f, problem.y0, ts, solver=neuralode.Dopri5(),
                              controller=neuralode.PIController(RTOL, ATOL, **options),
                              per_sample=True)  # fmt: skip
    return [sol.stats.sample_accepted.tolist(), sol.stats.sample_rejected.tolist()]


def ours(case: str, **options: object) -> list:
    """neuralode's attempts on ``case`` (eager), as ``diffrax_side`` lists them."""
    import torch

    import neuralode
    from neuralode.bench import core

    log: list = []

    class Logged(neuralode.PIController):
        def init(self, term, solver, ts, y0, f0, norm):
            proposal, state = super().init(term, solver, ts, y0, f0, norm)
            log.append(proposal - ts[0])
            return proposal, state

        def adapt(self, t0, t1, y0, y1, error, state, ratio=None):
            accepted, proposal, state = super().adapt(t0, t1, y0, y1, error, state, ratio)
            log.append([t0, t1 - t0, self._last_ratio, accepted])
            return accepted, proposal, state

        def decide(self, ratio, size, previous_ratio, exponent, running=None):
            self._last_ratio = ratio
            return super().decide(ratio, size, previous_ratio, exponent, running)

    name, batch = case.split()
    problem = core.mlp_problem(int(batch)) if name == "mlp" else core.vdp_problem(int(batch))
    ts = torch.tensor([0.0, CASES[case]], dtype=problem.y0.dtype)
    with torch.no_grad():
        neuralode.solve(problem.f, problem.y0, ts, solver=neuralode.Dopri5(),
                        controller=Logged(RTOL, ATOL, **options))  # fmt: skip
    return log


def _counts(log: list) -> str:
    accepted = sum(1 for a in log[1:] if a[3])
    return f"{accepted} / {len(log) - 1 - accepted}"


def _cell(attempt: list | None) -> str:
    if attempt is None:
        return f"{'':>44}"
    t, h, ratio, accepted = attempt
    return f"{t:10.6f} {h:10.3e} {ratio:10.3e} {'acc' if accepted else 'REJ':>4}    "


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diffrax-python", default=os.environ.get("NEURALODE_DIFFRAX_PYTHON"))
    parser.add_argument(
        "--rows",
        type=_by_path("_cli_types").positive_int,
        default=12,
        help="attempts shown per case",
    )
    parser.add_argument("--diffrax-side", metavar="PROBLEMS", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.diffrax_side:
        print(json.dumps(diffrax_side(args.diffrax_side)))
        return
    if not args.diffrax_python:
        parser.error("name the interpreter with jax and diffrax: --diffrax-python PATH")
    from neuralode.bench import diffrax_peer

    try:
        diffrax_peer.check_python(args.diffrax_python, "--diffrax-python")
    except ValueError as error:
        parser.error(str(error))

    with tempfile.TemporaryDirectory() as tmp:
        problems = Path(tmp) / "p.npz"
        diffrax_peer.export_problems(problems, (1, 16))
        env = {**os.environ, "XLA_FLAGS": XLA_FLAGS, "JAX_PLATFORMS": "cpu"}
        done = subprocess.run(
            [args.diffrax_python, "-I", __file__, "--diffrax-side", str(problems)],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode:
            sys.exit(f"the diffrax side failed:\n{done.stderr}")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    for case in CASES:
        runs = {
            "ours": ours(case),
            "ours as diffrax": ours(case, first_step=0.01, shrink_after_accept=False),
            "diffrax": theirs[case],
        }
        print(f"\n== {case}: h0 " + ", ".join(f"{k} {v[0]:.6g}" for k, v in runs.items()))
        print("   accepted / rejected: " + ", ".join(f"{k} {_counts(v)}" for k, v in runs.items()))
        same, other = runs["ours as diffrax"][1:], runs["diffrax"][1:]
        if len(same) == len(other) and all(a[3] == b[3] for a, b in zip(same, other)):
            worst = max(abs(a[1] - b[1]) / b[1] for a, b in zip(same, other))
            print(f"   ours as diffrax = diffrax: same decisions, max relative |dh| {worst:.1e}")
        else:
            print("   ours as diffrax and diffrax differ in their decisions")
        header = "".join(f"{k:<44}" for k in runs)
        print(f"   {'#':>4} {header}\n   {'':>4} " + "       t          h       ratio  " * 3)
        for i in range(min(args.rows, max(len(v) - 1 for v in runs.values()))):
            cells = [_cell(v[1 + i] if i + 1 < len(v) else None) for v in runs.values()]
            print(f"   {i + 1:>4} " + "".join(cells))
    runs = {
        "ours": ours_per_sample(),
        "ours as diffrax": ours_per_sample(first_step=0.01, shrink_after_accept=False),
        "diffrax": theirs["vdp 256 per sample"],
    }
    print("\n== vdp 256 per sample: max, mean accepted; rejected in all")
    for name, (accepted, rejected) in runs.items():
        print(
            f"   {name:<16} {max(accepted)}, {sum(accepted) / len(accepted):.2f}; {sum(rejected)}"
        )
    same = runs["ours as diffrax"] == runs["diffrax"]
    print(f"   ours as diffrax = diffrax, sample by sample: {same}")


if __name__ == "__main__":
    main()
