"""Neural CDE benchmark against torchcde (over torchdiffeq): the same model, weights and data,
solved by ``neuralode.cde.cdeint`` and ``torchcde.cdeint``; forward, and forward + backward by
backpropagation and by the adjoint (also with the seminorm), timed alternately in one process;
and neuralode's forward and adjoint with the whole solve compiled (``compile=True``) against
torchcde's eager ones, the compile timed apart. The smaller case also runs on each library's
Hermite cubic with backward differences (torchcde's choice for online use), whose second
derivative jumps at every knot, so both libraries' dopri5 end steps at the knots
(``options=dict(jump_t=X.grid_points)``): forward, forward + backward by the adjoint, and
neuralode's forward compiled step by step (``compile="step"``) and as one graph
(``compile=True``), and its adjoint compiled.

The model is the standard neural CDE classifier's solve (``NeuralCDE``'s vector field
``CDEField``, an MLP hidden -> width -> hidden x channels with a softplus hidden layer and a tanh
output; a linear map of X(t0) to z0) on irregularly sampled
spirals, each library's natural cubic spline of each series (bitwise equal coefficients; the
Hermite coefficients also);
dopri5 at torchcde's default tolerances (rtol 1e-4, atol 1e-6). z_T's error is measured
against the same model and data in float64 at rtol 1e-10.

Run by ``python benchmarks/bench_cde.py`` and ``neuralode bench --parts cde``; torchcde is a
reference library of the ``bench`` extra, never a dependency.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .. import cde
from ..models.cde import CDEField

# (batch, length, hidden, width) of the two cases
CASES = ((32, 50, 16, 64), (128, 100, 32, 128))
# (label, adjoint, backward, neuralode's options): torchcde runs each mode eagerly; the last
# two compile neuralode's whole solve (``compile=True``; torchcde has no such mode), the
# compile timed apart
MODES = (
    ("forward", False, False, {}),
    ("forward + backward (backprop)", False, True, {}),
    ("forward + backward (adjoint)", True, True, {}),
    ("forward + backward (adjoint, seminorm)", "seminorm", True, {}),
    ("forward, neuralode compile=True", False, False, {"compile": True}),
    ("forward + backward (adjoint), neuralode compile=True", True, True, {"compile": True}),
)
# the cases of CASES that also run on the Hermite cubic with backward differences, after every
# case's natural cubic rows, in HERMITE_MODES (both libraries with jump_t at the knots)
HERMITE_CASES = CASES[:1]
HERMITE_MODES = (
    ("forward", False, False, {}),
    ("forward + backward (adjoint)", True, True, {}),
    ('forward, neuralode compile="step"', False, False, {"compile": "step"}),
    ("forward, neuralode compile=True", False, False, {"compile": True}),
    ("forward + backward (adjoint), neuralode compile=True", True, True, {"compile": True}),
)


@dataclass
class Row:
    """One table row: a case and mode, both libraries' median times (s), or z_T's errors."""

    case: str
    mode: str
    ours: float
    theirs: float
    error: bool = False
    compile_s: float | None = None  # neuralode's first (compiling) call, when compiled


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
    """Seconds of one call of ``run(*args)``."""
    start = time.perf_counter()
    run(*args)
    return time.perf_counter() - start


def case(
    torchcde: Any,
    batch: int,
    length: int,
    hidden: int,
    width: int,
    repeats: int,
    hermite: bool = False,
) -> list[Row]:
    """The rows of one case: z_T's errors, then each mode's median times.

    Arguments:
        torchcde: the torchcde module.
        batch, length, hidden, width: the case (``CASES``).
        repeats: timed runs per cell.
        hermite: the Hermite cubic with backward differences and ``HERMITE_MODES``, both
            libraries' solves with ``jump_t=X.grid_points``; else the natural cubic and ``MODES``.

    Returns:
        The case's rows.
    """
    torch.manual_seed(0)
    x = spirals(batch, length)
    func = CDEField(3, hidden, width)  # the library's neural CDE field (softplus, tanh out)
    initial = torch.nn.Linear(3, hidden)
    if hermite:
        coeffs = "hermite_cubic_coefficients_with_backward_differences"
        modes = HERMITE_MODES
    else:
        coeffs, modes = "natural_cubic_coeffs", MODES
    ours_X = cde.CubicSpline(getattr(cde, coeffs)(x))
    theirs_X = torchcde.CubicSpline(getattr(torchcde, coeffs)(x))
    params = (*func.parameters(), *initial.parameters())

    def solve(library: Any, X: Any, adjoint: Any, backward: bool, options: dict) -> torch.Tensor:
        z0 = initial(X.evaluate(X.interval[0]))
        kwargs: dict[str, Any] = dict(method="dopri5", adjoint=bool(adjoint))
        if hermite:  # both libraries' steps end at the knots, where X'' jumps
            options = dict(options, jump_t=X.grid_points)
        if options:
            kwargs["options"] = options
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
        X64 = cde.CubicSpline(getattr(cde, coeffs)(x.double()))
        z0 = initial64(X64.evaluate(X64.interval[0]))
        options = dict(jump_t=X64.grid_points) if hermite else None
        exact = cde.cdeint(
            X64, func64, z0, X64.interval, adjoint=False, rtol=1e-10, atol=1e-12, options=options
        )
        exact = exact[:, -1].float()
        scale = float(exact.abs().max())
        error_ours = float((solve(cde, ours_X, False, False, {}) - exact).abs().max()) / scale
        error_theirs = float((solve(torchcde, theirs_X, False, False, {}) - exact).abs().max())
        error_theirs /= scale
    label = f"{batch} x {length}, hidden {hidden}" + (", Hermite" if hermite else "")
    rows = [Row(label, "z_T's error", error_ours, error_theirs, error=True)]
    for mode, adjoint, backward, options in modes:
        with torch.enable_grad() if backward else torch.no_grad():
            compile_s = timed(solve, cde, ours_X, adjoint, backward, options) if options else None
            ours, theirs = [], []
            for _ in range(repeats):  # alternating, so that both see the same machine state
                ours.append(timed(solve, cde, ours_X, adjoint, backward, options))
                theirs.append(timed(solve, torchcde, theirs_X, adjoint, backward, {}))
        median = statistics.median
        rows.append(Row(label, mode, median(ours), median(theirs), compile_s=compile_s))
        print(f"  cde {label}: {mode} done", flush=True)
    return rows


def run(repeats: int) -> list[Row]:
    """Every case and mode (``CASES``, ``MODES``), then the Hermite cases (``HERMITE_CASES``
    that are in ``CASES``, ``HERMITE_MODES``).

    Arguments:
        repeats: timed runs per cell (their median is reported).

    Returns:
        The table's rows.

    Raises:
        ImportError: torchcde is not installed.
    """
    import torchcde

    rows = [row for shape in CASES for row in case(torchcde, *shape, repeats)]
    for shape in (shape for shape in CASES if shape in HERMITE_CASES):
        rows += case(torchcde, *shape, repeats, hermite=True)
    return rows


def table(rows: list[Row]) -> str:
    """The rows as a markdown table (times in ms, the speed-up torchcde / neuralode)."""
    lines = [
        "| batch x length | mode | neuralode (ms) | torchcde (ms) | speed-up |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        if r.error:
            lines.append(f"| {r.case} | {r.mode} | {r.ours:.1e} | {r.theirs:.1e} | |")
        else:
            mode = (
                r.mode if r.compile_s is None else f"{r.mode} (compile {r.compile_s:.0f} s apart)"
            )
            lines.append(
                f"| {r.case} | {mode} | {r.ours * 1e3:.1f} | {r.theirs * 1e3:.1f} | "
                f"{r.theirs / r.ours:.2f}x |"
            )
    lines.append(
        "\nz_T's error: max |z_T - reference| / max |z_T| of the forward solve at the default "
        "tolerances; the reference: the same model and data in float64 at rtol 1e-10, atol 1e-12. "
        "Hermite: the Hermite cubic with backward differences, both libraries' steps ending at "
        "the knots (jump_t=X.grid_points), the reference's too"
    )
    return "\n".join(lines)
