"""Core benchmark: neuralode vs torchdiffeq vs torchode, dopri5, forward pass only.

Two problems, solved by all three libraries in one process, under ``torch.no_grad()``:

(a) ``mlp``: dy/dt = MLP(y), 2 -> 64 -> 64 -> 2 with tanh, fixed seeded weights, float32, batch
    sizes 1, 16, 256, 1024, t in [0, 1] (outputs at t0 and t1);
(b) ``vdp``: Van der Pol, x'' = mu (1 - x^2) x' - x, with mu from 1 to 25 across a batch of 256,
    float64, t in [0, 10].

Tolerances rtol=1e-6, atol=1e-8 everywhere. For each run we report the median wall time of
several repeats after warm-up (repeats interleaved across libraries), the number of calls to f
(counted by a wrapper; torchode's own ``n_f_evals`` is checked against it), the error of the
final state against a float64 SciPy DOP853 reference at rtol=1e-12, and the solver's own
overhead per evaluation of f: (time - NFE * bare cost of one f call at that batch size) / NFE,
and the same measured in situ, (time - time spent inside f in that run) / NFE.

neuralode and torchdiffeq solve a batch as ONE system with one step size (RMS error norm over
the whole batch); torchode solves every sample as an independent problem with its own step
size (per-sample RMS norm), so its NFE and error are not the same quantity.

    python benchmarks/bench_core.py            # full run
    python benchmarks/bench_core.py --quick    # fewer repeats, smaller batches
    python benchmarks/bench_core.py --out BENCH.md
"""

from __future__ import annotations

import argparse
import functools
import gc
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy
import scipy.integrate
import torch

import neuralode

from .._cli_types import positive_int
from . import add_report_arguments, check_report_arguments, environment, write_report

RTOL, ATOL = 1e-6, 1e-8
REFERENCE_RTOL, REFERENCE_ATOL = 1e-12, 1e-14
LIBRARIES = ("neuralode", "torchdiffeq", "torchode")


class CountingField:
    """Wraps f(t, y): counts its calls (one call = one batched evaluation) and the time spent
    inside it, so that the solver's own time is measured in the same run."""

    def __init__(self, f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.f = f
        self.calls = 0
        self.inside = 0.0

    def reset(self) -> None:
        self.calls = 0
        self.inside = 0.0

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        start = time.perf_counter()
        out = self.f(t, y)
        self.inside += time.perf_counter() - start
        return out


@dataclass
class Problem:
    """A batched ODE: torch vector field, numpy twin for the reference, initial state, times."""

    name: str
    f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    f_numpy: Callable[[np.ndarray], np.ndarray]  # on a (batch, 2) float64 array
    y0: torch.Tensor  # (batch, 2)
    t0: float
    t1: float


def mlp_net() -> torch.nn.Sequential:
    """The MLP field of problem (a): 2 -> 64 -> 64 -> 2 with tanh, seeded, float32."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 2),
    ).to(torch.float32)


def mlp_problem(batch: int, device: torch.device | str = "cpu") -> Problem:
    """Problem (a) at ``batch``: the seeded MLP field and initial states on ``device``."""
    net = mlp_net()
    for p in net.parameters():
        p.requires_grad_(False)
    y0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    weights = [(m.weight.double().numpy(), m.bias.double().numpy()) for m in net[::2]]
    net, y0 = net.to(device), y0.to(device)

    def f_numpy(y: np.ndarray) -> np.ndarray:
        (w1, b1), (w2, b2), (w3, b3) = weights
        h = np.tanh(y @ w1.T + b1)
        h = np.tanh(h @ w2.T + b2)
        return h @ w3.T + b3

    return Problem("mlp", lambda t, y: net(y), f_numpy, y0, 0.0, 1.0)


def vdp_mu(batch: int) -> torch.Tensor:
    """Problem (b)'s mu from 1 to 25 across the batch, float64."""
    return torch.linspace(1.0, 25.0, batch, dtype=torch.float64)


def vdp_problem(batch: int = 256, device: torch.device | str = "cpu") -> Problem:
    """Problem (b): Van der Pol with mu from 1 to 25 across the batch, float64, on ``device``."""
    mu = vdp_mu(batch)
    mu_numpy = mu.numpy()
    mu = mu.to(device)
    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, device=device).repeat(batch, 1)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    def f_numpy(y: np.ndarray) -> np.ndarray:
        x, v = y[:, 0], y[:, 1]
        return np.stack([v, mu_numpy * (1 - x * x) * v - x], 1)

    return Problem("vdp", f, f_numpy, y0, 0.0, 10.0)


def reference(problem: Problem) -> np.ndarray:
    """Final state from SciPy's DOP853 in float64 at rtol=1e-12, the batch as one system."""
    shape = tuple(problem.y0.shape)
    sol = scipy.integrate.solve_ivp(
        lambda t, y: problem.f_numpy(y.reshape(shape)).reshape(-1),
        (problem.t0, problem.t1),
        problem.y0.double().numpy().reshape(-1),
        method="DOP853",
        rtol=REFERENCE_RTOL,
        atol=REFERENCE_ATOL,
    )
    if not sol.success:
        raise RuntimeError(f"reference solve failed for {problem.name}: {sol.message}")
    return sol.y[:, -1].reshape(shape)


# --- one solve per library: returns (final state, extra stats text) -------------------------


def solve_neuralode(field: CountingField, problem: Problem) -> tuple[torch.Tensor, str]:
    ts = torch.tensor([problem.t0, problem.t1], dtype=problem.y0.dtype)
    sol = neuralode.solve(
        field,
        problem.y0,
        ts,
        solver=neuralode.Dopri5(),
        controller=neuralode.PIController(RTOL, ATOL),
    )
    s = sol.stats
    return sol.ys[-1], f"{s.n_accepted} acc / {s.n_rejected} rej"


def solve_torchdiffeq(field: CountingField, problem: Problem) -> tuple[torch.Tensor, str]:
    ts = torch.tensor([problem.t0, problem.t1], dtype=problem.y0.dtype)
    import torchdiffeq  # the peers are imported where used: the diffrax part needs neither

    ys = torchdiffeq.odeint(field, problem.y0, ts, rtol=RTOL, atol=ATOL, method="dopri5")
    return ys[-1], ""


class TorchodeSolver:
    """torchode's standard setup: ODETerm, Dopri5, IntegralController, AutoDiffAdjoint.

    Built once per problem and reused across calls (as its README does); eager, no compile.
    """

    def __init__(self, field: CountingField):
        import torchode

        term = torchode.ODETerm(field)
        controller = torchode.IntegralController(atol=ATOL, rtol=RTOL, term=term)
        self.solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller)

    def __call__(self, field: CountingField, problem: Problem) -> tuple[torch.Tensor, str]:
        y0 = problem.y0
        t_eval = torch.tensor([problem.t0, problem.t1], dtype=y0.dtype).repeat(y0.shape[0], 1)
        import torchode

        sol = self.solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
        if not bool((sol.status == 0).all()):
            raise RuntimeError(f"torchode failed on {problem.name}: status {sol.status}")
        steps, evals = sol.stats["n_steps"], sol.stats["n_f_evals"]
        if int(evals.max()) != field.calls:  # torchode counts every batched call per sample
            raise RuntimeError(f"torchode reports {int(evals.max())} NFE, f saw {field.calls}")
        return sol.ys[:, -1], f"steps per sample {int(steps.min())}-{int(steps.max())}"


# --- timing ---------------------------------------------------------------------------------


def bare_f_cost(problem: Problem, min_seconds: float) -> float:
    """Median seconds of one bare f(t, y) call at this batch size."""
    t = torch.tensor(problem.t0, dtype=problem.y0.dtype)
    y = problem.y0
    for _ in range(20):
        problem.f(t, y)
    calls = 50
    while True:  # size a block to take ~min_seconds / 5
        start = time.perf_counter()
        for _ in range(calls):
            problem.f(t, y)
        elapsed = time.perf_counter() - start
        if elapsed > min_seconds / 5:
            break
        calls *= 2
    blocks = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            problem.f(t, y)
        blocks.append((time.perf_counter() - start) / calls)
    return statistics.median(blocks)


@dataclass
class Result:
    case: str
    batch: int
    library: str
    seconds: float
    nfe: int
    note: str
    max_error: float
    overhead: float  # seconds per NFE: (time - NFE x bare f cost) / NFE
    overhead_in_situ: float  # seconds per NFE: (time - time inside f, same run) / NFE


def make_runner(library: str, field: CountingField):
    if library == "neuralode":
        return solve_neuralode
    if library == "torchdiffeq":
        return solve_torchdiffeq
    return TorchodeSolver(field)


def run_case(problem: Problem, repeats: int, warmup: int, min_seconds: float) -> list[Result]:
    """Time all libraries on one problem, interleaving their repeats so that a noisy machine
    slows them alike; report medians."""
    ref = reference(problem)
    f_cost = bare_f_cost(problem, min_seconds)
    fields = {lib: CountingField(problem.f) for lib in LIBRARIES}
    runners = {lib: make_runner(lib, fields[lib]) for lib in LIBRARIES}
    for lib in LIBRARIES:
        for _ in range(warmup):
            fields[lib].reset()
            runners[lib](fields[lib], problem)
    times: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    own_times: dict[str, list[float]] = {lib: [] for lib in LIBRARIES}
    outputs = {}
    for r in range(repeats):
        order = LIBRARIES[r % len(LIBRARIES) :] + LIBRARIES[: r % len(LIBRARIES)]
        for lib in order:
            field = fields[lib]
            field.reset()
            start = time.perf_counter()
            outputs[lib] = runners[lib](field, problem)
            elapsed = time.perf_counter() - start
            times[lib].append(elapsed)
            own_times[lib].append((elapsed - field.inside) / field.calls)
    batch = problem.y0.shape[0]
    print(f"  {problem.name} batch {batch}: bare f {f_cost * 1e6:.1f} us", flush=True)
    results = []
    for lib in LIBRARIES:
        y1, note = outputs[lib]
        seconds = statistics.median(times[lib])
        nfe = fields[lib].calls
        error = float(np.abs(y1.double().numpy() - ref).max())
        overhead = (seconds - nfe * f_cost) / nfe
        note = (note + "; " if note else "") + f"bare f {f_cost * 1e6:.1f} us"
        in_situ = statistics.median(own_times[lib])
        results.append(
            Result(problem.name, batch, lib, seconds, nfe, note, error, overhead, in_situ)
        )
    return results


# --- the standard loop compiled (compile_step=True) -----------------------------------------


@dataclass
class CompiledRow:
    batch: int
    library: str
    best: float  # seconds, min over the repeats
    median: float
    nfe: int
    f_eager: tuple[float, float]  # one bare f call, eager: (min, median) seconds
    f_compiled: tuple[float, float]  # f alone under torch.compile as compile_step compiles it
    diff: float  # max abs difference of y(t1) from eager neuralode's

    def overhead(self, which: int) -> float:
        """(time - NFE x the faster bare f) / NFE, from the minima (``which`` 0) or the
        medians (1): the solver's own cost per evaluation, never crediting the compiler's
        speed-up of f itself to the solver."""
        seconds = (self.best, self.median)[which]
        f = min(self.f_eager[which], self.f_compiled[which])
        return (seconds - self.nfe * f) / self.nfe


BLOCK = 5  # consecutive runs timed together in table (f), as a training loop repeats a solve


def run_compiled(batches: tuple[int, ...] = (1, 16, 256), repeats: int = 41) -> list[CompiledRow]:
    """MLP (a) in the standard loop: neuralode eager, neuralode ``compile_step=True``,
    torchdiffeq, and 20 bare calls of f eager and compiled, in blocks of ``BLOCK`` runs
    interleaved across them (so that the machine's noise hits them alike, while each block
    runs warm, as repeated solves in training do), after a warm-up that compiles. Times are
    per run, from each block's mean. The compile cache is reset for each batch size, so each
    gets the static-shape graph a user with one batch size gets."""
    import torch._dynamo

    rows = []
    for batch in batches:
        torch._dynamo.reset()
        problem = mlp_problem(batch)
        ts = torch.tensor([problem.t0, problem.t1], dtype=problem.y0.dtype)
        t0 = ts[0]
        compiled_f = torch.compile(problem.f, options={"cpp_wrapper": True})  # as the step

        def ours(compile_step: bool, problem: Problem = problem, ts: torch.Tensor = ts):
            sol = neuralode.solve(problem.f, problem.y0, ts, solver=neuralode.Dopri5(),
                                  controller=neuralode.PIController(RTOL, ATOL),
                                  compile_step=compile_step)  # fmt: skip
            return sol.ys[-1], sol.stats.nfe

        def theirs(problem: Problem = problem):
            field = CountingField(problem.f)
            return solve_torchdiffeq(field, problem)[0], field.calls

        def bare(f: Callable, y0: torch.Tensor = problem.y0, t0: torch.Tensor = t0):
            for _ in range(20):
                f(t0, y0)

        runners = {
            "neuralode": lambda: ours(False),
            "neuralode compile_step": lambda: ours(True),
            "torchdiffeq": theirs,
            "f eager": functools.partial(bare, problem.f),
            "f compiled": functools.partial(bare, compiled_f),
        }
        with torch.no_grad():
            for run in runners.values():
                for _ in range(2):  # the first compile_step solve (and compiled f) compiles
                    run()
            times: dict[str, list[float]] = {name: [] for name in runners}
            outputs = {}
            names = list(runners)
            gc.collect()
            gc.disable()  # as timeit does: no collection of another library's garbage
            try:
                for r in range(repeats):
                    for name in names[r % 5 :] + names[: r % 5]:
                        start = time.perf_counter()
                        for _ in range(BLOCK):
                            outputs[name] = runners[name]()
                        times[name].append((time.perf_counter() - start) / BLOCK)
            finally:
                gc.enable()
        f_eager, f_compiled = (
            (min(per_call), statistics.median(per_call))
            for per_call in ([t / 20 for t in times[name]] for name in ("f eager", "f compiled"))
        )  # 20 calls of f per run of a bare-f runner
        base = outputs["neuralode"][0]
        print(f"  mlp batch {batch} (compiled): bare f {f_eager[0] * 1e6:.1f} us eager, "
              f"{f_compiled[0] * 1e6:.1f} us compiled", flush=True)  # fmt: skip
        for name in names[:3]:
            y1, nfe = outputs[name]
            rows.append(CompiledRow(batch, name, min(times[name]), statistics.median(times[name]),
                                    nfe, f_eager, f_compiled,
                                    float((y1 - base).abs().max())))  # fmt: skip
    return rows


def compiled_table(rows: list[CompiledRow]) -> str:
    lines = [
        "| batch | library | time min (ms) | time median (ms) | NFE | bare f eager / compiled, "
        "min (us) | overhead / NFE, min / median (us) | speed-up vs torchdiffeq (min) "
        "| max diff of y(t1) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        base = next(x for x in rows if x.batch == r.batch and x.library == "torchdiffeq")
        lines.append(
            f"| {r.batch} | {r.library} | {r.best * 1e3:.2f} | {r.median * 1e3:.2f} | {r.nfe} "
            f"| {r.f_eager[0] * 1e6:.1f} / {r.f_compiled[0] * 1e6:.1f} "
            f"| {r.overhead(0) * 1e6:.1f} / {r.overhead(1) * 1e6:.1f} "
            f"| {base.best / r.best:.2f}x "
            f"| {r.diff:.1e} |"
        )
    return "\n".join(lines)


# --- reporting ------------------------------------------------------------------------------


def table(results: list[Result]) -> str:
    by_key = {(r.case, r.batch, r.library): r for r in results}
    lines = [
        "| batch | library | time (ms) | NFE | max abs error | overhead / NFE (us) "
        "| in situ (us) | speed-up vs torchdiffeq | notes |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        base = by_key[(r.case, r.batch, "torchdiffeq")]
        speedup = base.seconds / r.seconds
        lines.append(
            f"| {r.batch} | {r.library} | {r.seconds * 1e3:.2f} | {r.nfe} | {r.max_error:.2e} "
            f"| {r.overhead * 1e6:.1f} | {r.overhead_in_situ * 1e6:.1f} | {speedup:.2f}x "
            f"| {r.note} |"
        )
    return "\n".join(lines)


def verdict(results: list[Result]) -> str:
    """Speed-up of neuralode over torchdiffeq and the bar: never slower, no more NFE."""
    pairs = []
    for r in results:
        if r.library == "neuralode":
            base = next(
                b
                for b in results
                if (b.case, b.batch, b.library) == (r.case, r.batch, "torchdiffeq")
            )
            pairs.append((r, base))
    ratios = [base.seconds / ours.seconds for ours, base in pairs]
    geo = math.exp(sum(math.log(x) for x in ratios) / len(ratios))
    each = ", ".join(
        f"{ours.case}/{ours.batch}: {base.seconds / ours.seconds:.2f}x" for ours, base in pairs
    )
    slower = [f"{o.case}/{o.batch}" for o, b in pairs if o.seconds > b.seconds]
    more_nfe = [f"{o.case}/{o.batch} ({o.nfe} vs {b.nfe})" for o, b in pairs if o.nfe > b.nfe]
    worse = [
        f"{o.case}/{o.batch} ({o.max_error:.1e} vs {b.max_error:.1e})"
        for o, b in pairs
        if o.max_error > 1.5 * b.max_error
    ]
    lines = [
        f"**speed-up vs torchdiffeq**: geometric mean {geo:.2f}x, min {min(ratios):.2f}x ({each})",
        f"- slower than torchdiffeq: {', '.join(slower) or 'none'}",
        f"- more NFE than torchdiffeq: {', '.join(more_nfe) or 'none'}",
        f"- error > 1.5x torchdiffeq's: {', '.join(worse) or 'none'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, smaller batches")
    add_report_arguments(parser)
    parser.add_argument(
        "--threads", type=positive_int, default=os.cpu_count(), help="torch threads"
    )
    args = parser.parse_args(argv)
    check_report_arguments(parser, args)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    repeats, warmup, min_seconds = (3, 1, 0.05) if args.quick else (11, 2, 0.5)
    mlp_batches = (1, 16, 256) if args.quick else (1, 16, 256, 1024)
    print(environment(), flush=True)

    with torch.no_grad():
        mlp = [
            r for b in mlp_batches for r in run_case(mlp_problem(b), repeats, warmup, min_seconds)
        ]
        vdp = run_case(vdp_problem(256), repeats, warmup, min_seconds)
    from . import per_sample

    per_sample_rows = per_sample.run(mlp_batches, repeats)
    output_rows = per_sample.run_outputs(mlp_batches, repeats)
    skip_rows = per_sample.run_skip(mlp_batches, repeats)
    compiled_rows = per_sample.run_compiled(mlp_batches)
    blocks = 15 if args.quick else 41
    standard_compiled = run_compiled(mlp_batches, blocks)

    load_after = os.getloadavg()[0]
    report = "\n\n".join(
        [
            f"Environment: {environment()}; 1-min load average {load_before:.2f} before and "
            f"{load_after:.2f} after the run (this benchmark itself adds up to its thread "
            "count; more means other processes competed and timings are noisier)",
            f"All solves under torch.no_grad(), dopri5, rtol={RTOL}, atol={ATOL}; "
            f"median of {repeats} runs after {warmup} warm-up. Error: max abs difference of "
            f"the final state from SciPy DOP853 (float64, rtol={REFERENCE_RTOL}). NFE: calls "
            "to f (one call evaluates the whole batch). Overhead / NFE: (time - NFE x bare "
            "cost of one f call, timed separately) / NFE; in situ: (time - time spent inside "
            "f during the same runs) / NFE, median over runs. torchode solves every sample "
            "as an independent problem (own step size and error norm per sample) and is run "
            "eagerly (no torch.compile); neuralode builds Dopri5() and PIController() inside "
            "every timed call, torchode's solver object is built once per case.",
            "### (a) MLP 2-64-64-2 tanh, float32, t in [0, 1]\n\n" + table(mlp),
            "### (b) Van der Pol, mu in [1, 25] across batch 256, float64, t in [0, 10]\n\n"
            + table(vdp),
            verdict(mlp + vdp),
            "### (c) Per-sample mode vs torchode: Van der Pol, mu in [1, 25], dopri5, float64\n\n"
            + per_sample.table(per_sample_rows),
            "### (c2) Per-sample mode with 101 output times (every 0.1), as (c); max diff "
            "over all outputs\n\n" + per_sample.table(output_rows),
            "### (d) Finished samples skipped: random MLP field 32-256-32 with a time scale "
            "s in [1, 25] per sample (in the state), dopri5, float32, rtol 1e-5, atol 1e-6, "
            "t in [0, 1]\n\n" + per_sample.table(skip_rows),
            "### (e) Compiled: (c) with both libraries under torch.compile (default mode; "
            "neuralode `compile_step=True`, torchode `torch.compile(solver.solve)`; the "
            "warm-up compiles; min and median of 5 runs)\n\n"
            + per_sample.table(compiled_rows, reference="torchode compiled"),
            "### (f) The standard loop compiled: (a) with `compile_step=True` (each step with "
            "its error ratio one torch.compile graph, C++ wrapper; compile cache reset per "
            f"batch size; garbage collection off while timing; min and median over {blocks} "
            f"blocks of {BLOCK} consecutive solves, the blocks interleaved across libraries "
            "and bare f calls). Overhead / NFE: (time - NFE x the faster of bare f eager and "
            "bare f compiled) / NFE, from the minima and from the medians\n\n"
            + compiled_table(standard_compiled),
        ]
    )
    print()
    print(report)
    write_report(args, report)


if __name__ == "__main__":
    main()
