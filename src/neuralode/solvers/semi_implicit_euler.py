"""Symplectic Euler (semi-implicit Euler): kick, then drift with the new momentum."""

from .euler import Euler
from .partitioned import PartitionedSolver, Splitting

SEMI_IMPLICIT_EULER = Splitting(
    name="semi_implicit_euler", operations=(("kick", 1.0), ("drift", 1.0)), order=1
)


class SemiImplicitEuler(PartitionedSolver):
    """Symplectic Euler, order 1, fixed step: ``p1 = p0 + dt dp/dt(t0, q0)``, then
    ``q1 = q0 + dt dq/dt(t1, p1)`` (diffrax's ``SemiImplicitEuler``); two evaluations of f per
    step (``dp_dt`` and ``dq_dt`` on a field that offers its halves). The state is a pair
    ``(q, p)`` with f separable (see [`PartitionedSolver`][neuralode.solvers.PartitionedSolver])."""

    splitting = SEMI_IMPLICIT_EULER
    adjoint_method = Euler
