"""Neural SDE benchmark against torchsde: diagonal noise, batch 512, state 8, dt 2^-7 on
[0, 1] (128 steps), float32, euler / milstein / srk; forward alone and forward + adjoint
backward (each library's default adjoint method: milstein for this Itô diagonal SDE); and the
adjoint's peak memory at 128 against 1024 steps.

"Same Brownian motion": each solve gets a fresh ``BrownianInterval`` of one library (torchsde's
by default, ours with ``brownian="ours"``) with the same entropy, so both libraries integrate
the same sample path; the outputs agree to round-off of the query times (``max abs diff``),
and so do the gradients of the backward rows (with respect to the weights and y0).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from .. import sde as nsde

# dt a power of two: float32 holds every step's end exactly, so torchsde's steps land on t1.
# With dt = 1e-2 its float32 times reach 0.99999934 after 100 steps and a 6.6e-7 step
# follows, whose query makes torchsde's Brownian interval build a deep tree (about 2 s of
# its 0.2 s per euler solve here), which would time that step and not the solvers.
BATCH, STATE, HIDDEN, DT = 512, 8, 64, 2**-7


class NeuralSDE(nn.Module):
    """Drift MLP 8-64-64-8 (tanh); diagonal diffusion: per channel an MLP 1-16-1 (tanh, sigmoid
    output), so each ``g_i`` depends on ``y_i`` only, as diagonal-noise Milstein assumes."""

    noise_type = "diagonal"
    sde_type = "ito"

    def __init__(self, state: int = STATE, hidden: int = HIDDEN):
        super().__init__()
        self.drift = nn.Sequential(
            nn.Linear(state, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, state),
        )
        self.w1 = nn.Parameter(torch.randn(state, 16))
        self.b1 = nn.Parameter(torch.zeros(state, 16))
        self.w2 = nn.Parameter(torch.randn(state, 16) / 4)
        self.b2 = nn.Parameter(torch.zeros(state))

    def f(self, t, y):
        return self.drift(y)

    def g(self, t, y):
        hidden = torch.tanh(y.unsqueeze(-1) * self.w1 + self.b1)
        return 0.3 * torch.sigmoid((hidden * self.w2).sum(-1) + self.b2)


@dataclass
class Row:
    method: str
    mode: str
    ours: list[float] = field(default_factory=list)
    theirs: list[float] = field(default_factory=list)
    diff: float = 0.0  # max abs difference of the outputs
    grad_diff: float | None = None  # of the gradients (backward rows only)

    @property
    def speedup(self) -> float:
        return statistics.median(self.theirs) / statistics.median(self.ours)


def _brownian(library, entropy: int, levy: str):
    return library.BrownianInterval(
        t0=0.0,
        t1=1.0,
        size=(BATCH, STATE),
        dtype=torch.float32,
        entropy=entropy,
        levy_area_approximation=levy,
    )


def _run(library, sde, y0, ts, bm, method: str, backward: bool):
    if backward:
        ys = library.sdeint_adjoint(sde, y0, ts, bm=bm, method=method, dt=DT)
        ys[-1].square().mean().backward()
        return ys.detach()
    with torch.no_grad():
        return library.sdeint(sde, y0, ts, bm=bm, method=method, dt=DT)


def _gradient(sde: nn.Module, y0: torch.Tensor) -> torch.Tensor:
    """The gradient the last backward left on the weights and on y0, flat."""
    leaves = [*sde.parameters(), y0]
    return torch.cat([leaf.grad.reshape(-1) for leaf in leaves])


def run(
    repeats: int = 5,
    brownian: str = "theirs",
    methods: tuple[str, ...] = ("euler", "milstein", "srk"),
) -> list[Row]:
    """Times both libraries, the first to run alternating from round to round, after one
    warm-up round; compares their outputs and (backward rows) their gradients.

    Arguments:
        repeats: timed rounds per method and mode.
        brownian: whose ``BrownianInterval`` both libraries get, ``"theirs"`` or ``"ours"``.
        methods: the solvers.

    Returns:
        One row per method and mode (forward, then forward + adjoint backward).
    """
    import torchsde

    torch.manual_seed(0)
    sde = NeuralSDE()
    y0 = torch.randn(BATCH, STATE, requires_grad=True)
    ts = torch.tensor([0.0, 1.0])
    rows = []
    for backward in (False, True):
        for method in methods:
            levy = "space-time" if method == "srk" else "none"
            row = Row(method, "forward + adjoint backward" if backward else "forward")
            pair = ((nsde, row.ours), (torchsde, row.theirs))
            for r in range(repeats + 1):
                outs, grads = {}, {}
                for library, times in pair if r % 2 else pair[::-1]:
                    source = nsde if brownian == "ours" else torchsde
                    bm = _brownian(source, 1234 + r, levy)
                    sde.zero_grad()
                    y0.grad = None
                    start = time.perf_counter()
                    outs[library] = _run(library, sde, y0, ts, bm, method, backward)
                    if r:  # the first round warms up
                        times.append(time.perf_counter() - start)
                    if backward:
                        grads[library] = _gradient(sde, y0)
                row.diff = max(row.diff, (outs[nsde] - outs[torchsde]).abs().max().item())
                if backward:
                    diff = (grads[nsde] - grads[torchsde]).abs().max().item()
                    row.grad_diff = max(row.grad_diff or 0.0, diff)
            rows.append(row)
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| method | pass | neuralode (ms) | torchsde (ms) | speed-up | max abs diff "
        "| max abs diff of the gradients |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        grad_diff = "-" if r.grad_diff is None else f"{r.grad_diff:.1e}"
        lines.append(
            f"| {r.method} | {r.mode} | {1e3 * statistics.median(r.ours):.1f} | "
            f"{1e3 * statistics.median(r.theirs):.1f} | {r.speedup:.2f}x | {r.diff:.1e} "
            f"| {grad_diff} |"
        )
    return "\n".join(lines)


_CHILD = """
import resource, sys, torch
from neuralode.bench import sde as bench
library_name, mode, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
if library_name == "torchsde":
    import torchsde as library
else:
    from neuralode import sde as library
torch.set_num_threads(1)
torch.manual_seed(0)
model = bench.NeuralSDE()
y0 = torch.randn(bench.BATCH, bench.STATE, requires_grad=True)
bm = bench._brownian(library, 7, "none")
ts = torch.tensor([0.0, 1.0])
solve = library.sdeint_adjoint if mode == "adjoint" else library.sdeint
warm = bench._brownian(library, 8, "none")
solve(model, y0, ts, bm=warm, method="euler", dt=0.5)[-1].sum().backward()
with open("/proc/self/statm") as fh:
    before = int(fh.read().split()[1]) * resource.getpagesize()
ys = solve(model, y0, ts, bm=bm, method="euler", dt=1.0 / steps)
ys[-1].square().mean().backward()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print((peak - before) / 2**20)
"""


def memory(steps=(128, 1024)) -> list[tuple[int, float, float, float]]:
    """Extra peak resident memory (MiB) of one forward + backward (euler; the adjoint's default
    milstein backward), each in a fresh process: peak RSS minus the RSS just before the solve,
    with glibc's malloc taking every block from mmap and returning freed memory at once.
    Rows: (steps, neuralode adjoint, torchsde adjoint, neuralode backprop)."""
    import os
    import subprocess
    import sys

    # every allocation from mmap and freed memory returned at once: the RSS follows the live
    # memory, so "peak minus before" does not depend on what the warm-up left in malloc's pools
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0")
    rows = []
    for n in steps:
        values = []
        for library, mode in (
            ("neuralode", "adjoint"),
            ("torchsde", "adjoint"),
            ("neuralode", "backprop"),
        ):
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, library, mode, str(n)],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            values.append(float(out.stdout.strip().splitlines()[-1]))
        rows.append((n, *values))
    return rows


def memory_table(rows) -> str:
    lines = [
        "| steps | neuralode adjoint (MiB) | torchsde adjoint (MiB) | neuralode backprop (MiB) |",
        "| ---: | ---: | ---: | ---: |",
    ]
    for n, ours, theirs, backprop in rows:
        lines.append(f"| {n} | {ours:.2f} | {theirs:.2f} | {backprop:.1f} |")
    return "\n".join(lines)
