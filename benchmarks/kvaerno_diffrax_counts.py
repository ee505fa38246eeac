"""diffrax's accepted and rejected steps with ``Kvaerno3``, ``Kvaerno4`` and ``Kvaerno5``:
the constants that ``tests/test_esdirk.py`` compares neuralode's ``kvaerno3/4/5`` with.

float64, ``PIDController(rtol, atol)`` with its defaults and ``dt0=None``, on

- a linear stiff problem y' = A y (eigenvalues about -0.8, -97 and -1003), y0 = (1, 0.5,
  -0.3), t in [0, 10], atol = rtol / 100, where Newton's iteration is exact after one
  update (so the counts depend on the tableau, the error estimate and the controller alone);
- Robertson's problem, y0 = (1, 0, 0), t in [0, 1e5], outputs at 0, 1e-2, 1, 1e2, 1e4, 1e5,
  rtol 1e-6, atol 1e-10;
- van der Pol with mu = 1000, y0 = (2, 0), t in [0, 3000], outputs at 0, 400, 1000, 3000,
  rtol 1e-6, atol 1e-8;

the last two with diffrax's root finder as it is (``VeryChord``, kappa = 1e-2, at most 10
iterations) and loosened (kappa = 1e6, at most 100 iterations: a stage converged once an
iteration contracts). It prints one line per case: problem, rtol, method, Newton setting,
accepted, rejected. No timing. It needs numpy, jax and diffrax only::

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        /work/venv-jax/bin/python benchmarks/kvaerno_diffrax_counts.py
"""

from __future__ import annotations

LINEAR = ((-1.0, 0.5, 0.0), (20.0, -100.0, 1.0), (0.0, 300.0, -1000.0))
MU = 1000.0


def main() -> None:
    import diffrax
    import jax
    import jax.numpy as jnp
    from diffrax._root_finder import VeryChord, with_stepsize_controller_tols

    jax.config.update("jax_enable_x64", True)
    matrix = jnp.array(LINEAR)

    def linear(t, y, args):
        return matrix @ y

    def robertson(t, y, args):
        fast, slow = 1e4 * y[1] * y[2], 3e7 * y[1] ** 2
        return jnp.stack([-0.04 * y[0] + fast, 0.04 * y[0] - fast - slow, slow])

    def vdp(t, y, args):
        return jnp.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])

    cases = [("linear", linear, (1.0, 0.5, -0.3), (0.0, 10.0), rtol, rtol / 100)
             for rtol in (1e-4, 1e-6)]  # fmt: skip
    cases.append(("robertson", robertson, (1.0, 0.0, 0.0), (0.0, 1e-2, 1.0, 1e2, 1e4, 1e5),
                  1e-6, 1e-10))  # fmt: skip
    cases.append(("vdp1000", vdp, (2.0, 0.0), (0.0, 400.0, 1000.0, 3000.0), 1e-6, 1e-8))
    newton = {"default": None, "loose": (1e6, 100)}
    for problem, field, y0, ts, rtol, atol in cases:
        for method in ("Kvaerno3", "Kvaerno4", "Kvaerno5"):
            for setting, loose in newton.items():
                if problem == "linear" and loose is not None:
                    continue  # (exact after one update either way)
                if loose is None:
                    solver = getattr(diffrax, method)()
                else:
                    finder = with_stepsize_controller_tols(VeryChord)(kappa=loose[0])
                    solver = getattr(diffrax, method)(
                        root_finder=finder, root_find_max_steps=loose[1]
                    )
                solution = diffrax.diffeqsolve(
                    diffrax.ODETerm(field),
                    solver,
                    ts[0],
                    ts[-1],
                    None,
                    jnp.array(y0),
                    saveat=diffrax.SaveAt(ts=jnp.array(ts)),
                    stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
                    max_steps=100_000,
                )
                accepted = int(solution.stats["num_accepted_steps"])
                rejected = int(solution.stats["num_rejected_steps"])
                print(problem, rtol, method.lower(), setting, accepted, rejected, flush=True)


if __name__ == "__main__":
    main()
