"""Butcher tableaux as validated data: a new Runge-Kutta method (explicit or implicit) is one
of these."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache, cached_property
from typing import Any

import numpy as np

_TOL = 1e-12


@dataclass(frozen=True)
class DenseOutput:
    """A continuous extension y(t0 + theta dt) = y0 + dt * sum_i B_i(theta) k_i.

    Attributes:
        coefficients: ``coefficients[i][j]`` is the coefficient of theta**(j + 1) in B_i. Rows
            beyond the tableau's stages refer to extra stages, evaluated only when dense output
            is needed.
        order: the interpolant's order.
        extra_c: the extra stages' times, ``t0 + extra_c[m] dt``.
        extra_a: the extra stages' coefficients: stage m is evaluated at
            ``y0 + dt * sum_j extra_a[m][j] k_j`` (``extra_a[m]`` covers all previous stages,
            tableau stages first).
    """

    coefficients: tuple[tuple[float, ...], ...]
    order: int
    extra_c: tuple[float, ...] = ()
    extra_a: tuple[tuple[float, ...], ...] = ()


@dataclass(frozen=True)
class ButcherTableau:
    """An explicit Runge-Kutta method.

    Attributes:
        name: the method's name (in error messages).
        c: the stages' times.
        a: strictly lower triangular, rows as tuples: ``a[i]`` has ``i`` entries (row 0 is
            empty).
        b: the solution's weights.
        order: the solution's order.
        b_error: b - b_hat, the weights of the embedded error estimate (``None`` for fixed-step
            methods).
        error_order: the order of the error estimate.
        dense: the method's own continuous extension; without one, cubic Hermite is used.

    Raises:
        ValueError: inconsistent shapes or a first stage not at c = 0.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: DenseOutput | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        problems = []
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            problems.append("a must have one row per stage, row i with i entries")
        if len(self.b) != s:
            problems.append(f"b has {len(self.b)} entries for {s} stages")
        if self.c and self.c[0] != 0:
            problems.append("the first stage must be at c = 0")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _TOL * max(1, len(row)):
                problems.append(f"row {i} of a sums to {sum(row)!r}, not c[{i}] = {self.c[i]!r}")
        if abs(sum(self.b) - 1) > _TOL:
            problems.append(f"b sums to {sum(self.b)!r}, not 1")
        problems.extend(_error_weight_problems(self.b_error, self.error_order, s))
        if self.dense is not None:
            problems.extend(_dense_problems(self.dense, self.b, extra_stages=True))
        if problems:
            raise ValueError(f"invalid Butcher tableau {self.name!r}: " + "; ".join(problems))

    @property
    def stages(self) -> int:
        """The number of stages, ``len(c)``."""
        return len(self.c)

    @property
    def fsal(self) -> bool:
        """First same as last: the last stage is f(t1, y1) and can start the next step."""
        return (
            self.stages > 1
            and self.c[-1] == 1
            and all(abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b[:-1]))
            and self.b[-1] == 0
        )


@dataclass(frozen=True)
class ImplicitTableau:
    """An implicit Runge-Kutta method.

    A first stage at ``c = 0`` with a zero row of ``a`` is explicit (f(t0, y0): trapezoid,
    TR-BDF2, ESDIRK methods); the remaining block of ``a`` must be invertible. An adaptive
    implicit method has embedded error weights ``b_error`` or brings its own estimate
    (``radau``); dense output is the method's own continuous extension (``dense``), else the
    collocation polynomial (collocation methods), else cubic Hermite (see ``ImplicitRK``).

    Attributes:
        name: the method's name.
        c: the stages' times.
        a: a full s x s matrix, rows as tuples.
        b: the solution's weights.
        order: the solution's order.
        b_error: b - b_hat, the weights of the embedded error estimate (``None`` for
            fixed-step methods and for methods with their own estimate).
        error_order: the order of the error estimate (with ``b_error``).
        dense: the method's own continuous extension over its stages (no extra stages), or
            ``None``.

    Raises:
        ValueError: inconsistent shapes, a singular implicit block, error weights that do
            not sum to 0, or a continuous extension with extra stages or B(1) != b.
    """

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    order: int
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    dense: DenseOutput | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        problems = []
        if self.dense is not None:
            problems.extend(_dense_problems(self.dense, self.b, extra_stages=False))
        if len(self.a) != s or any(len(row) != s for row in self.a):
            problems.append(f"a must be {s} x {s}")
        if len(self.b) != s:
            problems.append(f"b has {len(self.b)} entries for {s} stages")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > _TOL * max(1, len(row)):
                problems.append(f"row {i} of a sums to {sum(row)!r}, not c[{i}] = {self.c[i]!r}")
        if abs(sum(self.b) - 1) > _TOL:
            problems.append(f"b sums to {sum(self.b)!r}, not 1")
        problems.extend(_error_weight_problems(self.b_error, self.error_order, s))
        if not problems:
            first = 1 if self.explicit_first_stage else 0
            block = np.array([row[first:] for row in self.a[first:]], dtype=np.float64)
            if block.size and abs(np.linalg.det(block)) < 1e-14:
                problems.append("the implicit block of a is singular")
        if problems:
            raise ValueError(f"invalid implicit tableau {self.name!r}: " + "; ".join(problems))

    @property
    def stages(self) -> int:
        """The number of stages, ``len(c)``."""
        return len(self.c)

    @property
    def explicit_first_stage(self) -> bool:
        """Stage 1 is f(t0, y0): c = 0 and a zero first row."""
        return self.c[0] == 0 and all(x == 0 for x in self.a[0])

    @property
    def stiffly_accurate(self) -> bool:
        """b is the last row of a: y1 is the last stage (good for stiff problems)."""
        return all(abs(x - y) <= _TOL for x, y in zip(self.a[-1], self.b))

    @cached_property
    def collocation(self) -> bool:
        """a_ij = int_0^c_i l_j and b_j = int_0^1 l_j for the Lagrange basis l_j on c: the
        stages lie on a polynomial of degree s, which is then the dense output."""
        c = np.array(self.c)
        if len(set(self.c)) != len(c):
            return False
        a_col, b_col = collocation_weights(self.c, self.c), collocation_weights(self.c, (1.0,))
        return bool(
            np.allclose(a_col, np.array(self.a), atol=1e-12, rtol=0)
            and np.allclose(b_col[0], np.array(self.b), atol=1e-12, rtol=0)
        )


@dataclass(frozen=True)
class AdditiveTableau:
    """An additive (IMEX) Runge-Kutta method: an explicit tableau for the non-stiff part of
    f and a diagonally implicit one (ESDIRK: explicit first stage, one diagonal gamma) for
    its stiff linear part, sharing the stages' times, the weights and the error weights.

    Attributes:
        explicit: the explicit method.
        implicit: the implicit method.
        dense: a continuous extension over the stage derivatives f(Y_i) (the whole f) and
            f(t1, y1) as its one extra stage (``extra_c = (1.0,)``, ``extra_a = (b,)``), or
            ``None`` (cubic Hermite).

    Raises:
        ValueError: tableaux that differ in ``c``, ``b``, ``b_error`` or their orders, an
            implicit tableau that is not ESDIRK, or a continuous extension with B(1) != b
            or other extra stages.
    """

    explicit: ButcherTableau
    implicit: ImplicitTableau
    dense: DenseOutput | None = None

    def __post_init__(self) -> None:
        ex, im = self.explicit, self.implicit
        problems = []
        for what in ("c", "b", "b_error", "order", "error_order"):
            if getattr(ex, what) != getattr(im, what):
                problems.append(f"the explicit and implicit {what} differ")
        s = im.stages
        upper = any(im.a[i][j] != 0 for i in range(s) for j in range(i + 1, s))
        diagonal = {im.a[i][i] for i in range(1, s)}
        if upper or not im.explicit_first_stage or len(diagonal) != 1 or 0 in diagonal:
            problems.append(
                "the implicit tableau must be ESDIRK: lower triangular, an explicit first "
                "stage and one nonzero diagonal entry"
            )
        if self.dense is not None:
            problems.extend(_dense_problems(self.dense, ex.b, extra_stages=True))
            if self.dense.extra_c and (
                self.dense.extra_c != (1.0,) or tuple(self.dense.extra_a) != (tuple(ex.b),)
            ):
                problems.append("dense output: the one extra stage may only be f(t1, y1)")
        if problems:
            raise ValueError(f"invalid additive tableau {ex.name!r}: " + "; ".join(problems))

    @property
    def gamma(self) -> float:
        """The implicit tableau's diagonal entry."""
        return self.implicit.a[-1][-1]


def _dense_problems(dense: DenseOutput, b: tuple[float, ...], extra_stages: bool) -> list[str]:
    """What is wrong with a continuous extension of a method with weights ``b`` (extra
    stages only where the method is explicit, ``extra_stages``)."""
    s = len(b)
    n_extra = len(dense.extra_c)
    problems = []
    if n_extra and not extra_stages:
        problems.append("dense output: an implicit method's extension takes no extra stages")
    if len(dense.extra_a) != n_extra:
        problems.append("dense output: extra_a and extra_c differ in length")
    for m, row in enumerate(dense.extra_a):
        if len(row) != s + m:
            problems.append(f"dense output: extra stage {m} needs {s + m} coefficients")
        elif abs(sum(row) - dense.extra_c[m]) > _TOL * len(row):
            problems.append(f"dense output: extra stage {m} row does not sum to its c")
    if len(dense.coefficients) != s + n_extra:
        problems.append(f"dense output: {len(dense.coefficients)} rows for {s + n_extra} stages")
    else:
        # Continuity: B(1) must equal b (extra stages weigh zero at theta = 1).
        b_full = list(b) + [0.0] * n_extra
        for i, row in enumerate(dense.coefficients):
            if abs(sum(row) - b_full[i]) > 1e-10:
                problems.append(f"dense output: B_{i}(1) = {sum(row)!r} != b_{i}")
    return problems


def _error_weight_problems(
    b_error: tuple[float, ...] | None, error_order: int | None, stages: int
) -> list[str]:
    """What is wrong with a tableau's embedded error weights (none: an empty list)."""
    if (b_error is None) != (error_order is None):
        return ["b_error and error_order go together"]
    if b_error is None:
        return []
    if len(b_error) != stages:
        return [f"b_error has {len(b_error)} entries for {stages} stages"]
    if abs(sum(b_error)) > _TOL:
        return [f"b_error sums to {sum(b_error)!r}, not 0"]
    return []


def extension_weights(dense: DenseOutput, thetas: np.ndarray, derivative: bool) -> np.ndarray:
    """B_i(theta_k) of a continuous extension (with ``derivative``: B_i'(theta_k)), float64
    (m, rows): one column per stage and extra stage."""
    coefficients = np.array(dense.coefficients)  # (rows, P): theta^1 .. theta^P
    powers = np.arange(1, coefficients.shape[1] + 1)
    thetas = np.asarray(thetas, dtype=np.float64).reshape(-1)
    if derivative:  # d/dtheta theta^p = p theta^(p-1)
        monomials = powers * thetas[:, None] ** (powers - 1)
    else:
        monomials = thetas[:, None] ** powers
    return monomials @ coefficients.T


def collocation_weights(
    nodes: tuple[float, ...], thetas: Any, derivative: bool = False
) -> np.ndarray:
    """w[k, j] = int_0^theta_k l_j(s) ds for the Lagrange basis l_j on ``nodes``: (m, s).
    With ``derivative``: their theta-derivatives, l_j(theta_k)."""
    thetas = np.asarray(thetas, dtype=np.float64).reshape(-1)
    coefficients = _antiderivatives(tuple(nodes))  # (s + 1, s), lowest power first
    exponents = np.arange(len(nodes) + 1)
    if derivative:  # d/dtheta theta^p = p theta^(p-1)
        powers = exponents * thetas[:, None] ** np.maximum(exponents - 1, 0)
    else:
        powers = thetas[:, None] ** exponents
    return powers @ coefficients


@cache
def _antiderivatives(nodes: tuple[float, ...]) -> np.ndarray:
    """Coefficients (lowest power first) of int_0^theta l_j, one column per node."""
    out = np.zeros((len(nodes) + 1, len(nodes)))
    for j, cj in enumerate(nodes):
        basis = np.polynomial.Polynomial([1.0])
        for m, cm in enumerate(nodes):
            if m != j:
                basis = basis * np.polynomial.Polynomial([-cm, 1.0]) / (cj - cm)
        out[:, j] = basis.integ(lbnd=0.0).coef
    return out
