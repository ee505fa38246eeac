"""The one generic implicit-explicit (IMEX) additive Runge-Kutta stepper; each method only
supplies an ``AdditiveTableau``.

f = L y + N(t, y) with a stiff linear L and a non-stiff rest N: the user's f stays the whole
vector field and the solver is given L (``linear=``). Stage i solves

    Y_i = (I - h gamma L)^-1 (y0 + h sum_{j<i} (aE_ij N_j + aI_ij L Y_j))

with one exact linear solve, no Newton iteration and no Jacobian, N_j = f(Y_j) - L Y_j. The
first stage is y0 itself. The stage derivatives k_j = f(Y_j) give y1 and the embedded error
from the shared weights b and b_error. Without ``linear`` (L = 0) the method is its explicit
tableau.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from .._term import ODETerm
from ._hermite import hermite_interpolate, stage_dense_weights, step_fractions
from ._step import Step
from .base import Solver
from .tableau import AdditiveTableau, extension_weights


class LinearPart:
    """The stiff linear part L of a vector field, for the IMEX methods' ``linear=``.

    Arguments:
        apply: ``apply(y)`` = L y, ``y`` shaped like the state (one tensor).
        solve: ``solve(c, r)`` = (I - c L)^-1 r exactly, ``c`` a float (the step size
            times the method's diagonal gamma: negative when integrating backward in time),
            ``r`` shaped like the state.

    Raises:
        ValueError: ``apply`` or ``solve`` not callable.
    """

    def __init__(
        self,
        apply: Callable[[torch.Tensor], torch.Tensor],
        solve: Callable[[float, torch.Tensor], torch.Tensor],
    ):
        if not callable(apply) or not callable(solve):
            raise ValueError(
                "LinearPart takes two callables, apply(y) = L y and solve(c, r) = "
                f"(I - c L)^-1 r, got {type(apply).__name__} and {type(solve).__name__}"
            )
        self.apply, self._solve = apply, solve

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        """L y.

        Arguments:
            y: a tensor shaped like the state.

        Returns:
            L y, of ``y``'s shape and dtype.
        """
        return self.apply(y)

    def solve(self, c: float, r: torch.Tensor) -> torch.Tensor:
        """(I - c L)^-1 r.

        Arguments:
            c: the shift, a float.
            r: a tensor shaped like the state.

        Returns:
            x with x - c L x = r, of ``r``'s shape and dtype.
        """
        return self._solve(c, r)


def _as_linear_part(linear: Any) -> LinearPart | None:
    """``linear`` as a ``LinearPart``: one already, an object callable as ``linear(y)`` with
    a method ``solve(c, r)``, or a pair ``(apply, solve)``; ``None`` stays ``None``.

    Raises:
        ValueError: anything else, e.g. a callable without ``solve``.
    """
    if linear is None or isinstance(linear, LinearPart):
        return linear
    if isinstance(linear, tuple) and len(linear) == 2:
        return LinearPart(*linear)
    solve = getattr(linear, "solve", None)
    if callable(linear) and callable(solve):
        return LinearPart(linear, solve)
    raise ValueError(
        "linear must be the stiff linear part L: an object callable as linear(y) = L y with "
        "a method linear.solve(c, r) = (I - c L)^-1 r (e.g. a PDE model's linear_part()), "
        f"a LinearPart, or a pair (apply, solve); got {type(linear).__name__}"
        + (" without a solve method" if callable(linear) else "")
    )


class IMEXRK(Solver):
    """Implicit-explicit additive Runge-Kutta method defined by the class attribute
    ``tableaux`` (an ``AdditiveTableau``): the stiff linear part L of f (``linear``) is
    treated implicitly by one exact solve (I - h gamma L)^-1 per stage, the rest of f
    explicitly. ``f`` stays the whole vector field.

    Arguments:
        linear: the stiff linear part L: an object callable as ``linear(y)`` = L y with a
            method ``linear.solve(c, r)`` = (I - c L)^-1 r, exact (e.g. ``model.linear_part()``
            of a ``neuralode.pde`` model, the diffusion), a
            [`LinearPart`][neuralode.solvers.LinearPart], or a pair ``(apply, solve)``; both
            take tensors shaped like the state (one tensor). ``None`` (the default): L = 0,
            the explicit tableau alone.

    Raises:
        ValueError: a ``linear`` that is not one of those; in a solve, a state that is not one
            tensor, or an L y or solve of the wrong shape or dtype.
    """

    tableaux: ClassVar[AdditiveTableau]

    def __init__(self, linear: Any = None):
        self.linear = _as_linear_part(linear)
        self._weights: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}

    @property
    def order(self) -> int:  # type: ignore[override]
        """The order of the solution, the tableau's."""
        return self.tableaux.explicit.order

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        """The order of the embedded error estimate, the tableau's."""
        return self.tableaux.explicit.error_order

    @property
    def name(self) -> str:
        """The tableau's name (e.g. ``"kencarp4"``)."""
        return self.tableaux.explicit.name

    def __repr__(self) -> str:
        return f"{self.name}(linear={'None' if self.linear is None else 'L'})"

    def for_adjoint_system(self) -> Solver:
        """The solver for ``Backsolve``'s backward solves: the method itself without a
        linear part; with one, a ``ValueError``, since L acts on the forward state, not on
        the adjoint system's.

        Returns:
            The solver itself.

        Raises:
            ValueError: a linear part is given.
        """
        if self.linear is not None:
            raise ValueError(
                f"{self.name} with a linear part cannot solve Backsolve's adjoint system (its "
                "state is not the forward state L acts on): use Direct or Checkpointed "
                "gradients, or a backward solver without it (Backsolve(solver=...), or "
                "odeint_adjoint's adjoint_method and adjoint_options)"
            )
        return self

    def _linear(self, term: ODETerm) -> tuple[Any, Any] | None:
        """L y and (I - c L)^-1 r on the flat state, checked, or ``None`` without L."""
        if self.linear is None:
            return None
        if not term.spec.is_leaf:
            raise ValueError(
                f"{self.name} with a linear part needs a state that is one tensor, not a "
                "structure of tensors"
            )
        shape = tuple(term.spec.shapes[0])
        linear = self.linear

        def checked(x: Any, r: torch.Tensor, what: str) -> torch.Tensor:
            if not isinstance(x, torch.Tensor) or x.shape != r.shape or x.dtype != r.dtype:
                got = (
                    f"shape {tuple(x.shape)} and dtype {x.dtype}"
                    if isinstance(x, torch.Tensor)
                    else type(x).__name__
                )
                raise ValueError(
                    f"{self.name}: the linear part's {what} must return a tensor of the "
                    f"state's shape and dtype ({tuple(r.shape)}, {r.dtype}), got {got}"
                )
            return x.reshape(-1)

        def apply(y: torch.Tensor) -> torch.Tensor:
            r = y.view(shape)
            return checked(linear(r), r, "linear(y)")

        def solve(c: float, y: torch.Tensor) -> torch.Tensor:
            r = y.view(shape)
            return checked(linear.solve(c, r), r, "solve(c, r)")

        return apply, solve

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """Attempt one step: the explicit and implicit stages, then y1 and its error.

        Arguments:
            term: the vector field, the whole f.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: f(t0, y0) when known (kept after a rejection or from dense output), else
                ``None``.
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step]: ``y1``, the error estimate and the stage
                derivatives f(Y_j).

        Raises:
            ValueError: the linear part's results not shaped like the state.
        """
        tab = self.tableaux
        ex, im = tab.explicit, tab.implicit
        h = float(t1 - t0)
        inward = (1.0 if h > 0 else -1.0) if perturb else 0.0
        f0 = state if state is not None else term(t0, y0, inward)
        linear = self._linear(term)
        ks = [f0]  # f(Y_j) = N_j + L Y_j
        ls = [linear[0](y0)] if linear is not None else []  # L Y_j
        shift = h * tab.gamma
        for i in range(1, ex.stages):
            r = y0
            for j in range(i):
                # aE N_j + aI L Y_j = aE k_j + (aI - aE) L Y_j
                if ex.a[i][j]:
                    r = r + (h * ex.a[i][j]) * ks[j]
                if linear is not None and im.a[i][j] != ex.a[i][j]:
                    r = r + (h * (im.a[i][j] - ex.a[i][j])) * ls[j]
            if linear is not None:
                y_stage = linear[1](shift, r)
                # L Y_i from the stage equation Y_i - h gamma L Y_i = r: no product with L
                ls.append((y_stage - r) / shift)
            else:
                y_stage = r
            if ex.c[i] == 1:
                ks.append(term(t1, y_stage, -inward))
            else:
                ks.append(term(t0 + ex.c[i] * h, y_stage))
        # y1 and the error estimate in one product: the rows b and b_error
        combined = self._weights_for(y0) @ torch.stack(ks)
        y1 = y0 + h * combined[0]
        error = h * combined[1]
        extra = {"f0_reusable": state is not None or not perturb}
        return Step(t0, t1, y0, y1, error, ks, None, extra, -inward)

    def _weights_for(self, like: torch.Tensor) -> torch.Tensor:
        """(b, b_error) stacked (2, stages) in ``like``'s dtype and device, made once."""
        key = (like.dtype, like.device)
        weights = self._weights.get(key)
        if weights is None:
            ex = self.tableaux.explicit
            weights = torch.tensor([ex.b, ex.b_error], dtype=like.dtype, device=like.device)
            self._weights[key] = weights
        return weights

    def reject(self, step: Step, state: Any) -> Any:
        """The state for retrying from the same point after ``step`` was rejected.

        Arguments:
            step: the rejected step.
            state: the state the step started from.

        Returns:
            f(t0, y0), the step's first stage, when reusable (not perturbed), else ``state``.
        """
        return step.stages[0] if step.extra["f0_reusable"] else state

    def compiles(self, term: ODETerm) -> bool:
        """Whether the host loop's next step may run compiled: no (the step runs eagerly).

        Arguments:
            term: the vector field.

        Returns:
            ``False``.
        """
        return False

    @property
    def dense_order(self) -> int:
        """Order of the dense output: the tableaux' continuous extension's, else cubic
        Hermite's (3)."""
        dense = self.tableaux.dense
        return 3 if dense is None else dense.order

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """The dense output: the tableaux' continuous extension over the stage derivatives
        and f(t1, y1), else cubic Hermite through (y0, f(t0, y0)) and (y1, f(t1, y1)).

        Arguments:
            term: the vector field (evaluates f(t1, y1) if unknown).
            step: the accepted step.
            thetas: the step fractions, a float64 CPU tensor (m,).

        Returns:
            The states at ``t0 + theta * dt``, (m, numel).
        """
        dense = self.tableaux.dense
        if dense is None:
            return hermite_interpolate(term, step, thetas, self.hermite_f0(term, step))
        rows = self._extension_rows(term, step)
        weights = extension_weights(dense, np.array(thetas.tolist()), False)
        w = torch.from_numpy(weights).to(dtype=rows.dtype, device=rows.device)
        return step.y0[None] + step.dt * (w @ rows)

    def _extension_rows(self, term: ODETerm, step: Step) -> torch.Tensor:
        """The stage derivatives with f(t1, y1) (evaluated once, and reused by the next
        step as its first stage), stacked (stages + 1, numel)."""
        if step.f1 is None:
            step.f1 = term(step.t1, step.y1, step.end_perturb)
        return torch.stack([*step.stages, step.f1])

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        """What the dense output of an accepted ``step`` needs besides its ends.

        Arguments:
            term: the vector field.
            step: the accepted step; its ``f1`` is evaluated if unknown.

        Returns:
            The stage derivatives and f(t1, y1) (stages + 1, numel) for the continuous
                extension, else (f0, f1) for cubic Hermite.
        """
        if self.tableaux.dense is None:
            return super().dense_record(term, step)
        return self._extension_rows(term, step)

    def dense_weights(
        self, theta: torch.Tensor, h: torch.Tensor, like: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor:
        """The dense output as weights, one row per point: y0 + h sum_j B_j(theta) X_j over
        the rows X of ``dense_record`` with the continuous extension, else cubic Hermite's.

        Arguments:
            theta: the step fractions, (m,) float64; or one point's, a Python float.
            h: the step sizes, (m,) float64; a Python float with a float ``theta``.
            like: a tensor of the dtype and device the weights take.
            derivative: the weights of dy/dt instead of y.

        Returns:
            The weights, (m, 2 + K): of y0, y1 and the K rows of ``dense_record``.
        """
        dense = self.tableaux.dense
        if dense is None:
            return super().dense_weights(theta, h, like, derivative)
        weights = extension_weights(dense, step_fractions(theta), derivative)
        return stage_dense_weights(weights, h, like, derivative)

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        """f(t0, y0) of an accepted step: its first stage.

        Arguments:
            term: the vector field (unused).
            step: the accepted step.

        Returns:
            f(t0, y0), shaped like ``step.y0``.
        """
        return step.stages[0]
