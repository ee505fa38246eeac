"""Delay differential equations: ``neuralode.dde.solve_dde`` against torchdde 0.1.3.

Problems: (a) y' = -y(t - tau), y = 1 for t <= 0, tau = 1, on [0, 10] in float64 (float32
with dopri5: torchdde's dopri5 runs in float32 only), whose exact solution is a polynomial
on each [k tau, (k + 1) tau]; (b) a neural DDE
y' = MLP([y(t), y(t - tau)]) (2d -> 64 -> d, tanh; d = 4, batch 64, tau = 1 learnable) on
[0, 10] in float32, against a float64 solve of ours at rtol 1e-10. Both libraries solve with
rk4 on a fixed step of 0.1 and with dopri5 at the same rtol/atol (each its own controller;
torchdde's with dtmax = tau, see ``torchdde_solve``), output at 21 times. torchdde's adjoint
is run on (b) only: on (a), whose f does not use y(t), it fails (AttributeError).
Forward and forward + backward of ``ys.square().mean()`` (ours: Direct backpropagation;
torchdde: its backpropagation, ``discretize_then_optimize=True``, and its adjoint,
``False``), the two libraries alternating in one process; errors of ys (max over times and
samples) and of the gradient (relative, over the MLP's parameters and tau); NFE counted as
calls of the vector field in the forward pass. The forward times build the graph
(as a training step does; torchdde's adjoint builds none).

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_dde.py
    python benchmarks/bench_dde.py --repeats 1      # a smoke run

``--gradients``: ours alone on (b), ``gradient=Direct()`` against ``Checkpointed()`` (rk4 and
dopri5 as above): the bytes of the tensors the forward pass keeps for the backward (those
autograd saves, counted by ``saved_tensors_hooks``, and the intervals' dense rows, each
storage once), the heap the forward leaves allocated (glibc ``mallinfo2``: the tensors and
the autograd graph's nodes), the rise of the peak resident set over a forward + backward
(``VmHWM``, each case in a fresh process) and the forward + backward time (the two
alternating in one process).

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_dde.py --gradients

Needs ``pip install --no-deps torchdde==0.1.3 jaxtyping`` (``--no-deps``: torchdde would pull
its own torch).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import functools
import gc
import json
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from fractions import Fraction
from math import factorial
from typing import Any

import torch
from torch import nn

import neuralode as no
from neuralode._cli_types import positive_int
from neuralode.bench import environment
from neuralode.dde import solve_dde

T1, N_OUT, STEP, DELAY = 10.0, 21, 0.1, 1.0
TOLERANCES = {"a": (1e-6, 1e-8), "b": (1e-5, 1e-7)}  # (rtol, atol) of dopri5


def exact_a(t: float, tau: float) -> tuple[float, float]:
    """(y(t), dy(t)/dtau) of y' = -y(t - tau), y = 1 before 0: on [k tau, (k + 1) tau],
    y = sum_{n=0}^{k+1} (-1)^n (t - (n - 1) tau)^n / n!, summed in exact rationals."""
    t_, tau_ = Fraction(t), Fraction(tau)
    y, dy = Fraction(0), Fraction(0)
    n = 0
    while t_ - (n - 1) * tau_ >= 0:
        s = t_ - (n - 1) * tau_
        y += (-1) ** n * s**n / factorial(n)
        if n >= 1:  # d/dtau of s^n / n! = -(n - 1) s^(n - 1) / (n - 1)!
            dy += (-1) ** (n + 1) * (n - 1) * s ** (n - 1) / factorial(n - 1)
        n += 1
    return float(y), float(dy)


class Field(nn.Module):
    """The vector field of both libraries: ``net([y, y(t - tau)])`` (or, without a net,
    -y(t - tau)), counting its calls; ``delays`` the learnable delay (torchdde's adjoint
    reads ``func.delays``)."""

    def __init__(self, net: nn.Module | None, dtype: torch.dtype):
        super().__init__()
        # (first: torchdde's adjoint adds the delay's gradient to the first parameter)
        self.delays = nn.Parameter(torch.tensor([DELAY], dtype=dtype))
        self.net = net
        self.calls = 0

    def field(self, y: torch.Tensor, delayed: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.net is None:
            return -delayed
        return self.net(torch.cat([y, delayed], -1))

    def forward(self, t: torch.Tensor, y: torch.Tensor, args: Any, *, history: list) -> Any:
        return self.field(y, history[0])  # torchdde's signature


def problem(name: str, dtype: torch.dtype) -> tuple[Field, torch.Tensor, torch.Tensor]:
    """(the field, ts, y0 = the constant history) of problem ``name``."""
    if name == "a":
        return Field(None, dtype), torch.linspace(0, T1, N_OUT, dtype=dtype), torch.ones(1, 1)
    torch.manual_seed(0)
    d = 4  # (float32 only)
    net = nn.Sequential(nn.Linear(2 * d, 64), nn.Tanh(), nn.Linear(64, d))
    return Field(net, torch.float32), torch.linspace(0, T1, N_OUT), torch.randn(64, d)


def ours(
    field: Field,
    ts: torch.Tensor,
    y0: torch.Tensor,
    solver: str,
    rtol_atol,
    gradient: Any = None,
    dense: bool = False,
) -> Any:
    y0 = y0.to(ts.dtype)
    if solver == "rk4":
        options = dict(solver=no.RK4(), controller=no.FixedGrid(step_size=STEP))
    else:
        rtol, atol = rtol_atol
        options = dict(solver=no.Dopri5(), controller=no.PIController(rtol=rtol, atol=atol))
    sol = solve_dde(
        lambda t, y, d: field.field(y, d[0]),
        y0,
        ts,
        field.delays,
        gradient=gradient,
        dense=dense,
        **options,
    )
    if dense:
        return sol
    return sol.ys.transpose(0, 1)  # (batch, time, d), as torchdde's


def torchdde_solve(
    field: Field, ts: torch.Tensor, y0: torch.Tensor, solver: str, rtol_atol, adjoint: bool
) -> torch.Tensor:
    import torchdde

    y0 = y0.to(ts.dtype)
    if solver == "rk4":
        method, controller = torchdde.RK4(), torchdde.ConstantStepSizeController()
        dt0 = torch.tensor(STEP, dtype=ts.dtype)
    else:
        rtol, atol = rtol_atol
        method, dt0 = torchdde.Dopri5(), None
        # (stateful: a new one per solve) dtmax = tau: a proposed step longer than the
        # smallest delay is cut to it in dt but not in tnext (0.1.3), which misplaces the
        # step's interpolant (errors of order 1 on (b)); steps no longer than tau avoid it
        controller = torchdde.AdaptiveStepSizeController(atol=atol, rtol=rtol, dtmax=DELAY)
    return torchdde.integrate(
        field,
        method,
        ts[0],
        ts[-1],
        ts,
        lambda t: y0,
        None,
        stepsize_controller=controller,
        dt0=dt0,
        delays=field.delays,
        discretize_then_optimize=not adjoint,
    )


def reference(name: str, field: Field, ts: torch.Tensor, y0: torch.Tensor):
    """(ys (batch, time, d), the gradient of ys.square().mean()): exact for (a); for (b) a
    float64 dopri5 solve of ours at rtol 1e-10, atol 1e-12, backpropagated."""
    if name == "a":
        values = [exact_a(float(t), DELAY) for t in ts.double()]
        ys = torch.tensor([v for v, _ in values], dtype=torch.float64).reshape(1, -1, 1)
        grad = sum(2 * v * g for v, g in values) / len(values)
        return ys, [torch.tensor([grad], dtype=torch.float64)]
    double = copy.deepcopy(field).double()
    ys = ours(double, ts.double(), y0.double(), "dopri5", (1e-10, 1e-12))
    grads = torch.autograd.grad(ys.square().mean(), list(double.parameters()))
    return ys.detach(), grads


def measure(run: Callable[[], torch.Tensor], field: Field, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        loss = run().square().mean()
        torch.autograd.grad(loss, list(field.parameters()))
    else:  # (building the graph, as a training step does)
        run()
    return time.perf_counter() - start


def compare(name: str, solver: str, repeats: int) -> list[dict]:
    # torchdde 0.1.3's dopri5 interpolation is float32 only (its coefficients are cast to
    # float32; a float64 state raises): (a) with dopri5 runs in float32
    dtype = torch.float64 if name == "a" and solver == "rk4" else torch.float32
    field, ts, y0 = problem(name, dtype)
    ref_ys, ref_grads = reference(name, field, ts, y0)
    rtol_atol = TOLERANCES[name]
    runs = {
        "neuralode (Direct)": lambda: ours(field, ts, y0, solver, rtol_atol),
        "torchdde (backprop)": lambda: torchdde_solve(field, ts, y0, solver, rtol_atol, False),
        "torchdde (adjoint)": lambda: torchdde_solve(field, ts, y0, solver, rtol_atol, True),
    }
    if field.net is None:  # torchdde's adjoint fails on an f without y(t) (the gradient of
        del runs["torchdde (adjoint)"]  # f with respect to y is None: AttributeError)
    rows = {}
    for label, run in runs.items():  # accuracy, gradient and NFE of one solve each
        field.calls = 0
        ys = run()
        nfe = field.calls
        grads = torch.autograd.grad(ys.square().mean(), list(field.parameters()))
        flat = torch.cat([g.detach().reshape(-1).double() for g in grads])
        ref = torch.cat([g.reshape(-1).double() for g in ref_grads])
        rows[label] = {
            "problem": f"{name}, {str(dtype)[6:]}",
            "solver": solver,
            "library": label,
            "error": float((ys.detach().double() - ref_ys.double()).abs().max()),
            "grad_error": float((flat - ref).norm() / ref.norm()),
            "nfe": nfe,
            "fwd": [],
            "fwd_bwd": [],
        }
    for _ in range(repeats):  # the libraries alternating, forward and forward + backward
        for label, run in runs.items():
            rows[label]["fwd"].append(measure(run, field, False))
            rows[label]["fwd_bwd"].append(measure(run, field, True))
    return list(rows.values())


def table(rows: list[dict]) -> str:
    lines = [
        "| problem | solver | library (gradient) | forward ms best / median | "
        "fwd + bwd ms best / median | max error of ys | gradient rel. error | NFE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def ms(times: list[float]) -> str:
            return f"{1e3 * min(times):.1f} / {1e3 * statistics.median(times):.1f}"

        lines.append(
            f"| ({r['problem']}) | {r['solver']} | {r['library']} | {ms(r['fwd'])} | "
            f"{ms(r['fwd_bwd'])} | {r['error']:.1e} | {r['grad_error']:.1e} | {r['nfe']} |"
        )
    return "\n".join(lines)


def _heap_in_use() -> int:
    """Bytes malloc has handed out and not taken back (glibc ``mallinfo2``)."""
    libc = ctypes.CDLL("libc.so.6")

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
            "keepcost".split()
        ]

    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


def _kib(key: str) -> int:
    with open("/proc/self/status") as fh:
        return int(re.search(rf"^{key}:\s+(\d+) kB", fh.read(), re.MULTILINE).group(1))


def memory_case(solver: str, strategy: str) -> dict:
    """One forward + backward of (b) (float32) with ``strategy``: kept tensor bytes, heap
    left by the forward, rise of the peak resident set (run in a fresh process)."""
    field, ts, y0 = problem("b", torch.float32)
    gradient = {"Direct": no.Direct(), "Checkpointed": no.Checkpointed()}[strategy]
    params = list(field.parameters())
    short = ts[ts <= 2.0]  # warm-up: the kernels and the allocator's first arenas
    warm = ours(field, short, y0, solver, TOLERANCES["b"], gradient).square().mean()
    torch.autograd.grad(warm, params)
    del warm
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    rss, heap = _kib("VmRSS"), _heap_in_use()
    saved: dict[int, int] = {}

    def pack(x: torch.Tensor) -> torch.Tensor:
        saved[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        sol = ours(field, ts, y0, solver, TOLERANCES["b"], gradient, dense=True)
    heap_after = _heap_in_use()
    kept = dict(saved)
    for part in sol.interpolation.parts:
        kept[part.rows.untyped_storage().data_ptr()] = part.rows.untyped_storage().nbytes()
    torch.autograd.grad(sol.ys.square().mean(), params)
    return {
        "saved": sum(saved.values()),
        "kept": sum(kept.values()),
        "heap": heap_after - heap,
        "peak": (_kib("VmHWM") - rss) * 1024,
        "steps": sol.stats.n_steps,
        "nfe": sol.stats.nfe,
        "nfe_backward": sol.stats.nfe_backward,
    }


def gradients(repeats: int) -> str:
    """The ``--gradients`` table: Direct against Checkpointed on (b)."""
    lines = [
        "| solver | gradient | steps | NFE fwd / bwd | kept tensors MB (saved by autograd) "
        "| heap after forward MB | peak RSS rise fwd + bwd MB | fwd + bwd ms best / median |",
        "|---|---|---|---|---|---|---|---|",
    ]
    mb = 1 / 2**20
    notes = []
    if "torch._dynamo" not in sys.modules:  # (torch.utils.checkpoint imports it at its first call)
        start = time.perf_counter()
        import torch._dynamo  # noqa: F401

        notes.append(f"import torch._dynamo: {time.perf_counter() - start:.2f} s")
    for solver in ("rk4", "dopri5"):
        field, ts, y0 = problem("b", torch.float32)
        runs = {
            name: functools.partial(ours, field, ts, y0, solver, TOLERANCES["b"], gradient)
            for name, gradient in (("Direct", no.Direct()), ("Checkpointed", no.Checkpointed()))
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for run in runs.values():  # (warm-up)
            measure(run, field, True)
        for _ in range(repeats):
            for name, run in runs.items():
                times[name].append(measure(run, field, True))
        strategies = runs
        for name in strategies:
            out = subprocess.run(
                [sys.executable, __file__, "--memory-case", solver, name],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            m = json.loads(out.stdout.splitlines()[-1])
            t = times[name]
            lines.append(
                f"| {solver} | {name} | {m['steps']} | {m['nfe']} / {m['nfe_backward']} | "
                f"{m['kept'] * mb:.2f} ({m['saved'] * mb:.2f}) | {m['heap'] * mb:.1f} | "
                f"{m['peak'] * mb:.1f} | "
                f"{1e3 * min(t):.1f} / {1e3 * statistics.median(t):.1f} |"
            )
    return "\n".join(lines + notes)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed repeats per case")
    parser.add_argument("--problems", nargs="+", choices=("a", "b"), default=["a", "b"])
    parser.add_argument(
        "--solvers", nargs="+", choices=("rk4", "dopri5"), default=["rk4", "dopri5"]
    )
    parser.add_argument(
        "--gradients", action="store_true", help="Direct against Checkpointed on (b) instead"
    )
    parser.add_argument("--memory-case", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.memory_case:
        print(json.dumps(memory_case(*args.memory_case)))
        return
    print(environment())
    if args.gradients:
        print(gradients(args.repeats))
        return
    rows = []
    for name in args.problems:
        for solver in args.solvers:
            rows += compare(name, solver, args.repeats)
    print(table(rows))


if __name__ == "__main__":
    main()
