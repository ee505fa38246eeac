"""SDE solvers: each is a step ``(t0, t1, y0, extra) -> (y1, extra)``.

The times are host floats (one problem: every row steps from ``t0`` to ``t1``; they reach the
user's ``f`` and ``g`` as 0-dim tensors of the time dtype, as in torchsde) or float64 tensors
of shape (batch,) (per sample: row i steps from ``t0[i]`` to ``t1[i]``; ``f`` and ``g``
receive the (batch,) times, the Brownian motion is asked for each row's interval). The step
formulas are written once for both: ``span`` is the step as the states see it (a float, or
(batch, 1)), ``at`` the time at a fraction of it, and ``_ratio`` divides by a step that is
zero for finished samples (whose steps are discarded) without making NaN.

Every solver names the SDE type, noise types and Lévy area approximations it supports and its
strong and weak orders; the checks happen once, when the solver is made (``make_solver``).
"""

from __future__ import annotations

import torch

from ._bridge import _sqrt
from .settings import LEVY_AREA_APPROXIMATIONS, METHOD_OPTIONS, METHODS, NOISE_TYPES, SDE_TYPES

_ALL_NOISE = tuple(NOISE_TYPES.all())
_ALL_LEVY = tuple(LEVY_AREA_APPROXIMATIONS.all())
_WITH_H = (
    LEVY_AREA_APPROXIMATIONS.space_time,
    LEVY_AREA_APPROXIMATIONS.davie,
    LEVY_AREA_APPROXIMATIONS.foster,
)


def span(t0, t1, y0: torch.Tensor):
    """The step from ``t0`` to ``t1`` as the states see it: a float, or per sample (batch, 1)
    in ``y0``'s dtype."""
    if isinstance(t1, torch.Tensor) and t1.ndim == 1:
        return (t1 - t0).to(y0.dtype)[:, None]
    return t1 - t0


def _ratio(a, b):
    """``a / b``; for a tensor ``b`` (per-sample steps) 0 where ``b`` is 0 (the zero step of
    a finished sample: its noise is zero too, so 0 is the limit, and no NaN reaches the
    gradients of the rows that step)."""
    if not isinstance(b, torch.Tensor):
        return a / b
    zero = b == 0
    return torch.where(zero, 0.0, a / torch.where(zero, 1.0, b))


class Solver:
    """A one-step SDE method bound to an SDE, a Brownian motion and a time dtype."""

    sde_type: str = SDE_TYPES.ito
    noise_types: tuple[str, ...] = _ALL_NOISE
    levy_area_approximations: tuple[str, ...] = _ALL_LEVY
    strong_order: float = 0.5
    weak_order: float = 1.0
    adjoint_ok = True  # usable on the adjoint SDE (which offers only diffusion products)

    def __init__(self, sde, bm, time_dtype: torch.dtype, time_device, options: dict):
        self.sde = sde
        self.bm = bm
        self.options = options
        self._dtype = time_dtype
        self._device = time_device

    def time(self, t: float | torch.Tensor) -> torch.Tensor:
        """The time as ``f`` and ``g`` receive it: 0-dim, or (batch,) per sample."""
        if isinstance(t, torch.Tensor):
            return t.to(self._dtype)
        return torch.tensor(t, dtype=self._dtype, device=self._device)

    def at(self, t0, t1, c: float) -> torch.Tensor:
        """The time at the fraction ``c`` of the step from ``t0`` to ``t1``."""
        return self.time(t0 + c * (t1 - t0))

    def init_extra_solver_state(self, t0: float, y0: torch.Tensor) -> tuple:
        return ()

    def step(self, t0: float, t1: float, y0: torch.Tensor, extra: tuple):
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__} of strong order: {self.strong_order}, and weak order: "
            f"{self.weak_order}"
        )


class Euler(Solver):
    """Euler-Maruyama: ``y1 = y0 + f dt + g dW`` (Itô; strong order 0.5, 1.0 for additive)."""

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        self.strong_order = 1.0 if sde.noise_type == NOISE_TYPES.additive else 0.5

    def step(self, t0, t1, y0, extra):
        return y0 + self.sde.increment(self.time(t0), y0, span(t0, t1, y0), self.bm(t0, t1)), ()


class _Milstein(Solver):
    noise_types = (NOISE_TYPES.additive, NOISE_TYPES.diagonal, NOISE_TYPES.scalar)
    strong_order = 1.0

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        grad_free = bool(self.options.get(METHOD_OPTIONS.grad_free, False))
        if sde.noise_type == NOISE_TYPES.additive:
            grad_free = False  # dg = 0: the derivative term vanishes either way
        if grad_free and sde.is_adjoint:
            raise ValueError(
                "Derivative-free Milstein cannot be used for adjoint SDEs, because it requires "
                "direct access to the diffusion, whilst adjoint SDEs rely on a more efficient "
                "diffusion-vector product. Use derivative-using Milstein instead: "
                "`adjoint_options=dict(grad_free=False)`"
            )
        self.grad_free = grad_free

    def step(self, t0, t1, y0, extra):
        dt = span(t0, t1, y0)
        dW = self.bm(t0, t1)  # noqa: N806
        v = dW**2 - dt if self.sde_type == SDE_TYPES.ito else dW**2
        t = self.time(t0)
        if self.grad_free:
            f, g = self.sde.f_and_g(t, y0)
            g_ = g.squeeze(2) if g.dim() == 3 else g
            sqrt_dt = _sqrt(dt)
            shift = f * dt if self.sde_type == SDE_TYPES.ito else 0.0
            g_prime = self.sde.g(t, y0 + shift + g_ * sqrt_dt)
            g_prod = self.sde.prod(g, dW)
            gdg_prod = _ratio(self.sde.prod(g_prime - g, v), 2 * sqrt_dt)
            return y0 + f * dt + g_prod + gdg_prod, ()
        increment, gdg_prod = self.sde.increment_and_gdg(t, y0, dt, dW, 0.5 * v)
        return y0 + increment + gdg_prod, ()


class MilsteinIto(_Milstein):
    """Milstein for Itô SDEs (strong order 1.0); option ``grad_free`` avoids derivatives."""

    sde_type = SDE_TYPES.ito


class MilsteinStratonovich(_Milstein):
    """Milstein for Stratonovich SDEs (strong order 1.0); option ``grad_free``."""

    sde_type = SDE_TYPES.stratonovich


# Rößler (2010) SRI2 for diagonal/scalar noise (strong order 1.5) and SRA1 for additive noise
_SRID2 = dict(
    C0=(0, 1, 1 / 2, 0),
    C1=(0, 1 / 4, 1, 1 / 4),
    A0=((), (1,), (1 / 4, 1 / 4), (0, 0, 0)),
    A1=((), (1 / 4,), (1, 0), (0, 0, 1 / 4)),
    B0=((), (0,), (1, 1 / 2), (0, 0, 0)),
    B1=((), (-1 / 2,), (1, 0), (2, -1, 1 / 2)),
    alpha=(1 / 6, 1 / 6, 2 / 3, 0),
    beta1=(-1, 4 / 3, 2 / 3, 0),
    beta2=(1, -4 / 3, 1 / 3, 0),
    beta3=(2, -4 / 3, -2 / 3, 0),
    beta4=(-2, 5 / 3, -2 / 3, 1),
)
_SRA1 = dict(
    C0=(0, 3 / 4),
    C1=(1, 0),
    A0=((), (3 / 4,)),
    B0=((), (3 / 2,)),
    alpha=(1 / 3, 2 / 3),
    beta1=(1, 0),
    beta2=(-1, 1),
)


class SRK(Solver):
    """Stochastic Runge-Kutta (Rößler 2010): strong order 1.5 for diagonal and scalar noise
    (SRI2), 1.5 for additive noise (SRA1); needs the space-time Lévy area. Each stage's drift
    and diffusion are evaluated once and reused by the later stages."""

    noise_types = (NOISE_TYPES.additive, NOISE_TYPES.diagonal, NOISE_TYPES.scalar)
    levy_area_approximations = _WITH_H
    strong_order = 1.5
    weak_order = 1.5
    adjoint_ok = False

    def step(self, t0, t1, y0, extra):
        if self.sde.noise_type == NOISE_TYPES.additive:
            return self._additive(t0, t1, y0)
        return self._diagonal(t0, t1, y0)

    def _diagonal(self, t0, t1, y0):
        tab = _SRID2
        dt = span(t0, t1, y0)
        rdt = _ratio(1, dt)
        sqrt_dt = _sqrt(dt)
        dW, U = self.bm(t0, t1, return_U=True)  # noqa: N806
        i_kk = (dW**2 - dt) * 0.5
        i_kkk = (dW**3 - 3 * dt * dW) / 6
        u_rdt = U * rdt
        y1 = y0
        fs, gs = [], []  # f(H0_j) dt and g(H1_j) of the stages so far
        for s in range(4):
            h0, h1 = y0, y0
            for j in range(s):
                if tab["A0"][s][j]:
                    h0 = h0 + tab["A0"][s][j] * fs[j]
                if tab["B0"][s][j]:
                    h0 = h0 + tab["B0"][s][j] * gs[j] * u_rdt
                if tab["A1"][s][j]:
                    h1 = h1 + tab["A1"][s][j] * fs[j]
                if tab["B1"][s][j]:
                    h1 = h1 + (tab["B1"][s][j] * sqrt_dt) * gs[j]
            needs_f = (
                tab["alpha"][s] != 0
                or any(row[s] for row in tab["A0"][s + 1 :])
                or any(row[s] for row in tab["A1"][s + 1 :])
            )
            f = self.sde.f(self.at(t0, t1, tab["C0"][s]), h0) * dt if needs_f else None
            g = self.sde.g(self.at(t0, t1, tab["C1"][s]), h1)
            g = g.squeeze(2) if g.dim() == 3 else g
            fs.append(f)
            gs.append(g)
            weight = (
                tab["beta1"][s] * dW
                + _ratio(tab["beta2"][s], sqrt_dt) * i_kk
                + tab["beta3"][s] * u_rdt
                + (tab["beta4"][s] * rdt) * i_kkk
            )
            if tab["alpha"][s]:
                y1 = y1 + tab["alpha"][s] * f
            y1 = y1 + g * weight
        return y1, ()

    def _additive(self, t0, t1, y0):
        tab = _SRA1
        dt = span(t0, t1, y0)
        dW, U = self.bm(t0, t1, return_U=True)  # noqa: N806
        u_rdt = _ratio(U, dt)
        y1 = y0
        fs = []
        for i in range(2):
            h0 = y0
            for j in range(i):
                h0 = h0 + tab["A0"][i][j] * fs[j]
                h0 = h0 + self.sde.g_prod(
                    self.at(t0, t1, tab["C1"][j]), y0, tab["B0"][i][j] * u_rdt
                )
            f = self.sde.f(self.at(t0, t1, tab["C0"][i]), h0) * dt
            fs.append(f)
            weight = tab["beta1"][i] * dW + tab["beta2"][i] * u_rdt
            g_prod = self.sde.g_prod(self.at(t0, t1, tab["C1"][i]), y0, weight)
            y1 = y1 + tab["alpha"][i] * f + g_prod
        return y1, ()


class _StratonovichSolver(Solver):
    sde_type = SDE_TYPES.stratonovich

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        self.strong_order = 0.5 if sde.noise_type == NOISE_TYPES.general else 1.0


class Midpoint(_StratonovichSolver):
    """The stochastic midpoint method (Stratonovich; strong order 1.0 unless general noise)."""

    def step(self, t0, t1, y0, extra):
        dt = span(t0, t1, y0)
        dW = self.bm(t0, t1)  # noqa: N806
        y_mid = y0 + 0.5 * self.sde.increment(self.time(t0), y0, dt, dW)
        return y0 + self.sde.increment(self.at(t0, t1, 0.5), y_mid, dt, dW), ()


class Heun(_StratonovichSolver):
    """Heun's method (Stratonovich; strong order 1.0 unless general noise)."""

    def step(self, t0, t1, y0, extra):
        dt = span(t0, t1, y0)
        dW = self.bm(t0, t1)  # noqa: N806
        increment = self.sde.increment(self.time(t0), y0, dt, dW)
        increment1 = self.sde.increment(self.time(t1), y0 + increment, dt, dW)
        return y0 + (increment + increment1) * 0.5, ()


class EulerHeun(_StratonovichSolver):
    """Euler-Heun: Euler in the drift, Heun in the diffusion (Stratonovich)."""

    def step(self, t0, t1, y0, extra):
        dt = span(t0, t1, y0)
        dW = self.bm(t0, t1)  # noqa: N806
        f, g_prod = self.sde.f_and_g_prod(self.time(t0), y0, dW)
        g_prod1 = self.sde.g_prod(self.time(t1), y0 + g_prod, dW)
        return y0 + dt * f + (g_prod + g_prod1) * 0.5, ()


class LogODEMidpoint(_StratonovichSolver):
    """The log-ODE midpoint scheme (Stratonovich): the midpoint method plus the Lévy area
    term for general noise; needs Davie's or Foster's Lévy area approximation."""

    levy_area_approximations = (LEVY_AREA_APPROXIMATIONS.davie, LEVY_AREA_APPROXIMATIONS.foster)
    adjoint_ok = False

    def step(self, t0, t1, y0, extra):
        dt = span(t0, t1, y0)
        dW, A = self.bm(t0, t1, return_A=True)  # noqa: N806
        f, g_prod = self.sde.f_and_g_prod(self.time(t0), y0, dW)
        t_mid = self.at(t0, t1, 0.5)
        y_mid = y0 + (0.5 * dt) * f + 0.5 * g_prod
        f, g_prod = self.sde.f_and_g_prod(t_mid, y_mid, dW)
        return y0 + dt * f + g_prod + self.sde.dg_ga_jvp_column_sum(t_mid, y_mid, A), ()


class ReversibleHeun(_StratonovichSolver):
    """Reversible Heun (Kidger et al. 2021; Stratonovich): algebraically reversible, so its
    adjoint (``adjoint_reversible_heun``) reproduces backprop's gradient. Extra state
    ``(f, g, z)``; strong order 1.0 for additive noise, 0.5 otherwise."""

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        self.strong_order = 1.0 if sde.noise_type == NOISE_TYPES.additive else 0.5

    def init_extra_solver_state(self, t0, y0):
        return (*self.sde.f_and_g(self.time(t0), y0), y0)

    def step(self, t0, t1, y0, extra):
        f0, g0, z0 = extra
        dt = span(t0, t1, y0)
        dW = self.bm(t0, t1)  # noqa: N806
        z1 = 2 * y0 - z0 + f0 * dt + self.sde.prod(g0, dW)
        f1, g1 = self.sde.f_and_g(self.time(t1), z1)
        y1 = y0 + (f0 + f1) * (0.5 * dt) + self.sde.prod(g0 + g1, 0.5 * dW)
        return y1, (f1, g1, z1)


_BY_NAME = {
    (METHODS.euler, SDE_TYPES.ito): Euler,
    (METHODS.milstein, SDE_TYPES.ito): MilsteinIto,
    (METHODS.milstein, SDE_TYPES.stratonovich): MilsteinStratonovich,
    (METHODS.srk, SDE_TYPES.ito): SRK,
    (METHODS.midpoint, SDE_TYPES.stratonovich): Midpoint,
    (METHODS.heun, SDE_TYPES.stratonovich): Heun,
    (METHODS.euler_heun, SDE_TYPES.stratonovich): EulerHeun,
    (METHODS.log_ode_midpoint, SDE_TYPES.stratonovich): LogODEMidpoint,
    (METHODS.reversible_heun, SDE_TYPES.stratonovich): ReversibleHeun,
}
_TYPE_OF = {name: sde_type for name, sde_type in _BY_NAME}


def make_solver(method: str, sde, bm, time_dtype, time_device, options: dict) -> Solver:
    """The solver ``method`` for ``sde``, after checking that they fit together.

    Raises:
        ValueError: if the method is unknown or does not support the SDE type, noise type or
            the Brownian motion's Lévy area approximation.
    """
    cls = _BY_NAME.get((method, sde.sde_type))
    if cls is None:
        if method not in METHODS or method == METHODS.adjoint_reversible_heun:
            raise ValueError(f"Method '{method}' does not match any known method.")
        raise ValueError(
            f"SDE is of type {sde.sde_type} but solver '{method}' is for type "
            f"{_TYPE_OF[method]}; choose one of "
            f"{sorted(m for m, t in _BY_NAME if t == sde.sde_type)}"
        )
    if sde.noise_type not in cls.noise_types:
        raise ValueError(
            f"SDE has noise type {sde.noise_type} but solver '{method}' only supports noise "
            f"types {cls.noise_types}"
        )
    if bm.levy_area_approximation not in cls.levy_area_approximations:
        raise ValueError(
            f"SDE solver '{method}' requires one of {cls.levy_area_approximations} set as the "
            "`levy_area_approximation` on the Brownian motion."
        )
    if sde.noise_type == NOISE_TYPES.scalar and torch.Size(bm.shape[1:]).numel() != 1:
        raise ValueError("The Brownian motion for scalar SDEs must of dimension 1.")
    if sde.is_adjoint and not cls.adjoint_ok:
        raise ValueError(
            f"'{method}' cannot be used for adjoint SDEs, because it requires direct access to "
            "the diffusion, whilst adjoint SDEs rely on a more efficient diffusion-vector "
            "product. Use a different adjoint_method instead."
        )
    return cls(sde, bm, time_dtype, time_device, options)
