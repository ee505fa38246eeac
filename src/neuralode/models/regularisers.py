"""Regularisers of neural ODE dynamics, integrated along the trajectory.

Each regulariser defines an integrand ``rate(t, y)`` (one value per sample) whose integral
over the solve is added to the loss. ``ODEBlock`` integrates them by augmenting the state to
``(y, r_1, ..., r_k)`` with ``dr_i/dt = rate_i(t, y)``, so they work with every gradient
strategy (including the O(1)-memory adjoint) and every solver of ``METHODS``; not with the
partitioned methods (which would read that tuple as a pair (q, p)) or a hypersolver (whose
correction takes y alone), which ``ODEBlock`` refuses.

- ``KineticEnergy``: ||f(t, y)||^2 (Finlay et al. 2020, "How to train your neural ODE").
- ``JacobianFrobenius``: ||df/dy||_F^2, estimated by Hutchinson's trick as ||eps^T df/dy||^2
  with one vector-Jacobian product; ``eps`` (Gaussian or Rademacher) is drawn once per solve.
- ``DerivativePenalty``: ||d^K y/dt^K||^2 (Kelly et al. 2020, "Learning differential equations
  that are easy to solve"), computed exactly by nested Jacobian-vector products.
- ``RandomEndTime``: STEER (Ghosh et al. 2020, "STEER: Simple temporal regularization for
  neural ODEs"), no integrand: each training solve ends at a random time near t1.

States are ``(batch, ...)`` (``ODEBlock`` hands a 1-D state, one sample, to the integrands
as a batch of one): the integrands sum over every dimension but the first and the
dynamics must treat samples independently (no BatchNorm across the batch), so that
``df/dy`` is block diagonal and one vector-Jacobian product gives every sample's estimate.
"""

from __future__ import annotations

import abc
import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .._args import count, flag, real


@dataclass
class Point:
    """Where an integrand is evaluated: time, state and f(t, y) as a differentiable function
    of ``t`` and ``y`` (when some regulariser needs derivatives of f).

    ``create_graph`` tells whether the integrands must themselves be differentiable (training
    with direct or checkpointed gradients, the adjoint's backward pass).
    """

    t: torch.Tensor
    y: torch.Tensor
    f: torch.Tensor
    create_graph: bool


class Regulariser(abc.ABC):
    """An integrand ``rate(point, noise) -> (batch,)``; ``weight`` multiplies its integral.

    Arguments:
        weight: multiplies the integral in the loss.

    Raises:
        ValueError: a negative or non-finite weight.
    """

    #: short name used for logging (``ODEBlock.regularisation_terms``)
    name: str = "regulariser"
    #: whether ``rate`` differentiates f with respect to ``t`` or ``y``
    needs_derivatives: bool = False

    def __init__(self, weight: float = 1.0):
        rule = "a finite non-negative number"
        self.weight = real("weight", weight, rule, lambda x: 0 <= x < math.inf)

    def draw_noise(self, y0: torch.Tensor) -> torch.Tensor | None:
        """Random vectors used by a stochastic estimator, drawn once per solve.

        Arguments:
            y0: the initial state, (batch, ...).

        Returns:
            The noise, shaped like ``y0``; by default ``None`` (no estimator).
        """
        return None

    @abc.abstractmethod
    def rate(self, point: Point, noise: torch.Tensor | None) -> torch.Tensor:
        """The integrand at ``point``.

        Arguments:
            point: where the integrand is evaluated: ``t``, ``y`` (batch, ...), ``f(t, y)``
                and whether the result must be differentiable (``create_graph``).
            noise: the draw of ``draw_noise`` for this solve, or ``None``.

        Returns:
            One value per sample, (batch,).
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}(weight={self.weight})"


@contextlib.contextmanager
def derivatives_enabled() -> Iterator[bool]:
    """Autograd on for derivatives of f taken inside a solve, under ``torch.no_grad()`` and
    ``torch.inference_mode()`` alike (``enable_grad`` alone does not leave inference mode).

    Yields:
        Whether inference mode was on: then the tensors made under it (the state, the time,
        the noise) must be cloned before they enter the graph (``outside_inference``), since
        autograd cannot save inference tensors for backward.
    """
    if torch.is_inference_mode_enabled():
        with torch.inference_mode(False), torch.enable_grad():
            yield True
    else:
        with torch.enable_grad():
            yield False


def outside_inference(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """A copy of an inference tensor usable by autograd (inside ``derivatives_enabled``'s
    block, out of inference mode), or ``tensor`` itself when it is none (or ``None``)."""
    if tensor is not None and tensor.is_inference():
        return tensor.clone()
    return tensor


def regulariser_list(regularisers: object) -> list:
    """``regularisers`` as a list, or a TypeError naming the fix when it is one regulariser
    (or anything else that is not a sequence) rather than a sequence of them.

    Arguments:
        regularisers: the ``regularisers`` argument of a model.

    Returns:
        Its items, a new list (their types are the caller's to check).

    Raises:
        TypeError: ``regularisers`` is not a list, tuple or other sequence.
    """
    if isinstance(regularisers, (Regulariser, str, bytes)) or not isinstance(
        regularisers, Sequence
    ):
        raise TypeError(
            f"regularisers must be a sequence of Regulariser instances, got {regularisers!r}; "
            f"put a single one in a list: regularisers=[{regularisers!r}]"
        )
    return list(regularisers)


def detached_state(module: torch.nn.Module, names: tuple[str, ...]) -> dict:
    """``module``'s ``__dict__`` for ``copy.deepcopy`` and pickling, with the tensors held in
    the attributes ``names`` (a tensor, or a dict of tensors) detached from their graph.

    A forward pass in training mode leaves the regularisation there as part of its graph, and
    ``copy.deepcopy`` refuses tensors that are not graph leaves: without this a model could not
    be copied after a training step (a snapshot of the best weights, an EMA copy). The copy
    holds the same values, without the graph.
    """
    state = torch.nn.Module.__getstate__(module)  # a copy of __dict__, as torch's
    for name in names:
        value = state.get(name)
        if isinstance(value, torch.Tensor):
            state[name] = value.detach()
        elif isinstance(value, dict):
            state[name] = {
                k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in value.items()
            }
    return state


def _per_sample_sum_of_squares(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).reshape(x.shape[0], math.prod(x.shape[1:])).sum(1)  # (an empty batch too)


class KineticEnergy(Regulariser):
    """||f(t, y)||^2 per sample: straight trajectories at constant speed.

    Arguments:
        weight: multiplies the integral in the loss.

    Raises:
        ValueError: a negative or non-finite weight.
    """

    name = "kinetic"

    def rate(self, point: Point, noise: torch.Tensor | None) -> torch.Tensor:
        """||f(t, y)||^2 per sample (the kinetic energy's integrand).

        Arguments:
            point: where the integrand is evaluated: ``t``, ``y`` (batch, ...), ``f(t, y)``
                and whether the result must be differentiable (``create_graph``).
            noise: unused.

        Returns:
            ||f||^2 summed over every dimension but the first, (batch,).
        """
        return _per_sample_sum_of_squares(point.f)


NOISES = ("gaussian", "rademacher")


class JacobianFrobenius(Regulariser):
    """||df/dy||_F^2 per sample, estimated without bias as ||eps^T df/dy||^2, E[eps eps^T] = I.

    ``noise`` is ``"gaussian"`` or ``"rademacher"`` (lower variance); one draw per solve, so
    the integrand is a smooth function of time that adaptive solvers can integrate.

    Arguments:
        weight: multiplies the integral in the loss.
        noise: ``"gaussian"`` or ``"rademacher"``.

    Raises:
        ValueError: an unknown noise.
    """

    name = "jacobian"
    needs_derivatives = True

    def __init__(self, weight: float = 1.0, noise: str = "gaussian"):
        super().__init__(weight)
        if noise not in NOISES:
            raise ValueError(f"noise must be one of {NOISES}, got {noise!r}")
        self.noise = noise

    def draw_noise(self, y0: torch.Tensor) -> torch.Tensor:
        """Hutchinson's probe vectors, drawn once per solve (Gaussian or Rademacher).

        Arguments:
            y0: the initial state, (batch, ...).

        Returns:
            eps, shaped like ``y0``: standard normal, or +-1 with equal probability.
        """
        if self.noise == "gaussian":
            return torch.randn_like(y0)
        return torch.randint_like(y0, 0, 2) * 2 - 1

    def rate(self, point: Point, noise: torch.Tensor | None) -> torch.Tensor:
        """||eps^T df/dy||^2 per sample: Hutchinson's estimate of ||df/dy||_F^2.

        Arguments:
            point: where the integrand is evaluated: ``t``, ``y`` (batch, ...), ``f(t, y)``
                and whether the result must be differentiable (``create_graph``).
            noise: eps from ``draw_noise``, shaped like ``y``.

        Returns:
            The estimate, (batch,); zeros when f does not depend on y.
        """
        assert noise is not None
        (eps_jacobian,) = torch.autograd.grad(
            point.f,
            point.y,
            noise,
            create_graph=point.create_graph,
            retain_graph=True,  # other regularisers may differentiate f again
            allow_unused=True,
        )
        if eps_jacobian is None:  # f does not depend on y
            return point.f.new_zeros(point.f.shape[0])
        return _per_sample_sum_of_squares(eps_jacobian)

    def __repr__(self) -> str:
        return f"JacobianFrobenius(weight={self.weight}, noise={self.noise!r})"


class DerivativePenalty(Regulariser):
    """||d^K y/dt^K||^2 per sample, exact, for ``order`` K >= 2 (K = 1 is the kinetic energy).

    Along a solution, d^(k+1) y/dt^(k+1) = d/dt g_k(t, y(t)) = dg_k/dy f + dg_k/dt with
    g_1 = f; each Jacobian-vector product is two vector-Jacobian products (the "double-vjp"
    trick), reusing the one evaluation of f, so it works wherever double backward does.

    Arguments:
        order: K, at least 2.
        weight: multiplies the integral in the loss.

    Raises:
        ValueError: ``order`` is not an integer of at least 2.
    """

    needs_derivatives = True

    def __init__(self, order: int = 2, weight: float = 1.0):
        super().__init__(weight)
        self.order = count("order", order, minimum=2)
        self.name = f"derivative{order}"

    def rate(self, point: Point, noise: torch.Tensor | None) -> torch.Tensor:
        """||d^K y / dt^K||^2 per sample, the K-th total time derivative along the flow.

        Arguments:
            point: where the integrand is evaluated: ``t``, ``y`` (batch, ...), ``f(t, y)``
                and whether the result must be differentiable (``create_graph``).
            noise: unused.

        Returns:
            The squared norm summed over every dimension but the first, (batch,).
        """
        return _per_sample_sum_of_squares(time_derivative(point, self.order))

    def __repr__(self) -> str:
        return f"DerivativePenalty(order={self.order}, weight={self.weight})"


def time_derivative(point: Point, order: int) -> torch.Tensor:
    """d^order y/dt^order at ``point`` as a function of (t, y) in the autograd graph."""
    t, y, f = point.t, point.y, point.f
    g = f
    for _ in range(order - 1):
        g = _total_derivative(g, t, y, f)
    return g


def _total_derivative(
    g: torch.Tensor, t: torch.Tensor, y: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """dg/dy f + dg/dt, as the gradient in u of <u^T dg/dy, f> + u^T dg/dt (linear in u)."""
    if not g.requires_grad:  # g is constant in (t, y)
        return torch.zeros_like(g)
    u = torch.zeros_like(g, requires_grad=True)
    u_dy, u_dt = torch.autograd.grad(g, (y, t), u, create_graph=True, allow_unused=True)
    h = g.new_zeros(())
    if u_dy is not None:
        h = h + (u_dy * f).sum()
    if u_dt is not None:
        h = h + u_dt
    if not h.requires_grad:
        return torch.zeros_like(g)
    (derivative,) = torch.autograd.grad(h, u, create_graph=True, allow_unused=True)
    return torch.zeros_like(g) if derivative is None else derivative


class RandomEndTime:
    """STEER (Ghosh et al. 2020): ``ODEBlock(..., end_time=RandomEndTime(b))`` ends each
    training solve at a random time drawn uniformly from [t1 - b, t1 + b).

    It adds no term to the loss: training on flows of random lengths alone makes the learned
    dynamics cheaper to solve. In eval mode the block solves to the nominal t1. The end time is
    sampled, not learned: no gradient flows to it. The draws come from torch's global CPU
    random number generator (``torch.rand``, float64, whatever the state's device), so
    ``torch.manual_seed`` reproduces them and restoring ``torch.get_rng_state()`` (as the
    trainer's checkpoints do) resumes them.

    Arguments:
        spread: b, the half-width of the interval of end times; ``ODEBlock`` requires
            0 <= b < |t1 - t0|, so every end time lies on t1's side of t0. 0 solves to t1.
        per_sample: ``False`` (the paper's): one end time for the whole batch per forward
            pass; ``True``: one per sample (dimension 0 of the state), all solved together in
            per-sample mode (``solve(..., per_sample=True)``: each sample takes the steps it
            would take alone, and the dynamics receive ``t`` as a (batch,) tensor). Per
            sample needs an explicit Runge-Kutta method, the ``"direct"`` or ``"adjoint"``
            gradient, and no regularisers.

    Raises:
        ValueError: a negative or non-finite ``spread``.
        TypeError: ``per_sample`` not a bool.
    """

    def __init__(self, spread: float, per_sample: bool = False):
        rule = "a finite non-negative number"
        self.spread = real("spread", spread, rule, lambda x: 0 <= x < math.inf)
        self.per_sample = flag("per_sample", per_sample)

    def draw(self, t1: float, batch: int = 1) -> torch.Tensor:
        """End times drawn uniformly from [t1 - spread, t1 + spread).

        Arguments:
            t1: the nominal end time.
            batch: the number of samples (used with ``per_sample``).

        Returns:
            A float64 CPU tensor: one end time, 0-dim, or with ``per_sample`` one per sample,
                (batch,). With ``spread`` 0 every end time is ``t1`` and nothing is drawn.
        """
        shape = (batch,) if self.per_sample else ()
        if self.spread == 0:
            return torch.full(shape, t1, dtype=torch.float64)
        u = torch.rand(shape, dtype=torch.float64)
        return t1 + self.spread * (2 * u - 1)

    def __repr__(self) -> str:
        if self.per_sample:
            return f"RandomEndTime(spread={self.spread}, per_sample=True)"
        return f"RandomEndTime(spread={self.spread})"


class RegularisedDynamics(torch.nn.Module):
    """f of the augmented state ``(y, r_1, ..., r_k)``: ``(f(t, y), rate_1, ..., rate_k)``.

    An ``nn.Module`` holding the user's dynamics, so gradient strategies find its parameters.
    ``noises`` are the per-solve random vectors of each regulariser (or None), shaped like the
    integrands' ``y``: (batch, ...), or (1, n) for a 1-D state ``y`` (one sample), whose
    rates are then (1,).
    """

    def __init__(
        self,
        dynamics: torch.nn.Module,
        regularisers: list[Regulariser],
        noises: list[torch.Tensor | None],
    ):
        super().__init__()
        self.dynamics = dynamics
        self.regularisers = regularisers
        self.noises = noises
        self.needs_derivatives = any(r.needs_derivatives for r in regularisers)

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple:
        y = state[0]
        # a 1-D state is one sample: the integrands see it as a batch of one, (1, n), while
        # the dynamics see the state as it is
        one = y.ndim == 1
        create_graph = torch.is_grad_enabled()
        if not self.needs_derivatives:
            f = self.dynamics(t, y)
            point = Point(t, y[None] if one else y, f[None] if one else f, create_graph)
            return (f, *(r.rate(point, None) for r in self.regularisers))
        with derivatives_enabled():
            t = outside_inference(t).detach().requires_grad_(True)
            if not (create_graph and y.requires_grad):
                # a fresh leaf: also needed for views taken under no_grad, which claim to
                # require grad but are not connected to f's graph
                y = outside_inference(y).detach().requires_grad_(True)
            if one:  # f of the batch of one, so that derivatives of f are taken in it
                batch = y[None]
                f = self.dynamics(t, batch[0])
                point = Point(t, batch, f[None], create_graph)
            else:
                f = self.dynamics(t, y)
                point = Point(t, y, f, create_graph)
            noises = [outside_inference(e) for e in self.noises]
            rates = [r.rate(point, e) for r, e in zip(self.regularisers, noises)]
        if not create_graph:
            return (f.detach(), *(r.detach() for r in rates))
        return (f, *rates)
