"""Fixed-point solvers for implicit layers (``neuralode.models.DEQ`` is the layer)."""

from .fixed_point import (
    FIXED_POINT_METHODS,
    Anderson,
    Broyden,
    FixedPointMethod,
    FixedPointResult,
    Picard,
    fixed_point,
)

__all__ = [
    "FIXED_POINT_METHODS",
    "Anderson",
    "Broyden",
    "FixedPointMethod",
    "FixedPointResult",
    "Picard",
    "fixed_point",
]
