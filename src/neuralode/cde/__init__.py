"""Neural controlled differential equations, torchcde's API over neuralode's solvers.

A neural CDE z_t = z_{t0} + int f_theta(s, z_s) dX_s reads a time series through a
continuous control X interpolating it (``CubicSpline`` of ``natural_cubic_coeffs`` or
``hermite_cubic_coefficients_with_backward_differences``, ``LinearInterpolation``), so
irregular sampling and missing values (NaNs) need no special treatment; ``cdeint`` solves it
as the ODE dz/dt = f(t, z) dX/dt(t). Code written for torchcde runs with
``import neuralode.cde as torchcde``.
"""

from ._base import InterpolationBase
from ._cdeint import cdeint
from ._tuple_control import TupleControl
from .interpolation import (
    CubicSpline,
    LinearInterpolation,
    NaturalCubicSpline,
    hermite_cubic_coefficients_with_backward_differences,
    linear_interpolation_coeffs,
    natural_cubic_coeffs,
    natural_cubic_spline_coeffs,
)
from .log_ode import (
    logsig_windows,
    logsignature,
    logsignature_channels,
    logsignature_windows,
    lyndon_words,
    signature,
)

__all__ = [
    "CubicSpline",
    "InterpolationBase",
    "LinearInterpolation",
    "NaturalCubicSpline",
    "TupleControl",
    "cdeint",
    "hermite_cubic_coefficients_with_backward_differences",
    "linear_interpolation_coeffs",
    "logsig_windows",
    "logsignature",
    "logsignature_channels",
    "logsignature_windows",
    "lyndon_words",
    "natural_cubic_coeffs",
    "natural_cubic_spline_coeffs",
    "signature",
]
