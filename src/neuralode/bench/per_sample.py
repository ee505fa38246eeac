"""Per-sample mode vs torchode: Van der Pol with mu from 1 to 25 across the batch.

Both libraries give every sample its own step size (dopri5, rtol=1e-6, atol=1e-8, float64,
t in [0, 10], outputs at t0 and t1), run in one process with interleaved repeats. Batch 1 is
the hardest sample alone (mu = 25); larger batches spread mu over [1, 25]. Reported: time
(min and median), steps of the slowest sample (= batched step iterations: what the batch
costs), mean steps and mean NFE per sample (what each sample needs alone: neuralode's
``stats.sample_nfe``; for torchode 6 x its per-sample steps + 2, its own ``n_f_evals``
counting batched calls), the sample rows f was evaluated on per sample (the work f does:
batched calls x batch), and the max difference of the final states between the libraries.

``run_outputs`` is ``run`` with 101 output times (every 0.1), compared over all outputs.

``run_skip`` measures ``skip_finished`` where f's cost matters: a random MLP vector field
(32 -> 256 -> 32, tanh, float32) with a per-sample time scale s in [1, 25] carried in the
state (dz/dt = s g(z), ds/dt = 0), so a sample's steps grow with s (from a few to 25-29 at
s = 25); by default every call of f covers the whole batch, with ``skip_finished`` only the
samples still running.

``run_compiled`` compiles both libraries' per-sample solves with ``torch.compile`` (default
mode): neuralode's ``compile_step=True`` (each step attempt, f included, one graph) and
torchode's ``torch.compile(solver.solve)`` (its ``torch.compile(solver)`` compiles only
``forward``, which ``solve`` does not call, so it would run eagerly); the warm-up compiles.

``accuracy`` sweeps the tolerance at batch 256 and compares NFE per sample at equal accuracy
(error of y(t1) against SciPy DOP853 at rtol=1e-12): the fair comparison whenever the two
libraries' steps differ at the same tolerance (error estimator or controller details).
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass

import torch

import neuralode

RTOL, ATOL, T1 = 1e-6, 1e-8, 10.0  # Van der Pol; the MLP field: 1e-5, 1e-6, t in [0, 1]


def vdp(batch: int, device: torch.device | str = "cpu"):
    mu = torch.full((1,), 25.0, dtype=torch.float64, device=device)
    if batch > 1:
        mu = torch.linspace(1.0, 25.0, batch, dtype=torch.float64, device=device)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, mu * (1 - x * x) * v - x], 1)

    y0 = torch.tensor([2.0, 0.0], dtype=torch.float64, device=device).repeat(batch, 1)
    return f, y0


def neural_time_scales(batch: int, dim: int = 32, width: int = 256):
    """dz/dt = s g(z), ds/dt = 0: a random tanh MLP g with one time scale s per sample in
    [1, 25] (25 at batch 1), carried in the state so that rows do not depend on their
    position in the batch (as ``skip_finished`` needs)."""
    gen = torch.Generator().manual_seed(0)
    w1 = torch.randn(dim, width, generator=gen) / dim**0.5
    w2 = torch.randn(width, dim, generator=gen) / width**0.5
    b1, b2 = 0.1 * torch.randn(width, generator=gen), 0.1 * torch.randn(dim, generator=gen)
    s = torch.full((1,), 25.0) if batch == 1 else torch.linspace(1.0, 25.0, batch)

    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z, scale = y[:, :dim], y[:, dim:]
        g = torch.tanh(torch.tanh(z @ w1 + b1) @ w2 + b2)
        return torch.cat([scale * g, torch.zeros_like(scale)], 1)

    return f, torch.cat([torch.randn(batch, dim, generator=gen), s[:, None]], 1)


@dataclass
class Row:
    batch: int
    library: str
    best: float
    median: float
    max_steps: int
    mean_steps: float
    mean_nfe: float
    rows: float
    diff: float = 0.0


def _neuralode(
    f,
    y0,
    ts,
    rtol: float = RTOL,
    atol: float = ATOL,
    skip_finished: bool = False,
    compile_step: bool = False,
):
    sol = neuralode.solve(
        f,
        y0,
        ts,
        solver=neuralode.Dopri5(),
        controller=neuralode.PIController(rtol, atol),
        per_sample=True,
        skip_finished=skip_finished,
        compile_step=compile_step,
    )
    s = sol.stats
    stats = (int(s.sample_steps.max()), float(s.sample_steps.double().mean()))
    stats += (float(s.sample_nfe.double().mean()), s.rows_evaluated / len(y0))
    return sol.ys.transpose(0, 1), stats  # (batch, outputs, ...) as torchode's


def _torchode_solver(f, rtol: float = RTOL, atol: float = ATOL, compiled: bool = False):
    import torchode

    term = torchode.ODETerm(f)
    controller = torchode.IntegralController(atol=atol, rtol=rtol, term=term)
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller)
    solve = torch.compile(solver.solve) if compiled else solver.solve

    def run(f_, y0, ts):
        problem = torchode.InitialValueProblem(y0=y0, t_eval=ts.repeat(y0.shape[0], 1))
        sol = solve(problem)
        steps = sol.stats["n_steps"].double()
        calls = float(sol.stats["n_f_evals"].max())
        return sol.ys, (
            int(steps.max()),
            float(steps.mean()),
            float(6 * steps.mean() + 2),
            calls,
        )

    return run


def _time(
    make, runners_for, batches, repeats: int, label: str, t1: float, n_out: int = 2
) -> list[Row]:
    """Interleaved timings of each runner on ``make(batch)``'s problem from 0 to ``t1``, with
    ``n_out`` equally spaced output times."""
    rows = []
    with torch.no_grad():
        for batch in batches:
            f, y0 = make(batch)
            ts = torch.linspace(0.0, t1, n_out, dtype=y0.dtype)
            runners = runners_for(f)
            times: dict[str, list[float]] = {name: [] for name in runners}
            results = {name: fn(f, y0, ts) for name, fn in runners.items()}  # warm-up
            for r in range(repeats):
                order = list(runners) if r % 2 == 0 else list(runners)[::-1]
                for name in order:
                    start = time.perf_counter()
                    results[name] = runners[name](f, y0, ts)
                    times[name].append(time.perf_counter() - start)
            for name in runners:
                steps_max, steps_mean, nfe_mean, f_rows = results[name][1]
                rows.append(
                    Row(
                        batch,
                        name,
                        min(times[name]),
                        statistics.median(times[name]),
                        steps_max,
                        steps_mean,
                        nfe_mean,
                        f_rows,
                        float((results[name][0] - results["torchode"][0]).abs().max()),
                    )
                )
            print(f"  per-sample {label} batch {batch} done", flush=True)
    return rows


def run(batches: tuple[int, ...] = (1, 16, 256), repeats: int = 5) -> list[Row]:
    """Van der Pol: neuralode's per-sample mode against torchode."""

    def runners(f):
        return {"neuralode per-sample": _neuralode, "torchode": _torchode_solver(f)}

    return _time(vdp, runners, batches, repeats, "vdp", T1)


def run_outputs(
    batches: tuple[int, ...] = (1, 16, 256), repeats: int = 5, n_out: int = 101
) -> list[Row]:
    """Van der Pol as ``run``, with ``n_out`` output times (every 0.1): the per-sample loop
    writes a sample's outputs at its scheduled termination checks, not after every step."""

    def runners(f):
        return {"neuralode per-sample": _neuralode, "torchode": _torchode_solver(f)}

    return _time(vdp, runners, batches, repeats, f"vdp {n_out} outputs", T1, n_out)


def run_skip(batches: tuple[int, ...] = (16, 256, 1024), repeats: int = 5) -> list[Row]:
    """The random MLP field with per-sample time scales: every sample evaluated in every
    call of f, or only the running ones (``skip_finished``), against torchode."""

    tolerances = dict(rtol=1e-5, atol=1e-6)

    def runners(f):
        return {
            "neuralode per-sample": functools.partial(_neuralode, **tolerances),
            "neuralode skip_finished": functools.partial(
                _neuralode, skip_finished=True, **tolerances
            ),
            "torchode": _torchode_solver(f, **tolerances),
        }

    return _time(neural_time_scales, runners, batches, repeats, "mlp", 1.0)


def run_compiled(batches: tuple[int, ...] = (1, 16, 256), repeats: int = 5) -> list[Row]:
    """Van der Pol as ``run``, both libraries eager and under torch.compile."""

    def runners(f):
        return {
            "neuralode per-sample": _neuralode,
            "neuralode compile_step": functools.partial(_neuralode, compile_step=True),
            "torchode": _torchode_solver(f),
            "torchode compiled": _torchode_solver(f, compiled=True),
        }

    return _time(vdp, runners, batches, repeats, "vdp compiled", T1)


def table(rows: list[Row], reference: str = "torchode") -> str:
    """Markdown rows; times relative to the ``reference`` library's at the same batch."""
    lines = [
        f"| batch | library | time min (ms) | time median (ms) | time / {reference}'s (min) "
        "| steps, slowest sample | vs batch 1 | mean steps / sample | mean NFE / sample "
        "| f rows evaluated / sample | max diff of the outputs from torchode |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base_steps = {r.library: r.max_steps for r in rows if r.batch == rows[0].batch}
    for r in rows:
        ref = next(x for x in rows if x.batch == r.batch and x.library == reference)
        lines.append(
            f"| {r.batch} | {r.library} | {r.best * 1e3:.1f} | {r.median * 1e3:.1f} "
            f"| {r.best / ref.best:.2f}x | {r.max_steps} "
            f"| {r.max_steps / base_steps[r.library]:.3f} | {r.mean_steps:.1f} "
            f"| {r.mean_nfe:.1f} | {r.rows:.1f} | {r.diff:.1e} |"
        )
    return "\n".join(lines)


@dataclass
class AccuracyRow:
    rtol: float
    library: str
    mean_nfe: float
    error: float  # RMS over the samples of each sample's max abs error at t1


def accuracy(rtols: tuple[float, ...] = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)) -> list[AccuracyRow]:
    """NFE per sample against the error at t1, per-sample neuralode vs torchode, batch 256,
    atol = rtol / 100."""
    from .core import reference, vdp_problem

    problem = vdp_problem(256)  # the same batch as ``vdp(256)``: mu = linspace(1, 25)
    exact = torch.from_numpy(reference(problem))
    f, y0 = vdp(256)
    ts = torch.tensor([0.0, T1], dtype=torch.float64)
    rows = []
    with torch.no_grad():
        for rtol in rtols:
            results = {
                "neuralode per-sample": _neuralode(f, y0, ts, rtol, rtol / 100),
                "torchode": _torchode_solver(f, rtol, rtol / 100)(f, y0, ts),
            }
            for name, (ys, (_, _, nfe, _)) in results.items():
                error = (ys[:, -1] - exact).abs().amax(1).pow(2).mean().sqrt()
                rows.append(AccuracyRow(rtol, name, nfe, float(error)))
    return rows


def nfe_at_error(rows: list[AccuracyRow], library: str, error: float) -> float | None:
    """NFE per sample ``library`` needs for ``error``, interpolated log-log along its sweep."""
    points = sorted((r.error, r.mean_nfe) for r in rows if r.library == library)
    for (e0, n0), (e1, n1) in zip(points, points[1:]):
        if e0 <= error <= e1 and e0 < e1:
            w = math.log(error / e0) / math.log(e1 / e0)
            return math.exp((1 - w) * math.log(n0) + w * math.log(n1))
    return None


def accuracy_table(rows: list[AccuracyRow]) -> str:
    lines = [
        "| rtol | neuralode NFE / sample | neuralode error | torchode NFE / sample "
        "| torchode error | neuralode NFE at torchode's error | ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rtol in dict.fromkeys(r.rtol for r in rows):
        ours = next(r for r in rows if r.rtol == rtol and r.library != "torchode")
        theirs = next(r for r in rows if r.rtol == rtol and r.library == "torchode")
        matched = nfe_at_error(rows, ours.library, theirs.error)
        at = "-" if matched is None else f"{matched:.0f}"
        ratio = "-" if matched is None else f"{matched / theirs.mean_nfe:.3f}"
        lines.append(
            f"| {rtol:.0e} | {ours.mean_nfe:.1f} | {ours.error:.2e} | {theirs.mean_nfe:.1f} "
            f"| {theirs.error:.2e} | {at} | {ratio} |"
        )
    return "\n".join(lines)
