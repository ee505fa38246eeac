"""SDE classes (torchsde's ``BaseSDE``, ``SDEIto``, ``SDEStratonovich``) and the internal view
of a user's SDE that the solvers call (``_Forward``): drift, diffusion and the products with a
Brownian increment, bound once per solve so the step loop does no attribute lookups or checks."""

from __future__ import annotations

import torch
from torch import nn

from .._autograd import grad
from .settings import NOISE_TYPES, SDE_TYPES


class BaseSDE(nn.Module):
    """Base class of SDEs: checks and stores ``noise_type`` and ``sde_type``.

    Subclasses define ``f(t, y)`` (drift, shape (batch, d)) and ``g(t, y)`` (diffusion: (batch, d)
    for diagonal noise, (batch, d, m) otherwise), or ``f_and_g``, ``g_prod(t, y, v)``,
    ``f_and_g_prod``; ``h(t, y)`` is the prior drift used by ``logqp=True``.

    Arguments:
        noise_type: one of ``settings.NOISE_TYPES``: "diagonal", "additive", "scalar", "general".
        sde_type: one of ``settings.SDE_TYPES``: "ito", "stratonovich".

    Raises:
        ValueError: for an unknown noise type or SDE type.
    """

    def __init__(self, noise_type: str, sde_type: str):
        super().__init__()
        if noise_type not in NOISE_TYPES:
            raise ValueError(f"Expected noise type in {NOISE_TYPES}, but found {noise_type}")
        if sde_type not in SDE_TYPES:
            raise ValueError(f"Expected sde type in {SDE_TYPES}, but found {sde_type}")
        self.noise_type = noise_type
        self.sde_type = sde_type


class SDEIto(BaseSDE):
    """An Itô SDE ``dy = f dt + g dW``.

    Arguments:
        noise_type: one of ``settings.NOISE_TYPES``.
    """

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type=SDE_TYPES.ito)


class SDEStratonovich(BaseSDE):
    """A Stratonovich SDE ``dy = f dt + g o dW``.

    Arguments:
        noise_type: one of ``settings.NOISE_TYPES``.
    """

    def __init__(self, noise_type: str):
        super().__init__(noise_type=noise_type, sde_type=SDE_TYPES.stratonovich)


_METHOD_NAMES = ("f", "g", "h", "g_prod", "f_and_g", "f_and_g_prod")
_RENAME_KEYS = {
    "drift": "f",
    "diffusion": "g",
    "prior_drift": "h",
    "diffusion_prod": "g_prod",
    "drift_and_diffusion": "f_and_g",
    "drift_and_diffusion_prod": "f_and_g_prod",
}


# the methods each combined one stands for: kept under its own name only while none of its
# parts is renamed (it would compute with the parts the names replace)
_COMBINED_PARTS = {
    "g_prod": ("g",),
    "f_and_g": ("f", "g"),
    "f_and_g_prod": ("f", "g", "g_prod"),
}


class _Renamed(nn.Module):
    """The SDE with its methods looked up under other names (``names={"drift": "foo"}``).

    A combined method (``f_and_g``, ``g_prod``, ``f_and_g_prod``) that is not renamed itself
    is left out where one of its parts is (``names={"drift": "h"}`` with an ``f_and_g``
    that calls ``f``): the solvers then compose it from the renamed parts."""

    def __init__(self, sde, names: dict[str, str]):
        super().__init__()
        self.base = sde
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        renamed = {attr for key, attr in _RENAME_KEYS.items() if names.get(key, attr) != attr}
        for key, attr in _RENAME_KEYS.items():
            source = names.get(key, attr)
            if attr not in renamed and renamed.intersection(_COMBINED_PARTS.get(attr, ())):
                continue
            if hasattr(sde, source):
                setattr(self, attr, getattr(sde, source))


def stable_division(a: torch.Tensor, b: torch.Tensor, epsilon: float = 1e-7) -> torch.Tensor:
    """``a / b`` with ``|b|`` kept at least ``epsilon`` (its sign kept)."""
    b = torch.where(b.abs().detach() > epsilon, b, torch.full_like(b, epsilon) * b.sign())
    return a / b


class _Logqp(nn.Module):
    """The SDE with one more state channel: the running log-ratio ``0.5 |u|^2`` with
    ``g u = f - h`` (the KL divergence of the posterior SDE ``f`` from the prior ``h``)."""

    def __init__(self, sde):
        super().__init__()
        self.base = sde
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        for name in ("f", "g", "h"):
            if not hasattr(sde, name):
                raise AttributeError(
                    "If using logqp then drift, diffusion and prior drift must all be specified "
                    f"(`f`, `g` and `h`); the SDE has no `{name}`."
                )

    def _u(self, f, g, h):
        if self.noise_type == NOISE_TYPES.diagonal:
            return stable_division(f - h, g)
        return (torch.linalg.pinv(g) @ (f - h).unsqueeze(-1)).squeeze(-1)

    def f_and_g(self, t, y):
        y = y[:, :-1]
        f, g, h = self.base.f(t, y), self.base.g(t, y), self.base.h(t, y)
        logqp = 0.5 * (self._u(f, g, h) ** 2).sum(dim=1, keepdim=True)
        zero = g.new_zeros((g.shape[0], 1, *g.shape[2:]))
        return torch.cat([f, logqp], dim=1), torch.cat([g, zero], dim=1)

    def f(self, t, y):
        return self.f_and_g(t, y)[0]

    def g(self, t, y):
        g = self.base.g(t, y[:, :-1])
        return torch.cat([g, g.new_zeros((g.shape[0], 1, *g.shape[2:]))], dim=1)


def _missing(name: str):
    def missing(*args):
        raise RuntimeError(
            f"Method `{name}` has not been provided, but is required for this method."
        )

    return missing


def batch_mvp(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Batched matrix-vector product: (batch, d, m) x (batch, m) -> (batch, d)."""
    return (
        torch.bmm(m, v.unsqueeze(-1)).squeeze(-1) if m.dim() == 3 else (m @ v.unsqueeze(-1))[..., 0]
    )


def vjp(outputs, inputs, grad_outputs, **kwargs):
    """``torch.autograd.grad`` with unused inputs given zero gradients, not ``None``, by
    ``_autograd.grad`` (which leaves nothing behind per call: the adjoint calls it every step).
    ``outputs`` and ``grad_outputs`` are sequences or one tensor each; an output that does
    not depend on anything that requires grad (a diffusion constant in y and the parameters,
    say) contributes nothing. The graph is kept (``retain_graph``): the SDE's functions may
    read a graph built once before the solve from the parameters (a CDE path's coefficients
    from its data, ``A = 2 * W``), which every step's product traverses again."""
    kwargs.setdefault("retain_graph", True)
    if isinstance(outputs, torch.Tensor):
        outputs, grad_outputs = [outputs], [grad_outputs]
    tracked = [(out, cot) for out, cot in zip(outputs, grad_outputs) if out.requires_grad]
    if not tracked:
        return [torch.zeros_like(x) for x in inputs]
    outputs, grad_outputs = (list(part) for part in zip(*tracked))
    grads = grad(outputs, inputs, grad_outputs, **kwargs)
    return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]


def jvp(output: torch.Tensor, y: torch.Tensor, v: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``(d output / d y) v`` by the double-vjp trick (two reverse passes, no forward mode)."""
    dummy = torch.zeros_like(output, requires_grad=True)
    (g,) = vjp(output, [y], dummy, create_graph=True)
    (out,) = vjp(g, [dummy], v, create_graph=create_graph)
    return out


class _Forward:
    """The solvers' view of a user SDE: every method bound once, defaults filled in.

    ``f, g, f_and_g, g_prod, f_and_g_prod, prod`` as in torchsde; ``g_prod_and_gdg_prod(t, y,
    v1, v2)`` is ``(g v1, sum_l (dg_l/dy) g_l v2_l)`` (Milstein's correction; for diagonal noise
    each component of ``g`` depends on its own component of ``y``, as torchsde assumes);
    ``dg_ga_jvp_column_sum(t, y, A)`` is ``sum_{j,k,l} (dg_{il}/dy_j) g_{jk} A_{kl}`` (the
    log-ODE scheme's Lévy area term, zero unless the noise is general).
    """

    is_adjoint = False

    def __init__(self, sde):
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        self.f = getattr(sde, "f", None) or _missing("f")
        self.g = getattr(sde, "g", None) or _missing("g")
        self.prod = torch.mul if sde.noise_type == NOISE_TYPES.diagonal else batch_mvp
        self.f_and_g = getattr(sde, "f_and_g", None) or self._f_and_g
        self.g_prod = getattr(sde, "g_prod", None) or self._g_prod
        if hasattr(sde, "f_and_g_prod"):
            self.f_and_g_prod = sde.f_and_g_prod
        elif hasattr(sde, "f") and hasattr(sde, "g_prod"):
            self.f_and_g_prod = self._f_and_g_prod_separate
        else:
            self.f_and_g_prod = self._f_and_g_prod_joint

    def _f_and_g(self, t, y):
        return self.f(t, y), self.g(t, y)

    def _g_prod(self, t, y, v):
        return self.prod(self.g(t, y), v)

    def _f_and_g_prod_separate(self, t, y, v):
        return self.f(t, y), self.g_prod(t, y, v)

    def _f_and_g_prod_joint(self, t, y, v):
        f, g = self.f_and_g(t, y)
        return f, self.prod(g, v)

    def increment(self, t, y, dt: float, v):
        """``f dt + g v``: one Euler increment (the adjoint SDE fuses its two vjps in it)."""
        f, g_prod = self.f_and_g_prod(t, y, v)
        return f * dt + g_prod

    def increment_and_gdg(self, t, y, dt: float, v1, v2):
        """``(f dt + g v1, sum_l (dg_l/dy) g_l v2_l)``: a Milstein step's two parts."""
        g_prod, gdg = self.g_prod_and_gdg_prod(t, y, v1, v2)
        return self.f(t, y) * dt + g_prod, gdg

    def g_prod_and_gdg_prod(self, t, y, v1, v2):
        if self.noise_type == NOISE_TYPES.additive:
            return self.g_prod(t, y, v1), 0.0
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # without grad mode a fresh leaf: a view made under no_grad of a tensor that
            # requires grad passes its gradient to its base, not to itself
            y = y if create_graph and y.requires_grad else y.detach().requires_grad_(True)
            g = self.g(t, y)
            if self.noise_type == NOISE_TYPES.diagonal:
                (gdg,) = vjp(g, [y], g * v2, create_graph=create_graph)
            else:  # scalar / general: sum over the columns of (dg_l/dy) g_l v2_l
                gdg = sum(
                    jvp(g[..., col], y, g[..., col] * v2[..., col : col + 1], create_graph)
                    for col in range(g.shape[-1])
                )
        return self.prod(g, v1), gdg

    def dg_ga_jvp_column_sum(self, t, y, a):
        if self.noise_type != NOISE_TYPES.general:
            return 0.0
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            # without grad mode a fresh leaf: a view made under no_grad of a tensor that
            # requires grad passes its gradient to its base, not to itself
            y = y if create_graph and y.requires_grad else y.detach().requires_grad_(True)
            g = self.g(t, y)
            ga = torch.bmm(g, a)
            return sum(
                jvp(g[..., col], y, ga[..., col], create_graph) for col in range(g.shape[-1])
            )
