"""The leapfrog method (Störmer-Verlet, velocity Verlet): kick, drift, kick."""

from .heun2 import Heun2
from .partitioned import PartitionedSolver, Splitting

LEAPFROG = Splitting(
    name="leapfrog", operations=(("kick", 0.5), ("drift", 1.0), ("kick", 0.5)), order=2
)


class Leapfrog(PartitionedSolver):
    """Störmer-Verlet in its kick-drift-kick (velocity Verlet) form, order 2, fixed step:
    ``p += dt/2 dp/dt(t0, q0)``, ``q += dt dq/dt(t0 + dt/2, p)``, ``p += dt/2 dp/dt(t1, q1)``.
    The last kick's dp/dt starts the next step, so a step evaluates f twice (three times for
    the first step): once for the drift and once for the closing kick (on a field that offers
    its halves, ``dq_dt`` for the drift and ``dp_dt`` for the kick). The state is a pair
    ``(q, p)`` with f separable (see [`PartitionedSolver`][neuralode.solvers.PartitionedSolver])."""

    splitting = LEAPFROG
    adjoint_method = Heun2
