"""Stochastic Runge-Kutta (Rößler 2010): SRI2 for diagonal and scalar noise, SRA1 for
additive noise, both of strong order 1.5."""

from __future__ import annotations

from ._bridge import _sqrt
from ._solver_base import _WITH_H, Solver, _ratio, span
from .settings import NOISE_TYPES

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
    brownian_flags = {"return_U": True}
    strong_order = 1.5
    weak_order = 1.5
    adjoint_ok = False

    def step(self, t0, t1, y0, extra, noise=None):
        if self.sde.noise_type == NOISE_TYPES.additive:
            return self._additive(t0, t1, y0, noise)
        return self._diagonal(t0, t1, y0, noise)

    def _diagonal(self, t0, t1, y0, noise):
        tab = _SRID2
        dt = span(t0, t1, y0)
        rdt = _ratio(1, dt)
        sqrt_dt = _sqrt(dt)
        dW, U = self.brownian(t0, t1, noise)  # noqa: N806
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

    def _additive(self, t0, t1, y0, noise):
        tab = _SRA1
        dt = span(t0, t1, y0)
        dW, U = self.brownian(t0, t1, noise)  # noqa: N806
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
