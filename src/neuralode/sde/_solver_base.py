"""The SDE solvers' base: each is a step ``(t0, t1, y0, extra) -> (y1, extra)``.

The times are host floats (one problem: every row steps from ``t0`` to ``t1``; they reach the
user's ``f`` and ``g`` as 0-dim tensors of the time dtype, as in torchsde) or float64 tensors
of shape (batch,) (per sample: row i steps from ``t0[i]`` to ``t1[i]``; ``f`` and ``g``
receive the (batch,) times, the Brownian motion is asked for each row's interval). The step
formulas are written once for both: ``span`` is the step as the states see it (a float, or
(batch, 1)), ``at`` the time at a fraction of it, and ``_ratio`` divides by a step that is
zero for finished samples (whose steps are discarded) without making NaN.

Every solver names the SDE type, noise types and Lévy area approximations it supports and its
strong and weak orders; the checks happen once, when the solver is made (``make_solver``).

The methods: ``_solvers`` (Euler-Maruyama, Milstein, the Stratonovich methods and
``make_solver``) and ``_srk`` (stochastic Runge-Kutta).
"""

from __future__ import annotations

import torch

from .settings import LEVY_AREA_APPROXIMATIONS, NOISE_TYPES, SDE_TYPES

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
    brownian_flags: dict = {}  # what a step asks of the Brownian motion besides the increment

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

    def step(self, t0: float, t1: float, y0: torch.Tensor, extra: tuple, noise=None):
        """The step from ``t0`` to ``t1``: ``(y1, extra1)``; ``noise`` is the Brownian motion
        over the step as ``brownian`` gives it, when the caller drew it already."""
        raise NotImplementedError

    def brownian(self, t0, t1, noise=None):
        """The Brownian motion over ``[t0, t1]`` as the method uses it (the increment, with
        ``U`` or ``A`` per ``brownian_flags``): ``noise`` when given, else asked of ``bm``."""
        if noise is not None:
            return noise
        return self.bm(t0, t1, **self.brownian_flags) if self.brownian_flags else self.bm(t0, t1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__} of strong order: {self.strong_order}, and weak order: "
            f"{self.weak_order}"
        )
