"""Neural CDE against torchcde (over torchdiffeq): the same model, weights and data, solved by
``neuralode.cde.cdeint`` and ``torchcde.cdeint``; forward, and forward + backward by
backpropagation and by the adjoint, timed alternately in one process.

The model is the standard neural CDE classifier (a vector field MLP hidden -> width ->
hidden x channels with a tanh output) on irregularly sampled spirals, a natural cubic spline
of each series; dopri5 at torchcde's default tolerances (rtol 1e-4, atol 1e-6), the adjoint
also with torchdiffeq's seminorm (``adjoint_options=dict(norm="seminorm")``). torchcde
installs from the registry (``pip install torchcde``, or ``--no-deps`` beside the bench
extras); it is never a dependency of neuralode.

    flock /tmp/neuralode-timing.lock taskset -c 1 python benchmarks/bench_cde.py
    python benchmarks/bench_cde.py --repeats 1      # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from neuralode import cde
from neuralode._cli_types import positive_int
from neuralode.bench import environment


class VectorField(torch.nn.Module):
    """f(t, z): hidden -> width -> hidden x channels, tanh output."""

    def __init__(self, channels: int, hidden: int, width: int):
        super().__init__()
        self.channels, self.hidden = channels, hidden
        self.net = torch.nn.Sequential(
            torch.nn.Linear(hidden, width),
            torch.nn.ReLU(),
            torch.nn.Linear(width, hidden * channels),
            torch.nn.Tanh(),
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(*z.shape[:-1], self.hidden, self.channels)


def spirals(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length, 3) series: time, and a spiral's x and y, half of them clockwise, at
    sorted random times in [0, 4 pi]."""
    g = torch.Generator().manual_seed(seed)
    t = torch.sort(torch.rand(batch, length, generator=g) * 4 * math.pi, dim=1).values
    sign = torch.where(torch.arange(batch) % 2 == 0, 1.0, -1.0)[:, None]
    radius = 1 + 0.1 * t
    x = radius * torch.cos(sign * t) + 0.05 * torch.randn(batch, length, generator=g)
    y = radius * torch.sin(sign * t) + 0.05 * torch.randn(batch, length, generator=g)
    return torch.stack([t, x, y], dim=-1)


def timed(run: Callable[..., object], *args: object) -> float:
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def case(torchcde, batch: int, length: int, hidden: int, width: int, repeats: int) -> list[str]:
    """One table row per mode: ours, theirs, the ratio, and the outputs' largest difference."""
    torch.manual_seed(0)
    x = spirals(batch, length)
    func = VectorField(3, hidden, width)
    initial = torch.nn.Linear(3, hidden)
    ours_X = cde.CubicSpline(cde.natural_cubic_coeffs(x))
    theirs_X = torchcde.CubicSpline(torchcde.natural_cubic_coeffs(x))
    params = (*func.parameters(), *initial.parameters())

    def solve(library, X, adjoint: Any, backward: bool) -> torch.Tensor:
        z0 = initial(X.evaluate(X.interval[0]))
        kwargs = dict(method="dopri5", adjoint=bool(adjoint))
        if adjoint:
            kwargs["adjoint_params"] = tuple(func.parameters())
        if adjoint == "seminorm":
            kwargs["adjoint_options"] = dict(norm="seminorm")
        zT = library.cdeint(X, func, z0, X.interval, **kwargs)[:, -1]
        if backward:
            torch.autograd.grad(zT.square().sum(), params)
        return zT.detach()

    with torch.no_grad():  # the reference: float64 copies at rtol 1e-10
        func64, initial64 = copy.deepcopy(func).double(), copy.deepcopy(initial).double()
        X64 = cde.CubicSpline(cde.natural_cubic_coeffs(x.double()))
        z0 = initial64(X64.evaluate(X64.interval[0]))
        exact = cde.cdeint(X64, func64, z0, X64.interval, adjoint=False, rtol=1e-10, atol=1e-12)
        exact = exact[:, -1].float()
        scale = float(exact.abs().max())
        error_ours = float((solve(cde, ours_X, False, False) - exact).abs().max()) / scale
        error_theirs = float((solve(torchcde, theirs_X, False, False) - exact).abs().max()) / scale
    rows = [
        f"| {batch} x {length}, hidden {hidden} | z_T's error | {error_ours:.1e} | "
        f"{error_theirs:.1e} | |"
    ]
    for mode, adjoint, backward in (
        ("forward", False, False),
        ("forward + backward (backprop)", False, True),
        ("forward + backward (adjoint)", True, True),
        ("forward + backward (adjoint, seminorm)", "seminorm", True),
    ):
        grad = torch.enable_grad() if backward else torch.no_grad()
        with grad:
            ours, theirs = [], []
            for _ in range(repeats):  # alternating, so that both see the same machine state
                ours.append(timed(solve, cde, ours_X, adjoint, backward))
                theirs.append(timed(solve, torchcde, theirs_X, adjoint, backward))
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append(
            f"| {batch} x {length}, hidden {hidden} | {mode} | {a * 1e3:.1f} | {b * 1e3:.1f} | "
            f"{b / a:.2f}x |"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed repeats per case")
    args = parser.parse_args(argv)
    try:
        import torchcde
    except ImportError:
        parser.error("torchcde is not installed: pip install --no-deps torchcde")
    torch.set_num_threads(1)
    print(environment())
    print("| batch x length | mode | neuralode (ms) | torchcde (ms) | speed-up |")
    print("|---|---|---|---|---|")
    for batch, length, hidden, width in ((32, 50, 16, 64), (128, 100, 32, 128)):
        for row in case(torchcde, batch, length, hidden, width, args.repeats):
            print(row, flush=True)
    print(
        "z_T's error: max |z_T - reference| / max |z_T| of the forward solve at the default "
        "tolerances; the reference: the same model and data in float64 at rtol 1e-10, atol 1e-12"
    )


if __name__ == "__main__":
    main()
