"""The float32 tanh of the compiled whole solve's backend (``_whole_backend.tanh_float32``).

Inductor (torch 2.13) compiles ``torch.tanh`` to SLEEF's vectorised ``tanhf`` (0.5 ulp),
which costs about as much as the (1024, 64) x (64, 64) matrix product of a tanh MLP.
``tanh_float32`` computes it as ``tanh_rational`` from operations inductor fuses into one
vectorised loop: a rational function without ``exp``, as Eigen's and so XLA's CPU tanh,
``x P(x^2) / Q(x^2)``, P of degree 6 and Q of degree 3 fitted to the minimax relative error of
``tanh(x) / x`` on [0, 9] (6.6e-9 in exact arithmetic; ``benchmarks/bench_tanh.py --fit``
derives them), with x clamped at ``RATIONAL_CLAMP`` (7.965): the smallest float32 above 7.9
at which the form rounds to exactly 1 in float32, with fused multiply-adds and without.
Below it the form never exceeds 1 (its first value above 1 is at 8.0198 without fused
multiply-adds, 8.1143 with them), so the result needs no clamp, which costs about a quarter
of the form's time; tanh(7.965) is 1 - 2.4e-7, within 4.1 ulp of 1. Largest error over every
float32: 6.46 ulp (at 6.08) without fused multiply-adds and 5.93 ulp with them, mean 0.08
ulp (``bench_tanh.py --ulps``). It gives ``tanh(-0.0) = -0.0``, NaN for NaN and +-1 for
+-inf. A compiled (1024, 64) tanh takes about 0.22 of torch's time (the compiled call's own
cost left out; BENCHMARKS.md). float64 and the other dtypes keep torch's lowering. With
inductor's own approximation switched on (``torch._inductor.config.cpp.use_decompose_tanh``,
``TORCHINDUCTOR_CPP_USE_DECOMPOSE_TANH=1``: a relative error of up to 2e7 ulp near 0) that
one is used instead.
"""

from __future__ import annotations

from typing import Any

import torch

# the rational tanh: x clamped at RATIONAL_CLAMP, tanh(x) = x P(x^2) / Q(x^2), the
# coefficients from the highest power down (Q's constant term is 1); RATIONAL_CLAMP is the
# smallest float32 above 7.9 where the form is exactly 1 with and without fused
# multiply-adds (``bench_tanh.py --ulps`` finds it and checks that no float32 below it
# gives more than 1)
RATIONAL_CLAMP = 7.964992046356201
RATIONAL_P = (
    -8.488543872551399e-14,
    5.277892078870118e-11,
    -2.022512647931901e-08,
    1.1154287440001566e-05,
    0.003103954432123622,
    0.13084008562555768,
    0.9999999933860687,
)
RATIONAL_Q = (
    0.0002546142502054178,
    0.024495171484604818,
    0.4641733566444177,
    1.0,
)


def tanh_rational(x: torch.Tensor) -> torch.Tensor:
    """tanh as ``x P(x^2) / Q(x^2)`` (see the module): 6.5 ulp in float32, no ``exp``."""
    clamped = x.clamp(-RATIONAL_CLAMP, RATIONAL_CLAMP)
    square = clamped * clamped
    p = square * RATIONAL_P[0] + RATIONAL_P[1]
    for c in RATIONAL_P[2:]:
        p = p * square + c
    q = square * RATIONAL_Q[0] + RATIONAL_Q[1]
    for c in RATIONAL_Q[2:]:
        q = q * square + c
    return clamped * p / q


def write_tanh_rational(graph: torch.fx.Graph, x: Any, meta: dict[str, Any]) -> Any:
    """``tanh_rational(x)`` written into ``graph`` (at its insertion point) as ATen nodes,
    each with ``meta`` (the value's shape, dtype and strides); returns the result's node."""
    return tanh_rational(_GraphArithmetic(graph, x, meta)).node  # type: ignore[arg-type]


class _GraphArithmetic:
    """Elementwise arithmetic written into an FX graph as ATen calls (``tanh_rational``
    as nodes); every node gets ``meta`` (the value's shape, dtype and strides)."""

    def __init__(self, graph: torch.fx.Graph, node: Any, meta: dict[str, Any]) -> None:
        self.graph, self.node, self.meta = graph, node, meta

    def _call(self, op: Any, *args: Any) -> _GraphArithmetic:
        values = tuple(a.node if isinstance(a, _GraphArithmetic) else a for a in args)
        node = self.graph.call_function(op, values)
        node.meta.update(self.meta)
        return _GraphArithmetic(self.graph, node, self.meta)

    def __mul__(self, other: Any) -> _GraphArithmetic:
        return self._call(torch.ops.aten.mul.Tensor, self, other)

    def __add__(self, other: Any) -> _GraphArithmetic:
        return self._call(torch.ops.aten.add.Tensor, self, other)

    def __truediv__(self, other: Any) -> _GraphArithmetic:
        return self._call(torch.ops.aten.div.Tensor, self, other)

    def clamp(self, low: float, high: float) -> _GraphArithmetic:
        low_clamped = self._call(torch.ops.aten.clamp_min.default, self, low)
        return self._call(torch.ops.aten.clamp_max.default, low_clamped, high)
