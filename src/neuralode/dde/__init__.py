"""Neural delay differential equations: dy/dt = f(t, y(t), y(t - tau_1), ..., y(t - tau_k)).

``solve_dde`` solves them by the method of steps on ``neuralode.solve``: the span is cut into
intervals no longer than the smallest delay, each interval is one ordinary dense solve, and
the delayed states come from the dense solutions of the intervals before it or from the
history. Every solver and step-size controller with dense output works unchanged, and
gradients (``Direct()``) reach ``y0``, the parameters of ``func`` and of the history, and
delays given as tensors.
"""

from ._solve_dde import solve_dde

__all__ = ["solve_dde"]
