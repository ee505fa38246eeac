"""Yoshida's fourth-order method: three leapfrog steps of sizes w1 dt, w0 dt, w1 dt."""

from .partitioned import PartitionedSolver, Splitting
from .rk4 import RK4

# Yoshida (1990), Forest and Ruth (1990): the symmetric composition of three order-2 steps
# whose third-order errors cancel, 2 w1^3 + w0^3 = 0 with 2 w1 + w0 = 1
W1 = 1 / (2 - 2 ** (1 / 3))
W0 = -(2 ** (1 / 3)) * W1

YOSHIDA4 = Splitting(
    name="yoshida4",
    operations=(
        ("kick", W1 / 2),
        ("drift", W1),
        ("kick", (W1 + W0) / 2),
        ("drift", W0),
        ("kick", (W0 + W1) / 2),
        ("drift", W1),
        ("kick", W1 / 2),
    ),
    order=4,
)


class Yoshida4(PartitionedSolver):
    """Yoshida's (Forest-Ruth) fourth-order symplectic method, fixed step: three leapfrog
    steps of sizes ``w1 dt``, ``w0 dt``, ``w1 dt`` with ``w1 = 1 / (2 - 2^(1/3))`` and
    ``w0 = -2^(1/3) w1`` (the middle one backwards), their touching kicks merged. Six
    evaluations of f per step (seven for the first), each of one half of f where it offers
    them. The state is a pair ``(q, p)`` with f separable (see
    [`PartitionedSolver`][neuralode.solvers.PartitionedSolver])."""

    splitting = YOSHIDA4
    adjoint_method = RK4
