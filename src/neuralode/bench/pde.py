"""Diffusion-dominated PDEs by the method of lines: implicit (Radau) and IMEX (KenCarp4, the
diffusion implicit) against explicit (dopri5).

Two problems, float64, one state each:

- ``heat1d``: the heat equation u_t = u_xx on [0, 1] with u = 0 at both ends, 127 interior
  nodes (2nd-order stencil), u0 = sin(pi x) + exp(-100 (x - 0.3)^2), t in [0, 0.5]. The
  reference is exact for the discretised system: exp(t A) u0 with A the stencil's matrix.
- ``fhn2d``: FitzHugh-Nagumo on a periodic 32 x 32 grid of [0, 2]^2 with large diffusivities
  (a = 0.25, b = 1: diffusion-dominated, stiffness ~ 8 b / dx^2 = 2048), a smooth random
  initial state, t in [0, 1]. The reference is dopri5 at rtol 1e-10.

Each solver runs at a sweep of tolerances (atol = rtol / 1000), the runs interleaved over
the repeats (one round runs every configuration once), and reports steps, NFE, median time
and the relative L2 error at the final time. "At equal accuracy" compares each dopri5 run
with the cheapest implicit (or IMEX) run that is at least as accurate.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._solve import solve
from ..controllers.pi import PIController
from ..pde import FitzHughNagumo, Grid, Heat, random_fourier_field, reference_solve
from ..pde.grid import Dirichlet
from ..solvers.dopri5 import Dopri5
from ..solvers.kencarp4 import KenCarp4
from ..solvers.radau import Radau


@dataclass
class Problem:
    name: str
    description: str
    func: torch.nn.Module
    y0: torch.Tensor
    ts: torch.Tensor
    reference: torch.Tensor  # the state at ts[-1]


@dataclass
class Config:
    solver: str
    rtol: float
    make: Callable[[], object]


@dataclass
class Row:
    solver: str
    rtol: float
    steps: str
    nfe: int
    error: float
    times: list[float] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return statistics.median(self.times)


def heat1d() -> Problem:
    grid = Grid((127,), boundary=Dirichlet())
    (x,) = grid.coordinates()
    y0 = (torch.sin(math.pi * x) + torch.exp(-100 * (x - 0.3) ** 2))[None, None]
    func = Heat(grid, 1.0)
    ts = torch.tensor([0.0, 0.5], dtype=torch.float64)
    # the stencil's matrix, column j = A e_j (the operator is linear without boundary data)
    matrix = func(ts[0], torch.eye(127, dtype=torch.float64)[:, None]).reshape(127, 127).T
    exact = torch.linalg.matrix_exp(0.5 * matrix) @ y0.reshape(-1)
    return Problem(
        "heat1d",
        "heat equation u_t = u_xx, Dirichlet, 127 nodes, t in [0, 0.5]",
        func,
        y0,
        ts,
        exact.reshape(y0.shape),
    )


def fhn2d(size: int = 32) -> Problem:
    grid = Grid((size, size), lengths=(2.0, 2.0))
    generator = torch.Generator().manual_seed(0)
    y0, _ = random_fourier_field(grid, 1, 2, amplitude=0.5, generator=generator)
    func = FitzHughNagumo(grid, a=0.25, b=1.0)
    ts = torch.tensor([0.0, 1.0], dtype=torch.float64)
    reference = reference_solve(func, y0, ts, rtol=1e-10, atol=1e-12)[-1]
    return Problem(
        "fhn2d",
        f"FitzHugh-Nagumo, a = 0.25, b = 1, periodic {size} x {size}, t in [0, 1]",
        func,
        y0,
        ts,
        reference,
    )


PROBLEMS = {"heat1d": heat1d, "fhn2d": fhn2d}


EXPLICIT_RTOLS = (1e-3, 1e-7)
IMPLICIT_RTOLS = (1e-2, 1e-3, 1e-5, 1e-7)


def configs(problem: Problem) -> list[Config]:
    """dopri5 at ``EXPLICIT_RTOLS`` (its error hardly depends on them: its steps are bounded
    by stability), Radau with LU (small states only) and with Jacobian-free Newton-Krylov,
    unpreconditioned and preconditioned by the problem's diffusion part
    (``preconditioner()``), and the IMEX KenCarp4 with the diffusion as its implicit linear
    part (``linear_part()``), at ``IMPLICIT_RTOLS``."""
    out = [Config("dopri5", r, Dopri5) for r in EXPLICIT_RTOLS]
    if problem.y0.numel() <= 512:  # dense Jacobians and LU of 3n x 3n: small states only
        out += [Config("radau (LU)", r, Radau) for r in IMPLICIT_RTOLS]
    out += [
        Config("radau (Newton-Krylov)", r, lambda: Radau(linear_solver="krylov", krylov_tol=1e-2))
        for r in IMPLICIT_RTOLS
    ]
    preconditioner = problem.func.preconditioner()  # the diffusion part, inverted exactly
    out += [
        Config(
            "radau (Newton-Krylov, preconditioned)",
            r,
            lambda: Radau(linear_solver="krylov", krylov_tol=1e-2, preconditioner=preconditioner),
        )
        for r in IMPLICIT_RTOLS
    ]
    linear = problem.func.linear_part()  # the diffusion, solved exactly in every stage
    out += [Config("kencarp4 (IMEX)", r, lambda: KenCarp4(linear=linear)) for r in IMPLICIT_RTOLS]
    return out


def _solve(problem: Problem, case: Config):
    controller = PIController(rtol=case.rtol, atol=case.rtol * 1e-3)
    with torch.no_grad():
        return solve(
            problem.func, problem.y0, problem.ts, solver=case.make(), controller=controller
        )


def run_problem(problem: Problem, repeats: int) -> list[Row]:
    """Every configuration ``repeats`` times, interleaved, after an untimed warm-up solve of
    each solver at its loosest tolerance (its cheapest run), so that no first call's one-off
    costs are timed; rows with median times.

    Arguments:
        problem: the PDE.
        repeats: timed rounds (at least one).

    Returns:
        One row per configuration.

    Raises:
        ValueError: ``repeats`` is less than one.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    cases = configs(problem)
    for name in dict.fromkeys(case.solver for case in cases):
        _solve(problem, max((c for c in cases if c.solver == name), key=lambda c: c.rtol))
    rows: list[Row | None] = [None] * len(cases)
    for _ in range(repeats):
        for i, case in enumerate(cases):
            start = time.perf_counter()
            sol = _solve(problem, case)
            seconds = time.perf_counter() - start
            if rows[i] is None:
                diff = torch.linalg.vector_norm(sol.ys[-1] - problem.reference)
                error = float(diff / torch.linalg.vector_norm(problem.reference))
                stats = sol.stats
                steps = f"{stats.n_accepted} + {stats.n_rejected}"
                rows[i] = Row(case.solver, case.rtol, steps, stats.nfe, error)
            rows[i].times.append(seconds)  # type: ignore[union-attr]
    return rows  # type: ignore[return-value]


def speedups(rows: list[Row]) -> list[tuple[str, float, Row, Row]]:
    """Per dopri5 run and implicit solver: the cheapest run of that solver with an error no
    larger, as (solver, speed-up, dopri5 row, implicit row)."""
    out = []
    for explicit in (r for r in rows if r.solver == "dopri5"):
        for name in dict.fromkeys(r.solver for r in rows if r.solver != "dopri5"):
            accurate = [r for r in rows if r.solver == name and r.error <= explicit.error]
            if accurate:
                best = min(accurate, key=lambda r: r.seconds)
                out.append((name, explicit.seconds / best.seconds, explicit, best))
    return out


def table(problem: Problem, rows: list[Row]) -> str:
    lines = [
        f"### {problem.name}: {problem.description}",
        "",
        "| solver | rtol | steps (accepted + rejected) | NFE | time (s) | rel. L2 error |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.solver} | {r.rtol:g} | {r.steps} | {r.nfe} | {r.seconds:.3f} | {r.error:.2e} |"
        )
    lines.append("")
    for name, ratio, explicit, best in speedups(rows):
        lines.append(
            f"- {name} at rtol {best.rtol:g} (error {best.error:.1e}) vs dopri5 at rtol "
            f"{explicit.rtol:g} (error {explicit.error:.1e}): speed-up {ratio:.1f}x"
        )
    return "\n".join(lines)
