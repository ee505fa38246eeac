"""``scipy_solver``: SciPy's ``solve_ivp`` behind the odeint interface (not differentiable)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .._errors import SolverError
from .._tree import tree_spec

SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


def solve_scipy(
    func: Callable[[torch.Tensor, Any], Any],
    y0: Any,
    ts: torch.Tensor,
    *,
    method: str = "RK45",
    rtol: float = 1e-7,
    atol: float = 1e-9,
    **solve_ivp_options: Any,
) -> Any:
    """Solve with ``scipy.integrate.solve_ivp`` and return the states at ``ts`` like ``odeint``.

    The result has y0's structure, dtype and device. It carries no usable gradient: when y0
    or ``func``'s parameters require grad, backpropagating into it raises an error. One
    output time returns y0. ``solve_ivp_options`` (e.g. ``max_step``, and ``min_step`` for
    LSODA) go to ``solve_ivp``.
    """
    try:
        from scipy.integrate import solve_ivp
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "method='scipy_solver' needs SciPy: pip install 'neuralode[scipy]'"
        ) from error
    if method not in SCIPY_METHODS:
        raise ValueError(f"unknown SciPy method {method!r}; valid: {', '.join(SCIPY_METHODS)}")
    spec, leaves = tree_spec(y0, "y0")
    flat0 = spec.flatten(y0, "y0").detach()
    dtype, device = flat0.dtype, flat0.device
    times = ts.detach().to(torch.float64).cpu().numpy()
    if times.size == 1:  # nothing to integrate: y0 is the output (as torchdiffeq)
        return spec.unflatten(flat0[None].clone())

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        y_t = torch.as_tensor(y, device=device).to(dtype)
        t_t = torch.tensor(t, dtype=flat0.real.dtype, device=device)
        with torch.no_grad():
            out = spec.flatten(func(t_t, spec.unflatten(y_t)), "func's output")
        return out.detach().cpu().numpy()

    result = solve_ivp(
        rhs,
        (float(times[0]), float(times[-1])),
        flat0.cpu().numpy(),
        method=method,
        t_eval=times,
        rtol=rtol,
        atol=atol,
        **solve_ivp_options,
    )
    if result.status < 0:
        raise SolverError(f"scipy solve_ivp ({method}) failed: {result.message}")
    ys = torch.as_tensor(result.y.T.copy(), device=device).to(dtype)
    inputs = [x for x in leaves if x.requires_grad]
    if isinstance(func, torch.nn.Module):
        inputs += [p for p in func.parameters() if p.requires_grad]
    if inputs and torch.is_grad_enabled():
        ys = _NotDifferentiable.apply(ys, *inputs)
    return spec.unflatten(ys)


class _NotDifferentiable(torch.autograd.Function):
    """Passes values through; backpropagating into it is an error, not a silent zero."""

    @staticmethod
    def forward(ctx: Any, ys: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return ys.clone()

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor):
        raise RuntimeError(
            "scipy_solver is not differentiable; use a torch method (e.g. dopri5), or "
            "odeint_adjoint with a torch adjoint_method"
        )
