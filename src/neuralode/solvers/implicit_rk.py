"""The one generic implicit Runge-Kutta stepper; each method only supplies a tableau.

A step solves the stage equations (``_implicit_stages``: simplified Newton iterations, the
Jacobian at (t0, y0) from autograd, started, for collocation methods, from the previous
step's collocation polynomial extrapolated to the new nodes) and assembles the step from
the stages; the stages' derivative is the implicit function theorem's
(``_implicit_gradient``), so the gradient is that of the exact discrete step, whatever the
number of iterations, and costs no graph over the iterations.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch

from .._args import is_int, is_real
from .._errors import SolverError
from .._host import forward_mode
from .._term import ODETerm
from ._dense_solve import DenseSolve
from ._hermite import hermite_interpolate, stage_dense_weights, step_fractions
from ._implicit_stages import ImplicitStages, StageEquations, _Linearisation
from ._krylov_solve import KrylovSolve, Preconditioner
from ._newton import SingularMatrixError
from ._step import Step
from .tableau import ImplicitTableau, collocation_weights, extension_weights

LINEAR_SOLVERS = ("auto", "direct", "krylov")


class NewtonError(SolverError):
    """The Newton iteration for the stages of an implicit step did not converge."""


class _Stages(NamedTuple):
    """The outcome of a step's Newton iteration: the stage increments (``None`` when it
    failed, and why), whether it converged slowly, the linearisation it used (``here``:
    evaluated at this step's start) and its linear solver (``None`` for a replayed step)."""

    z: torch.Tensor | None
    failure: str
    slow: bool
    lin: _Linearisation
    here: bool
    solve: DenseSolve | KrylovSolve | None


class ImplicitRK(ImplicitStages):
    """Implicit Runge-Kutta method defined by the class attribute ``tableau``.

    A Newton iteration that does not converge raises ``NewtonError`` on fixed steps; under
    error control the step is rejected instead and retried with a smaller one.
    ``counters`` accumulates Jacobian evaluations, factorisations and Newton iterations.

    Arguments:
        max_iters: Newton iterations per step, at least 2 (default 30; 6 for ``radau`` under
            error control).
        newton_tol: the convergence tolerance of the iteration (its estimated remaining error,
            in RMS norm, relative to ``1 + |y0|`` on fixed steps, where it defaults to 4 eps:
            converged to rounding; relative to ``atol + rtol |y0|`` of the step-size controller
            when adaptive, where it defaults to SciPy Radau's
            ``max(10 eps / rtol, min(0.03, rtol**0.5))``).
        batch_size: the first dimension of every tensor of the state indexes that many
            independent samples (f of one sample does not read another), so the Newton matrices
            are per sample, (batch, s n, s n), rather than one for the whole state.
        linear_solver: ``"direct"`` (LU per sample), ``"krylov"`` (GMRES with
            Jacobian-vector products) or ``"auto"`` (the default: direct unless its Newton
            matrices would take more than 2 GiB, as an image ODE-Net's state as one problem
            would, then GMRES).
        krylov_tol: GMRES's relative tolerance.
        krylov_dim: the most Krylov vectors GMRES builds.
        preconditioner: ``preconditioner(c, r)`` ≈ (I - c J)^-1 r for GMRES (applied on the
            right, so it changes the iterations, not the accuracy): c a float or complex
            (the step size times an eigenvalue of the method's matrix), r a tensor shaped like
            the state (one tensor), real or complex, x of r's shape and dtype; e.g. a PDE's
            diffusion part inverted (``neuralode.pde``). Used where the linear solves are
            GMRES's (``linear_solver="krylov"``, or ``"auto"`` choosing it), not by
            ``Backsolve``'s backward solves (their state is the adjoint system's). A
            preconditioner with a method ``transposed(c, r)`` ≈ (I - c J)^-H r =
            (I - conj(c) J^H)^-1 r (the adjoint of ``preconditioner(c, .)``, e.g.
            ``DiffusionPreconditioner``'s) also preconditions the transposed GMRES solves of
            the gradient; without it those run unpreconditioned.

    Raises:
        ValueError: an option out of its range (the message names it).
    """

    tableau: ClassVar[ImplicitTableau]
    hold_after_reject = True
    #: iteration caps without and with error control (where a failure only shrinks the step)
    default_max_iters: ClassVar[int] = 30
    adaptive_max_iters: ClassVar[int] = 30

    def __init__(
        self,
        *,
        max_iters: int | None = None,
        newton_tol: float | None = None,
        batch_size: int | None = None,
        linear_solver: str = "auto",
        krylov_tol: float = 1e-10,
        krylov_dim: int = 50,
        preconditioner: Preconditioner | None = None,
    ):
        # the convergence test compares two successive Newton updates (their contraction
        # rate), so one iteration can never converge: at least 2
        if max_iters is not None and not (is_int(max_iters) and max_iters >= 2):
            raise ValueError(
                f"max_iters must be an integer of at least 2 (Newton's convergence test "
                f"compares two successive updates), got {max_iters!r}"
            )
        if newton_tol is not None and not (is_real(newton_tol) and 0 < newton_tol < math.inf):
            raise ValueError(f"newton_tol must be a positive finite number, got {newton_tol!r}")
        if batch_size is not None and not (is_int(batch_size) and batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not isinstance(linear_solver, str) or linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver must be one of {LINEAR_SOLVERS}, got {linear_solver!r}"
            )
        if not (is_real(krylov_tol) and 0 < krylov_tol < 1):
            raise ValueError(f"krylov_tol must be a number in (0, 1), got {krylov_tol!r}")
        if not (is_int(krylov_dim) and krylov_dim >= 1):
            raise ValueError(f"krylov_dim must be a positive integer, got {krylov_dim!r}")
        if preconditioner is not None and not callable(preconditioner):
            raise ValueError(
                "preconditioner must be callable as preconditioner(c, r) -> (I - c J)^-1 r, "
                f"got {type(preconditioner).__name__}"
            )
        if preconditioner is not None and linear_solver == "direct":
            raise ValueError(
                "a preconditioner serves GMRES: use linear_solver='krylov' (or 'auto'), or "
                "drop the preconditioner for direct LU solves"
            )
        # plain ints: NumPy integers pass the checks above
        self.max_iters = None if max_iters is None else int(max_iters)
        self.newton_tol = newton_tol
        self.batch_size = None if batch_size is None else int(batch_size)
        self.linear_solver = linear_solver
        self.krylov_tol = krylov_tol
        self.krylov_dim = int(krylov_dim)
        self.preconditioner = preconditioner
        self.counters: Counter[str] = Counter()
        self._tolerances = None
        self._smallest_rtol = 0.0
        self._failures_before = 0  # newton_failures when the current solve began
        self._last_failure = ""
        self._failed_with_gmres = False
        self._cache = {}
        self._layouts = {}

    @property
    def order(self) -> int:  # type: ignore[override]
        """The order of the solution, the tableau's ``order``."""
        return self.tableau.order

    @property
    def name(self) -> str:
        """The tableau's name (e.g. ``"radau_iia5"``)."""
        return self.tableau.name

    @property
    def error_order(self) -> int | None:  # type: ignore[override]
        """The order of the embedded error estimate, the tableau's (``None``: fixed steps
        only, unless the method brings its own estimate, as ``radau`` does)."""
        return self.tableau.error_order

    @property
    def stage_reach(self) -> float:
        """The latest stage time of the tableau, in steps (at least 1.0): 1.146 for
        ``kvaerno4`` and 1.230 for ``kvaerno5``, whose stages sample f past the step's end.

        Returns:
            ``max(1.0, *tableau.c)``.
        """
        return max(1.0, *self.tableau.c)

    @property
    def dense_order(self) -> int:
        """Order of the dense output: the method's own extension's, else the collocation
        polynomial's (s), else Hermite's (3)."""
        if self.tableau.dense is not None:
            return self.tableau.dense.order
        return self.tableau.stages if self.tableau.collocation else 3

    def _stage_weights(self, thetas: np.ndarray, derivative: bool = False) -> np.ndarray | None:
        """The dense output's weights of the stage derivatives, y(t0 + theta h) = y0 + h sum_j
        w_j(theta) k_j: the method's own extension, else the collocation polynomial's.

        Arguments:
            thetas: the step fractions, (m,) float64.
            derivative: the weights of dy/dt instead (y'(t0 + theta h) = sum_j w_j' k_j).

        Returns:
            The weights (m, s) in float64, or ``None`` where the dense output is cubic
                Hermite.
        """
        tab = self.tableau
        if tab.dense is not None:
            return extension_weights(tab.dense, thetas, derivative)
        if tab.collocation:
            return collocation_weights(tab.c, thetas, derivative)
        return None

    def set_tolerances(
        self, rtol: float | torch.Tensor | None, atol: float | torch.Tensor | None
    ) -> None:
        """Take the step-size controller's tolerances, given by ``solve`` before a solve.

        Tolerances (numbers, or per-element tensors laid out as the flat state) scale the
        Newton convergence test and make a failed iteration a rejected step, which the
        controller retries shorter; ``None`` (fixed steps) leaves the fixed-step test, to
        rounding, whose failure is a ``NewtonError``.

        Arguments:
            rtol: the relative tolerance, or ``None`` on fixed steps.
            atol: the absolute tolerance, or ``None`` on fixed steps.
        """
        self._failures_before = self.counters["newton_failures"]
        self._last_failure = ""
        if rtol is None or atol is None:
            self._tolerances = None
            return
        self._tolerances = tuple(
            x.detach() if isinstance(x, torch.Tensor) else float(x) for x in (rtol, atol)
        )
        # the tightest rtol asked, for the Newton bound: read once here, not every step
        self._smallest_rtol = float(rtol.min()) if isinstance(rtol, torch.Tensor) else rtol

    def __repr__(self) -> str:
        return f"{self.name}(linear_solver={self.linear_solver!r}, batch_size={self.batch_size})"

    # ------------------------------------------------------------------------------------
    # The step

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """Attempt one step: solve the stage equations by Newton's method, then assemble y1.

        The stages' derivative is the implicit function theorem's, so the gradient is that
        of the exact discrete step.

        Arguments:
            term: the vector field.
            t0: the start time.
            t1: the end time.
            y0: the flat state at ``t0``.
            state: the solver's state (``init``, ``accept``, ``reject`` or
                ``replay_state``).
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step]; under error control a Newton failure
                gives a step that ends where it starts (``y1`` is ``y0``) with an infinite
                error: always rejected.

        Raises:
            ValueError: forward-mode differentiation through the step.
            NewtonError: the Newton iteration did not converge on fixed steps.
        """
        if forward_mode(y0):
            raise ValueError(
                f"{self.name}: forward-mode differentiation (torch.func.jvp, jacfwd, hessian, "
                "torch.autograd.forward_ad) through an implicit Runge-Kutta method is not "
                "supported: its stages' derivative is the implicit function theorem's, applied "
                "in reverse mode only. Use reverse mode (torch.func.grad, jacrev, vjp), or an "
                "explicit or multistep method"
            )
        tab = self.tableau
        co = self._coefficients(y0)
        h = t1 - t0
        inward = 1.0 if h > 0 else -1.0
        p0, p1 = (inward, -inward) if perturb else (0.0, 0.0)
        if not perturb and _starts_after_jump(state):
            p0 = inward  # f(t0) belongs to the far side of a jump: stay off t0 itself
        first = 1 if tab.explicit_first_stage else 0
        stage_times = [
            (t1, p1) if c == 1 else (t0 + c * h, p0 if c == 0 else 0.0) for c in tab.c[first:]
        ]
        layout = self._layout(term)
        eq = StageEquations(term, h, co, stage_times, layout)
        y0d = y0.detach()
        with torch.no_grad():
            start = self._predictor(state, t0, h, y0d, tab.c[first:])
            stages = self._stages(eq, t0, y0d, p0, state, start)
        z, lin = stages.z, stages.lin
        extra = {
            "linearisation": lin,
            "jacobian_at": p0 if stages.here else None,
            "newton_slow": stages.slow,
        }
        if z is None:
            return self._failed_step(t0, t1, y0, stages.failure, extra, gmres=lin.jvp is not None)
        k_first = lin.f0 if first else None
        if torch.is_grad_enabled():
            if first:
                k_first = term(t0, y0, p0)
            z = self._attach_gradient(eq, y0, k_first, z)
        w = z if k_first is None else z - eq.explicit_part(k_first)
        ks = (co.inverse @ w) / h
        y1 = y0 + co.d @ w
        if first:
            y1 = y1 + (h * co.b_first) * k_first
            ks = torch.cat([k_first[None], ks])
        error = None
        if stages.solve is not None and co.error_z is not None:  # embedded error weights
            error = co.error_z @ z.detach()
            if first:
                error = error + (h * co.error_first) * lin.f0
            self.counters["factorisations"] += getattr(stages.solve, "factorisations", 0)
        elif stages.solve is not None:  # (a replayed step needs no error estimate)
            try:
                with torch.no_grad():
                    error = self._error(term, t0, y0d, h, z.detach(), lin, stages.solve, state, p0)
            except SingularMatrixError as failure:  # (GMRES with a singular preconditioner)
                return self._failed_step(t0, t1, y0, str(failure), extra, gmres=True)
            finally:
                self.counters["factorisations"] += getattr(stages.solve, "factorisations", 0)
        f1 = ks[-1] if tab.stiffly_accurate and tab.c[-1] == 1 else None
        previous_f1 = state.get("previous_f1") if isinstance(state, dict) else None
        extra.update(ks=ks, f0=lin.f0, p0=p0, stages=z.detach(), previous_f1=previous_f1)
        return Step(t0, t1, y0, y1, error, list(ks), f1, extra, p1)

    def _stages(
        self,
        eq: StageEquations,
        t0: float,
        y0: torch.Tensor,
        p0: float,
        state: Any,
        start: torch.Tensor | None,
    ) -> _Stages:
        """Newton's solution of the stage equations.

        Under error control the Jacobian of an earlier step is used again where ``state``
        keeps one (``accept`` keeps it after a fast Newton convergence, ``reject`` after any
        rejection); a failure with such a Jacobian is retried once with a fresh one before
        the step is given up (SciPy's Radau). A replayed step (``replay_state``) takes the
        stages it converged to."""
        state = state if isinstance(state, dict) else {}
        if "stages" in state:
            lin = _Linearisation(eq.term(t0, y0, p0), None, None)
            return _Stages(state["stages"], "", False, lin, True, None)
        # the kept linearisation, and the perturbation of t0 it was evaluated with where it
        # is this step's own (a rejected attempt's, from the same point), else None
        kept, at = state.get("jacobian", (None, None))
        here = at is not None
        while True:
            if kept is None:
                lin, here = self._linearise(eq.term, t0, y0, p0, eq.layout), True
            elif at == p0:
                lin = kept
            else:
                lin = _Linearisation(eq.term(t0, y0, p0), kept.jacobians, kept.jvp)
            k_first = lin.f0 if self.tableau.explicit_first_stage else None
            try:
                solve = self._linear_solve(eq.term, eq.h, eq.co, lin, eq.layout)
            except SingularMatrixError:
                z, failure, slow = None, "singular Newton matrix I - h (A kron J)", True
                solve = None
            else:
                z, failure, slow = self._newton(eq, y0, start, k_first, solve)
            if z is not None or here:
                return _Stages(z, failure, slow, lin, here, solve)
            kept = None

    def _predictor(
        self, state: Any, t0: float, h: float, y0: torch.Tensor, nodes: tuple[float, ...]
    ) -> torch.Tensor | None:
        """The Newton start Z0: the previous step's collocation polynomial extrapolated to
        this step's nodes, minus y0 (as RADAU5 and SciPy do), or ``None`` (start from 0)."""
        if not isinstance(state, dict):
            return None
        previous = state.get("previous")
        if previous is None or not self.tableau.collocation:
            return None
        p_t0, p_dt, p_y0, p_ks = previous
        thetas = np.array([(t0 + c * h - p_t0) / p_dt for c in nodes])
        weights = collocation_weights(self.tableau.c, thetas)
        w = torch.from_numpy(weights).to(dtype=p_ks.dtype, device=p_ks.device)
        return p_y0[None] + p_dt * (w @ p_ks) - y0[None]

    def _error(self, term, t0, y0, h, z, lin, solve, state, p0) -> torch.Tensor | None:
        """The local error estimate of an adaptive method (``None``: fixed-step only)."""
        return None

    def failure_hint(self) -> str:
        """The Newton failures of the current solve, for its step-size underflow or
        ``MaxStepsError``: under error control each failure is a rejected step, so a solve
        stalled by them (too few ``max_iters``, a tight ``newton_tol``, a ``batch_size``
        that splits coupled entries, inexact GMRES) would otherwise read as a stiff problem.

        Returns:
            How many steps failed in the Newton iteration, the last failure and the options
                that govern it, or ``""`` when none failed.
        """
        failures = self.counters["newton_failures"] - self._failures_before
        if failures <= 0:
            return ""
        options = [f"raise max_iters (now {self._iteration_cap})"]
        if self.newton_tol is not None:
            options.append(f"loosen newton_tol (now {self.newton_tol:g})")
        if self.batch_size is not None and self.batch_size > 1:
            options.append(
                f"check that batch_size={self.batch_size} splits the state into independent "
                "samples (f of one sample must not read another's entries)"
            )
        if self._failed_with_gmres:
            options.append(
                f"with GMRES (linear_solver={self.linear_solver!r}) tighten krylov_tol (now "
                f"{self.krylov_tol:g}) or raise krylov_dim (now {self.krylov_dim})"
            )
        return (
            f"{failures} step(s) of {self.name} failed in the Newton iteration (the last "
            f"{self._last_failure}): {', '.join(options)}."
        )

    def _failed_step(
        self,
        t0: float,
        t1: float,
        y0: torch.Tensor,
        failure: str,
        extra: dict[str, Any],
        gmres: bool = False,
    ) -> Step:
        self.counters["newton_failures"] += 1
        self._last_failure = f"from t={t0:.6g} to t={t1:.6g}: {failure}"
        self._failed_with_gmres = gmres  # (the linear solves were GMRES's: name its options)
        if self._tolerances is None:
            # radau itself on fixed steps: the remedy is its error control, not itself
            adaptive = (
                "radau with an error-controlled PIController"
                if self.name == "radau"
                else "an adaptive stiff method (radau)"
            )
            raise NewtonError(
                f"{self.name}: the Newton iteration did not converge on the step from "
                f"t={t0:.6g} to t={t1:.6g} ({failure}); it uses f's Jacobian at the step's "
                "start, which a long step can leave far behind. Use smaller steps "
                f"(step_size), more iterations (max_iters) or a looser newton_tol, or "
                f"{adaptive}."
            )
        # The infinite error rejects the step whatever its y1 (min_step does not force an
        # infinite error either). y1 stays finite: a solve stalled by Newton failures is a
        # step-size underflow, not steps producing NaN (which would blame f).
        stay = y0.detach()
        return Step(t0, t1, y0, stay, torch.full_like(y0, float("inf")), [], None, extra)

    # ------------------------------------------------------------------------------------
    # After the step

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """The state at the start of a solve, or after a jump.

        Arguments:
            term: the vector field (unused).
            t0: the initial time (unused).
            y0: the initial state (unused).
            f0: given at the start of a solve under error control and after a jump; then
                evaluations at ``t0`` are moved one ulp into the step.

        Returns:
            The state dict: no retry, and whether the first step starts after a jump.
        """
        # f0 is given at the start of a solve under error control and after a jump: then
        # evaluations at t0 are moved one ulp into the step.
        return {"retry": False, "after_jump": f0 is not None}

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        """The state for the next step: this step's stages, for the next Newton start.

        Arguments:
            term: the vector field (unused).
            step: the accepted step.
            perturb: unused.

        Returns:
            The state dict holding ``(t0, dt, y0, stages)`` of ``step``, detached; the
                step's end derivative (``carried``), the next step's Hermite start
                derivative; and under error control the step's Jacobian where Newton
                converged fast with it.
        """
        ks = step.extra["ks"].detach()
        state = {"retry": False, "previous": (step.t0, step.dt, step.y0.detach(), ks)}
        if not perturb:  # (a perturbed end may lie across a jump in f from the next start)
            state["previous_f1"] = self.carried(step)
        if self._tolerances is not None and not step.extra["newton_slow"]:
            state["jacobian"] = (step.extra["linearisation"], None)
        return state

    def carried(self, step: Step) -> torch.Tensor | None:
        """The end derivative of an accepted step that the next step's cubic Hermite dense
        output starts from (first same as last), where the method is stiffly accurate.

        It is the last stage's derivative as the stage equation gives it, ``(Z_s - h sum_j
        a_sj K_j) / (h a_ss)``. f(t0, y0) itself would multiply the Newton iteration's
        remaining error on stiff components by h |J|, which the dense output then shows;
        the stage derivative divides it by h a_ss instead. Checkpointed gradients carry
        its derivative from the step to the next.

        Arguments:
            step: an accepted step.

        Returns:
            The derivative (with a graph where the step has one), or ``None`` for methods
                with their own dense output (a continuous extension or the collocation
                polynomial) and methods that are not stiffly accurate (f(t1, y1) is then
                evaluated).
        """
        tab = self.tableau
        # (``step.f1`` of other methods is f(t1, y1), set only where an output was
        # interpolated in the step: not a derivative the next step can rely on)
        last_stage = tab.stiffly_accurate and tab.c[-1] == 1
        hermite = not tab.collocation and tab.dense is None
        return step.f1 if last_stage and hermite else None

    def read_carried(self, replay: Any) -> tuple[Any, torch.Tensor | None]:
        """The replay state with the previous step's end derivative (``carried``) made a
        leaf that records gradients, and that leaf (``None`` where the step read none).

        Arguments:
            replay: a state from ``replay_state``.

        Returns:
            The state to replay the step with, and the leaf.
        """
        previous = replay.get("previous_f1") if isinstance(replay, dict) else None
        if previous is None:
            return replay, None
        leaf = previous.detach().requires_grad_(True)
        return {**replay, "previous_f1": leaf}, leaf

    def reject(self, step: Step, state: Any) -> Any:
        """The state for retrying from the same point with a smaller step.

        Arguments:
            step: the rejected step (unused).
            state: the state the step started from.

        Returns:
            The state dict marked as a retry, keeping the previous step's stages, whether
                the step starts after a jump and the Jacobian the step used.
        """
        previous = state.get("previous") if isinstance(state, dict) else None
        retry = {"retry": True, "after_jump": _starts_after_jump(state), "previous": previous}
        if isinstance(state, dict) and state.get("previous_f1") is not None:
            retry["previous_f1"] = state["previous_f1"]
        if "linearisation" in step.extra:
            retry["jacobian"] = (step.extra["linearisation"], step.extra["jacobian_at"])
        return retry

    def for_adjoint_system(self) -> ImplicitRK:
        """The solver for ``Backsolve``'s backward solves: this one without its
        preconditioner (made for the forward state), sharing its counters.

        Returns:
            The solver itself where it has no preconditioner, else a copy without it.
        """
        if self.preconditioner is None:
            return self
        plain = copy.copy(self)
        plain.preconditioner = None
        return plain

    def replay_state(self, step: Step, after_jump: bool) -> Any:
        """What a recomputation of this accepted step needs to repeat it exactly.

        Arguments:
            step: an accepted step.
            after_jump: whether the step starts at a ``jump_t`` time.

        Returns:
            The state dict with the stages the step converged to (one state per implicit
                stage; kept by checkpointed gradients, whose recomputation then solves no
                Newton iteration) and the previous step's end derivative it read.
        """
        replay = {"retry": False, "after_jump": after_jump, "stages": step.extra["stages"]}
        if step.extra["previous_f1"] is not None:
            replay["previous_f1"] = step.extra["previous_f1"].detach()
        return replay

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """The dense output: the method's own extension or the collocation polynomial over
        the stages (``_stage_weights``), else cubic Hermite.

        Arguments:
            term: the vector field (evaluates f(t1, y1) for Hermite if unknown).
            step: the accepted step.
            thetas: the step fractions, a float64 CPU tensor (m,).

        Returns:
            The states at ``t0 + theta * dt``, (m, numel).
        """
        ks = step.extra["ks"]
        weights = self._stage_weights(np.array(thetas.tolist()))
        if weights is not None:
            w = torch.from_numpy(weights).to(dtype=ks.dtype, device=ks.device)
            return step.y0[None] + step.dt * (w @ ks)
        return hermite_interpolate(term, step, thetas, self.hermite_f0(term, step))

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        """The start derivative of an accepted step's cubic Hermite dense output.

        Arguments:
            term: the vector field (re-evaluated at t0 when recording gradients).
            step: the accepted step.

        Returns:
            The previous step's end derivative where it carries one (``carried``), else
                the explicit first stage, else f(t0, y0) (with a graph when gradients are
                recorded), shaped like ``step.y0``.
        """
        tab = self.tableau
        if step.extra.get("previous_f1") is not None:
            return step.extra["previous_f1"]
        if tab.explicit_first_stage:
            return step.extra["ks"][0]
        if torch.is_grad_enabled():
            return term(step.t0, step.y0, step.extra["p0"])  # with a graph
        return step.extra["f0"]

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        """What the dense output of an accepted ``step`` needs besides its ends.

        Arguments:
            term: the vector field.
            step: the accepted step.

        Returns:
            The stage derivatives (s, numel) where the dense output weighs them
                (``_stage_weights``), else (f0, f1) stacked (2, numel) for cubic Hermite.
        """
        if self.tableau.collocation or self.tableau.dense is not None:
            return step.extra["ks"]
        return super().dense_record(term, step)

    def dense_weights(
        self, theta: torch.Tensor, h: torch.Tensor, like: torch.Tensor, derivative: bool = False
    ) -> torch.Tensor:
        """The dense output as weights, one row per point.

        y0 + h sum_j w_j(theta) k_j with the stage weights (``_stage_weights``: the method's
        own extension or the collocation polynomial), else cubic Hermite's.

        Arguments:
            theta: the step fractions, (m,) float64; or one point's, a Python float.
            h: the step sizes, (m,) float64; a Python float with a float ``theta``.
            like: a tensor of the dtype and device the weights take.
            derivative: the weights of dy/dt instead of y.

        Returns:
            The weights, (m, 2 + K): of y0, y1 and the K rows of ``dense_record``.
        """
        w = self._stage_weights(step_fractions(theta), derivative)
        if w is None:
            return super().dense_weights(theta, h, like, derivative)
        return stage_dense_weights(w, h, like, derivative)


def _starts_after_jump(state: Any) -> bool:
    """Whether the step starts where f jumps (the state ``init`` made after a jump)."""
    return isinstance(state, dict) and state.get("after_jump", False)
