"""The stochastic adjoint's augmented SDE (Li et al. 2020): the state ``y``, its adjoint
``a = dL/dy`` and the parameters' adjoint on one flat state, in reversed time ``s = -t``
(Stratonovich form, with ``rbm(sa, sb) = bm(-sb, -sa)``):

    dy = -f ds - g o dW,    da = a df/dy ds + a dg/dy o dW,    dθ̄ = a df/dθ ds + a dg/dθ o dW

For an Itô SDE the forward drift is first converted to Stratonovich form
(``f - 1/2 sum_l (dg_l/dy) g_l``) and the augmented SDE back to Itô form, so that Itô methods
(euler, milstein) solve it. Every vector-Jacobian product is local to one evaluation.
"""

from __future__ import annotations

import torch

from ._base import jvp, vjp
from .settings import NOISE_TYPES, SDE_TYPES


class _AdjointSDE:
    """The augmented SDE on a flat state ``[y, a, θ̄]`` in reversed time (see the module)."""

    is_adjoint = True

    def __init__(self, forward, params: list[torch.Tensor], shape: torch.Size):
        self.forward = forward
        self.sde_type = forward.sde_type
        self.noise_type = {NOISE_TYPES.additive: NOISE_TYPES.general}.get(
            forward.noise_type, forward.noise_type
        )
        self.params = params
        self.shape = shape
        self.numel = shape.numel()
        self.ito_corrected = (
            forward.sde_type == SDE_TYPES.ito and forward.noise_type != NOISE_TYPES.additive
        )

    # ----------------------------------------------------------------------------------------
    def _split(self, z: torch.Tensor):
        n = self.numel
        y = z[:n].view(self.shape).detach().requires_grad_(True)
        return y, z[n : 2 * n].view(self.shape)

    def _pack(self, y_part: torch.Tensor, grads) -> torch.Tensor:
        return torch.cat([y_part.reshape(-1)] + [g.reshape(-1) for g in grads])

    def _drift(self, t, y, a, v=None):
        """The forward drift in the form the adjoint needs (Itô: Stratonovich-corrected, with
        its graph), the diffusion-vector product ``g v`` (if ``v``), and the Itô correction's
        extra term as an (output, cotangent) pair whose vjp is ``sum_l (a dg_l/dy) dg_l/d(y, θ)``.

        For diagonal noise each ``g_i`` depends on ``y_i`` only (torchsde's assumption), so the
        corrections use ``g' = d(sum g)/dy``, the diagonal of the Jacobian: one reverse pass."""
        fwd = self.forward
        if not self.ito_corrected:
            if v is None:
                return fwd.f(-t, y), None, None
            f, g_prod = fwd.f_and_g_prod(-t, y, v)
            return f, g_prod, None
        f, g = fwd.f_and_g(-t, y)
        g_prod = None if v is None else fwd.prod(g, v)
        if fwd.noise_type == NOISE_TYPES.diagonal:
            (dg,) = vjp(g.sum(), [y], None, create_graph=True)
            return f - g * dg, g_prod, (g, (a * dg).detach())
        columns = [g[..., col] for col in range(g.shape[-1])]
        g_dg = sum(jvp(column, y, column, create_graph=True) for column in columns)
        a_dg = [vjp(column, [y], a, retain_graph=True)[0] for column in columns]
        return f - g_dg, g_prod, (columns, a_dg)

    def _vjp(self, outputs, cotangents, y):
        """One reverse pass for all (output, cotangent) pairs, into ``[y, *params]``."""
        outs, cots = [], []
        for out, cot in zip(outputs, cotangents):
            if isinstance(out, list):
                outs += out
                cots += cot
            else:
                outs.append(out)
                cots.append(cot)
        return vjp(outs, [y, *self.params], cots)

    def _scaled(self, extra, scale: float):
        if scale == 1.0:
            return extra
        out, cot = extra
        return out, [c * scale for c in cot] if isinstance(cot, list) else cot * scale

    def increment(self, t, z, dt: float, v):
        y, a = self._split(z)
        with torch.enable_grad():
            f, g_prod, extra = self._drift(t, y, a, v)
            total = f * dt + g_prod
            pairs = [(total, a)] + ([] if extra is None else [self._scaled(extra, dt)])
            grads = self._vjp(*zip(*pairs), y)
        return self._pack(-total.detach(), grads)

    def f(self, t, z):
        y, a = self._split(z)
        with torch.enable_grad():
            f, _, extra = self._drift(t, y, a)
            pairs = [(f, a)] + ([] if extra is None else [extra])
            grads = self._vjp(*zip(*pairs), y)
        return self._pack(-f.detach(), grads)

    def g_prod(self, t, z, v):
        y, a = self._split(z)
        with torch.enable_grad():
            g_prod = self.forward.g_prod(-t, y, v)
            grads = vjp(g_prod, [y, *self.params], a)
        return self._pack(-g_prod.detach(), grads)

    def f_and_g_prod(self, t, z, v):
        y, a = self._split(z)
        with torch.enable_grad():
            f, g_prod, extra = self._drift(t, y, a, v)
            pairs = [(f, a)] + ([] if extra is None else [extra])
            grads_f = self._vjp(*zip(*pairs), y)
            grads_g = vjp(g_prod, [y, *self.params], a)
        return self._pack(-f.detach(), grads_f), self._pack(-g_prod.detach(), grads_g)

    def increment_and_gdg(self, t, z, dt: float, v1, v2):
        """Milstein on the augmented SDE of diagonal noise (each ``g_l`` a function of
        ``y_l``): ``sum_l (dG_l/dz) G_l v2_l`` has y-part ``g g' v2`` and (a, θ)-part
        ``sum_l v2_l a_l (g_l' dg_l/d(y, θ) - g_l dg_l'/d(y, θ))``. The increment and this
        term are returned summed (the Milstein step adds them), from one reverse pass."""
        if self.forward.noise_type != NOISE_TYPES.diagonal:
            raise ValueError(
                "adjoint_method='milstein' needs diagonal noise; use adjoint_method='euler' "
                f"for {self.forward.noise_type} noise"
            )
        y, a = self._split(z)
        with torch.enable_grad():
            f, g = self.forward.f_and_g(-t, y)
            (dg,) = vjp(g.sum(), [y], None, create_graph=True)
            weight = (a * v2).detach()
            g_cot = weight * dg.detach()
            if self.ito_corrected:
                f = f - g * dg
                g_cot = g_cot + (a * dg).detach() * dt
            total = f * dt + g * v1
            grads = vjp([total, g, dg], [y, *self.params], [a, g_cot, -weight * g.detach()])
            y_part = total.detach().neg_().add_(g.detach() * dg.detach() * v2)
        return self._pack(y_part, grads), 0.0

    def g(self, t, z):
        raise RuntimeError("The adjoint SDE offers diffusion-vector products only, not `g`.")

    f_and_g = g

    def prod(self, g, v):
        raise RuntimeError("The adjoint SDE offers diffusion-vector products only, not `prod`.")
