"""Every Butcher tableau against the order conditions, via rooted trees (Butcher's theory)."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pytest

from neuralode.solvers import (
    METHODS,
    ButcherTableau,
    DenseOutput,
    ExplicitRK,
    ImplicitRK,
    ImplicitTableau,
    KenCarp3,
    KenCarp4,
    KenCarp5,
)
from neuralode.solvers.tableau import AdditiveTableau

TABLEAUX = {name: cls.tableau for name, cls in METHODS.items() if issubclass(cls, ExplicitRK)}
ADDITIVE_TABLEAUX = {cls().name: cls.tableaux for cls in (KenCarp3, KenCarp4, KenCarp5)}
IMPLICIT_TABLEAUX = {
    name: cls.tableau for name, cls in METHODS.items() if issubclass(cls, ImplicitRK)
}


@cache
def trees(order: int) -> tuple[tuple, ...]:
    """Rooted trees with ``order`` vertices, each a sorted tuple of its children's trees."""
    if order == 1:
        return ((),)
    return tuple(sorted(set(_forests(order - 1, order - 1))))


def _forests(total: int, largest: int) -> list[tuple]:
    """Sorted tuples of trees whose orders sum to ``total``, no tree above ``largest``."""
    if total == 0:
        return [()]
    out = []
    for first in range(min(total, largest), 0, -1):
        for tree in trees(first):
            for rest in _forests(total - first, first):
                out.append(tuple(sorted((tree, *rest))))
    return out


def size(tree: tuple) -> int:
    return 1 + sum(size(child) for child in tree)


def density(tree: tuple) -> float:
    """gamma(tree): the exact solution's coefficient is 1 / gamma."""
    return size(tree) * float(np.prod([density(child) for child in tree]))


def stage_weights(a: np.ndarray, tree: tuple) -> np.ndarray:
    """Per-stage products of A applied to the children's weights (all ones for a leaf)."""
    out = np.ones(a.shape[0])
    for child in tree:
        out = out * (a @ stage_weights(a, child))
    return out


def _matrix(tab: ButcherTableau) -> np.ndarray:
    s = tab.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tab.a):
        a[i, : len(row)] = row
    return a


def residuals(a: np.ndarray, b: np.ndarray, order: int) -> list[float]:
    """|Phi(tree) - 1/gamma(tree)| for every tree of exactly ``order`` vertices."""
    return [abs(b @ stage_weights(a, t) - 1 / density(t)) for t in trees(order)]


def test_tree_counts_are_the_known_sequence() -> None:
    assert [len(trees(n)) for n in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


# Coefficients given as decimal fractions (dopri8, tsit5) satisfy the conditions only to
# about 1e-13 after rounding; exact rationals reach 1e-15.
TOL = 1e-12


@pytest.mark.parametrize("name", TABLEAUX)
def test_solution_has_its_declared_order_exactly(name: str) -> None:
    tab = TABLEAUX[name]
    a, b = _matrix(tab), np.array(tab.b)
    for order in range(1, tab.order + 1):
        assert max(residuals(a, b, order)) < TOL, f"{name} fails at order {order}"
    assert max(residuals(a, b, tab.order + 1)) > 1e-6, f"{name} is of higher order"


@pytest.mark.parametrize("name", [n for n, t in TABLEAUX.items() if t.b_error is not None])
def test_embedded_solution_has_its_declared_order_exactly(name: str) -> None:
    tab = TABLEAUX[name]
    a = _matrix(tab)
    b_hat = np.array(tab.b) - np.array(tab.b_error)
    for order in range(1, tab.error_order + 1):
        assert max(residuals(a, b_hat, order)) < TOL, f"{name} embedded fails at {order}"
    assert max(residuals(a, b_hat, tab.error_order + 1)) > 1e-6


DENSE_TABLEAUX = {
    name: tab for name, tab in {**TABLEAUX, **IMPLICIT_TABLEAUX}.items() if tab.dense is not None
}


def _dense_matrix(tab: ButcherTableau | ImplicitTableau) -> np.ndarray:
    """The method's A with the dense output's extra stages appended (explicit methods)."""
    if isinstance(tab, ImplicitTableau):
        return np.array(tab.a)
    dense = tab.dense
    s, m = tab.stages, len(dense.extra_c)
    a = np.zeros((s + m, s + m))
    a[:s, :s] = _matrix(tab)
    for k, row in enumerate(dense.extra_a):
        a[s + k, : len(row)] = row
    return a


def _dense_weights(
    tab: ButcherTableau | ImplicitTableau | AdditiveTableau, theta: float
) -> np.ndarray:
    """B_i(theta) of the method's continuous extension."""
    powers = theta ** np.arange(1, len(tab.dense.coefficients[0]) + 1)
    return np.array(tab.dense.coefficients) @ powers


@pytest.mark.parametrize("name", DENSE_TABLEAUX)
@pytest.mark.parametrize("theta", [0.1, 0.37, 0.5, 0.83, 1.0])
def test_dense_output_order_conditions(name: str, theta: float) -> None:
    """sum_i B_i(theta) Phi_i(tree) = theta^|tree| / gamma(tree) up to the dense order, and
    not beyond it."""
    tab = DENSE_TABLEAUX[name]
    dense = tab.dense
    a = _dense_matrix(tab)
    weights = _dense_weights(tab, theta)
    for order in range(1, dense.order + 1):
        for tree in trees(order):
            phi = weights @ stage_weights(a, tree)
            assert phi == pytest.approx(theta**order / density(tree), abs=1e-11), (
                f"{name} dense output fails for a tree of order {order} at theta={theta}"
            )
    if theta == 0.37:  # and not of a higher order: the declared order is the true one
        order = dense.order + 1
        worst = max(
            abs(weights @ stage_weights(a, tree) - theta**order / density(tree))
            for tree in trees(order)
        )
        assert worst > 1e-6, f"{name} dense output is of order {order}"


def test_kvaerno5_continuous_extension_is_bounded_on_stiff_components() -> None:
    """y' = lambda y with z = h lambda <= 0: the extension's R_theta(z) = 1 + z B(theta)^T
    (I - z A)^-1 1 stays within [-1, 1] for every theta and z (cubic Hermite from f(t0, y0)
    grows like |z|), and R_theta(-inf) is small past theta = 0.1; its derivative at
    theta = 1 is the last stage's, f(t1, y1) (continuous across steps); its weights are of
    size about 1."""
    tab = IMPLICIT_TABLEAUX["kvaerno5"]
    a, s = np.array(tab.a), tab.stages
    for theta in np.linspace(0.0, 1.0, 41):
        weights = _dense_weights(tab, theta)
        assert np.abs(weights).sum() <= 1.2
        for z in -np.logspace(-3, 9, 61):
            r = 1 + z * weights @ np.linalg.solve(np.eye(s) - z * a, np.ones(s))
            assert abs(r) <= 1 + 1e-9, f"|R_{theta:.3f}({z:.3g})| = {abs(r):.3g}"
            if z < -1e8 and theta >= 0.1:  # (R_0 = 1: the start's own value)
                assert abs(r) <= 0.3
    coefficients = np.array(tab.dense.coefficients)
    end_derivative = coefficients @ np.arange(1, coefficients.shape[1] + 1)
    np.testing.assert_allclose(end_derivative, np.eye(s)[-1], atol=1e-12)


def coloured_stage_weights(matrices: tuple[np.ndarray, ...], tree: tuple) -> list[np.ndarray]:
    """Phi of ``tree`` for every colouring of its non-root vertices by ``matrices`` (an
    additive method's explicit and implicit A): each child enters through its colour's A."""
    out = [np.ones(matrices[0].shape[0])]
    for child in tree:
        options = [a @ w for a in matrices for w in coloured_stage_weights(matrices, child)]
        out = [w * option for w in out for option in options]
    return out


def _additive_matrices(tab: AdditiveTableau) -> tuple[np.ndarray, np.ndarray]:
    """The explicit and implicit A, each with the extension's extra stage f(t1, y1) (row b)."""
    s, extra = tab.implicit.stages, len(tab.dense.extra_c)
    matrices = []
    for a in (_matrix(tab.explicit), np.array(tab.implicit.a)):
        full = np.zeros((s + extra, s + extra))
        full[:s, :s] = a
        for k, row in enumerate(tab.dense.extra_a):
            full[s + k, : len(row)] = row
        matrices.append(full)
    return matrices[0], matrices[1]


@pytest.mark.parametrize("name", [n for n, t in ADDITIVE_TABLEAUX.items() if t.dense is not None])
@pytest.mark.parametrize("theta", [0.1, 0.37, 0.5, 0.83, 1.0])
def test_additive_dense_output_order_conditions(name: str, theta: float) -> None:
    """The additive method's conditions (trees coloured by the explicit and the implicit A,
    one weight per stage for both) up to the dense order, and not beyond it."""
    tab = ADDITIVE_TABLEAUX[name]
    matrices = _additive_matrices(tab)
    weights = _dense_weights(tab, theta)
    for order in range(1, tab.dense.order + 2):
        worst = max(
            abs(weights @ phi - theta**order / density(tree))
            for tree in trees(order)
            for phi in coloured_stage_weights(matrices, tree)
        )
        if order <= tab.dense.order:
            assert worst < 1e-10, f"{name} dense output fails at order {order}: {worst:.2e}"
        elif theta == 0.37:
            assert worst > 1e-6, f"{name} dense output is of order {order}"


def test_kencarp5_continuous_extension_is_bounded_on_stiff_components() -> None:
    """The implicit part on y' = lambda y: R_theta(z) stays within 3.5 for every theta and
    z <= 0 (the O(z) term cancels; cubic Hermite from f(t0, y0) grows like |z|); the extra
    stage f(t1, y1) weighs 3/2 theta^2 - 4 theta^3 + 5/2 theta^4 and the derivative at
    theta = 1 is f(t1, y1) (continuous across steps)."""
    tab = ADDITIVE_TABLEAUX["kencarp5"]
    implicit = _additive_matrices(tab)[1]
    rows = implicit.shape[0]
    for theta in np.linspace(0.0, 1.0, 41):
        weights = _dense_weights(tab, theta)
        for z in -np.logspace(-3, 9, 61):
            r = 1 + z * weights @ np.linalg.solve(np.eye(rows) - z * implicit, np.ones(rows))
            assert abs(r) <= 3.5, f"|R_{theta:.3f}({z:.3g})| = {abs(r):.3g}"
    coefficients = np.array(tab.dense.coefficients)
    assert coefficients[-1].tolist() == [0.0, 1.5, -4.0, 2.5, 0.0]
    end_derivative = coefficients @ np.arange(1, coefficients.shape[1] + 1)
    np.testing.assert_allclose(end_derivative, np.eye(rows)[-1], atol=1e-9)


def test_kencarp5s_embedded_implicit_method_is_of_order_5_on_linear_problems() -> None:
    """The guide's account of KenCarp5's optimistic estimate on linear stiff dynamics: on
    y' = lambda y both stability functions match exp(z) to z^5 (halving z divides both
    errors by 2^6), and the estimate R - R_embedded is about a ninth of the local error."""
    tab = ADDITIVE_TABLEAUX["kencarp5"]
    s = tab.implicit.stages
    implicit = np.array(tab.implicit.a)[:s, :s]
    ones, b = np.ones(s), np.array(tab.explicit.b)
    b_error = np.array(tab.explicit.b_error)
    errors = []
    for z in (-0.1, -0.05):
        stages = np.linalg.solve(np.eye(len(ones)) - z * implicit, ones)
        r = 1 + z * b @ stages
        errors.append((abs(r - np.exp(z)), abs(r - z * b_error @ stages - np.exp(z))))
        estimate = abs(z * b_error @ stages)
        assert 0.09 < estimate / errors[-1][0] < 0.13
    for at_z, at_half_z in zip(*errors):  # the method's errors, then the embedded one's
        assert 50 < at_z / at_half_z < 70  # 2^6 = 64: both of order 5 here


def test_an_additive_extension_takes_only_f_at_the_step_end_as_extra_stage() -> None:
    tab = ADDITIVE_TABLEAUX["kencarp5"]
    elsewhere = dataclasses.replace(tab.dense, extra_c=(0.5,), extra_a=(tuple(tab.explicit.b),))
    with pytest.raises(ValueError, match="may only be f\\(t1, y1\\)"):
        dataclasses.replace(tab, dense=elsewhere)
    with pytest.raises(ValueError, match="B_0"):
        rows = ((0.0,) * 5, *tab.dense.coefficients[1:])
        dataclasses.replace(tab, dense=dataclasses.replace(tab.dense, coefficients=rows))


def test_invalid_tableaux_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="row 1 of a sums to"):
        ButcherTableau("bad", c=(0.0, 0.5), a=((), (0.4,)), b=(0.5, 0.5), order=1)
    with pytest.raises(ValueError, match="b sums to"):
        ButcherTableau("bad", c=(0.0, 0.5), a=((), (0.5,)), b=(0.5, 0.4), order=1)
    with pytest.raises(ValueError, match="one row per stage"):
        ButcherTableau("bad", c=(0.0, 0.5), a=((),), b=(0.5, 0.5), order=1)
    with pytest.raises(ValueError, match="b_error and error_order go together"):
        ButcherTableau("bad", c=(0.0,), a=((),), b=(1.0,), order=1, b_error=(0.0,))
    with pytest.raises(ValueError, match="B_0"):
        ButcherTableau(
            "bad",
            c=(0.0,),
            a=((),),
            b=(1.0,),
            order=1,
            dense=DenseOutput(coefficients=((0.5,),), order=1),
        )


@pytest.mark.parametrize("name", IMPLICIT_TABLEAUX)
def test_implicit_tableau_has_its_declared_order_exactly(name: str) -> None:
    """The same rooted-tree conditions with the full matrix A (stage weights need no
    triangular structure)."""
    tab = IMPLICIT_TABLEAUX[name]
    a, b = np.array(tab.a), np.array(tab.b)
    for order in range(1, tab.order + 1):
        assert max(residuals(a, b, order)) < TOL, f"{name} fails at order {order}"
    assert max(residuals(a, b, tab.order + 1)) > 1e-6, f"{name} is of higher order"


@pytest.mark.parametrize("name", [n for n, t in IMPLICIT_TABLEAUX.items() if t.b_error is not None])
def test_implicit_embedded_solution_has_its_declared_order_exactly(name: str) -> None:
    tab = IMPLICIT_TABLEAUX[name]
    a = np.array(tab.a)
    b_hat = np.array(tab.b) - np.array(tab.b_error)
    for order in range(1, tab.error_order + 1):
        assert max(residuals(a, b_hat, order)) < TOL, f"{name} embedded fails at {order}"
    assert max(residuals(a, b_hat, tab.error_order + 1)) > 1e-6


# Stiff accuracy (y1 is the last stage) and collocation (dense output is the collocation
# polynomial) as the literature gives them; L-stability where |R(infinity)| = 0.
IMPLICIT_PROPERTIES = {
    # name: (stiffly accurate, collocation, L-stable)
    "implicit_euler": (True, True, True),
    "implicit_midpoint": (False, True, False),
    "trapezoid": (True, True, False),
    "radauIIA3": (True, True, True),
    "gl4": (False, True, False),
    "radauIIA5": (True, True, True),
    "gl6": (False, True, False),
    "sdirk2": (True, False, True),
    "trbdf2": (True, False, True),
    "radau": (True, True, True),
    "kvaerno3": (True, False, True),
    "kvaerno4": (True, False, True),
    "kvaerno5": (True, False, True),
}


@pytest.mark.parametrize("name", IMPLICIT_TABLEAUX)
def test_implicit_tableau_properties(name: str) -> None:
    tab = IMPLICIT_TABLEAUX[name]
    stiffly_accurate, collocation, l_stable = IMPLICIT_PROPERTIES[name]
    assert tab.stiffly_accurate == stiffly_accurate
    assert tab.collocation == collocation
    # R(z) = 1 + z b^T (I - z A)^-1 1 -> 1 - b^T A^-1 1 as z -> infinity (A invertible), or
    # with an explicit first stage, from the implicit block; |R| <= 1 on the imaginary axis.
    a, b = np.array(tab.a), np.array(tab.b)
    ones = np.ones(len(b))

    def stability(z: complex) -> complex:
        return 1 + z * b @ np.linalg.solve(np.eye(len(b)) - z * a, ones)

    # R(z) = O(1/z) for an L-stable method; |R(infinity)| = 1 for Gauss and the trapezoid
    far = abs(stability(-1e6))
    assert far < 1e-5 if l_stable else far > 0.5, f"{name}: |R(-1e6)| = {far:.3g}"
    for y in np.linspace(-50, 50, 101):
        assert abs(stability(1j * y)) <= 1 + 1e-12, f"{name} is not A-stable at {y}i"


def test_invalid_implicit_tableaux_are_rejected_with_the_reason() -> None:
    with pytest.raises(ValueError, match="must be 2 x 2"):
        ImplicitTableau("bad", c=(0.0, 1.0), a=((0.0,), (0.5, 0.5)), b=(0.5, 0.5), order=2)
    with pytest.raises(ValueError, match="row 1 of a sums to"):
        ImplicitTableau("bad", c=(0.5, 1.0), a=((0.5, 0.0), (0.5, 0.4)), b=(0.5, 0.5), order=1)
    with pytest.raises(ValueError, match="singular"):
        ImplicitTableau("bad", c=(0.0, 0.0), a=((0.0, 0.0), (0.0, 0.0)), b=(0.5, 0.5), order=1)
    with pytest.raises(ValueError, match="b_error sums to"):
        ImplicitTableau(
            "bad", c=(1.0,), a=((1.0,),), b=(1.0,), order=1, b_error=(0.5,), error_order=1
        )
    with pytest.raises(ValueError, match="b_error and error_order go together"):
        ImplicitTableau("bad", c=(1.0,), a=((1.0,),), b=(1.0,), order=1, b_error=(0.0,))
    with pytest.raises(ValueError, match="B_0"):
        ImplicitTableau(
            "bad", c=(1.0,), a=((1.0,),), b=(1.0,), order=1,
            dense=DenseOutput(coefficients=((0.5,),), order=1),
        )  # fmt: skip
    with pytest.raises(ValueError, match="takes no extra stages"):
        ImplicitTableau(
            "bad", c=(1.0,), a=((1.0,),), b=(1.0,), order=1,
            dense=DenseOutput(coefficients=((1.0,), (0.0,)), order=1, extra_c=(0.5,),
                              extra_a=((0.5,),)),
        )  # fmt: skip
