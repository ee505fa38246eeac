"""The SDE as ``no.solve`` takes it: ``SDETerm`` (an SDE and its Brownian motion) and
``BoundSDETerm``, the term on the loop's flat state, which counts every call of the SDE's
functions in ``nfe`` (not inside ``call_uncounted``: a compiled step's calls are counted by
the loop outside the graph)."""

from __future__ import annotations

from array import array
from typing import Any

import torch

from .._term import ODETerm
from .._tree import TreeSpec
from ._base import _Forward
from .settings import NOISE_TYPES, SDE_TYPES

_FUNCTIONS = ("f", "g", "f_and_g", "g_prod", "f_and_g_prod")


class SDETerm:
    """An SDE and the Brownian motion that drives it, the ``func`` of ``no.solve`` for SDEs.

    Example:
        ```python
        import torch
        import neuralode as no
        from neuralode.sde import BrownianInterval, SDESolver, SDETerm

        class GBM(torch.nn.Module):
            noise_type, sde_type = "diagonal", "ito"
            def f(self, t, y): return 0.5 * y
            def g(self, t, y): return 0.2 * y

        bm = BrownianInterval(0.0, 1.0, size=(16, 1), entropy=0)
        sol = no.solve(SDETerm(GBM(), bm), torch.ones(16, 1), torch.linspace(0, 1, 5),
                       solver=SDESolver("euler"), controller=no.FixedGrid(step_size=0.01))
        sol.ys.shape, sol.stats.n_steps  # (5, 16, 1), 100
        ```

    Arguments:
        sde: an object with ``noise_type``, ``sde_type`` and the drift ``f(t, y)`` and
            diffusion ``g(t, y)`` (or ``f_and_g``, ``g_prod``, ``f_and_g_prod``), as
            ``sdeint`` takes.
        bm: the Brownian motion, ``bm(ta, tb)`` the increment over ``[ta, tb]`` (e.g. a
            ``BrownianInterval`` of shape (batch, noise channels) covering the output times).

    Raises:
        ValueError: an SDE without a known ``noise_type`` or ``sde_type``, or a ``bm`` that
            is not a Brownian motion.
    """

    def __init__(self, sde: Any, bm: Any):
        if getattr(sde, "noise_type", None) not in NOISE_TYPES:
            raise ValueError(
                f"sde must have a noise_type in {NOISE_TYPES}, got "
                f"{getattr(sde, 'noise_type', None)!r}"
            )
        if getattr(sde, "sde_type", None) not in SDE_TYPES:
            raise ValueError(
                f"sde must have an sde_type in {SDE_TYPES}, got {getattr(sde, 'sde_type', None)!r}"
            )
        if not callable(bm) or not hasattr(bm, "shape"):
            raise ValueError(
                "bm must be a Brownian motion: callable as bm(ta, tb), with a shape (e.g. "
                "neuralode.sde.BrownianInterval)"
            )
        self.sde = sde
        self.bm = bm

    def bind(self, spec: TreeSpec, like: torch.Tensor) -> BoundSDETerm:
        """The term on the loop's flat state (``no.solve`` calls it).

        Arguments:
            spec: the structure of the user's ``y0``.
            like: a tensor of the flat state's dtype and device.

        Returns:
            The bound term, called by ``SDESolver`` on the flat state.

        Raises:
            ValueError: ``y0`` is not one tensor of shape (batch, channels).
        """
        if not spec.is_leaf or len(spec.shapes[0]) != 2:
            raise ValueError(
                "an SDE's y0 must be one tensor of shape (batch, channels), got "
                f"{'a tree' if not spec.is_leaf else tuple(spec.shapes[0])}"
            )
        return BoundSDETerm(self, spec, like)

    def __repr__(self) -> str:
        return f"SDETerm(sde={type(self.sde).__name__}, bm={self.bm!r})"


class _Counted:
    """The user's SDE with each call of its functions counted in ``term.nfe``."""

    def __init__(self, sde: Any, term: BoundSDETerm):
        self.noise_type = sde.noise_type
        self.sde_type = sde.sde_type
        for name in _FUNCTIONS:
            fn = getattr(sde, name, None)
            if fn is not None:
                setattr(self, name, self._counting(fn, term))

    @staticmethod
    def _counting(fn: Any, term: BoundSDETerm) -> Any:
        def counted(*args: Any) -> Any:
            if term.sde_counting:  # (False in a compiled step: nothing changes in Python)
                term.nfe += 1
            return fn(*args)

        return counted


class BoundSDETerm(ODETerm):
    """An ``SDETerm`` on the loop's flat state: as an ``ODETerm`` it is the drift (what the
    controller's first-step heuristic evaluates); ``forward`` is the SDE as the methods see
    it (the adjoint SDE of ``sdeint_adjoint`` as it is), ``bm`` the Brownian motion,
    ``shape`` the state's shape, ``sde_time_dtype`` the dtype of the times ``f`` and ``g``
    receive, ``initial_extra`` the method's state to start from (``None``: its own),
    ``extra`` its state after the last accepted step and ``record`` (when not ``None``) an
    array that receives the accepted steps' ends."""

    def __init__(self, term: SDETerm, spec: TreeSpec, like: torch.Tensor):
        if getattr(term.sde, "is_adjoint", False):
            forward = term.sde
        else:
            forward = _Forward(_Counted(term.sde, self))
        super().__init__(forward.f, spec, like)
        self.counting = False  # the methods' evaluations are counted by ``_Counted``
        self.sde_counting = True  # False inside ``call_uncounted``
        # the SDE's evaluations in one step of the host loop (``SDESolver.step``), measured
        # on the first eager step; the compiled steps add it to ``nfe``
        self.calls_per_step: int | None = None
        self.forward = forward
        self.bm = term.bm
        self.shape = tuple(int(n) for n in spec.shapes[0])
        self.sde_time_dtype = self.time_dtype
        self.extra: Any = None
        self.initial_extra: Any = None
        self.record: array | None = None

    def call_uncounted(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` without counting the SDE's evaluations (a compiled step's: the
        caller adds them; a count changed inside a graph would be guarded on)."""
        self.sde_counting = False
        try:
            return fn(*args)
        finally:
            self.sde_counting = True
