"""``cdeint``: a controlled differential equation solved as the ODE it drives (torchcde's).

A CDE z_t = z_{t0} + int_{t0}^t f(s, z_s) dX_s with a differentiable control X (a spline of
the data, ``interpolation``) is the ODE dz/dt = f(t, z) dX/dt(t), solved by ``odeint`` or
``odeint_adjoint`` (the torchdiffeq façade over the one engine), or by ``sdeint`` with a zero
diffusion (``backend="torchsde"``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from .._graph_break import outside_dynamo
from ..compat import odeint, odeint_adjoint

_BACKENDS = ("torchdiffeq", "torchsde")


def _check_tensor(derivative: torch.Tensor, z0: torch.Tensor) -> None:
    if derivative.shape[:-1] != z0.shape[:-1]:
        raise ValueError(
            f"X.derivative(t) has shape {tuple(derivative.shape)} (batch dimensions "
            f"{tuple(derivative.shape[:-1])}), but z0 has shape {tuple(z0.shape)} (batch "
            f"dimensions {tuple(z0.shape[:-1])}): the control's batch dimensions must be z0's"
        )


def _check_field(field: torch.Tensor, derivative: torch.Tensor, z0: torch.Tensor) -> None:
    _check_tensor(derivative, z0)
    if field.dim() < 2 or field.shape[:-2] != z0.shape[:-1]:
        raise ValueError(
            f"func(t, z) returned shape {tuple(field.shape)}, but z0 has shape "
            f"{tuple(z0.shape)}: func must return (..., hidden_channels, input_channels) with "
            "z0's batch dimensions first"
        )
    if field.size(-2) != z0.size(-1):
        raise ValueError(
            f"func(t, z) returned shape {tuple(field.shape)}: {field.size(-2)} hidden channels, "
            f"but z0 has {z0.size(-1)} (shape {tuple(z0.shape)})"
        )
    if field.size(-1) != derivative.size(-1):
        raise ValueError(
            f"func(t, z) returned shape {tuple(field.shape)}: {field.size(-1)} input channels, "
            f"but X.derivative(t) has {derivative.size(-1)} (shape {tuple(derivative.shape)})"
        )


def _check_prod(product: torch.Tensor, derivative: torch.Tensor, z0: torch.Tensor) -> None:
    _check_tensor(derivative, z0)
    if product.shape != z0.shape:
        raise ValueError(
            f"func.prod(t, z, dXdt) returned shape {tuple(product.shape)}, but z0 has shape "
            f"{tuple(z0.shape)}: it must return f(t, z) dX/dt, shaped as z"
        )


def _derivative(X: Any, t: torch.Tensor, per_sample: bool) -> Any:
    """dX/dt at t: one time for every series, or (per sample) series i at t[i]."""
    return X.derivative_rows(t) if per_sample else X.derivative(t)


def _check(X: Any, func: Any, z0: Any, t: torch.Tensor, per_sample: bool) -> tuple[bool, bool]:
    """Check the shapes of X's derivative and func's output against z0 at t[0] (torchcde's
    checks; per sample, at t[0] for every series); return (z0 is one tensor, func has
    ``prod``)."""
    if not hasattr(X, "derivative"):
        raise ValueError(
            "X must have a 'derivative' method (e.g. neuralode.cde.CubicSpline(coeffs) or "
            "LinearInterpolation(coeffs))"
        )
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"t must be a 1-D tensor of output times, got {t!r}")
    t0 = t[0]
    if per_sample:
        if not hasattr(X, "derivative_rows"):
            raise ValueError(
                "options=dict(per_sample=True) reads series i of X at its own time t[i], "
                "which needs X.derivative_rows(t) (neuralode.cde's interpolations have it); "
                f"{type(X).__name__} has none: add it, or solve the "
                "batch as one system (leave per_sample out)"
            )
        if not isinstance(z0, torch.Tensor) or z0.dim() < 2:
            raise ValueError(
                "options=dict(per_sample=True) solves each series of the batch on its own: "
                "z0 must be one tensor (batch, hidden_channels), with the series along the "
                "first dimension (concatenate a tuple state, and its controls' data)"
            )
        t0 = t0.expand(z0.size(0))
    derivative = _derivative(X, t0.detach(), per_sample)
    is_prod = hasattr(func, "prod")
    out = func.prod(t0, z0, derivative) if is_prod else func(t0, z0)
    what = "func.prod" if is_prod else "func"
    if isinstance(z0, torch.Tensor):
        if not isinstance(derivative, torch.Tensor):
            raise ValueError("z0 is a tensor, so X.derivative(t) must return a tensor too")
        if not isinstance(out, torch.Tensor):
            raise ValueError(f"z0 is a tensor, so {what} must return a tensor too")
        (_check_prod if is_prod else _check_field)(out, derivative, z0)
        return True, is_prod
    if not isinstance(z0, (tuple, list)):
        raise ValueError(f"z0 must be a tensor or a tuple of tensors, got {type(z0).__name__}")
    for name, value in (("X.derivative(t)", derivative), (what, out)):
        if not isinstance(value, (tuple, list)) or len(value) != len(z0):
            raise ValueError(
                f"z0 is a tuple of {len(z0)} tensors, so {name} must return a tuple of as many"
            )
    for derivative_i, out_i, z0_i in zip(derivative, out, z0):
        if not all(isinstance(x, torch.Tensor) for x in (derivative_i, out_i, z0_i)):
            raise ValueError(f"z0, X.derivative(t) and {what} must hold tensors")
        (_check_prod if is_prod else _check_field)(out_i, derivative_i, z0_i)
    return False, is_prod


class _VectorField(torch.nn.Module):
    """dz/dt = f(t, z) dX/dt(t); X and func are submodules, so that ``parameters()`` are
    func's (the adjoint's default ``adjoint_params``), and X's buffers move with it."""

    def __init__(self, X: Any, func: Callable, is_tensor: bool, is_prod: bool, per_sample: bool):
        super().__init__()
        self.X = X
        self.func = func
        self.is_tensor = is_tensor
        self.is_prod = is_prod
        self.per_sample = per_sample
        # the torchsde backend's SDE: this drift, a zero diffusion (``g``)
        self.sde_type = getattr(func, "sde_type", "stratonovich")
        self.noise_type = getattr(func, "noise_type", "additive")

    def forward(self, t: torch.Tensor, z: Any) -> Any:
        derivative = _derivative(self.X, t, self.per_sample)
        if self.is_prod:
            return self.func.prod(t, z, derivative)
        field = self.func(t, z)
        if self.is_tensor:
            return (field @ derivative.unsqueeze(-1)).squeeze(-1)
        return tuple((f @ d.unsqueeze(-1)).squeeze(-1) for f, d in zip(field, derivative))

    f = forward

    def g(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(z).unsqueeze(-1)


def cdeint(
    X: Any,
    func: Callable,
    z0: Any,
    t: torch.Tensor,
    adjoint: bool = True,
    backend: str = "torchdiffeq",
    **kwargs: Any,
) -> Any:
    r"""Solve the controlled differential equation z_t = z_{t0} + \int_{t0}^t f(s, z_s) dX_s
    (torchcde's ``cdeint``).

    The CDE is solved as the ODE dz/dt = f(t, z) dX/dt(t) by [`odeint`][neuralode.odeint] or
    [`odeint_adjoint`][neuralode.odeint_adjoint] (or, with ``backend="torchsde"``, by
    [`sdeint`][neuralode.sde.sdeint] with a zero diffusion).

    Example:
        ```python
        import torch
        from neuralode import cde

        x = torch.randn(8, 20, 3)                      # (batch, length, channels)
        X = cde.CubicSpline(cde.natural_cubic_coeffs(x))
        func = torch.nn.Sequential(torch.nn.Linear(16, 16 * 3), torch.nn.Tanh(),
                                   torch.nn.Unflatten(-1, (16, 3)))
        z0 = torch.zeros(8, 16)
        zT = cde.cdeint(X, lambda t, z: func(z), z0, X.interval, adjoint=False)[:, -1]
        ```

    Arguments:
        X: the control: a module with ``derivative(t)`` returning (..., input_channels) for a
            0-dim t, such as [`CubicSpline`][neuralode.cde.CubicSpline] or
            [`LinearInterpolation`][neuralode.cde.LinearInterpolation]. Its ``grid_points``
            are the data's times, where dX/dt (linear), its derivative (Hermite) or its second
            derivative (natural cubic) jumps: pass ``options=dict(jump_t=X.grid_points)`` to an
            adaptive method for the linear and Hermite paths (no step straddles a kink: fewer
            rejected steps), and whenever gradients with respect to the data's coefficients
            are backpropagated (``adjoint=False``): each coefficient acts only between its
            knots, so a step straddling one differentiates it to O(h), not to the tolerance
            (a Hermite path at rtol 1e-10: 3.6e-4 off on a gradient of 6.3 without jump_t,
            6e-10 with it; the adjoint, whose backward solve controls the gradient's error
            too, 7e-8 and 4e-10). ``kvaerno4`` and ``kvaerno5`` refuse ``jump_t`` (their
            stages pass a step's end), and their last steps read X past its last knot, where
            the interpolation extends its last piece.
        func: the vector field ``func(t, z)`` returning (..., hidden_channels,
            input_channels); with ``adjoint=True`` and no ``adjoint_params`` an
            ``nn.Module`` (its parameters are differentiated). If it has a method ``prod``,
            ``func.prod(t, z, dXdt)`` computes f(t, z) dX/dt itself (shaped as z).
        z0: the initial state (..., hidden_channels), or a tuple of such tensors (then X's
            derivative and func return tuples of as many).
        t: the output times, 1-D (e.g. ``X.interval``, or ``X.grid_points``).
        adjoint: differentiate by the continuous adjoint (``odeint_adjoint``; default) or by
            backpropagation through the solve (``odeint``).
        backend: ``"torchdiffeq"`` (the ODE façade) or ``"torchsde"`` (the SDE façade, a zero
            diffusion: to use an SDE method as the CDE's solver).
        **kwargs: passed to ``odeint`` / ``odeint_adjoint`` (``rtol``, ``atol``, ``method``,
            ``options``, ``adjoint_params``, ...) or ``sdeint``. ``rtol`` and ``atol`` default
            to 1e-4 and 1e-6 (and the adjoint's to them), as in torchcde.
            ``options=dict(compile=True)`` runs the whole solve as one compiled graph under
            ``torch.no_grad()``, and with ``adjoint=True`` the forward and backward solves.
            ``options=dict(per_sample=True)`` gives every series (z0's first dimension, and
            X's) its own steps: func then receives t of shape (batch,), series i at time
            t[i], and X is read by ``X.derivative_rows(t)``.

    Returns:
        z at every time of ``t``: (..., len(t), hidden_channels), the time dimension
            second-to-last (unlike ``odeint``'s first); a tuple for a tuple ``z0``.

    Raises:
        ValueError: X has no ``derivative``, an unknown ``backend``, ``per_sample`` other
            than True (``"skip_finished"``, or with ``backend="torchsde"``) or with a control
            without ``derivative_rows``, or shapes of X's derivative, func's output and z0
            that do not fit (the message names them).
        SolverError: the solve failed (as ``odeint``'s).
    """
    if torch.compiler.is_compiling():  # inside the user's torch.compile: one graph break
        return _CDEINT_OUTSIDE_DYNAMO(locals())
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    kwargs.setdefault("atol", 1e-6)
    kwargs.setdefault("rtol", 1e-4)
    if adjoint and backend == "torchdiffeq":
        kwargs.setdefault("adjoint_atol", kwargs["atol"])
        kwargs.setdefault("adjoint_rtol", kwargs["rtol"])
    options = kwargs.get("options") or {}
    per_sample = options.get("per_sample", False)
    if per_sample and backend != "torchdiffeq":
        raise ValueError(
            f"cdeint supports options=dict(per_sample=...) with backend='torchdiffeq' only, "
            f"got backend={backend!r}: solve per sample with backend='torchdiffeq'"
        )
    if per_sample == "skip_finished":
        raise ValueError(
            "cdeint does not support options=dict(per_sample='skip_finished'): func would see "
            "only the series still running, and the control cannot tell which; use "
            "per_sample=True"
        )
    is_tensor, is_prod = _check(X, func, z0, t, bool(per_sample))
    if adjoint and "adjoint_params" not in kwargs and isinstance(X, torch.nn.Module):
        if any(buffer.requires_grad for buffer in X.buffers()):
            warnings.warn(
                "the control X holds tensors that require gradients, but no adjoint_params "
                "were given: with adjoint=True they get no gradient. Pass them, e.g. "
                "cdeint(X, func, z0, t, adjoint_params=(*func.parameters(), coeffs)), or "
                "use adjoint=False",
                stacklevel=2,
            )
    field = _VectorField(X, func, is_tensor, is_prod, bool(per_sample))
    if adjoint and "adjoint_params" not in kwargs:
        # the default, given: warned above about X's tensors, not again by the adjoint's check
        kwargs["adjoint_params"] = tuple(field.parameters())
    if backend == "torchdiffeq":
        out = (odeint_adjoint if adjoint else odeint)(field, z0, t, **kwargs)
    else:
        from ..sde import sdeint, sdeint_adjoint  # (sde imports the engine)

        out = (sdeint_adjoint if adjoint else sdeint)(field, z0, t, **kwargs)
    if is_tensor:
        return out.movedim(0, -2)
    return tuple(x.movedim(0, -2) for x in out)


_CDEINT_OUTSIDE_DYNAMO = outside_dynamo(cdeint)
