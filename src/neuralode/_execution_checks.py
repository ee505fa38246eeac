"""What each execution mode runs: the solvers and controllers of the device loop and of the
compiled step, and the nested states the per-sample rows take (``Execution.check`` calls
these)."""

from __future__ import annotations

from typing import Any

from ._tree import TreeSpec
from .controllers.fixed import FixedGrid
from .controllers.pi import PIController
from .solvers.explicit_rk import ExplicitRK
from .solvers.hyper import HyperSolver
from .solvers.partitioned import PartitionedSolver, pair_split


def check_device_loop(solver: Any, controller: Any, what: str) -> None:
    """Raise a clear error if the solver or controller cannot run in the device loop."""
    from .sde._engine import SDESolver  # (sde imports the engine)

    if isinstance(solver, SDESolver):
        # per sample only, on its conditions (``sde._rows.check_sde_solve``): adaptive steps
        if not isinstance(controller, PIController):
            raise ValueError(f"{what} with an SDE method needs a PIController, got {controller!r}")
        return
    if isinstance(solver, (HyperSolver, PartitionedSolver)):
        if not isinstance(controller, FixedGrid):
            raise ValueError(
                f"{what}: {solver.name} takes fixed steps (it has no error estimate): give "
                f"controller=FixedGrid(step_size=...) (a float, or per sample a (batch,) "
                f"tensor), got {controller!r}"
            )
        return
    if not isinstance(solver, ExplicitRK):
        raise ValueError(
            f"{what} supports the explicit Runge-Kutta methods (adaptive steps: dopri5, "
            f"tsit5, bosh3, dopri8, ...; fixed steps on a FixedGrid: euler, midpoint, rk4, "
            f"... or an adaptive one), per sample on a FixedGrid also the hypersolvers and "
            f"the symplectic methods (leapfrog, ...), and per sample the SDE solvers, got "
            f"{solver!r}"
        )
    if isinstance(controller, FixedGrid):
        return
    if not isinstance(controller, PIController):
        raise ValueError(f"{what} needs a PIController or a FixedGrid, got {controller!r}")
    if not solver.adaptive:
        raise ValueError(
            f"{what}: {solver.name} has no error estimate and cannot adapt its step size; "
            "give controller=FixedGrid(step_size=...) for fixed steps, or an adaptive method"
        )


def check_pair_rows(spec: TreeSpec, name: str) -> None:
    """Raise unless the state is a pair (q, p) of tensors with one batch dimension first."""
    pair_split(spec, name)
    shapes = [tuple(shape) for shape in spec.shapes]
    if any(len(shape) == 0 for shape in shapes) or shapes[0][0] != shapes[1][0]:
        raise ValueError(
            f"per_sample=True with {name} needs q and p with the batch first, of one size "
            f"(q of shape (batch, ...), p of shape (batch, ...)), got shapes {shapes[0]} and "
            f"{shapes[1]}"
        )


def check_batch_rows(spec: TreeSpec) -> None:
    """Raise unless every tensor of a nested state has the batch as its first dimension."""
    shapes = [tuple(shape) for shape in spec.shapes]
    if any(len(shape) == 0 for shape in shapes) or len({shape[0] for shape in shapes}) != 1:
        raise ValueError(
            "per_sample=True with a nested y0 needs every tensor's first dimension to be the "
            f"batch, of one size, got shapes {shapes}"
        )


def check_compiled_step(solver: Any, controller: Any, what: str) -> None:
    """Raise a clear error, naming ``what`` asked for it, if the host loop's compiled step
    cannot run this solver or controller."""
    from .sde._engine import SDESolver  # (sde imports the engine)

    if not isinstance(solver, (ExplicitRK, HyperSolver, PartitionedSolver, SDESolver)):
        raise ValueError(
            f"{what} supports the explicit Runge-Kutta methods (dopri5, tsit5, rk4, ...), "
            f"the hypersolvers, the symplectic methods (leapfrog, ...) and the SDE solvers, "
            f"got {solver!r}"
        )
    if not isinstance(controller, (PIController, FixedGrid)):
        raise ValueError(f"{what} needs a PIController or FixedGrid, got {controller!r}")
