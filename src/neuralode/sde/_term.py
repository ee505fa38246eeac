"""The SDE as ``no.solve`` takes it: ``SDETerm`` (an SDE and its Brownian motion) and
``BoundSDETerm``, the term on the loop's flat state, which counts every call of the SDE's
functions in ``nfe`` (not inside ``call_uncounted``: a compiled step's calls are counted by
the loop outside the graph)."""

from __future__ import annotations

import copy
from array import array
from typing import Any

import torch

from .._term import ODETerm
from .._tree import TreeSpec
from ._base import _Forward
from ._contract import check_brownian, check_output_times, check_sde_fits, check_sde_types, check_y0

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
            is not a Brownian motion. ``no.solve`` refuses, as ``sdeint`` does, a ``y0``,
            output times, SDE functions and Brownian motion that do not fit
            (``SDETerm.bind``).
    """

    def __init__(self, sde: Any, bm: Any):
        check_sde_types(sde)
        check_brownian(bm)
        self.sde = sde
        self.bm = bm

    def bind(
        self,
        spec: TreeSpec,
        like: torch.Tensor,
        times: list[float] | torch.Tensor,
        per_sample: bool = False,
    ) -> BoundSDETerm:
        """The term on the loop's flat state, after ``sdeint``'s input checks (``no.solve``
        calls it): ``f`` and ``g`` are evaluated once at the first output time and their
        shapes, ``y0`` and the Brownian motion checked against each other. These
        evaluations are not counted in ``nfe``, which counts the solver's (as ``sdeint``'s
        checks are outside its solve).

        Arguments:
            spec: the structure of the user's ``y0``.
            like: the flat initial state (its dtype and device are the state's).
            times: the output times as floats, or per sample a (batch, outputs) tensor.
            per_sample: whether each row has its own times (``f`` and ``g`` receive (batch,)
                times).

        Returns:
            The bound term, called by ``SDESolver`` on the flat state.

        Raises:
            ValueError: ``y0`` is not one floating point tensor of shape (batch, channels),
                the output times do not increase, or the SDE's functions, ``y0`` and the
                Brownian motion do not fit (``check_sde_fits``).
        """
        if not spec.is_leaf:
            raise ValueError(
                "an SDE's y0 must be one tensor of shape (batch, channels), got a tree"
            )
        y0 = like.view(spec.shapes[0])
        check_y0(y0)
        bound = BoundSDETerm(self, spec, like)
        if isinstance(times, torch.Tensor):  # per sample: (batch, outputs)
            rows = times.tolist()
            for row in rows:
                check_output_times(row)
            span = [min(row[0] for row in rows), max(row[-1] for row in rows)]
            t0 = times[:, 0]
        else:
            check_output_times(times)
            span = [times[0], times[-1]]
            t0 = torch.full((), times[0], dtype=torch.float64)
            if per_sample:
                t0 = t0.expand(y0.shape[0])
        t0 = t0.to(dtype=bound.sde_time_dtype, device=bound.device)
        check_sde_fits(self.sde, y0, t0, span, self.bm)
        return bound

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

    def wrapped(self, wrap: Any) -> Any:
        """The SDE as the methods see it with each function ``fn`` called as ``wrap(fn)``."""
        functions = copy.copy(self)
        for name in _FUNCTIONS:
            if hasattr(self, name):
                setattr(functions, name, wrap(getattr(self, name)))
        return _Forward(functions)

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
        # the user's functions, counted (``None`` for the adjoint SDE, its own already)
        self.functions: _Counted | None = None
        if getattr(term.sde, "is_adjoint", False):
            forward = term.sde
        else:
            self.functions = _Counted(term.sde, self)
            forward = _Forward(self.functions)
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
