"""GPU benchmark: time per step of neuralode's loops, with and without CUDA graphs, against
torchdiffeq and torchode (issue 5's GPU goal: MLP at batch 1024, >= 4x torchdiffeq per step
and faster than torchode, CUDA graphs reported separately).

dy/dt = MLP(y), 2 -> 64 -> 64 -> 2 with tanh, float32, dopri5, rtol 1e-6, atol 1e-8, t in
[0, 1] as in ``core`` (``--t1``: a later end; this field takes only a few steps, 4 to t = 1,
22 to t = 50, so the per-step times include each solve's set-up), outputs at t0 and t1,
under ``torch.no_grad()``, one CPU thread. Each row solves the same batch:

- torchdiffeq ``odeint`` and neuralode's standard loop: the batch as one system, reading
  the error norm back to the host after every step;
- neuralode ``device_loop=True``: one system, decisions on the device, reads only at
  scheduled termination checks; ``+ cuda_graph``: each step attempt replayed as a CUDA graph
  (captured afresh by every solve: the capture, with its warm-up attempts, is in the time,
  which ``--t1 50`` spreads over more steps);
- torchode and neuralode ``per_sample=True``: every sample its own step size (so their steps
  are not the one-system rows' steps); neuralode's with and without ``cuda_graph``;
- with ``--compile``, the neuralode loops with ``compile_step=True`` too (minutes of
  compiling).

Reported: the minimum and median time of a solve over interleaved repeats (after warm-up,
each timed between two ``torch.cuda.synchronize``), the steps (batched step attempts: what
the batch costs), the time per step, torchdiffeq's time per step over the row's, and the max
abs difference of the row's y(t1) from torchdiffeq's (from neuralode's standard loop where
torchdiffeq is not installed): a faster row must solve the same problem alike. The
libraries that are not installed are left out; without CUDA the CUDA-graph rows are.
Run by ``python benchmarks/bench_gpu.py`` and ``neuralode bench --parts gpu``.

    python benchmarks/bench_gpu.py                        # CUDA if available
    python benchmarks/bench_gpu.py --batches 1024 --compile
    python benchmarks/bench_gpu.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

import neuralode

from .._cli_types import positive_float, positive_int
from . import device_option, environment, imports

RTOL, ATOL = 1e-6, 1e-8


class Field(torch.nn.Module):
    """The MLP vector field, counting its calls (torchdiffeq reports no steps)."""

    def __init__(self, device: torch.device):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(2, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 64),
            torch.nn.Tanh(),
            torch.nn.Linear(64, 2),
        ).to(device)
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


# a row's solve: run(field, y0, ts) -> (steps taken, y(t1))
Runner = Callable[[Field, torch.Tensor, torch.Tensor], tuple[int, torch.Tensor]]


def _neuralode(**options) -> Runner:
    def run(field: Field, y0: torch.Tensor, ts: torch.Tensor) -> tuple[int, torch.Tensor]:
        sol = neuralode.solve(
            field, y0, ts, controller=neuralode.PIController(RTOL, ATOL), **options
        )
        stats = sol.stats
        steps = int(stats.sample_steps.max()) if options.get("per_sample") else stats.n_steps
        return steps, sol.ys[-1]

    return run


def _torchdiffeq(field: Field, y0: torch.Tensor, ts: torch.Tensor) -> tuple[int, torch.Tensor]:
    import torchdiffeq

    field.calls = 0
    ys = torchdiffeq.odeint(field, y0, ts, rtol=RTOL, atol=ATOL, method="dopri5")
    return (field.calls - 2) // 6, ys[-1]  # f0 and the initial-step probe, then 6 per step


class _Torchode:
    """torchode's standard setup (Dopri5, IntegralController), built once per field."""

    def __init__(self) -> None:
        self.solvers: dict[int, object] = {}

    def __call__(
        self, field: Field, y0: torch.Tensor, ts: torch.Tensor
    ) -> tuple[int, torch.Tensor]:
        import torchode

        solver = self.solvers.get(id(field))
        if solver is None:
            term = torchode.ODETerm(field)
            controller = torchode.IntegralController(atol=ATOL, rtol=RTOL, term=term)
            solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term), controller)
            self.solvers[id(field)] = solver
        t_eval = ts.repeat(y0.shape[0], 1)
        sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
        return int(sol.stats["n_steps"].max()), sol.ys[:, -1]


def runners(device: torch.device, compile_step: bool) -> dict[str, Runner]:
    """The rows: name -> run(field, y0, ts) returning the steps taken and y(t1)."""
    rows: dict[str, Runner] = {}
    if imports("torchdiffeq"):
        rows["torchdiffeq"] = _torchdiffeq
    graphs = device.type == "cuda"
    for compiled in (False, True) if compile_step else (False,):
        suffix = " + compile_step" if compiled else ""
        extra = {"compile_step": True} if compiled else {}
        rows["neuralode" + suffix] = _neuralode(**extra)
        for name, mode in (("device_loop", "device_loop"), ("per_sample", "per_sample")):
            rows[f"neuralode {name}{suffix}"] = _neuralode(**{mode: True}, **extra)
            if graphs:
                graphed = _neuralode(**{mode: True}, cuda_graph=True, **extra)
                rows[f"neuralode {name} + cuda_graph{suffix}"] = graphed
    if imports("torchode"):
        rows["torchode (per sample)"] = _Torchode()
    return rows


@dataclass
class Row:
    batch: int
    name: str
    times: list[float]
    steps: int
    diff: float = 0.0  # max abs difference of y(t1) from the reference row's

    @property
    def per_step(self) -> float:
        return min(self.times) / max(self.steps, 1)


def run(
    device: torch.device,
    batches: tuple[int, ...],
    repeats: int,
    compile_step: bool = False,
    t1: float = 1.0,
) -> list[Row]:
    """Every row at every batch size, repeats interleaved across the rows (the order rotated
    from repeat to repeat, so that no row always follows the same one), after a warm-up.

    Arguments:
        device: where the solves run.
        batches: the batch sizes.
        repeats: timed solves per row and batch size.
        compile_step: also the ``compile_step=True`` rows.
        t1: the end time.

    Returns:
        One row per runner and batch size, with its y(t1)'s difference from the reference's.
    """
    results = []
    for batch in batches:
        field = Field(device)
        y0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(1)).to(device)
        ts = torch.tensor([0.0, t1], device=device)
        rows = runners(device, compile_step)
        timed = {name: Row(batch, name, [], 0) for name in rows}
        outputs = {}
        with torch.no_grad():
            for solve in rows.values():  # warm-up (and compilation)
                solve(field, y0, ts)
            names = list(rows)
            for r in range(repeats):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    solve = rows[name]
                    _synchronize(device)
                    start = time.perf_counter()
                    steps, outputs[name] = solve(field, y0, ts)
                    _synchronize(device)
                    timed[name].times.append(time.perf_counter() - start)
                    timed[name].steps = steps
        reference = outputs["torchdiffeq" if "torchdiffeq" in outputs else "neuralode"]
        for name, row in timed.items():
            row.diff = float((outputs[name] - reference).abs().max())
        results += timed.values()
    return results


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def table(rows: list[Row]) -> str:
    lines = [
        "| batch | solver | time, min / median (ms) | steps | per step (us) | "
        "torchdiffeq per step / this | max diff of y(t1) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    reference = {r.batch: r.per_step for r in rows if r.name == "torchdiffeq"}
    for r in rows:
        ratio = f"{reference[r.batch] / r.per_step:.2f}x" if r.batch in reference else "-"
        lines.append(
            f"| {r.batch} | {r.name} | {min(r.times) * 1e3:.2f} / "
            f"{statistics.median(r.times) * 1e3:.2f} | {r.steps} | "
            f"{r.per_step * 1e6:.1f} | {ratio} | {r.diff:.1e} |"
        )
    return "\n".join(lines)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()})"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=str(default_device()))
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeats", type=positive_int, default=11)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--compile", action="store_true", help="add compile_step rows")
    parser.add_argument("--t1", type=positive_float, default=1.0, help="the end time")
    args = parser.parse_args(argv)
    try:
        device = device_option(args.device)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(1)
    repeats = 3 if args.quick else args.repeats
    rows = run(device, tuple(args.batches), repeats, args.compile, args.t1)
    print(f"{environment()}\n{device_name(device)}; t in [0, {args.t1:g}], {repeats} repeats\n")
    print(table(rows))


if __name__ == "__main__":
    main()
