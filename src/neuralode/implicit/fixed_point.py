"""Fixed-point solvers for z = f(z): plain iteration, Anderson acceleration, Broyden's method.

All three work on batches of independent problems: ``z`` is (batch, ...) and ``f`` maps each
sample on its own, so every sample has its own residual, Anderson mixing and Broyden
inverse-Jacobian estimate. One driver (``fixed_point``) evaluates f, measures the residuals,
keeps each sample's best iterate and stops; a method only proposes the next iterate from the
current one (``FixedPointMethod.propose``). Every iteration is one evaluation of f.

The operations are differentiable (no in-place writes into histories), so the same solve also
serves as an unrolled layer when autograd is on.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._args import count, is_real, real
from .._graph_break import outside_dynamo

_TINY = 1e-12  # keeps Broyden's denominators away from 0
# the smallest ||f(z)|| a residual is relative to: near a fixed point at 0 the relative test
# ||f(z) - z|| / ||f(z)|| stays near 1 however close z gets, so below it the test is absolute
NORM_FLOOR = 1e-6


@dataclass
class FixedPointResult:
    """The outcome of ``fixed_point``.

    Attributes:
        z: each sample's iterate with the smallest residual, shape of ``z0``.
        iterations: evaluations of f.
        residual: relative residual ||f(z) - z|| / max(||f(z)||, norm_floor) of ``z`` per
            sample, (batch,) (``relative_residual``).
        history: the largest relative residual over the batch after each evaluation (NaN
            where a sample's is).
        converged: whether every sample reached the tolerance.
        sample_iterations: per sample, the evaluations of f after which its residual first
            met the tolerance (-1: never), (batch,); a sample's own cost were it solved alone.
    """

    z: torch.Tensor
    iterations: int
    residual: torch.Tensor
    history: list[float] = field(default_factory=list)
    converged: bool = False
    sample_iterations: torch.Tensor | None = None

    @property
    def max_residual(self) -> float:
        """The largest relative residual over the batch (the stopping criterion)."""
        return float(self.residual.max()) if self.residual.numel() else 0.0


class FixedPointMethod(abc.ABC):
    """Proposes the next iterate from the current iterate ``z`` and ``fz = f(z)``, both
    flattened to (batch, n). ``reset`` is called once per solve."""

    name: str = "method"

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget the previous solve's history."""

    @abc.abstractmethod
    def propose(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """The next iterate from the current one, each sample on its own.

        ``fixed_point`` calls it once per iteration, after ``reset``; a method with a history
        (Anderson, Broyden) records ``z`` and ``fz`` in it.

        Arguments:
            z: the current iterate, flattened to (batch, n).
            fz: ``f(z)``, (batch, n).

        Returns:
            The next iterate, (batch, n), of the dtype and device of ``z``.
        """


class Picard(FixedPointMethod):
    """Plain (damped) iteration z <- (1 - damping) z + damping f(z); converges where f is a
    contraction, linearly at the contraction's rate.

    Arguments:
        damping: the step fraction in (0, 1] (1: z <- f(z)).

    Raises:
        ValueError: ``damping`` outside (0, 1].
    """

    name = "picard"

    def __init__(self, damping: float = 1.0):
        self.damping = real("damping", damping, "in (0, 1]", lambda x: 0 < x <= 1)

    def reset(self) -> None:
        """Plain iteration keeps no history."""

    def propose(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """The next iterate, (1 - damping) z + damping f(z), per sample.

        Arguments:
            z: the current iterate, flattened to (batch, n).
            fz: ``f(z)``, (batch, n).

        Returns:
            The next iterate, (batch, n): ``fz`` itself when ``damping`` is 1.
        """
        if self.damping == 1:
            return fz
        return torch.lerp(z, fz, self.damping)


class Anderson(FixedPointMethod):
    """Anderson acceleration (Walker & Ni 2011): the next iterate mixes the last ``memory``
    values of f with the weights that minimise the mixed residual, sum(alpha) = 1.

    Arguments:
        memory: how many past iterates are mixed.
        regularisation: Tikhonov term added to the residuals' Gram matrix, relative to its
            largest diagonal entry (conditioning); default: 1e-8, or ten times the dtype's
            machine epsilon where that is larger (1.2e-6 in float32).
        damping: beta; 1 mixes the values of f only, less mixes in the iterates too.

    Raises:
        ValueError: ``memory`` not an integer >= 1, a ``regularisation`` that is not a
            finite non-negative number, or ``damping`` outside (0, 1].
    """

    name = "anderson"

    def __init__(self, memory: int = 5, regularisation: float | None = None, damping: float = 1.0):
        memory = count("memory", memory)  # any integer (NumPy's too), not a bool or a float
        if regularisation is not None:
            regularisation = real(
                "regularisation", regularisation, "finite and non-negative", _non_negative
            )
        damping = real("damping", damping, "in (0, 1]", lambda x: 0 < x <= 1)
        self.memory, self.regularisation, self.damping = memory, regularisation, damping
        self.reset()

    def reset(self) -> None:
        """Forget the state of the last solve (called before each solve)."""
        self._iterates: list[torch.Tensor] = []
        self._values: list[torch.Tensor] = []

    def propose(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """The next iterate: the mix of the last ``memory`` values of f (this one included)
        whose weights (summing to 1) minimise the mixed residual, per sample.

        Appends ``z`` and ``fz`` to the history (the oldest pair leaves once ``memory`` are
        kept). The weights solve the regularised Gram system of the residuals f(z_i) - z_i;
        on the first call (one pair) the result is ``fz``, as with plain iteration. With
        ``damping`` below 1 the result is (1 - damping) times the same mix of the iterates
        plus ``damping`` times the mix of the values.

        Arguments:
            z: the current iterate, flattened to (batch, n).
            fz: ``f(z)``, (batch, n).

        Returns:
            The next iterate, (batch, n).
        """
        self._iterates = (self._iterates + [z])[-self.memory :]
        self._values = (self._values + [fz])[-self.memory :]
        iterates, values = torch.stack(self._iterates, 1), torch.stack(self._values, 1)
        residuals = values - iterates  # (batch, k, n)
        k = residuals.shape[1]
        # G_ij = <r_i, r_j> (Hermitian for complex states: conjugated on the left)
        gram = residuals.conj() @ residuals.transpose(1, 2)
        # Scale the regularisation with the residuals, so it does not dominate near convergence
        # (floored only at the dtype's smallest normal number: a larger floor on these squared
        # norms would take over for residuals below its square root, slowing the method
        # below plain iteration on fixed points of small size)
        tiny = torch.finfo(gram.real.dtype).tiny
        scale = gram.diagonal(dim1=1, dim2=2).real.amax(1).clamp_min(tiny)[:, None, None]
        eye = torch.eye(k, dtype=gram.dtype, device=gram.device)
        regularisation = self.regularisation
        if regularisation is None:
            regularisation = max(1e-8, 10 * torch.finfo(gram.dtype).eps)
        gram = gram + regularisation * scale * eye
        # min ||alpha^T residuals|| subject to sum(alpha) = 1: alpha = G^-1 1 / (1^T G^-1 1)
        ones = gram.new_ones(gram.shape[0], k, 1)
        weights = torch.linalg.solve(gram, ones)[..., 0]
        alpha = weights / weights.sum(1, keepdim=True)
        mixed = (alpha[:, None, :] @ values)[:, 0]
        if self.damping == 1:
            return mixed
        return torch.lerp((alpha[:, None, :] @ iterates)[:, 0], mixed, self.damping)


def _non_negative(x: float) -> bool:
    return 0 <= x < math.inf


class Broyden(FixedPointMethod):
    """Broyden's ("good") quasi-Newton method on g(z) = f(z) - z: its inverse Jacobian is
    estimated as -I plus rank-one updates, and z <- z - H g(z). Superlinear near a fixed
    point; no line search. After ``memory`` updates the estimate restarts from -I.

    Arguments:
        memory: the number of rank-one updates kept.

    Raises:
        ValueError: ``memory`` not an integer >= 1.
    """

    name = "broyden"

    def __init__(self, memory: int = 30):
        memory = count("memory", memory)  # any integer (NumPy's too), not a bool or a float
        self.memory = memory
        self.reset()

    def reset(self) -> None:
        """Forget the state of the last solve (called before each solve)."""
        self._previous: tuple[torch.Tensor, torch.Tensor] | None = None
        self._us: list[torch.Tensor] = []  # H = -I + sum_i u_i v_i^T
        self._vs: list[torch.Tensor] = []

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        """H x, (batch, n)."""
        out = -x
        for u, v in zip(self._us, self._vs):
            out = out + u * (v * x).sum(1, keepdim=True)
        return out

    def _apply_transposed(self, x: torch.Tensor) -> torch.Tensor:
        """H^T x, (batch, n)."""
        out = -x
        for u, v in zip(self._us, self._vs):
            out = out + v * (u * x).sum(1, keepdim=True)
        return out

    def propose(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """The quasi-Newton step z - H g(z), with g(z) = f(z) - z and H the inverse-Jacobian
        estimate, per sample.

        From the second call on, H first takes the rank-one ("good" Broyden) update that
        maps the change of g since the last call onto the change of ``z``; a sample whose
        update is degenerate (it has stopped moving) keeps its estimate. When ``memory``
        updates are held, H restarts from -I before the update. On the first call H = -I, so
        the result is ``fz``, as with plain iteration.

        Arguments:
            z: the current iterate, flattened to (batch, n).
            fz: ``f(z)``, (batch, n).

        Returns:
            The next iterate, (batch, n).
        """
        g = fz - z
        if self._previous is not None:
            dz, dg = z - self._previous[0], g - self._previous[1]
            if len(self._us) == self.memory:
                # Each update builds on the ones before it, so dropping the oldest would leave
                # an inconsistent estimate: start again from -I instead.
                self._us, self._vs = [], []
            h_dg = self._apply(dg)
            denominator = (dz * h_dg).sum(1, keepdim=True)
            # Samples that have stopped moving (or a degenerate update) keep their estimate.
            ok = denominator.abs() > _TINY * (dz.norm(dim=1, keepdim=True) ** 2 + _TINY)
            safe = torch.where(ok, denominator, torch.ones_like(denominator))
            u = torch.where(ok, (dz - h_dg) / safe, torch.zeros_like(dz))
            v = self._apply_transposed(dz)  # of the estimate before this update
            self._us.append(u)
            self._vs.append(v)
        self._previous = (z, g)
        return z - self._apply(g)


FIXED_POINT_METHODS: dict[str, type[FixedPointMethod]] = {
    "picard": Picard,
    "anderson": Anderson,
    "broyden": Broyden,
}


def fixed_point_method(method: str | FixedPointMethod, **options: float) -> FixedPointMethod:
    """A method by name (``"picard"``, ``"anderson"``, ``"broyden"``, with its options) or
    the instance itself.

    Raises:
        ValueError: an unknown name.
        TypeError: neither a name nor a ``FixedPointMethod``.
    """
    if isinstance(method, FixedPointMethod):
        return method
    if isinstance(method, str):
        if method not in FIXED_POINT_METHODS:
            raise ValueError(
                f"unknown fixed-point method {method!r}; available: "
                f"{', '.join(FIXED_POINT_METHODS)}"
            )
        return FIXED_POINT_METHODS[method](**options)
    raise TypeError(f"method must be a name or a FixedPointMethod, got {method!r}")


def relative_residual(
    z: torch.Tensor, fz: torch.Tensor, norm_floor: float = NORM_FLOOR
) -> torch.Tensor:
    """The relative residual ||f(z) - z|| / max(||f(z)||, norm_floor) per sample.

    Relative to ||f(z)|| where it is at least ``norm_floor``, relative to ``norm_floor``
    below it: a fixed point at 0 (or of a norm below the floor) is then reached once
    ||f(z) - z|| is ``tol * norm_floor``, where ||f(z) - z|| / ||f(z)|| would stay near 1.

    Arguments:
        z: the iterates, flattened to (batch, n).
        fz: ``f(z)``, (batch, n).
        norm_floor: the smallest norm the residual is relative to, positive.

    Returns:
        The residuals, (batch,), real.
    """
    return (fz - z).norm(dim=1) / fz.norm(dim=1).clamp_min(norm_floor)


def fixed_point(
    f: Callable[[torch.Tensor], torch.Tensor],
    z0: torch.Tensor,
    method: str | FixedPointMethod = "anderson",
    tol: float = 1e-4,
    max_iter: int = 50,
    norm_floor: float = NORM_FLOOR,
) -> FixedPointResult:
    """Solve z = f(z) for a batch of independent problems.

    Arguments:
        f: maps a tensor of the shape of ``z0`` (batch first) to one of the same shape, each
            sample on its own.
        z0: the initial guess, (batch, ...).
        method: ``"anderson"``, ``"broyden"``, ``"picard"`` or a ``FixedPointMethod``.
        tol: stop when every sample's relative residual ||f(z) - z|| / max(||f(z)||,
            norm_floor) is at most this (0: run all ``max_iter`` evaluations); that is,
            ||f(z) - z|| <= tol * ||f(z)||, or tol * norm_floor where ||f(z)|| is below
            ``norm_floor`` (a fixed point at 0).
        max_iter: the most evaluations of f.
        norm_floor: the smallest norm the residual is relative to, positive (default 1e-6).

    A sample whose residual becomes NaN or infinite (a NaN in its input, f diverging there)
    does not stop the others: they go on until every finite sample meets ``tol`` (or
    ``max_iter``), and that sample keeps its best finite iterate (``z0`` if it had none, with
    residual infinity).

    Returns:
        A ``FixedPointResult``: each sample's best iterate, its residual, the number of
        evaluations and the residual history. Not converging is not an error here:
        ``converged`` says it, and callers decide.

    Raises:
        ValueError: a ``tol`` that is not a finite non-negative number, ``max_iter`` not an
            integer >= 1 (a bool is not one), a ``norm_floor`` not positive and finite, an
            unknown method name, a ``z0`` that is not floating point or complex, or f
            changing the shape.
        TypeError: a ``z0`` that is not a tensor, or a ``method`` that is neither a name nor
            a ``FixedPointMethod``.
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _FIXED_POINT_OUTSIDE_DYNAMO(locals())
    if not isinstance(z0, torch.Tensor):
        raise TypeError(
            f"z0 must be a tensor (batch, ...), got {type(z0).__name__}; "
            "convert it, e.g. torch.as_tensor(z0)"
        )
    if not z0.is_floating_point() and not z0.is_complex():
        raise ValueError(
            f"z0 must be floating point or complex, got {z0.dtype} (convert it, e.g. z0.double())"
        )
    if not (is_real(tol) and tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")
    max_iter = count("max_iter", max_iter)  # an integer, not a bool
    if not (is_real(norm_floor) and math.isfinite(norm_floor) and norm_floor > 0):
        raise ValueError(
            f"norm_floor must be a positive finite number (the smallest ||f(z)|| a residual "
            f"is relative to, e.g. 1e-6), got {norm_floor!r}"
        )
    solver = fixed_point_method(method)
    solver.reset()
    shape = z0.shape
    batch = shape[0] if z0.ndim else 1

    def evaluate(z: torch.Tensor) -> torch.Tensor:
        out = f(z.reshape(shape))
        if out.shape != shape:
            raise ValueError(f"f must return the shape of z {tuple(shape)}, got {tuple(out.shape)}")
        return out.reshape(z.shape)

    z = z0.reshape(batch, math.prod(shape[1:]) if z0.ndim else 1)
    if batch == 0:  # no problems: nothing to evaluate
        empty = torch.zeros(0, dtype=_real(z).dtype, device=z.device)
        return FixedPointResult(z0, 0, empty, [], True, empty.long())
    fz = evaluate(z)
    best, best_residual = z, torch.full((batch,), math.inf, dtype=_real(z).dtype, device=z.device)
    history: list[float] = []
    sample_iterations = torch.full((batch,), -1, dtype=torch.long, device=z.device)
    iterations = 1
    while True:
        residual = relative_residual(z.detach(), fz.detach(), norm_floor)
        first = (sample_iterations < 0) & (residual <= tol)
        sample_iterations = torch.where(first, iterations, sample_iterations)
        improved = residual < best_residual  # NaN is never an improvement
        best = torch.where(improved[:, None], z, best)
        best_residual = torch.where(improved, residual, best_residual)
        history.append(float(residual.max()))  # (NaN where a sample's is)
        # a sample gone NaN or infinite stays so and leaves the others to go on: the loop
        # stops when every finite sample has converged, or no sample is finite
        finite = torch.isfinite(residual)
        worst = float(torch.where(finite, residual, 0.0).max())
        if worst <= tol or iterations >= max_iter or not bool(finite.any()):
            break
        z = solver.propose(z, fz)
        fz = evaluate(z)
        iterations += 1
    converged = float(best_residual.max()) <= tol
    return FixedPointResult(
        best.reshape(shape), iterations, best_residual, history, converged, sample_iterations
    )


_FIXED_POINT_OUTSIDE_DYNAMO = outside_dynamo(fixed_point)


def _real(z: torch.Tensor) -> torch.Tensor:
    return z.real if z.is_complex() else z
