"""Gradient benchmark: Direct vs Backsolve (continuous adjoint) vs Checkpointed.

Three studies, each printed as a markdown table:

(1) ``memory``: peak memory of one forward + backward pass of an ODE-Net convolutional block
    (64 channels, 7x7, batch 128, float32; f = GroupNorm-ReLU-ConcatConv3x3-GroupNorm-ReLU-
    ConcatConv3x3-GroupNorm as in Chen et al. 2018, the time concatenated as a 65th input
    channel) solved with rk4 on a fixed grid of 10, 100 and 1000 steps over t in [0, 1].
    Every (strategy, steps) pair runs in a fresh subprocess. On CPU the peak is the process's
    peak resident set (VmHWM from /proc/self/status, reset through /proc/self/clear_refs
    once the model, the input and a warm-up evaluation exist) minus the resident set at that
    moment; glibc is told to serve every allocation above 64 KiB by mmap
    (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the resident set at once and the peak is
    that of live memory, not of the allocator's free lists. On CUDA it is
    torch.cuda.max_memory_allocated minus the memory allocated before the solve. A case whose
    memory or time, extrapolated linearly from the two smaller step counts, would not fit is
    not run: its extrapolation is reported, marked as such.
(2) ``seminorm``: backward NFE of Backsolve(seminorm=True) vs Backsolve(seminorm=False) on
    training steps of a neural ODE (MLP d -> 64 -> 64 -> d, tanh, d = 2 and 16) fitted to
    segments of a spiral (torchdiffeq's ode_demo dynamics dy/dt = y^3 A, lifted to 16 dims by
    a fixed orthonormal map; batch 32, 5 outputs 1.0 apart). Training uses Adam and the
    full-norm adjoint; every few steps, at the current parameters, both norms are measured
    with dopri5 at rtol = atol = 1e-4 and 1e-6, for the mean absolute error ("mean") and
    the same loss summed over the batch and the outputs ("sum": adjoint 320x larger). The
    gradients are compared with each other and with a float64 reference.
(3) ``torchdiffeq``: forward + backward wall time and NFE of neuralode's strategies against
    torchdiffeq's odeint_adjoint (default norm and adjoint_options=dict(norm="seminorm")) on
    the core benchmark's MLP (2 -> 64 -> 64 -> 2, tanh, float32, batches 1, 16, 256, 1024,
    dopri5, rtol=1e-6, atol=1e-8, t in [0, 1]); gradients with respect to y0 and the
    parameters are compared with a float64 reference (torchdiffeq odeint, backprop, rtol 1e-11).

    python benchmarks/bench_gradients.py                      # everything, ~17 min on 2 cores
    python benchmarks/bench_gradients.py --quick              # small version (batch 16)
    python benchmarks/bench_gradients.py --parts seminorm torchdiffeq --out GRAD.md
    python benchmarks/bench_gradients.py --memory-case backsolve 100   # one memory case
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchdiffeq

import neuralode
from neuralode._cli_types import positive_float, positive_int
from neuralode.bench import add_report_arguments, check_report_arguments, write_report
from neuralode.bench import core as bench_core

PARTS = ("memory", "seminorm", "torchdiffeq")
STRATEGIES: dict[str, Callable[[], neuralode.GradientStrategy]] = {
    "direct": neuralode.Direct,
    "backsolve": neuralode.Backsolve,
    "checkpointed": neuralode.Checkpointed,
    "reversible": neuralode.Reversible,
}
MIB = 2.0**20


# ============================================================================================
# (1) memory of the ODE-Net convolutional block
# ============================================================================================


class ConcatConv2d(torch.nn.Module):
    """3x3 convolution of [t, x]: the time enters as one extra constant input channel."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels_in + 1, channels_out, 3, padding=1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).expand(x.shape[0], 1, *x.shape[2:])
        return self.conv(torch.cat([tt, x], 1))


class ConvODEFunc(torch.nn.Module):
    """The ODE-Net dynamics of Chen et al. (2018): norm-relu-conv-norm-relu-conv-norm."""

    def __init__(self, channels: int = 64):
        super().__init__()
        groups = min(32, channels)
        self.norm1 = torch.nn.GroupNorm(groups, channels)
        self.conv1 = ConcatConv2d(channels, channels)
        self.norm2 = torch.nn.GroupNorm(groups, channels)
        self.conv2 = ConcatConv2d(channels, channels)
        self.norm3 = torch.nn.GroupNorm(groups, channels)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(t, torch.relu(self.norm1(x)))
        h = self.conv2(t, torch.relu(self.norm2(h)))
        return self.norm3(h)


class PeakMemory:
    """Peak memory above a baseline: CUDA allocator statistics, or the process's resident set."""

    def __init__(self, device: torch.device):
        self.device = device
        self.method = "cuda max_memory_allocated" if device.type == "cuda" else "VmHWM"

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")  # resets VmHWM to the current resident set
        except OSError:
            self.method = "ru_maxrss (not resettable: includes the warm-up)"
        self.baseline = _proc_status_kib("VmRSS") * 1024

    def peak_above_baseline(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        if self.method == "VmHWM":
            return _proc_status_kib("VmHWM") * 1024 - self.baseline
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.baseline


def _proc_status_kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{key} not found in /proc/self/status")
    return int(match.group(1))


def memory_case(strategy: str, steps: int, batch: int, device: torch.device) -> dict:
    """One forward + backward of the conv block; returns peak memory, time and statistics."""
    torch.manual_seed(0)
    func = ConvODEFunc(64).to(device)
    x = torch.randn(batch, 64, 7, 7, device=device, requires_grad=True)
    ts = torch.tensor([0.0, 1.0], device=device)
    # Warm-up: one evaluation of f and its vector-Jacobian product at this batch size loads
    # the kernels and their workspaces, which every strategy needs anyway.
    out = func(ts[0], x)
    torch.autograd.grad(out, (x, *func.parameters()), torch.ones_like(out))
    del out
    meter = PeakMemory(device)
    meter.start()
    start = time.perf_counter()
    sol = neuralode.solve(
        func,
        x,
        ts,
        solver=neuralode.RK4(),
        controller=neuralode.FixedGrid(step_size=1.0 / steps),
        gradient=STRATEGIES[strategy](),
    )
    sol.ys[-1].square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = meter.peak_above_baseline()
    if sol.stats.n_steps != steps:
        raise RuntimeError(f"expected {steps} steps, the solve took {sol.stats.n_steps}")
    return {
        "strategy": strategy,
        "steps": steps,
        "batch": batch,
        "device": str(device),
        "method": meter.method,
        "peak_bytes": peak,
        "seconds": seconds,
        "nfe": sol.stats.nfe,
        "nfe_backward": sol.stats.nfe_backward,
        "grad_norm": float(x.grad.norm()),
    }


@dataclass
class MemoryRow:
    strategy: str
    steps: int
    peak_bytes: float
    seconds: float
    measured: bool
    nfe: int = 0
    nfe_backward: int = 0


def run_memory_subprocess(strategy: str, steps: int, batch: int, threads: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-case", strategy, str(steps)]
    cmd += ["--batch", str(batch), "--threads", str(threads)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"memory case {strategy}/{steps} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _available_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return 0.9 * free
    return 0.8 * _meminfo_kib("MemAvailable") * 1024


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as fh:
        match = re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE)
    return int(match.group(1)) if match else 0


def _extrapolate(rows: list[MemoryRow], steps: int, attr: str) -> float:
    """Linear in the number of steps through the two largest measured step counts."""
    (s1, v1), (s2, v2) = [(r.steps, getattr(r, attr)) for r in rows[-2:]]
    slope = (v2 - v1) / (s2 - s1)
    return v2 + slope * (steps - s2)


def study_memory(
    steps_list: list[int], batch: int, threads: int, case_seconds: float
) -> list[MemoryRow]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows: list[MemoryRow] = []
    for strategy in STRATEGIES:
        done: list[MemoryRow] = []
        for steps in sorted(steps_list):
            if len(done) >= 2:
                memory = _extrapolate(done, steps, "peak_bytes")
                seconds = _extrapolate(done, steps, "seconds")
                too_big = memory > _available_bytes(device)
                if too_big or seconds > case_seconds:
                    why = "memory" if too_big else "time"
                    print(
                        f"  {strategy} {steps} steps: not run ({why}); extrapolated "
                        f"{memory / MIB:.0f} MiB, {seconds:.0f} s",
                        flush=True,
                    )
                    rows.append(MemoryRow(strategy, steps, memory, seconds, False))
                    continue
            result = run_memory_subprocess(strategy, steps, batch, threads)
            row = MemoryRow(
                strategy,
                steps,
                result["peak_bytes"],
                result["seconds"],
                True,
                result["nfe"],
                result["nfe_backward"],
            )
            print(
                f"  {strategy} {steps} steps: {row.peak_bytes / MIB:.1f} MiB, "
                f"{row.seconds:.1f} s, NFE {row.nfe} + {row.nfe_backward} "
                f"({result['method']}, {result['device']})",
                flush=True,
            )
            done.append(row)
            rows.append(row)
    return rows


def memory_table(rows: list[MemoryRow], batch: int) -> str:
    state_mib = batch * 64 * 7 * 7 * 4 / MIB
    steps_list = sorted({r.steps for r in rows})
    head = "| strategy | " + " | ".join(f"{s} steps" for s in steps_list)
    head += " | per step (MiB) | time (s) |"
    lines = [head, "|---|" + "---:|" * (len(steps_list) + 2)]
    for strategy in STRATEGIES:
        mine = {r.steps: r for r in rows if r.strategy == strategy}
        cells = []
        for s in steps_list:
            r = mine[s]
            text = f"{r.peak_bytes / MIB:,.0f} MiB"
            cells.append(text if r.measured else f"~{text} (extrapolated)")
        measured = [mine[s] for s in steps_list if mine[s].measured]
        slope = (
            (measured[-1].peak_bytes - measured[0].peak_bytes)
            / (measured[-1].steps - measured[0].steps)
            / MIB
            if len(measured) >= 2
            else float("nan")
        )
        times = " / ".join(
            f"{mine[s].seconds:.1f}" + ("" if mine[s].measured else "*") for s in steps_list
        )
        lines.append(f"| {strategy} | " + " | ".join(cells) + f" | {slope:.2f} | {times} |")
    lines.append(
        f"\nstate: {state_mib:.2f} MiB (batch x 64 x 7 x 7 x 4 bytes); checkpointed should "
        f"grow by about that per step. Time: one forward + backward per step count "
        "(* = extrapolated)."
    )
    return "\n".join(lines)


# ============================================================================================
# (2) seminorm: backward NFE on training steps
# ============================================================================================


class MLPField(torch.nn.Module):
    """dy/dt = MLP(y), d -> 64 -> 64 -> d with tanh; counts its calls."""

    def __init__(self, dim: int, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(hidden, dim),
        )
        self.calls = 0

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(y)


def spiral_data(dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchdiffeq's ode_demo spiral (dy/dt = y^3 A from [2, 0]) on t in [0, 25], 1000 points,
    lifted to ``dim`` dimensions by a fixed orthonormal map: (times, states (1000, dim))."""
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]], dtype=torch.float64)
    ts = torch.linspace(0.0, 25.0, 1000, dtype=torch.float64)
    with torch.no_grad():
        ys = torchdiffeq.odeint(
            lambda t, y: (y**3) @ a,
            torch.tensor([[2.0, 0.0]], dtype=torch.float64),
            ts,
            rtol=1e-10,
            atol=1e-12,
        )[:, 0]
    if dim > 2:
        gen = torch.Generator().manual_seed(1000 + seed)
        lift, _ = torch.linalg.qr(torch.randn(dim, 2, generator=gen, dtype=torch.float64))
        ys = ys @ lift.T
    return ts.float(), ys.float()


@dataclass
class SeminormSample:
    dim: int
    tol: float
    loss: str  # "mean" or "sum" reduction of the loss
    seed: int
    iteration: int
    nfe_forward: int
    nfe_full: int
    nfe_semi: int
    rel_semi_full: float
    err_full: float  # relative error against the float64 reference
    err_semi: float


LOSS_SCALES = {"mean": lambda batch, outputs: 1.0, "sum": lambda batch, outputs: batch * outputs}


def _flat_grads(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).clone() for p in params])


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def seminorm_run(
    dim: int,
    seed: int,
    tols: list[float],
    iterations: int,
    every: int,
    batch: int = 32,
    stride: int = 40,
    outputs: int = 5,
) -> list[SeminormSample]:
    """Train on spiral segments (``outputs`` times ``stride`` data points apart) with the
    full-norm adjoint at the smallest tolerance; every ``every`` iterations, at the current
    parameters, compute the gradient with and without the seminorm at each tolerance and
    loss reduction, and a float64 reference gradient."""
    torch.manual_seed(seed)
    times, data = spiral_data(dim, seed)
    func = MLPField(dim)
    params = list(func.parameters())
    optimiser = torch.optim.Adam(params, lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    offsets = [k * stride for k in range(outputs)]
    ts = times[offsets] - times[0]
    samples = []

    def gradient(
        y0: torch.Tensor, target: torch.Tensor, tol: float, seminorm: bool, scale: float
    ) -> tuple[torch.Tensor, neuralode.SolveStats]:
        optimiser.zero_grad()
        sol = neuralode.solve(
            func,
            y0,
            ts,
            controller=neuralode.PIController(rtol=tol, atol=tol),
            gradient=neuralode.Backsolve(seminorm=seminorm),
        )
        ((sol.ys - target).abs().mean() * scale).backward()
        return _flat_grads(params), sol.stats

    for it in range(iterations + 1):
        starts = torch.randint(0, len(times) - offsets[-1], (batch,), generator=gen)
        y0 = data[starts]  # (batch, dim)
        target = torch.stack([data[starts + k] for k in offsets])  # (outputs, batch, dim)
        if it % every == 0:
            reference = _reference_gradient(func, y0, ts, target)
            for tol in tols:
                for loss, scale_of in LOSS_SCALES.items():
                    scale = scale_of(batch, outputs)
                    grad_semi, stats_semi = gradient(y0, target, tol, True, scale)
                    grad_full, stats_full = gradient(y0, target, tol, False, scale)
                    samples.append(
                        SeminormSample(
                            dim,
                            tol,
                            loss,
                            seed,
                            it,
                            stats_full.nfe,
                            stats_full.nfe_backward,
                            stats_semi.nfe_backward,
                            _relative(grad_semi, grad_full),
                            _relative(grad_full, reference * scale),
                            _relative(grad_semi, reference * scale),
                        )
                    )
        if it < iterations:
            gradient(y0, target, min(tols), False, 1.0)
            optimiser.step()
    return samples


def _reference_gradient(
    func: MLPField, y0: torch.Tensor, ts: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """The mean loss's gradient in float64, backprop through torchdiffeq at rtol 1e-10."""
    net = MLPField(func.net[0].in_features).double()
    net.load_state_dict(func.state_dict())
    ys = torchdiffeq.odeint(net, y0.double(), ts.double(), rtol=1e-10, atol=1e-10)
    loss = (ys - target.double()).abs().mean()
    grads = torch.autograd.grad(loss, list(net.parameters()))
    return torch.cat([g.reshape(-1) for g in grads])


def study_seminorm(
    dims: list[int], tols: list[float], seeds: int, iterations: int, every: int
) -> list[SeminormSample]:
    samples = []
    for dim in dims:
        for seed in range(seeds):
            start = time.perf_counter()
            run = seminorm_run(dim, seed, tols, iterations, every)
            samples.extend(run)
            reduction = [1 - s.nfe_semi / s.nfe_full for s in run]
            print(
                f"  dim {dim} seed {seed}: median backward NFE reduction "
                f"{statistics.median(reduction):.0%} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    return samples


def seminorm_table(samples: list[SeminormSample]) -> str:
    lines = [
        "| dims | rtol = atol | loss | samples | forward NFE | backward NFE full norm "
        "| backward NFE seminorm | reduction: median (min - max) | rel. diff semi vs full "
        "(median / max) | rel. error vs float64 ref, full / semi (median) |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    keys = sorted({(s.dim, s.tol, s.loss) for s in samples}, key=lambda k: (k[0], -k[1], k[2]))
    for dim, tol, loss in keys:
        group = [s for s in samples if (s.dim, s.tol, s.loss) == (dim, tol, loss)]
        lines.append(_seminorm_line(f"{dim} | {tol:g} | {loss}", group))
    for loss in LOSS_SCALES:
        group = [s for s in samples if s.loss == loss]
        if group:
            lines.append(_seminorm_line(f"all | all | {loss}", group))
    return "\n".join(lines)


def _seminorm_line(label: str, group: list[SeminormSample]) -> str:
    red = [1 - s.nfe_semi / s.nfe_full for s in group]
    diffs = [s.rel_semi_full for s in group]
    return (
        f"| {label} | {len(group)} "
        f"| {statistics.median(s.nfe_forward for s in group):.0f} "
        f"| {statistics.median(s.nfe_full for s in group):.0f} "
        f"| {statistics.median(s.nfe_semi for s in group):.0f} "
        f"| {statistics.median(red):.0%} ({min(red):.0%} - {max(red):.0%}) "
        f"| {statistics.median(diffs):.1e} / {max(diffs):.1e} "
        f"| {statistics.median(s.err_full for s in group):.1e} / "
        f"{statistics.median(s.err_semi for s in group):.1e} |"
    )


# ============================================================================================
# (3) against torchdiffeq's odeint_adjoint
# ============================================================================================

RTOL, ATOL = 1e-6, 1e-8


def _mlp(dtype: torch.dtype) -> MLPField:
    torch.manual_seed(0)  # the core benchmark's weights
    return MLPField(2).to(dtype)


@dataclass
class Method:
    name: str
    run: Callable[[MLPField, torch.Tensor, torch.Tensor], torch.Tensor]  # -> ys


class _Uncounted(torch.nn.Module):
    """An ``MLPField``'s network without its call counter, for compiled solves (a counter
    changed inside a graph would be guarded on its value); the solve's stats count."""

    def __init__(self, field: MLPField):
        super().__init__()
        self.net = field.net

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _neuralode(
    gradient: Callable[[], neuralode.GradientStrategy], compile_step: bool = False
) -> Callable:
    def run(func: MLPField, y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        sol = neuralode.solve(
            _Uncounted(func) if compile_step else func,
            y0,
            ts,
            solver=neuralode.Dopri5(),
            controller=neuralode.PIController(RTOL, ATOL),
            gradient=gradient(),
            compile_step=compile_step,
        )
        func.stats = sol.stats if compile_step else None  # filled in by the backward pass
        return sol.ys

    return run


def _torchdiffeq_adjoint(seminorm: bool) -> Callable:
    options = dict(norm="seminorm") if seminorm else None

    def run(func: MLPField, y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        return torchdiffeq.odeint_adjoint(
            func, y0, ts, rtol=RTOL, atol=ATOL, method="dopri5", adjoint_options=options
        )

    return run


def _torchdiffeq_direct(func: MLPField, y0: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
    return torchdiffeq.odeint(func, y0, ts, rtol=RTOL, atol=ATOL, method="dopri5")


METHODS = [
    Method("torchdiffeq odeint_adjoint", _torchdiffeq_adjoint(False)),
    Method(
        "neuralode Backsolve(seminorm=False)",
        _neuralode(lambda: neuralode.Backsolve(seminorm=False)),
    ),
    Method("torchdiffeq odeint_adjoint seminorm", _torchdiffeq_adjoint(True)),
    Method("neuralode Backsolve(seminorm=True)", _neuralode(neuralode.Backsolve)),
    Method(
        "neuralode Backsolve(seminorm=True) compiled",
        _neuralode(lambda: neuralode.Backsolve(compile_step=True), compile_step=True),
    ),
    Method("torchdiffeq odeint (backprop)", _torchdiffeq_direct),
    Method("neuralode Direct", _neuralode(neuralode.Direct)),
    Method("neuralode Checkpointed", _neuralode(neuralode.Checkpointed)),
]


@dataclass
class TimingRow:
    batch: int
    method: str
    seconds: float
    nfe_forward: int
    nfe_backward: int
    rel_error: float  # max over tensors of ||g - g_ref|| / ||g_ref||
    rel_vs_torchdiffeq: float  # against torchdiffeq's adjoint with the same norm
    grads: list[torch.Tensor] = field(repr=False, default_factory=list)


def _inputs(batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    y0 = torch.randn(batch, 2, generator=gen, dtype=torch.float32).to(dtype)
    weights = torch.randn(batch, 2, generator=gen, dtype=torch.float32).to(dtype)
    return y0, torch.tensor([0.0, 1.0], dtype=dtype), weights


def _forward_backward(method: Method, func: MLPField, batch: int) -> tuple[float, int, int, list]:
    y0, ts, weights = _inputs(batch, torch.float32)
    y0.requires_grad_(True)
    func.zero_grad()
    func.calls = 0
    start = time.perf_counter()
    ys = method.run(func, y0, ts)
    nfe_forward = func.calls
    (ys[-1] * weights).sum().backward()
    seconds = time.perf_counter() - start
    grads = [y0.grad.clone()] + [p.grad.clone() for p in func.parameters()]
    stats = getattr(func, "stats", None)
    if stats is not None:  # a compiled solve: f's calls counted by the solver
        return seconds, stats.nfe, stats.nfe_backward, grads
    return seconds, nfe_forward, func.calls - nfe_forward, grads


def _reference_grads(batch: int) -> list[torch.Tensor]:
    func = _mlp(torch.float64)
    y0, ts, weights = _inputs(batch, torch.float64)
    y0.requires_grad_(True)
    ys = torchdiffeq.odeint(func, y0, ts, rtol=1e-11, atol=1e-13, method="dopri5")
    (ys[-1] * weights).sum().backward()
    return [y0.grad] + [p.grad for p in func.parameters()]


def _max_relative(grads: list[torch.Tensor], reference: list[torch.Tensor]) -> float:
    return max(_relative(g, r) for g, r in zip(grads, reference))


def study_torchdiffeq(batches: list[int], repeats: int) -> list[TimingRow]:
    rows = []
    for batch in batches:
        funcs = {m.name: _mlp(torch.float32) for m in METHODS}
        for m in METHODS:  # warm-up
            _forward_backward(m, funcs[m.name], batch)
        times: dict[str, list[float]] = {m.name: [] for m in METHODS}
        last: dict[str, tuple] = {}
        for r in range(repeats):
            order = METHODS[r % len(METHODS) :] + METHODS[: r % len(METHODS)]
            for m in order:
                result = _forward_backward(m, funcs[m.name], batch)
                times[m.name].append(result[0])
                last[m.name] = result
        reference = _reference_grads(batch)
        td_full = last["torchdiffeq odeint_adjoint"][3]
        td_semi = last["torchdiffeq odeint_adjoint seminorm"][3]
        for m in METHODS:
            _, nfe_f, nfe_b, grads = last[m.name]
            twin = td_semi if "seminorm" in m.name and "False" not in m.name else td_full
            rows.append(
                TimingRow(
                    batch,
                    m.name,
                    statistics.median(times[m.name]),
                    nfe_f,
                    nfe_b,
                    _max_relative(grads, reference),
                    _max_relative(grads, twin),
                )
            )
        print(f"  batch {batch} done", flush=True)
    return rows


def torchdiffeq_table(rows: list[TimingRow]) -> str:
    lines = [
        "| batch | method | time fwd+bwd (ms) | speed-up vs torchdiffeq adjoint (same norm) "
        "| NFE fwd | NFE bwd | rel. grad error vs float64 ref | rel. diff vs torchdiffeq adjoint |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.batch, r.method): r for r in rows}
    for r in rows:
        semi = "seminorm" in r.method and "False" not in r.method
        base = by_key[(r.batch, "torchdiffeq odeint_adjoint" + (" seminorm" if semi else ""))]
        lines.append(
            f"| {r.batch} | {r.method} | {r.seconds * 1e3:.1f} | {base.seconds / r.seconds:.2f}x "
            f"| {r.nfe_forward} | {r.nfe_backward} | {r.rel_error:.1e} "
            f"| {r.rel_vs_torchdiffeq:.1e} |"
        )
    return "\n".join(lines)


# ============================================================================================
# reporting and command line
# ============================================================================================


def environment() -> str:
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    ram = _meminfo_kib("MemTotal") / 2**20
    return f"{bench_core.environment()}; RAM {ram:.0f} GiB; GPU: {gpu}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small version of every part")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    add_report_arguments(parser)
    parser.add_argument(
        "--threads", type=positive_int, default=os.cpu_count(), help="torch threads"
    )
    parser.add_argument(
        "--batch", type=positive_int, help="batch of the memory study (default 128)"
    )
    parser.add_argument(
        "--steps", type=positive_int, nargs="+", help="step counts of the memory study"
    )
    parser.add_argument(
        "--case-seconds",
        type=positive_float,
        default=420.0,
        help="memory cases extrapolated to take longer than this are not run",
    )
    parser.add_argument(
        "--memory-case",
        nargs=2,
        metavar=("STRATEGY", "STEPS"),
        help="run one memory case in this process and print it as JSON",
    )
    args = parser.parse_args(argv)
    check_report_arguments(parser, args)

    if args.memory_case:
        strategy, steps = args.memory_case
        if strategy not in STRATEGIES:
            parser.error(f"strategy must be one of {list(STRATEGIES)}, got {strategy!r}")
        try:
            steps = positive_int(steps)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--memory-case STEPS: {error}")
    torch.set_num_threads(args.threads)

    if args.memory_case:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(memory_case(strategy, steps, args.batch or 128, device)))
        return

    quick = args.quick
    print(environment(), flush=True)
    sections = [f"Environment: {environment()}"]
    if "memory" in args.parts:
        batch = args.batch or (16 if quick else 128)
        steps = args.steps or ([10, 100] if quick else [10, 100, 1000])
        print(f"(1) memory, batch {batch}, steps {steps}", flush=True)
        rows = study_memory(steps, batch, args.threads, args.case_seconds)
        sections.append(
            f"### Peak memory of one forward + backward, ODE-Net conv block, batch {batch}, "
            f"rk4, {rows and ('CUDA' if torch.cuda.is_available() else 'CPU')}\n\n"
            + memory_table(rows, batch)
        )
    if "seminorm" in args.parts:
        dims, tols = ([2], [1e-4]) if quick else ([2, 16], [1e-4, 1e-6])
        seeds, iterations, every = (2, 20, 10) if quick else (4, 60, 15)
        print(f"(2) seminorm, dims {dims}, tolerances {tols}, {seeds} seeds", flush=True)
        samples = study_seminorm(dims, tols, seeds, iterations, every)
        sections.append(
            f"### Backward NFE with and without the seminorm: spiral segments, batch 32, "
            f"5 outputs 1.0 apart, {seeds} seeds x measurements at iterations "
            f"0, {every}, ..., {iterations} of Adam (lr 3e-3)\n\n" + seminorm_table(samples)
        )
    if "torchdiffeq" in args.parts:
        batches, repeats = ([1, 16, 256], 3) if quick else ([1, 16, 256, 1024], 11)
        print(f"(3) against torchdiffeq, batches {batches}, {repeats} repeats", flush=True)
        rows = study_torchdiffeq(batches, repeats)
        sections.append(
            "### Forward + backward against torchdiffeq, MLP 2-64-64-2, dopri5 "
            f"rtol={RTOL} atol={ATOL}, median of {repeats}\n\n" + torchdiffeq_table(rows)
        )
    report = "\n\n".join(sections)
    print()
    print(report)
    write_report(args, report)


if __name__ == "__main__":
    main()
