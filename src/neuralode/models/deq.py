"""The deep equilibrium layer z* = f(z*, x), differentiated by the implicit function theorem,
and a classifier built on it.

Forward, a fixed-point solver finds z* without recording a graph. The layer then evaluates
z = f(z*, x) once with autograd on (z* a leaf of that graph) and returns it through an
identity whose backward replaces the gradient a of the output by the solution g of the
adjoint equation

    g = (df/dz)^T g + a        (i.e. (I - df/dz)^T g = a, at z*),

so that backpropagating g through that one evaluation of f gives the implicit function
theorem's gradients with respect to x and f's parameters (Bai et al. 2019; the implicit-layers
tutorial of Kolter, Duvenaud and Johnson). The vector-Jacobian products (df/dz)^T g are taken
on the graph of the same evaluation, so they see the parameters, input and dropout masks of
the forward pass. The adjoint equation is itself a fixed point, solved by the same methods, or
a linear system solved by GMRES (the implementation the implicit ODE solvers use). Memory does
not grow with the number of iterations: only the last evaluation of f is recorded. The
gradient is a first derivative: differentiating it again raises an error.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.functional import relu

from .._args import count, is_real, probability, real
from .._autograd import FirstDerivativeOnly
from .._term import _DTYPE_MISMATCH
from ..implicit.fixed_point import FIXED_POINT_METHODS, FixedPointResult, fixed_point
from ..solvers._newton import gmres
from .classifiers import downsampling, head
from .dynamics import group_norm
from .regularisers import (
    JacobianFrobenius,
    Point,
    Regulariser,
    detached_state,
    regulariser_list,
)

GRADIENTS = ("implicit", "unrolled")
BACKWARD_METHODS = (*FIXED_POINT_METHODS, "gmres")
ON_FAILURE = ("warn", "raise", "ignore")


class ConvergenceError(RuntimeError):
    """A fixed-point solve of a ``DEQ`` did not reach its tolerance (``on_failure="raise"``)."""


class ConvergenceWarning(RuntimeWarning):
    """A fixed-point solve of a ``DEQ`` did not reach its tolerance (``on_failure="warn"``)."""


@dataclass
class SolveReport:
    """Iterations and final relative residual of one fixed-point solve (forward or backward).

    Attributes:
        iterations: the iterations taken.
        residual: the final relative residual (the largest over the batch).
        converged: whether every sample reached the tolerance.
        history: the relative residual after each iteration (GMRES: the final one only).
        non_finite: the samples whose residual is NaN or infinite (none for GMRES, whose
            residual is the whole batch's).
    """

    iterations: int = 0
    residual: float = 0.0
    converged: bool = True
    history: tuple[float, ...] = ()
    non_finite: tuple[int, ...] = ()

    @classmethod
    def of(cls, result: FixedPointResult) -> SolveReport:
        """The report of a ``fixed_point`` solve.

        Arguments:
            result: the solve's outcome.

        Returns:
            Its ``iterations``, its largest per-sample residual (0.0 for an empty batch),
                ``converged``, its residual history as a tuple and the samples whose
                residual is not finite.
        """
        non_finite = torch.nonzero(~torch.isfinite(result.residual)).flatten().tolist()
        return cls(
            result.iterations,
            result.max_residual,
            result.converged,
            tuple(result.history),
            tuple(non_finite),
        )


class DEQ(nn.Module):
    """A deep equilibrium layer: maps x to the fixed point z* = f(z*, x).

    Arguments:
        f: a module called as ``f(z, x)`` that returns a tensor of ``z``'s shape, each sample
            (first dimension) on its own.
        method: the forward solver, ``"anderson"`` (default), ``"broyden"`` or ``"picard"``
            (plain iteration).
        tol: the forward solver's tolerance on each sample's relative residual
            ||f(z) - z|| / ||f(z)|| (relative to ``fixed_point``'s ``norm_floor``, 1e-6,
            where ||f(z)|| is below it: a fixed point at 0 converges too).
        max_iter: the most evaluations of f forward.
        backward_method: the solver of the adjoint equation: one of the forward methods or
            ``"gmres"``; default: the forward method.
        backward_tol: its tolerance on the relative residual, per sample for the fixed-point
            methods, of the whole batch's linear system for GMRES; default ``tol``.
        backward_max_iter: the most iterations backward, one vector-Jacobian product each
            (GMRES takes one more, to measure its final residual); default ``max_iter``.
        gradient: ``"implicit"`` (implicit function theorem, memory independent of the
            iterations) or ``"unrolled"`` (backpropagation through every iteration of the
            forward solver; memory grows with the iterations: for comparison).
        regularisers: ``JacobianFrobenius`` terms: in training mode, ||df/dz||_F^2 at z*
            (Hutchinson's estimate, Bai et al. 2021) times the weight, averaged over the batch,
            is ``regularisation`` after the forward pass (add it to the loss).
        on_failure: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when a solve does not
            reach its tolerance; warnings and errors quote the residual.
        method_options: keyword arguments of the forward method's class (``Anderson``:
            ``memory``, ``regularisation``, ``damping``; ``Broyden``: ``memory``; ``Picard``:
            ``damping``), also used backward when the backward method is the same.

    After a forward (and backward) pass, ``forward_report`` and ``backward_report`` hold the
    iterations and residuals (``SolveReport``); ``nfe_forward`` counts the evaluations of f
    by the forward solve (the layer evaluates f once more with autograd for its output, and
    once more for a Jacobian penalty) and ``nfe_backward`` the vector-Jacobian products
    backward.

    The implicit gradient is a first derivative: a second derivative through it (a gradient
    of a gradient) raises ``RuntimeError``; ``gradient="unrolled"`` has higher derivatives.

    Raises:
        TypeError: ``f`` not a ``torch.nn.Module``, or ``regularisers`` not a sequence (one
            regulariser goes in a list).
        ValueError: an unknown method, gradient or ``on_failure``; a negative or non-finite
            ``tol`` or ``backward_tol``; a ``max_iter`` or ``backward_max_iter`` that is
            not an integer >= 1 (NumPy's integers are; bools and floats are not);
            ``method_options`` the method does not take; a regulariser other than
            ``JacobianFrobenius``.
    """

    def __init__(
        self,
        f: nn.Module,
        method: str = "anderson",
        tol: float = 1e-4,
        max_iter: int = 50,
        backward_method: str | None = None,
        backward_tol: float | None = None,
        backward_max_iter: int | None = None,
        gradient: str = "implicit",
        regularisers: Sequence[Regulariser] = (),
        on_failure: str = "warn",
        method_options: dict[str, Any] | None = None,
    ):
        super().__init__()
        if not isinstance(f, nn.Module):
            raise TypeError(
                f"f must be a torch.nn.Module called as f(z, x) (the implicit gradient goes to "
                f"its parameters), got {type(f).__name__}: wrap a function in a Module"
            )
        backward_method = method if backward_method is None else backward_method
        for name, value, allowed in (
            ("method", method, tuple(FIXED_POINT_METHODS)),
            ("backward_method", backward_method, BACKWARD_METHODS),
            ("gradient", gradient, GRADIENTS),
            ("on_failure", on_failure, ON_FAILURE),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name, value in (("tol", tol), ("backward_tol", backward_tol)):
            if value is not None and not (is_real(value) and math.isfinite(value) and value >= 0):
                raise ValueError(
                    f"{name} must be a finite non-negative number (a relative residual, e.g. "
                    f"1e-4; 0 runs every iteration), got {value!r}"
                )
        # any integer (NumPy's too), not a bool or a float
        max_iter = count("max_iter", max_iter)
        if backward_max_iter is not None:
            backward_max_iter = count("backward_max_iter", backward_max_iter)
        try:
            FIXED_POINT_METHODS[method](**(method_options or {}))
        except (TypeError, ValueError) as error:
            accepted = ", ".join(inspect.signature(FIXED_POINT_METHODS[method]).parameters)
            raise ValueError(
                f"method_options {method_options!r} do not fit method {method!r} ({error}); "
                f"its options: {accepted or 'none'}"
            ) from error
        regularisers = regulariser_list(regularisers)
        for r in regularisers:
            if not isinstance(r, JacobianFrobenius):
                raise ValueError(
                    f"a DEQ takes JacobianFrobenius regularisers (the Jacobian at the fixed "
                    f"point), got {r!r}"
                )
        self.f = f
        self.method, self.tol, self.max_iter = method, tol, max_iter
        self.backward_method = backward_method
        self.backward_tol = tol if backward_tol is None else backward_tol
        self.backward_max_iter = max_iter if backward_max_iter is None else backward_max_iter
        self.gradient = gradient
        self.regularisers = list(regularisers)
        self.on_failure = on_failure
        self.method_options = dict(method_options or {})
        self.forward_report = SolveReport()
        self.backward_report = SolveReport()
        self.regularisation = torch.zeros(())
        self.regularisation_terms: dict[str, torch.Tensor] = {}

    def __getstate__(self) -> dict:
        """The state for ``copy.deepcopy`` and pickling: the last regularisation detached from
        its graph (a copy after a training step keeps the values, not the graph)."""
        return detached_state(self, ("regularisation", "regularisation_terms"))

    def extra_repr(self) -> str:
        """The solves' settings, shown by ``repr`` and ``print`` beside f.

        Returns:
            The settings as ``name=value`` pairs.
        """
        parts = [f"method={self.method!r}, tol={self.tol}, max_iter={self.max_iter}"]
        if self.method_options:
            parts.append(f"method_options={self.method_options!r}")
        parts.append(
            f"backward_method={self.backward_method!r}, backward_tol={self.backward_tol}, "
            f"backward_max_iter={self.backward_max_iter}, gradient={self.gradient!r}"
        )
        if self.regularisers:
            parts.append(f"regularisers={self.regularisers!r}")
        return ", ".join(parts)

    @property
    def nfe_forward(self) -> int:
        """Evaluations of f by the last forward solve."""
        return self.forward_report.iterations

    @property
    def nfe_backward(self) -> int:
        """Vector-Jacobian products of the last backward solve (GMRES: with the one that
        measures its final residual)."""
        return self.backward_report.iterations

    def _solve(
        self, function: Any, z0: torch.Tensor, method: str, tol: float, max_iter: int
    ) -> FixedPointResult:
        options = self.method_options if method == self.method else {}
        solver = FIXED_POINT_METHODS[method](**options)
        return fixed_point(function, z0, solver, tol, max_iter)

    def _solve_forward(self, x: torch.Tensor, z0: torch.Tensor, guessed: bool) -> FixedPointResult:
        """The forward solve from z0; where z0 is the default guess (zeros shaped like x) and
        f fails on it or returns another shape, the error says to pass z0 (or, for a dtype
        mismatch, to convert the module or x)."""
        first = [guessed]

        def field(z: torch.Tensor) -> torch.Tensor:
            if not first[0]:
                return self.f(z, x)
            first[0] = False
            hint = (
                f"DEQ's default initial guess z0 is zeros shaped like x {tuple(x.shape)}; "
                "where z has another shape, pass z0 (layer(x, z0=torch.zeros(...)))"
            )
            try:
                out = self.f(z, x)
            except RuntimeError as error:
                if _DTYPE_MISMATCH.search(str(error)):  # the shapes are not the cause
                    hint = (
                        f"f(z, x) failed on its first call with x and z in {x.dtype}: its "
                        "tensors (the module's parameters) are probably in another dtype; "
                        f"convert one to the other (layer.to({x.dtype}), or x to the "
                        "parameters' dtype)"
                    )
                raise RuntimeError(f"{error}. {hint}") from error
            if out.shape != z.shape:
                raise ValueError(f"f(z, x) returned shape {tuple(out.shape)}. {hint}")
            return out

        return self._solve(field, z0, self.method, self.tol, self.max_iter)

    def _check(self, report: SolveReport, direction: str, method: str, tol: float) -> None:
        if report.converged or self.on_failure == "ignore":
            return
        message = (
            f"DEQ {direction} solve ({method}) did not converge: relative residual "
            f"{report.residual:.3g} > tol {tol:g} after {report.iterations} iterations; raise "
            "max_iter, loosen tol, try another method, or regularise the Jacobian "
            "(JacobianFrobenius)"
        )
        last = report.history[-1] if report.history else report.residual
        if report.non_finite:
            listed = ", ".join(map(str, report.non_finite[:10]))
            more = len(report.non_finite) - 10
            message = (
                f"DEQ {direction} solve ({method}): the residual of sample(s) {listed}"
                f"{f' and {more} more' if more > 0 else ''} became NaN or infinite (NaN or "
                "infinity in their input or gradient, or f diverging there); the other samples "
                f"are solved as if alone ({report.iterations} iterations)"
            )
        elif not math.isfinite(last):  # (the residual is the best iterate's, finite or not)
            best = (
                f"; the best iterate (relative residual {report.residual:.3g}) is returned"
                if math.isfinite(report.residual)
                else ""
            )
            message = (
                f"DEQ {direction} solve ({method}) diverged: the residual became {last} "
                f"after {report.iterations} iterations{best}; f is not a contraction near the "
                "iterates (regularise the Jacobian, lower the learning rate or change the "
                "method)"
            )
        if self.on_failure == "raise":
            raise ConvergenceError(message)
        warnings.warn(message, ConvergenceWarning, stacklevel=2)

    def forward(self, x: torch.Tensor, z0: torch.Tensor | None = None) -> torch.Tensor:
        """The fixed point z* = f(z*, x).

        Arguments:
            x: the input.
            z0: the initial guess (default zeros shaped like ``x``).

        Returns:
            z*, with gradients with respect to ``x`` and f's parameters.

        Raises:
            ConvergenceError: a solve did not converge and ``on_failure="raise"``.
            RuntimeError: called inside a ``torch.func`` transform with the implicit gradient.
        """
        guessed = z0 is None
        z0 = torch.zeros_like(x) if z0 is None else z0
        for module in self.f.modules():
            if isinstance(module, VariationalDropout):
                module.new_solve()
        self.backward_report = SolveReport()
        if self.gradient == "unrolled":
            result = self._solve_forward(x, z0, guessed)
            self.forward_report = SolveReport.of(result)
            self._check(self.forward_report, "forward", self.method, self.tol)
            self._regularise(result.z, x)
            return result.z
        with torch.no_grad():
            result = self._solve_forward(x, z0, guessed)
        self.forward_report = SolveReport.of(result)
        self._check(self.forward_report, "forward", self.method, self.tol)
        z_star = result.z.detach()
        if not torch.is_grad_enabled():
            self.regularisation, self.regularisation_terms = z_star.new_zeros(()), {}
            return self.f(z_star, x)
        if not (x.requires_grad or any(p.requires_grad for p in self.f.parameters())):
            # a frozen layer: its output needs no gradient (no adjoint solve in a backward
            # pass through it) unless f reaches other tensors that require one
            z = self.f(z_star, x)
            if not z.requires_grad:
                self.regularisation, self.regularisation_terms = z_star.new_zeros(()), {}
                return z
        # One evaluation with autograd: the path to x and the parameters, and (z* a leaf of
        # it) the adjoint's vector-Jacobian products in z.
        try:
            z_leaf = z_star.requires_grad_(True)
        except RuntimeError as error:  # inside a torch.func transform
            raise RuntimeError(
                "DEQ: the implicit gradient runs on torch.autograd (z* is a leaf of autograd's "
                "graph) and does not support torch.func transforms (grad, vjp, jacrev, "
                "hessian); differentiate with torch.autograd.grad or loss.backward(), or use "
                'gradient="unrolled"'
            ) from error
        z = self.f(z_leaf, x)
        self._regularise(z_star, x)
        if not z.requires_grad:
            return z
        return _ImplicitGradient.apply(z, lambda grad: self._adjoint(z_leaf, z, grad))

    def _regularise(self, z: torch.Tensor, x: torch.Tensor) -> None:
        """``regularisation``: the weighted Jacobian penalties at z, averaged over the batch.

        f is evaluated once more for them: the backward pass frees the graph of this
        evaluation while differentiating the penalty, and the adjoint needs its own.
        """
        self.regularisation, self.regularisation_terms = z.new_zeros(()), {}
        if not self.regularisers or not self.training or not torch.is_grad_enabled():
            return
        z = z.detach().requires_grad_(True)
        f_z = self.f(z, x)
        point = Point(t=z.new_zeros(()), y=z, f=f_z, create_graph=True)
        for regulariser in self.regularisers:
            rate = regulariser.rate(point, regulariser.draw_noise(z)).mean()
            self.regularisation_terms[regulariser.name] = rate.detach()
            self.regularisation = self.regularisation + regulariser.weight * rate

    def _adjoint(self, z_leaf: torch.Tensor, z: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """Solve g = (df/dz)^T g + grad at z* (the backward of the layer's output).

        ``z`` = f(``z_leaf``, x) is the forward pass's evaluation with its graph; the
        vector-Jacobian products run on that graph (kept for the backward pass through it
        that follows).
        """

        def vjp(g: torch.Tensor) -> torch.Tensor:
            (out,) = torch.autograd.grad(z, z_leaf, g, retain_graph=True, allow_unused=True)
            return torch.zeros_like(g) if out is None else out  # None: f ignores z

        method, tol = self.backward_method, self.backward_tol
        if method == "gmres":
            count = [0]

            def matvec(g: torch.Tensor) -> torch.Tensor:
                count[0] += 1
                return g - vjp(g)

            g = gmres(matvec, grad, tol, self.backward_max_iter)
            # GMRES controls the residual of the whole batch's system
            worst = float(torch.linalg.vector_norm(matvec(g) - grad)) / max(
                float(torch.linalg.vector_norm(grad)), 1e-30
            )
            report = SolveReport(count[0], worst, worst <= tol, (worst,))
        else:
            # The adjoint equation is linear in grad: each sample's right-hand side is scaled
            # to unit norm for the solve and its solution scaled back, so the residual test is
            # relative at every scale of the loss (fixed_point's norm_floor, meant for fixed
            # points at 0, would make it absolute for per-sample gradients below 1e-6 and stop
            # short of the tolerance). A sample whose gradient is 0 keeps the solution 0.
            batch = grad.shape[0] if grad.ndim else 1
            rows = grad.reshape(batch, math.prod(grad.shape[1:]))  # (an empty batch too)
            norms = torch.linalg.vector_norm(rows, dim=1)
            scale = norms.clamp_min(torch.finfo(norms.dtype).tiny)
            scale = scale.reshape(-1, *(1,) * (grad.ndim - 1)) if grad.ndim else scale[0]
            unit = grad / scale
            result = self._solve(lambda g: vjp(g) + unit, unit, method, tol, self.backward_max_iter)
            g, report = result.z * scale, SolveReport.of(result)
        self.backward_report = report
        self._check(report, "backward", method, tol)
        return g


class _ImplicitGradient(torch.autograd.Function):
    """The identity on z = f(z*, x), whose backward replaces the output's gradient a by the
    adjoint equation's solution g (``solve``). The output's own gradient stays a (what
    ``torch.autograd.grad`` with respect to the layer's output returns)."""

    @staticmethod
    def forward(z: torch.Tensor, solve: Any) -> torch.Tensor:
        # an alias of z, not a view of it: in-place operations on the output stay allowed
        return z.detach()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        # attributes, not saved tensors: the alias's in-place updates are autograd's to judge
        ctx.z, ctx.solve = inputs

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        with torch.no_grad():
            g = ctx.solve(grad.detach())
        if torch.is_grad_enabled():  # create_graph=True: the solve's result is a constant
            g = FirstDerivativeOnly.apply(g, ctx.z, _SECOND_DERIVATIVES)
        return g, None


# a second derivative through the implicit gradient raises with this: g is solved without a
# graph, so it would silently miss g's dependence on x and the parameters
_SECOND_DERIVATIVES = (
    "DEQ: second derivatives (a gradient of a gradient, torch.autograd.grad with "
    "create_graph=True then differentiated, gradgradcheck) through the implicit "
    "gradient are not supported: the adjoint equation is solved without a graph. Use "
    'gradient="unrolled" for higher derivatives'
)


class VariationalDropout(nn.Module):
    """Dropout with one mask per fixed-point solve (Bai et al. 2019's variational dropout).

    An ordinary dropout layer draws a new mask at every application of f, so f would change
    from one iteration to the next and have no fixed point. This one draws its mask at the
    first application after ``new_solve`` (which ``DEQ`` calls before every forward solve) and
    keeps it for the iterations, the evaluation with autograd, the Jacobian penalty and the
    adjoint's vector-Jacobian products. The mask zeroes whole entries of the tensor with
    probability ``p`` and scales the rest by 1 / (1 - p); in evaluation mode it is the
    identity.

    Arguments:
        p: the probability of zeroing an entry, in [0, 1).

    Raises:
        ValueError: ``p`` not a number in [0, 1).
    """

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = probability("p", p)
        self._mask: torch.Tensor | None = None

    def new_solve(self) -> None:
        """Forget the mask: the next application in training mode draws a new one."""
        self._mask = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Apply the mask of the current solve.

        In training mode with ``p > 0``, a mask of ``h``'s shape is drawn when there is none
        (after ``new_solve``) or the held one has another shape, and kept for later calls.

        Arguments:
            h: the activation, any shape.

        Returns:
            ``h`` times the mask (entries 0 or 1 / (1 - p)), of ``h``'s shape; ``h`` itself
                in evaluation mode or with ``p = 0``.
        """
        if not self.training or self.p == 0:
            return h
        if self._mask is None or self._mask.shape != h.shape:
            keep = torch.empty_like(h, requires_grad=False).bernoulli_(1 - self.p)
            self._mask = keep / (1 - self.p)
        return h * self._mask


class EquilibriumCell(nn.Module):
    """f(z, x) = norm(relu(z + norm(x + conv(drop(norm(relu(conv(z)))))))): a residual block
    that takes the input x at every application (the implicit-layers tutorial's cell).

    The convolutions start small (std 0.01), so that f is a contraction in z at
    initialisation and the fixed point exists; the Jacobian regulariser keeps it so.

    Arguments:
        channels: the feature channels.
        init_std: the standard deviation of the convolutions' initial weights (small: a
            contraction at the start).
        dropout: probability of the ``VariationalDropout`` on the inner activation (0: none).

    Raises:
        ValueError: ``channels`` not an integer >= 1, ``init_std`` not a finite number
            >= 0, or ``dropout`` not a number in [0, 1).
    """

    def __init__(self, channels: int = 64, init_std: float = 0.01, dropout: float = 0.0):
        super().__init__()
        channels = count("channels", channels)
        init_std = real("init_std", init_std, "a finite number >= 0", lambda x: 0 <= x < math.inf)
        dropout = probability("dropout", dropout)
        self.conv1 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm1, self.norm2, self.norm3 = (group_norm(channels) for _ in range(3))
        self.drop = VariationalDropout(dropout)
        for conv in (self.conv1, self.conv2):
            nn.init.normal_(conv.weight, 0.0, init_std)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """One application of the cell, f(z, x).

        Arguments:
            z: the current state, (batch, channels, height, width).
            x: the input injected at every application, the shape of ``z``.

        Returns:
            f(z, x), the shape of ``z``.
        """
        inner = self.drop(self.norm1(relu(self.conv1(z))))
        return self.norm3(relu(z + self.norm2(x + self.conv2(inner))))


class DEQNet(nn.Module):
    """Downsampling, a ``DEQ`` of an ``EquilibriumCell`` on ``channels`` channels, the head.

    Nearly the ODE-Net's parameter count (0.207M against its 0.208M at 64 channels: the
    cell's convolutions take no time channel); ``deq`` is the layer
    (its ``nfe_forward`` / ``nfe_backward``, reports and ``regularisation``).

    Arguments:
        channels: the feature channels.
        classes: the number of classes.
        method: the forward fixed-point method (``"anderson"``, ``"broyden"``, ``"picard"``).
        tol: the relative residual the forward solve stops at.
        max_iter: the most forward iterations.
        backward_method: the method of the backward (adjoint) solve (default: ``method``).
        gradient: ``"implicit"`` (implicit-function gradient) or ``"unrolled"``
            (backpropagation through every iteration).
        regularisers: go to the ``DEQ`` (e.g. a Jacobian penalty).
        pool: ``"max"`` or ``"avg"`` pooling in the head.
        dropout: the ``EquilibriumCell``'s variational dropout probability.

    Raises:
        ValueError: ``channels`` or ``classes`` not an integer >= 1, ``dropout`` not a number
            in [0, 1), or a bad option of the ``DEQ`` or the head.
    """

    def __init__(
        self,
        channels: int = 64,
        classes: int = 10,
        method: str = "anderson",
        tol: float = 1e-3,
        max_iter: int = 30,
        backward_method: str | None = None,
        gradient: str = "implicit",
        regularisers: Sequence[Regulariser] = (),
        pool: str = "max",
        dropout: float = 0.0,
    ):
        super().__init__()
        channels, classes = count("channels", channels), count("classes", classes)
        self.features = downsampling(channels)
        self.deq = DEQ(
            EquilibriumCell(channels, dropout=dropout),
            method=method,
            tol=tol,
            max_iter=max_iter,
            backward_method=backward_method,
            gradient=gradient,
            regularisers=regularisers,
        )
        self.head = head(channels, classes, pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Classify a batch of images: downsample, solve for the equilibrium, apply the head.

        Arguments:
            x: single-channel images, (batch, 1, height, width) (28 x 28 for MNIST).

        Returns:
            The logits, (batch, classes).

        Warns:
            ConvergenceWarning: a solve of ``deq`` (forward, or backward later) did not reach
                its tolerance (the ``DEQ`` is built with ``on_failure="warn"``).
        """
        return self.head(self.deq(self.features(x)))
