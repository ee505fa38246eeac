"""What every stepper provides to the integration loop (the steps it takes: ``_step``)."""

from __future__ import annotations

import abc
from typing import Any

import torch

from .._term import ODETerm
from ._hermite import hermite_basis
from ._step import Step


class Solver(abc.ABC):
    """A one-step (or multistep) method: the loop asks it to advance and to interpolate.

    ``order`` is the order of the solution; ``error_order`` the order of the embedded error
    estimate, or ``None`` for methods without one (fixed-step only).
    """

    order: int
    error_order: int | None = None
    #: a multistep method carries past values in its state (checkpointing needs one-step)
    multistep: bool = False
    #: the step after a rejected one may not grow (Hairer's rule in RADAU5: a rejection,
    #: e.g. a Newton failure, would otherwise be followed by growing straight back)
    hold_after_reject: bool = False

    @property
    def adaptive(self) -> bool:
        """Whether the method has an embedded error estimate (``error_order`` is set)."""
        return self.error_order is not None

    @property
    def name(self) -> str:
        """The method's name in messages and ``repr``: its class name."""
        return type(self).__name__

    @property
    def stage_reach(self) -> float:
        """How far f is evaluated from a step's start, in steps: its latest stage time
        (1.0 where no stage lies past the step's end, as for every method but ``kvaerno4``
        and ``kvaerno5``). Past 1, f is sampled beyond the step, so ``solve`` refuses
        ``jump_t`` and ``perturb`` with the method.

        Returns:
            The largest stage time over the step size, at least 1.0.
        """
        return 1.0

    def parameters(self) -> tuple[torch.Tensor, ...]:
        """The tensors of the solver's own that its steps compute with, whose gradients a
        solve must reach (a hypersolver's correction network): ``Checkpointed()``
        differentiates them with func's parameters, and ``Backsolve()``, whose continuous
        adjoint cannot, refuses a solver with any that require grad.

        Returns:
            ``()`` (the default): the steps use f alone.
        """
        return ()

    def set_tolerances(self, rtol: Any, atol: Any) -> None:
        """Take the step-size controller's tolerances, given by ``solve`` before a solve.

        Solvers with an inner iteration (implicit methods) scale it by them; the others
        ignore them.

        Arguments:
            rtol: the relative tolerance (``None`` on fixed steps).
            atol: the absolute tolerance (``None`` on fixed steps).
        """
        return None

    def failure_hint(self) -> str:
        """Why this solver's own steps failed in the current solve, for the message of a
        solve that runs out of steps or whose step size underflows; ``""`` when it has
        nothing to add (the default), so the message's generic advice stands.

        Returns:
            A sentence, or ``""``.
        """
        return ""

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """The state carried between steps (e.g. the FSAL derivative) at the start of a solve.

        Arguments:
            term: the vector field.
            t0: the initial time.
            y0: the flat initial state.
            f0: ``term(t0, y0)`` when already known, else ``None``.

        Returns:
            The state to pass to the first ``step``; by default ``f0``.
        """
        return f0

    @abc.abstractmethod
    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """Attempt one step from ``(t0, y0)`` to ``t1``.

        Arguments:
            term: the vector field.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: the state from ``init``, ``accept`` or ``reject``.
            perturb: move the evaluations at the ends of the step one ulp inside it (for
                discontinuities at step boundaries).

        Returns:
            The attempted [`Step`][neuralode.solvers.Step]: the proposed ``y1``, its error
                estimate and what dense output needs.
        """

    def compiles(self, term: ODETerm) -> bool:
        """Whether the host loop's next step may run compiled (``compile='step'``).

        Arguments:
            term: the vector field.

        Returns:
            ``True`` (the default) to compile the step; ``False`` to run it eagerly.
        """
        return True

    def compiled_state(self, term: ODETerm, t0: float, t1: float, state: Any) -> Any:
        """The state a compiled step from ``t0`` to ``t1`` takes.

        Arguments:
            term: the vector field.
            t0: the start time of the step.
            t1: the end time of the step.
            state: the solver's state.

        Returns:
            ``state``, with what the step draws outside the graph (an SDE method's Brownian
                motion); by default ``state`` itself.
        """
        return state

    def compiled_evaluations(self, term: ODETerm, step: Step, state: Any) -> int:
        """The evaluations of f in a compiled step, counted outside the graph.

        A count changed inside the graph would be guarded on.

        Arguments:
            term: the vector field.
            step: the step the compiled graph returned.
            state: the state the step started from.

        Returns:
            The number of evaluations: the step's stages, less f0 when ``state`` carries it.
        """
        return len(step.stages) - (state is not None)

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        """The state for the next step once ``step`` is accepted.

        Arguments:
            term: the vector field.
            step: the accepted step.
            perturb: whether evaluations at the step's ends were perturbed (f(t1, y1) is then
                not reusable).

        Returns:
            By default ``step.f1`` (``None`` with ``perturb``).
        """
        return None if perturb else step.f1

    def reject(self, step: Step, state: Any) -> Any:
        """The state for retrying from the same point after ``step`` was rejected.

        Arguments:
            step: the rejected step.
            state: the state the step started from.

        Returns:
            By default ``state``.
        """
        return state

    def for_adjoint_system(self) -> Solver:
        """The solver for ``Backsolve``'s backward solves of the adjoint system, whose state
        is [y, adjoint, parameter gradients] rather than the forward solve's.

        Returns:
            By default the solver itself.
        """
        return self

    def replay_state(self, step: Step, after_jump: bool) -> Any:
        """What makes ``step`` repeat exactly when recomputed (checkpointed gradients).

        Arguments:
            step: an accepted step.
            after_jump: whether the step starts at a ``jump_t`` time (f re-evaluated there).

        Returns:
            The state beyond the step's start point; ``None`` (the default) when the start
                point and f there are enough.
        """
        return None

    def carried(self, step: Step) -> torch.Tensor | None:
        """The tensor of an accepted step that the next step reads from its state with a
        derivative (checkpointed gradients carry its derivative from step to step).

        Arguments:
            step: an accepted step.

        Returns:
            ``None`` (the default): the next step reads nothing of this one but its end.
        """
        return None

    def read_carried(self, replay: Any) -> tuple[Any, torch.Tensor | None]:
        """The replay state with what it carries from the previous step (``carried``) made
        a leaf that records gradients, and that leaf.

        Arguments:
            replay: a state from ``replay_state``.

        Returns:
            ``(replay, None)`` by default: nothing is carried.
        """
        return replay, None

    @abc.abstractmethod
    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """The dense output of an accepted step.

        Arguments:
            term: the vector field.
            step: the accepted step.
            thetas: the step fractions, a float64 CPU tensor (m,).

        Returns:
            The states at ``t0 + theta * dt``, (m, numel).
        """

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        """f(t0, y0) of an accepted step, for its cubic Hermite dense output.

        Arguments:
            term: the vector field.
            step: the accepted step.

        Returns:
            f(t0, y0), shaped like ``step.y0``.

        Raises:
            ValueError: the method has no dense output (the default).
        """
        raise ValueError(f"{self!r} has no dense output: use an explicit Runge-Kutta method")

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        """What the dense output of an accepted ``step`` needs besides its ends.

        A dense solution keeps it (``dense_formula`` evaluates it).

        Arguments:
            term: the vector field.
            step: the accepted step; its ``f1`` is evaluated if unknown.

        Returns:
            The rows X, stacked (K, numel): by default (f0, f1) of the cubic Hermite
                interpolant.

        Raises:
            ValueError: the method has no dense output.
        """
        if step.f1 is None:
            step.f1 = term(step.t1, step.y1, step.end_perturb)
        return torch.stack([self.hermite_f0(term, step), step.f1])

    def dense_weights(
        self, theta: torch.Tensor, h: torch.Tensor, like: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor:
        """The dense output as weights, one row per point (by default cubic Hermite).

        y(t0 + theta h) = W[:, 0] y0 + W[:, 1] y1 + sum_k W[:, 2 + k] X_k with X the rows of
        ``dense_record``.

        Arguments:
            theta: the step fractions, (m,) float64; or one point's, a Python float (m = 1:
                the polynomials evaluated on floats, no tensor per term).
            h: the step sizes, (m,) float64; a Python float with a float ``theta``.
            like: a tensor of the dtype (and device) the weights take.
            derivative: the weights of dy/dt instead of y.

        Returns:
            The weights W, (m, 2 + K) in ``like``'s dtype.
        """
        if isinstance(theta, float):
            h00, h01, h10, h11 = hermite_basis(theta, h, derivative)
            return torch.tensor(
                [[h00, h01, h10 * h, h11 * h]], dtype=like.dtype, device=like.device
            )
        th, size = theta[:, None], h[:, None]
        h00, h01, h10, h11 = hermite_basis(th, size, derivative)
        return torch.cat([h00, h01, h10 * size, h11 * size], 1).to(like.dtype)

    def __repr__(self) -> str:
        return f"{self.name}()"
