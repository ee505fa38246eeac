"""Reference initial value problems as data: vector field, initial state, time span and the
exact solution where one is known (SciPy's DOP853 at tight tolerances otherwise).

The non-stiff set follows DETEST (Hull, Enright, Fellen & Sedgwick, 1972), one or two problems
from each class: A (scalar), B (small nonlinear systems), C (linear chain), D (orbits),
E (second-order equations). Time spans are shortened from DETEST's [0, 20] to [0, 10] or
[0, 5] (one orbit for D1) so that every adaptive method solves the whole set in a few seconds.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

Field = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Exact = Callable[[np.ndarray], np.ndarray]  # times (m,) -> states (m, n)


@dataclass(frozen=True)
class ReferenceProblem:
    """dy/dt = f(t, y) with y(t0) = y0 on [t0, t1]; ``exact`` maps times to states or is None.

    ``backward`` says what integrating from t1 back to t0 can be checked for: "recover" the
    states and y0 (a well-conditioned backward flow), only "mirror" the forward solve of the
    time-reversed field (a decaying chain run backward amplifies errors), or "none" (off van
    der Pol's cycle the reversed flow escapes to infinity in finite time, so a loose
    tolerance can end the solve before t0).
    """

    name: str
    f: Field
    y0: tuple[float, ...]
    t0: float
    t1: float
    exact: Exact | None = None
    backward: Literal["recover", "mirror", "none"] = "recover"

    def y0_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(self.y0, dtype=dtype)

    def solution(self, ts: np.ndarray) -> torch.Tensor:
        """The exact (or reference) states at the times ``ts``, float64, shape (m, n)."""
        ts = np.asarray(ts, dtype=np.float64)
        if self.exact is not None:
            return torch.from_numpy(np.asarray(self.exact(ts), dtype=np.float64))
        return torch.from_numpy(_scipy_reference(self, tuple(ts.tolist())).copy())


@functools.cache
def _scipy_reference(problem: ReferenceProblem, ts: tuple[float, ...]) -> np.ndarray:
    """DOP853 at rtol = atol = 1e-13 from t0 to increasing times ``ts``."""
    from scipy.integrate import solve_ivp

    def f(t: float, y: np.ndarray) -> np.ndarray:
        return problem.f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

    times = np.array(ts)
    assert np.all(np.diff(times) > 0) and times[0] >= problem.t0, "reference times increase"
    result = solve_ivp(
        f,
        (problem.t0, times[-1]),
        np.array(problem.y0),
        method="DOP853",
        rtol=1e-13,
        atol=1e-13,
        t_eval=times,
    )
    assert result.success, result.message
    return result.y.T


# ---------------------------------------------------------------------------------------------
# Class A: scalar, nonlinear or linear decay.


def _a1(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -y


def _a2(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -0.5 * y**3


A1 = ReferenceProblem("A1", _a1, (1.0,), 0.0, 10.0, lambda t: np.exp(-t)[:, None])
A2 = ReferenceProblem("A2", _a2, (1.0,), 0.0, 10.0, lambda t: (1.0 / np.sqrt(1.0 + t))[:, None])

# ---------------------------------------------------------------------------------------------
# Class B: Lotka-Volterra (B1).


def _b1(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    prey, predator = y[0], y[1]
    return torch.stack([2.0 * (prey - prey * predator), -(predator - prey * predator)])


B1 = ReferenceProblem("B1", _b1, (1.0, 3.0), 0.0, 5.0)

# ---------------------------------------------------------------------------------------------
# Class C: the linear chain C1, y1' = -y1, y_i' = y_{i-1} - y_i, y10' = y9 (Poisson process).


def _c1(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    inflow = torch.cat([y.new_zeros(1), y[:-1]])
    outflow = torch.cat([y[:-1], y.new_zeros(1)])
    return inflow - outflow


def _c1_exact(t: np.ndarray) -> np.ndarray:
    columns = [t**i * np.exp(-t) / math.factorial(i) for i in range(9)]
    columns.append(1.0 - np.sum(columns, axis=0))
    return np.stack(columns, axis=1)


C1 = ReferenceProblem("C1", _c1, (1.0,) + (0.0,) * 9, 0.0, 10.0, _c1_exact, "mirror")

# ---------------------------------------------------------------------------------------------
# Class D: the two-body orbit with eccentricity 0.1 (D1), exact through Kepler's equation.

ECCENTRICITY = 0.1


def _kepler(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    r3 = (y[0] ** 2 + y[1] ** 2) ** 1.5
    return torch.stack([y[2], y[3], -y[0] / r3, -y[1] / r3])


def kepler_exact(t: np.ndarray, e: float = ECCENTRICITY) -> np.ndarray:
    """Position and velocity on the unit-period-2pi orbit starting at pericentre."""
    anomaly = np.array(t, dtype=np.float64)
    for _ in range(50):  # Newton on E - e sin E = t; quadratic convergence for e = 0.1
        anomaly = anomaly - (anomaly - e * np.sin(anomaly) - t) / (1 - e * np.cos(anomaly))
    denominator = 1 - e * np.cos(anomaly)
    root = math.sqrt(1 - e * e)
    return np.stack(
        [
            np.cos(anomaly) - e,
            root * np.sin(anomaly),
            -np.sin(anomaly) / denominator,
            root * np.cos(anomaly) / denominator,
        ],
        axis=1,
    )


D1 = ReferenceProblem(
    "D1",
    _kepler,
    (1 - ECCENTRICITY, 0.0, 0.0, math.sqrt((1 + ECCENTRICITY) / (1 - ECCENTRICITY))),
    0.0,
    2 * math.pi,  # one orbit
    kepler_exact,
)

# ---------------------------------------------------------------------------------------------
# Class E: second-order equations. E1 is Bessel's equation of order 1/2 in x = t + 1, solved by
# J_{1/2}(x) = sqrt(2 / (pi x)) sin x (non-autonomous); E2 is van der Pol with mu = 1.


def _e1(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x = t + 1
    return torch.stack([y[1], -(y[1] / x + (1 - 0.25 / x**2) * y[0])])


def _e1_exact(t: np.ndarray) -> np.ndarray:
    x = t + 1
    c = math.sqrt(2 / math.pi)
    return np.stack(
        [c * np.sin(x) / np.sqrt(x), c * (np.cos(x) / np.sqrt(x) - 0.5 * np.sin(x) / x**1.5)],
        axis=1,
    )


def _e2(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], (1 - y[0] ** 2) * y[1] - y[0]])


E1 = ReferenceProblem("E1", _e1, tuple(_e1_exact(np.zeros(1))[0].tolist()), 0.0, 10.0, _e1_exact)
E2 = ReferenceProblem("E2", _e2, (2.0, 0.0), 0.0, 5.0, None, "none")

DETEST = (A1, A2, B1, C1, D1, E1, E2)

# ---------------------------------------------------------------------------------------------
# A linear system y' = A y with a rotating, non-normal 3x3 matrix, exact by the matrix exponential.

LINEAR_MATRIX = torch.tensor(
    [[-0.2, 2.0, 0.3], [-2.0, -0.2, 1.0], [0.0, -0.5, -0.4]], dtype=torch.float64
)


def _linear(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return LINEAR_MATRIX.to(y.dtype) @ y


def _linear_exact(t: np.ndarray) -> np.ndarray:
    y0 = torch.tensor([1.0, 0.5, -0.3], dtype=torch.float64)
    flows = torch.linalg.matrix_exp(torch.from_numpy(t)[:, None, None] * LINEAR_MATRIX)
    return (flows @ y0).numpy()


LINEAR = ReferenceProblem("linear", _linear, (1.0, 0.5, -0.3), 0.0, 1.0, _linear_exact)

# ---------------------------------------------------------------------------------------------
# Stiff problems (Hairer & Wanner, Solving ODEs II): Robertson's chemical kinetics, van der
# Pol with mu = 1000 and HIRES, with reference states from SciPy's Radau at tight tolerances
# (stored: computing them takes minutes).


def _robertson(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y1, y2, y3 = y[..., 0], y[..., 1], y[..., 2]
    fast = 1e4 * y2 * y3
    slow = 3e7 * y2**2
    return torch.stack([-0.04 * y1 + fast, 0.04 * y1 - fast - slow, slow], -1)


def _robertson_jacobian(t: float, y: np.ndarray) -> np.ndarray:
    return np.array(
        [
            [-0.04, 1e4 * y[2], 1e4 * y[1]],
            [0.04, -1e4 * y[2] - 6e7 * y[1], -1e4 * y[1]],
            [0.0, 6e7 * y[1], 0.0],
        ]
    )


VDP_MU = 1000.0


def _vdp_stiff(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, VDP_MU * (1 - x**2) * v - x], -1)


def _vdp_stiff_jacobian(t: float, y: np.ndarray) -> np.ndarray:
    x, v = y
    return np.array([[0.0, 1.0], [-2 * VDP_MU * x * v - 1, VDP_MU * (1 - x**2)]])


def _hires(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    y1, y2, y3, y4, y5, y6, y7, y8 = y.unbind(-1)
    r = 280.0 * y6 * y8
    return torch.stack(
        [
            -1.71 * y1 + 0.43 * y2 + 8.32 * y3 + 0.0007,
            1.71 * y1 - 8.75 * y2,
            -10.03 * y3 + 0.43 * y4 + 0.035 * y5,
            8.32 * y2 + 1.71 * y3 - 1.12 * y4,
            -1.745 * y5 + 0.43 * y6 + 0.43 * y7,
            -r + 0.69 * y4 + 1.71 * y5 - 0.43 * y6 + 0.69 * y7,
            r - 1.81 * y7,
            -r + 1.81 * y7,
        ],
        -1,
    )


@dataclass(frozen=True)
class StiffProblem:
    """A stiff initial value problem from t = 0 with reference states ``ys`` at ``ts``.

    The references were computed with SciPy's Radau and the analytic Jacobian: Robertson at
    rtol 1e-13, atol 1e-17 (within 2e-13 of rtol 1e-12), HIRES at rtol 1e-10 (matching the
    published HIRES solution at t = 321.8122); van der Pol's at rtol 1e-9, atol 1e-12 when
    first needed (slow tests only). ``scipy_solution`` recomputes them.
    """

    name: str
    f: Field
    y0: tuple[float, ...]
    ts: tuple[float, ...]
    ys: tuple[tuple[float, ...], ...] | None  # None: computed by SciPy on first use
    jacobian: Callable[[float, np.ndarray], np.ndarray] | None = None

    def y0_tensor(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        return torch.tensor(self.y0, dtype=dtype)

    def ts_tensor(self, upto: int | None = None) -> torch.Tensor:
        return torch.tensor(self.ts[:upto], dtype=torch.float64)

    def reference(self, upto: int | None = None) -> torch.Tensor:
        if self.ys is None:
            return _computed_reference(self)[:upto]
        return torch.tensor(self.ys[:upto], dtype=torch.float64)

    def scipy_solution(self, rtol: float = 1e-12, atol: float = 1e-16) -> torch.Tensor:
        """SciPy's Radau with the analytic Jacobian where there is one, at ``ts``."""
        from scipy.integrate import solve_ivp

        def f(t: float, y: np.ndarray) -> np.ndarray:
            return self.f(torch.tensor(t, dtype=torch.float64), torch.from_numpy(y)).numpy()

        result = solve_ivp(
            f,
            (self.ts[0], self.ts[-1]),
            np.array(self.y0),
            method="Radau",
            rtol=rtol,
            atol=atol,
            t_eval=np.array(self.ts),
            jac=self.jacobian,
        )
        assert result.success, result.message
        return torch.from_numpy(result.y.T.copy())


@functools.cache
def _computed_reference(problem: StiffProblem) -> torch.Tensor:
    return problem.scipy_solution(rtol=1e-9, atol=1e-12)


ROBERTSON = StiffProblem(
    "robertson",
    _robertson,
    (1.0, 0.0, 0.0),
    (0.0, 1e-2, 1.0, 1e2, 1e4, 1e5),
    (
        (1.0, 0.0, 0.0),
        (0.9996006826882946, 3.645047887844156e-05, 0.00036286683282835797),
        (0.9664597373330064, 3.0746265785786805e-05, 0.03350951640121088),
        (0.6172348823960949, 6.153591274639236e-06, 0.38275896401263076),
        (0.10730042853782491, 4.800166972572681e-07, 0.8926990914454808),
        (0.017865921142114667, 7.274751468442603e-08, 0.9821340061103729),
    ),
    _robertson_jacobian,
)

HIRES = StiffProblem(
    "hires",
    _hires,
    (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057),
    (0.0, 1.0, 10.0, 100.0, 321.8122),
    (
        (1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0057),
        (
            0.2554926929712528,
            0.05690878908649067,
            0.019458074977115318,
            0.45851946967159996,
            0.020147739125068443,
            0.18228795775939496,
            0.005499081272424613,
            0.0002009187275753902,
        ),
        (
            0.008324735469214252,
            0.0016526725079966697,
            0.0014103426593048295,
            0.017433224297382602,
            0.18572046406527817,
            0.7494166221554643,
            0.005651253341825124,
            4.874665817488608e-05,
        ),
        (
            0.004520859364105891,
            0.0008839056323338434,
            0.0007971942865649147,
            0.007811326061338761,
            0.13238525409440302,
            0.5301676923178829,
            0.005631339757756603,
            6.866024224341358e-05,
        ),
        (
            0.000737131257332719,
            0.00014424857263164843,
            5.888729740970407e-05,
            0.0011756513432834314,
            0.0023863561988359074,
            0.006238968252753969,
            0.0028499983951920005,
            0.0028500016048080092,
        ),
    ),
)

VDP_STIFF = StiffProblem(
    "vdp1000",
    _vdp_stiff,
    (2.0, 0.0),
    (0.0, 400.0, 1000.0, 2000.0, 3000.0),
    None,
    _vdp_stiff_jacobian,
)
