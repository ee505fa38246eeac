"""The SDE methods (Euler-Maruyama, Milstein, the Stratonovich methods; stochastic
Runge-Kutta in ``_srk``), each a step ``(t0, t1, y0, extra) -> (y1, extra)`` on the base of
``_solver_base`` (one problem or per sample, written once for both), and ``make_solver``,
which checks once, when the solver is made, that the method fits the SDE and the Brownian
motion.
"""

from __future__ import annotations

import torch

from ._bridge import _sqrt
from ._solver_base import Solver, _ratio, span
from ._srk import SRK
from .settings import LEVY_AREA_APPROXIMATIONS, METHOD_OPTIONS, METHODS, NOISE_TYPES, SDE_TYPES


class Euler(Solver):
    """Euler-Maruyama: ``y1 = y0 + f dt + g dW`` (Itô; strong order 0.5, 1.0 for additive)."""

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        self.strong_order = 1.0 if sde.noise_type == NOISE_TYPES.additive else 0.5

    def step(self, t0, t1, y0, extra, noise=None):
        dW = self.brownian(t0, t1, noise)  # noqa: N806
        return y0 + self.sde.increment(self.time(t0), y0, span(t0, t1, y0), dW), ()


class _Milstein(Solver):
    noise_types = (NOISE_TYPES.additive, NOISE_TYPES.diagonal, NOISE_TYPES.scalar)
    strong_order = 1.0

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        if sde.is_adjoint and sde.noise_type != NOISE_TYPES.diagonal:
            # the adjoint SDE's Milstein term is written for diagonal noise only
            raise ValueError(
                f"Milstein solves the adjoint SDE of diagonal noise only, not of "
                f"{sde.noise_type} noise."
            )
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

    def step(self, t0, t1, y0, extra, noise=None):
        dt = span(t0, t1, y0)
        dW = self.brownian(t0, t1, noise)  # noqa: N806
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


class _StratonovichSolver(Solver):
    sde_type = SDE_TYPES.stratonovich

    def __init__(self, sde, *args, **kwargs):
        super().__init__(sde, *args, **kwargs)
        self.strong_order = 0.5 if sde.noise_type == NOISE_TYPES.general else 1.0


class Midpoint(_StratonovichSolver):
    """The stochastic midpoint method (Stratonovich; strong order 1.0 unless general noise)."""

    def step(self, t0, t1, y0, extra, noise=None):
        dt = span(t0, t1, y0)
        dW = self.brownian(t0, t1, noise)  # noqa: N806
        y_mid = y0 + 0.5 * self.sde.increment(self.time(t0), y0, dt, dW)
        return y0 + self.sde.increment(self.at(t0, t1, 0.5), y_mid, dt, dW), ()


class Heun(_StratonovichSolver):
    """Heun's method (Stratonovich; strong order 1.0 unless general noise)."""

    def step(self, t0, t1, y0, extra, noise=None):
        dt = span(t0, t1, y0)
        dW = self.brownian(t0, t1, noise)  # noqa: N806
        increment = self.sde.increment(self.time(t0), y0, dt, dW)
        increment1 = self.sde.increment(self.time(t1), y0 + increment, dt, dW)
        return y0 + (increment + increment1) * 0.5, ()


class EulerHeun(_StratonovichSolver):
    """Euler-Heun: Euler in the drift, Heun in the diffusion (Stratonovich)."""

    def step(self, t0, t1, y0, extra, noise=None):
        dt = span(t0, t1, y0)
        dW = self.brownian(t0, t1, noise)  # noqa: N806
        f, g_prod = self.sde.f_and_g_prod(self.time(t0), y0, dW)
        g_prod1 = self.sde.g_prod(self.time(t1), y0 + g_prod, dW)
        return y0 + dt * f + (g_prod + g_prod1) * 0.5, ()


class LogODEMidpoint(_StratonovichSolver):
    """The log-ODE midpoint scheme (Stratonovich): the midpoint method plus the Lévy area
    term for general noise; needs Davie's or Foster's Lévy area approximation."""

    levy_area_approximations = (LEVY_AREA_APPROXIMATIONS.davie, LEVY_AREA_APPROXIMATIONS.foster)
    brownian_flags = {"return_A": True}
    adjoint_ok = False

    def step(self, t0, t1, y0, extra, noise=None):
        dt = span(t0, t1, y0)
        dW, A = self.brownian(t0, t1, noise)  # noqa: N806
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

    def step(self, t0, t1, y0, extra, noise=None):
        f0, g0, z0 = extra
        dt = span(t0, t1, y0)
        dW = self.brownian(t0, t1, noise)  # noqa: N806
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
    if sde.is_adjoint and not cls.adjoint_ok:
        raise ValueError(
            f"'{method}' cannot be used for adjoint SDEs, because it requires direct access to "
            "the diffusion, whilst adjoint SDEs rely on a more efficient diffusion-vector "
            "product. Use a different adjoint_method instead."
        )
    if bm.levy_area_approximation not in cls.levy_area_approximations:
        raise ValueError(
            f"SDE solver '{method}' requires one of {cls.levy_area_approximations} set as the "
            "`levy_area_approximation` on the Brownian motion."
        )
    if sde.noise_type == NOISE_TYPES.scalar and torch.Size(bm.shape[1:]).numel() != 1:
        raise ValueError("The Brownian motion for scalar SDEs must of dimension 1.")
    return cls(sde, bm, time_dtype, time_device, options)
