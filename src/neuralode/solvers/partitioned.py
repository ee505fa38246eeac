"""Explicit symplectic (partitioned) methods for separable systems: a splitting of each step
into kicks and drifts, given as data; each method only supplies its ``Splitting``.

The state is a pair ``(q, p)`` of tensors and ``f(t, (q, p)) = (dq/dt, dp/dt)`` with dq/dt a
function of ``(t, p)`` only and dp/dt of ``(t, q)`` only: a separable Hamiltonian
H = T(p) + V(q), or a second-order system q'' = a(t, q) written as ``(q, v)``. A kick moves
``p`` by a fraction of the step along dp/dt at the current ``q``; a drift moves ``q`` along
dq/dt at the current ``p``. Each is the exact flow of one half of the system, so every
composition of them is symplectic. Time moves with the drifts for the kicks (a kick sees the
time the drifts before it reached) and with the kicks for the drifts, which keeps a symmetric
splitting symmetric for time-dependent f. A field that offers its halves (``dq_dt(t, p)``,
``dp_dt(t, q)``: ``ODETerm.separable``) has each kick and drift evaluate only the half it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._term import ODETerm
from .._tree import TreeSpec
from ._hermite import hermite, hermite_interpolate
from ._step import RowFacts, Step
from .base import Solver
from .explicit_rk import ExplicitRK

_TOL = 1e-12
_KINDS = ("kick", "drift")


@dataclass(frozen=True)
class Splitting:
    """A partitioned method as data: the kicks and drifts of one step, in order.

    Attributes:
        name: the method's name (in error messages).
        operations: ``(kind, fraction)`` pairs, ``kind`` ``"kick"`` (``p += fraction * dt *
            dp/dt(q)``) or ``"drift"`` (``q += fraction * dt * dq/dt(p)``), in the order
            they apply.
        order: the order of the solution on separable systems.

    Raises:
        ValueError: an unknown kind, two operations of one kind in a row, or kick or drift
            fractions that do not sum to 1.
    """

    name: str
    operations: tuple[tuple[str, float], ...]
    order: int

    def __post_init__(self) -> None:
        problems = []
        kinds = [kind for kind, _ in self.operations]
        if any(kind not in _KINDS for kind in kinds):
            problems.append(f"every operation must be one of {_KINDS}, got {kinds}")
        if any(a == b for a, b in zip(kinds, kinds[1:])):
            problems.append("two operations of one kind in a row: merge them")
        for kind in _KINDS:
            total = sum(x for k, x in self.operations if k == kind)
            if abs(total - 1) > _TOL:
                problems.append(f"the {kind} fractions sum to {total!r}, not 1")
        if problems:
            raise ValueError(f"invalid splitting {self.name!r}: " + "; ".join(problems))

    @property
    def fsal(self) -> bool:
        """The step starts and ends with a kick: the last kick's dp/dt, at (t1, q1), is the
        next step's first (first same as last)."""
        return self.operations[0][0] == "kick" and self.operations[-1][0] == "kick"

    @property
    def times(self) -> tuple[float, ...]:
        """The step fractions at which the operations evaluate f: a kick at the fraction
        the drifts before it reached, a drift at the fraction the kicks reached."""
        moved = {"kick": 0.0, "drift": 0.0}
        times = []
        for kind, fraction in self.operations:
            times.append(moved["drift" if kind == "kick" else "kick"])
            moved[kind] += fraction
        return tuple(times)

    def evaluations(self, carried: bool) -> int:
        """Evaluations of f (or of one of its halves) in one step.

        Arguments:
            carried: the step starts from the previous step's last dp/dt.

        Returns:
            One per operation, less the first kick's where it is carried in.
        """
        return len(self.operations) - (carried and self.fsal)


def pair_split(spec: TreeSpec, name: str) -> int:
    """The number of elements of ``q`` in a flat ``(q, p)`` state.

    Arguments:
        spec: the state's structure.
        name: the method's name, for the message.

    Returns:
        ``spec.numels[0]``: the flat state is ``q`` then ``p``.

    Raises:
        ValueError: the state is not a pair of two tensors.
    """
    structure = spec.structure
    if not isinstance(structure, (tuple, list)) or list(structure) != [None, None]:
        got = "one tensor" if structure is None else f"a {type(structure).__name__}"
        if isinstance(structure, (tuple, list)):
            got += f" of {len(spec.shapes)} tensors"
            if len(structure) == 2:
                got = "a pair whose parts are not both tensors"
        raise ValueError(
            f"{name} needs the state as a pair (q, p) of two tensors, got {got}: pass y0 as a "
            "tuple (q0, p0), with func(t, (q, p)) returning (dq/dt, dp/dt), dq/dt depending "
            "on (t, p) and dp/dt on (t, q) only"
        )
    return spec.numels[0]


class PartitionedSolver(Solver):
    """An explicit symplectic method defined by the class attribute ``splitting``.

    The state must be a pair ``(q, p)`` of tensors (any shapes, one dtype) and ``f`` separable:
    dq/dt depends on ``(t, p)`` only and dp/dt on ``(t, q)`` only. There the method is
    symplectic (it conserves a modified energy: no drift of the energy error over long times)
    and of order ``splitting.order``. On a non-separable f it is still consistent (order 1)
    but neither symplectic nor of that order.

    Fixed steps only (``FixedGrid``: ``step_size``, a grid, or the output times); there is no
    error estimate. Each kick and each drift evaluates f once, except that a splitting which
    starts and ends with a kick reuses the last kick's dp/dt at the next step's start. Where
    f offers its halves, methods ``dq_dt(t, p)`` (returning dq/dt, shaped like ``q``) and
    ``dp_dt(t, q)`` (dp/dt, shaped like ``p``) equal to the parts of ``f(t, (q, p))``, a kick
    calls only ``dp_dt`` and a drift only ``dq_dt``, on the user's tensors; otherwise f is
    called whole and a kick reads its dp/dt, a drift its dq/dt. ``stats.nfe`` counts each
    call of f or of one of its halves as one evaluation. The results are the same either way.

    Dense output between steps is cubic Hermite through the states and f at the step's ends,
    for steps with outputs inside: f at both ends, evaluated (whole, or each half not already
    evaluated there by a kick or drift of the step).

    Per sample (``per_sample=True`` on a ``FixedGrid``; ``q`` and ``p`` of shape
    (batch, ...)) each sample takes its lone solve's kicks and drifts (``PartitionedRows``).
    """

    splitting: ClassVar[Splitting]
    #: the explicit Runge-Kutta method of the same order that solves ``Backsolve``'s adjoint
    #: system (its state is [y, adjoint, parameter gradients], not a pair)
    adjoint_method: ClassVar[type[ExplicitRK]]

    @property
    def order(self) -> int:  # type: ignore[override]
        """The order on separable systems, the splitting's ``order``."""
        return self.splitting.order

    @property
    def name(self) -> str:
        """The splitting's name (e.g. ``"leapfrog"``)."""
        return self.splitting.name

    def init(self, term: ODETerm, t0: float, y0: torch.Tensor, f0: torch.Tensor | None) -> Any:
        """Check that the state is a pair ``(q, p)``; the state carried is dp/dt at ``t0``.

        Arguments:
            term: the vector field.
            t0: the initial time.
            y0: the flat initial state.
            f0: ``term(t0, y0)`` when already known, else ``None``.

        Returns:
            dp/dt at ``(t0, q0)`` (``f0``'s second part) for a splitting that starts with a
                kick, else ``None``.

        Raises:
            ValueError: the state is not a pair of two tensors.
        """
        n_q = pair_split(term.spec, self.name)
        if f0 is None or self.splitting.operations[0][0] != "kick":
            return None
        return f0[n_q:]

    def step(
        self, term: ODETerm, t0: float, t1: float, y0: torch.Tensor, state: Any, perturb: bool
    ) -> Step:
        """One step of kicks and drifts from ``(t0, y0)`` to ``t1``.

        Arguments:
            term: the vector field.
            t0: the start time (a float, or a 0-dim float64 tensor in a compiled step).
            t1: the end time, as ``t0``.
            y0: the flat state ``(q, p)`` at ``t0``.
            state: dp/dt at ``(t0, q0)`` when carried in, else ``None``.
            perturb: move the evaluations at the ends of the step one ulp inside it.

        Returns:
            The [`Step`][neuralode.solvers.Step]: ``y1``, no error estimate, the evaluations
                made (``stages``: of f, or of its halves on a separable term) and, in
                ``extra``, the last kick's dp/dt and f(t0, y0) where a kick evaluated it
                (with halves: the halves evaluated at the step's ends).
        """
        n_q = pair_split(term.spec, self.name)
        dt = t1 - t0
        inward = (1.0 if dt > 0 else -1.0) if perturb else 0.0
        q, p = y0[:n_q], y0[n_q:]
        if term.separable:
            return self._step_halves(term, t0, t1, y0, q, p, state, inward)
        evaluations: list[torch.Tensor] = []
        f0 = None

        def evaluate(kind: str, fraction: float, q: torch.Tensor, p: torch.Tensor) -> Any:
            nonlocal f0
            f = self._evaluate(term, t0, t1, dt, fraction, torch.cat([q, p]), inward)
            evaluations.append(f)
            if fraction == 0:  # at (t0, y0): the dense output's start derivative
                f0 = f
            return f[n_q:] if kind == "kick" else f[:n_q]

        q, p, last_kick = self.kicks_and_drifts(q, p, dt, evaluate, state)
        y1 = torch.cat([q, p])
        carry = last_kick if self.splitting.fsal else None
        extra = {"carry": carry, "f0": f0}
        return Step(t0, t1, y0, y1, None, evaluations, None, extra, -inward)

    def kicks_and_drifts(
        self,
        q: torch.Tensor,
        p: torch.Tensor,
        dt: Any,
        evaluate: Any,
        dpdt: torch.Tensor | None = None,
        dqdt: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The splitting's kicks and drifts from ``(q, p)``: the step of every mode.

        A kick at the step fraction the drifts before it reached, a drift at the fraction
        the kicks reached; the first operation's fraction is 0, at ``(t0, y0)`` (no other
        one is: two operations of one kind are never adjacent).

        Arguments:
            q: the positions at the step's start (flat, or (batch, k) rows).
            p: the momenta, as ``q``.
            dt: the step size (a float, a 0-dim tensor, or (batch, 1) per row).
            evaluate: ``evaluate(kind, fraction, q, p)`` returns dp/dt for a ``"kick"``
                and dq/dt for a ``"drift"`` at the step fraction ``fraction`` and the
                current ``(q, p)``.
            dpdt: the first kick's dp/dt when known (carried in), else ``None``.
            dqdt: the first operation's dq/dt when it is a drift and known, else ``None``.

        Returns:
            ``(q1, p1, last_kick)``: the state at the step's end and the last kick's dp/dt.
        """
        moved = dict.fromkeys(_KINDS, 0.0)  # the fractions of the step each kind moved
        last_kick = None
        for kind, fraction in self.splitting.operations:
            if kind == "kick":
                if dpdt is None:
                    dpdt = evaluate(kind, moved["drift"], q, p)
                p = p + (fraction * dt) * dpdt
                last_kick, dpdt = dpdt, None
            else:
                if dqdt is None:
                    dqdt = evaluate(kind, moved["kick"], q, p)
                q = q + (fraction * dt) * dqdt
                dqdt = None
            moved[kind] += fraction
        return q, p, last_kick

    @property
    def stage_reach(self) -> float:
        """How far f is evaluated outside the step, in steps: the latest evaluation time,
        or one plus how far the earliest lies before the start (``yoshida4``'s kicks at
        1.35 and -0.35 steps reach 1.35), at least 1.0; past 1, ``solve`` refuses ``jump_t``
        and ``perturb`` with the method.

        Returns:
            ``max(1.0, max(times), 1 - min(times))`` over the splitting's ``times``.
        """
        times = self.splitting.times
        return max(1.0, max(times), 1.0 - min(times))

    def _step_halves(
        self,
        term: ODETerm,
        t0: Any,
        t1: Any,
        y0: torch.Tensor,
        q: torch.Tensor,
        p: torch.Tensor,
        state: Any,
        inward: float,
    ) -> Step:
        """``step`` on a separable term (``ODETerm.separable``): each kick evaluates only
        dp/dt(t, q) and each drift only dq/dt(t, p), with the same times and states as the
        whole f's step. The halves met at the step's ends (a kick before any drift or after
        the last, a drift before any kick or after the last) are kept in ``extra["ends"]``
        for the dense output's f(t0, y0) and f(t1, y1)."""
        dt = t1 - t0
        # the halves at (t0, y0) and (t1, y1): "dq0", "dp0", "dq1", "dp1"
        ends: dict[str, torch.Tensor] = {}
        if state is not None and not inward:  # (dp/dt at t0 itself, not one ulp inside)
            ends["dp0"] = state
        evaluations: list[torch.Tensor] = []

        def evaluate(kind: str, fraction: float, q: torch.Tensor, p: torch.Tensor) -> Any:
            t, perturb = self._time(t0, t1, dt, fraction, inward)
            if kind == "kick":
                value, name = term.dp_dt(t, q, perturb), "dp"
            else:
                value, name = term.dq_dt(t, p, perturb), "dq"
            evaluations.append(value)
            # a kick before any drift is at (t0, q0), after the last at (t1, q1); a drift
            # before any kick at (t0, p0), after the last at (t1, p1)
            if fraction == 0:
                ends[f"{name}0"] = value
            elif abs(fraction - 1) <= _TOL:
                ends[f"{name}1"] = value
            return value

        q, p, last_kick = self.kicks_and_drifts(q, p, dt, evaluate, state)
        carry = last_kick if self.splitting.fsal else None
        extra = {"carry": carry, "ends": ends}
        return Step(t0, t1, y0, torch.cat([q, p]), None, evaluations, None, extra, -inward)

    @staticmethod
    def _time(t0: Any, t1: Any, dt: Any, fraction: float, inward: float) -> tuple[Any, float]:
        """The time of an evaluation at the step fraction ``fraction`` and how it is
        perturbed: the step's ends exactly, moved ``inward``, else ``t0 + fraction * dt``."""
        if fraction == 0:
            return t0, inward
        if abs(fraction - 1) <= _TOL:
            return t1, -inward
        return t0 + fraction * dt, 0.0

    @classmethod
    def _evaluate(
        cls,
        term: ODETerm,
        t0: Any,
        t1: Any,
        dt: Any,
        fraction: float,
        y: torch.Tensor,
        inward: float,
    ) -> torch.Tensor:
        """f at the step fraction ``fraction`` (the step's ends exactly, moved ``inward``)."""
        t, perturb = cls._time(t0, t1, dt, fraction, inward)
        return term(t, y, perturb)

    def accept(self, term: ODETerm, step: Step, perturb: bool) -> Any:
        """The state for the next step: the last kick's dp/dt at ``(t1, q1)``.

        Arguments:
            term: the vector field.
            step: the accepted step.
            perturb: whether the step's end evaluations were moved inside it (dp/dt there is
                then not the next step's).

        Returns:
            dp/dt at the step's end for a splitting that ends with a kick, else ``None``.
        """
        return None if perturb else step.extra["carry"]

    def compiled_evaluations(self, term: ODETerm, step: Step, state: Any) -> int:
        """The evaluations of f (or of its halves) in a compiled step: the step's ``stages``.

        Arguments:
            term: the vector field.
            step: the step the compiled graph returned.
            state: the state the step started from.

        Returns:
            ``len(step.stages)``, every evaluation the step made.
        """
        return len(step.stages)

    def hermite_f0(self, term: ODETerm, step: Step) -> torch.Tensor:
        """f(t0, y0) of an accepted step, for its cubic Hermite dense output.

        Arguments:
            term: the vector field.
            step: the accepted step.

        Returns:
            f(t0, y0): the step's first evaluation where it was one, else evaluated now.
        """
        f0 = step.extra.get("f0")
        if f0 is None:
            f0 = step.extra["f0"] = self._end_derivative(term, step, 0)
        return f0

    def hermite_f1(self, term: ODETerm, step: Step) -> torch.Tensor:
        """f(t1, y1) of an accepted step, for its cubic Hermite dense output (``step.f1``).

        Arguments:
            term: the vector field.
            step: the accepted step.

        Returns:
            f(t1, y1): ``step.f1`` where known, else evaluated now and kept there.
        """
        if step.f1 is None:
            step.f1 = self._end_derivative(term, step, 1)
        return step.f1

    @staticmethod
    def _end_derivative(term: ODETerm, step: Step, end: int) -> torch.Tensor:
        """f at the step's start (``end`` 0) or end (1), moved inside the step as its
        evaluations there were: whole, or on a separable term from its two halves, each
        taken from the step where a kick or drift evaluated it there, else evaluated."""
        if end == 0:
            t, y, perturb = step.t0, step.y0, -step.end_perturb
        else:
            t, y, perturb = step.t1, step.y1, step.end_perturb
        ends = step.extra.get("ends")
        if ends is None:  # (the whole f's step)
            return term(t, y, perturb)
        n_q = term.spec.numels[0]
        dqdt = ends.get(f"dq{end}")
        if dqdt is None:
            dqdt = term.dq_dt(t, y[n_q:], perturb)
        dpdt = ends.get(f"dp{end}")
        if dpdt is None:
            dpdt = term.dp_dt(t, y[:n_q], perturb)
        return torch.cat([dqdt, dpdt])

    def interpolate(self, term: ODETerm, step: Step, thetas: torch.Tensor) -> torch.Tensor:
        """Cubic Hermite through the step's ends and f there.

        Arguments:
            term: the vector field.
            step: the accepted step.
            thetas: the step fractions, a float64 CPU tensor (m,).

        Returns:
            The states at ``t0 + theta * dt``, (m, numel).
        """
        self.hermite_f1(term, step)
        return hermite_interpolate(term, step, thetas, self.hermite_f0(term, step))

    def dense_record(self, term: ODETerm, step: Step) -> torch.Tensor:
        """The rows (f0, f1) of an accepted step's cubic Hermite dense output.

        Arguments:
            term: the vector field.
            step: the accepted step; its ``f1`` is evaluated if unknown.

        Returns:
            ``hermite_f0`` and ``hermite_f1``, stacked (2, numel).
        """
        return torch.stack([self.hermite_f0(term, step), self.hermite_f1(term, step)])

    def for_rows(self, term: ODETerm, like: torch.Tensor) -> PartitionedRows:
        """The method as the device loop runs it (``per_sample=True``, on a ``FixedGrid``).

        Arguments:
            term: the vector field; its state a pair (q, p) whose tensors have the batch
                first.
            like: a tensor of the state's dtype and device.

        Returns:
            A ``PartitionedRows``.
        """
        return PartitionedRows(self, term)

    def for_adjoint_system(self) -> Solver:
        """The solver for ``Backsolve``'s backward solves: the explicit Runge-Kutta method of
        the same order (``adjoint_method``), since the adjoint system's state is not a pair.

        Returns:
            A new ``adjoint_method`` instance.
        """
        return self.adjoint_method()


class PartitionedRows:
    """A ``PartitionedSolver`` on the device loop's rows (``per_sample=True``, on a
    ``FixedGrid``): each row is one sample's (q, p), every row steps from its own ``t`` by
    its own ``dt`` with the splitting's kicks and drifts (``kicks_and_drifts``), at the same
    times and on the same states as the sample alone.

    The first operation of a step is at (t0, y0), so it takes its half of the attempt's
    f0: a splitting that starts and ends with a kick (``leapfrog``, ``yoshida4``) is FSAL
    here, its last kick's dp/dt the next attempt's (the row's ``k_last`` holds it, beside
    zeros where dq/dt would be); the others (``semi_implicit_euler``) take f(t1, y1)
    evaluated after the step. A step evaluates f as often as alone. Where f offers its
    halves (``ODETerm.separable``) every kick and drift evaluates one half on the rows; the
    attempt's f0 is f whole (one evaluation, as the first half alone), as are all the
    evaluations of a compiled attempt (``compile="step"``), which are counted alike.

    Outputs between a step's ends are cubic Hermite through f at both ends, evaluated
    whole once per step that has outputs (f0 and f(t1, y1), ``dense_stages``; for a
    splitting that is not FSAL f0 is the attempt's and f(t1, y1) the next one's).
    """

    error_order = None

    def __init__(self, solver: PartitionedSolver, term: ODETerm):
        self.solver = solver
        self.n_q = math.prod(term.spec.shapes[0][1:])  # a row's q: q's elements per sample
        self.row_fsal = solver.splitting.fsal
        self.dense_extra_stages = 2 if self.row_fsal else 0

    def row_facts(self, like: torch.Tensor) -> RowFacts:
        """FSAL splittings keep no stages (their outputs evaluate f at the step's ends);
        the others keep f0 and use f(t1, y1).

        Arguments:
            like: a tensor of the state's dtype and device.

        Returns:
            The ``RowFacts``.
        """
        if self.row_fsal:
            return RowFacts(0, fsal=True, needs_f0=True, needs_f1=False)
        return RowFacts(1, fsal=False, needs_f0=True, needs_f1=True)

    def evaluations_per_attempt(self) -> int:
        """Evaluations of f (or of its halves) in one attempt besides f0.

        Returns:
            One per kick and drift, less the first (f0's).
        """
        return len(self.solver.splitting.operations) - 1

    def propose_rows(
        self,
        call: Any,
        t: torch.Tensor,
        t1: torch.Tensor,
        h: torch.Tensor,
        y: torch.Tensor,
        f0: torch.Tensor,
        buffer: Any,
        t1_inner: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
        """Every row's step from ``t`` to ``t1`` (``ExplicitRK.propose_rows``'s arguments;
        ``buffer`` unused).

        Returns:
            ``(y1, None, k_last, stacked)``: the proposals, no error estimate, the next
                attempt's f0 for an FSAL splitting (else f0), and the stages kept: none,
                or f0 (1, batch, n).
        """
        n_q, end = self.n_q, t1 if t1_inner is None else t1_inner
        halves = getattr(call, "halves", None)  # (the eager loop's ``BatchTerm``)

        def evaluate(kind: str, fraction: float, q: torch.Tensor, p: torch.Tensor) -> Any:
            at = end if abs(fraction - 1) <= _TOL else t + fraction * h
            if halves is not None:
                return halves.dp_dt(at, q) if kind == "kick" else halves.dq_dt(at, p)
            f = call(at, torch.cat([q, p], 1))
            return f[:, n_q:] if kind == "kick" else f[:, :n_q]

        q, p = y[:, :n_q], y[:, n_q:]
        kick_first = self.solver.splitting.operations[0][0] == "kick"
        first = (f0[:, n_q:], None) if kick_first else (None, f0[:, :n_q])
        dt = h.to(y.real.dtype)[:, None]
        q, p, last_kick = self.solver.kicks_and_drifts(q, p, dt, evaluate, *first)
        y1 = torch.cat([q, p], 1)
        if self.row_fsal:
            k_last = torch.cat([torch.zeros_like(q), last_kick], 1)
            return y1, None, k_last, y.new_zeros((0, *y.shape))
        return y1, None, f0, f0[None]

    def dense_stages(
        self,
        y0: torch.Tensor,
        h: Any,
        ks: Any,
        f1: Any,
        evaluate: Any,
        y1: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """f whole at both ends of the step, for its cubic Hermite outputs (FSAL splittings).

        Arguments:
            y0: the rows' states at the step's start.
            h: the step sizes (unused).
            ks: the stages kept (none).
            f1: unused (an FSAL row's ``k_last`` is not f(t1, y1)).
            evaluate: ``evaluate(c, y)``, f at the step fraction ``c``.
            y1: the rows' states at the step's end.

        Returns:
            f(t0, y0) and f(t1, y1) stacked, (2, batch, n).
        """
        return torch.stack([evaluate(0.0, y0), evaluate(1.0, y1)])

    def dense_width(self, like: torch.Tensor) -> int:
        """The rows of ``dense_stages``: f at the step's two ends.

        Arguments:
            like: a tensor of the state's dtype and device.

        Returns:
            2.
        """
        return 2

    def dense(
        self,
        y0: torch.Tensor,
        y1: torch.Tensor,
        h: torch.Tensor,
        stacked: torch.Tensor,
        f1: torch.Tensor | None,
        theta: torch.Tensor,
    ) -> torch.Tensor:
        """Cubic Hermite through each row's step ends.

        Returns:
            The rows' states at their step fractions ``theta``, (rows, n).
        """
        th = theta.to(device=y0.device, dtype=y0.real.dtype)[:, None]
        return hermite(th, y0, y1, stacked[0], stacked[1] if f1 is None else f1, h)
