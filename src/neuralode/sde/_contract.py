"""torchsde's input contract: the checks of ``sdeint``'s and ``sdeint_adjoint``'s arguments
(same error meanings as torchsde) and the validated problem they make (``check_contract``)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from ._base import _Forward, _Logqp, _Renamed
from ._interval import BrownianInterval
from .settings import LEVY_AREA_APPROXIMATIONS, METHODS, NOISE_TYPES, SDE_TYPES


def _check_unused(unused: dict, where: str) -> None:
    if unused:
        warnings.warn(f"{where}: Unexpected arguments {unused}", stacklevel=3)


def _assert_no_grad(names, values) -> None:
    for name, value in zip(names, values):
        if torch.is_tensor(value) and value.requires_grad:
            raise ValueError(f"Argument {name} must not require gradient.")


@dataclass
class _Problem:
    sde: _Forward
    user_sde: Any  # the SDE as given (renamed, or with the logqp channel)
    y0: torch.Tensor
    ts: torch.Tensor
    ts_list: list[float]
    bm: Any
    method: str
    options: dict


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_brownian_fits(bm, y0: torch.Tensor, ts: list[float]) -> None:
    """Refuse a Brownian motion whose increments would not be ``y0``'s dtype and device, or
    that does not cover the output times (its queries outside ``[t0, t1]`` are clamped: the
    solve would run without noise there).

    Raises:
        ValueError: naming the Brownian motion's dtype, device or interval and the fix.
    """
    dtype, device = getattr(bm, "dtype", None), getattr(bm, "device", None)
    if isinstance(dtype, torch.dtype) and dtype != y0.dtype:
        raise ValueError(
            f"The Brownian motion's dtype {dtype} is not y0's {y0.dtype}: make it with "
            "dtype=y0.dtype (e.g. BrownianInterval(..., dtype=y0.dtype, device=y0.device))."
        )
    if device is not None and not _same_device(torch.device(device), y0.device):
        raise ValueError(
            f"The Brownian motion's device {device} is not y0's {y0.device}: make it with "
            "device=y0.device (e.g. BrownianInterval(..., dtype=y0.dtype, device=y0.device))."
        )
    t0, t1 = getattr(bm, "t0", None), getattr(bm, "t1", None)
    if not (isinstance(t0, (int, float)) and isinstance(t1, (int, float))):
        return
    # the round-off of output times in a lower precision than the Brownian motion's floats
    slack = 16 * torch.finfo(torch.float32).eps * max(abs(ts[0]), abs(ts[-1]), ts[-1] - ts[0])
    if ts[0] < t0 - slack or ts[-1] > t1 + slack:
        raise ValueError(
            f"The Brownian motion covers [{t0}, {t1}] but `ts` spans [{ts[0]}, {ts[-1]}]: "
            "outside its interval its increments are zero. Make it with t0=ts[0] and "
            "t1=ts[-1] (e.g. BrownianInterval(t0=ts[0], t1=ts[-1], ...))."
        )


def check_sde_types(sde: Any) -> None:
    """Refuse an SDE without a known ``noise_type`` and ``sde_type`` (torchsde's messages).

    Raises:
        ValueError: naming the missing or unknown attribute and the known values.
    """
    if not hasattr(sde, "noise_type"):
        raise ValueError(
            f"sde does not have the attribute noise_type: give it one of {NOISE_TYPES}."
        )
    if sde.noise_type not in NOISE_TYPES:
        raise ValueError(f"Expected noise type in {NOISE_TYPES}, but found {sde.noise_type}.")
    if not hasattr(sde, "sde_type"):
        raise ValueError(f"sde does not have the attribute sde_type: give it one of {SDE_TYPES}.")
    if sde.sde_type not in SDE_TYPES:
        raise ValueError(f"Expected sde type in {SDE_TYPES}, but found {sde.sde_type}.")


def check_brownian(bm: Any) -> None:
    """Refuse a ``bm`` that is not a Brownian motion (callable, with a ``shape``).

    Raises:
        ValueError: naming what a Brownian motion needs.
    """
    if not callable(bm) or not hasattr(bm, "shape"):
        raise ValueError(
            "`bm` must be a Brownian motion: callable as bm(ta, tb), with a shape (e.g. "
            "neuralode.sde.BrownianInterval)."
        )


def check_y0(y0: Any) -> None:
    """Refuse an initial state that is not a 2-D floating point tensor.

    Raises:
        ValueError: naming the problem.
    """
    if not torch.is_tensor(y0):
        raise ValueError("`y0` must be a torch.Tensor.")
    if y0.dim() != 2:
        raise ValueError(
            "`y0` must be a 2-dimensional tensor of shape (batch, channels), got shape "
            f"{tuple(y0.shape)}."
        )
    if not y0.is_floating_point():
        raise ValueError(f"`y0` must be a floating point tensor, got dtype {y0.dtype}.")


def check_output_times(ts: list[float]) -> None:
    """Refuse output times that are not finite and strictly increasing.

    Raises:
        ValueError: naming the problem.
    """
    if not all(math.isfinite(t) for t in ts):
        raise ValueError(f"Evaluation times `ts` must be finite, got {ts}.")
    if any(b <= a for a, b in zip(ts, ts[1:])):
        raise ValueError("Evaluation times `ts` must be strictly increasing.")


def check_sde_fits(
    sde: Any, y0: torch.Tensor, t0: torch.Tensor, ts: list[float], bm: Any
) -> tuple[int, int]:
    """Evaluates the SDE's functions once at ``(t0, y0)`` (without gradients) and refuses,
    as torchsde does, outputs whose shapes do not fit the noise type, ``y0`` or the
    Brownian motion, and a Brownian motion that does not fit ``y0`` or the output times
    (``_check_brownian_fits``). ``sdeint``, ``sdeint_adjoint`` and ``no.solve`` with an
    ``SDETerm`` run these checks.

    Arguments:
        sde: the SDE, with a known ``noise_type`` and ``sde_type`` (``check_sde_types``).
        y0: the initial state, (batch, channels) (``check_y0``).
        t0: the time the functions are evaluated at, as the solve passes it.
        ts: the output times (their first and last are read), increasing.
        bm: the Brownian motion, or ``None`` (the caller makes one).

    Returns:
        ``(batch, noise channels)``, the shape of the Brownian motion the SDE needs.

    Raises:
        ValueError: an SDE that lacks a drift or a diffusion, inconsistent batch, state or
            noise sizes, more than one noise channel for scalar noise, or a Brownian motion
            that is not one, of another dtype or device than ``y0`` or whose interval does
            not cover ``ts``.
    """
    # each size with where it comes from, for the message
    sizes: dict[str, list[tuple[str, int]]] = {
        "Batch": [("y0", y0.size(0))],
        "State": [("y0", y0.size(1))],
        "Noise": [],
    }
    if bm is not None:
        check_brownian(bm)
        if len(bm.shape) != 2:
            raise ValueError("`bm` must be of shape (batch, noise_channels).")
        sizes["Batch"].append(("bm", bm.shape[0]))
        sizes["Noise"].append(("bm", bm.shape[1]))

    def check_2d(name, shape):
        if len(shape) != 2:
            raise ValueError(f"{name} must be of shape (batch, state_channels), but got {shape}.")
        sizes["Batch"].append((name, shape[0]))
        sizes["State"].append((name, shape[1]))

    def check_2d_or_3d(name, shape):
        if sde.noise_type == NOISE_TYPES.diagonal:
            check_2d(name, shape)
            sizes["Noise"].append((name, shape[1]))
        else:
            if len(shape) != 3:
                raise ValueError(
                    f"{name} must be of shape (batch, state_channels, noise_channels), but got "
                    f"{shape}."
                )
            sizes["Batch"].append((name, shape[0]))
            sizes["State"].append((name, shape[1]))
            sizes["Noise"].append((name, shape[2]))

    has_f = has_g = False
    with torch.no_grad():
        if hasattr(sde, "f"):
            has_f = True
            check_2d("Drift", tuple(sde.f(t0, y0).size()))
        if hasattr(sde, "g"):
            has_g = True
            check_2d_or_3d("Diffusion", tuple(sde.g(t0, y0).size()))
        if hasattr(sde, "f_and_g"):
            has_f = has_g = True
            f, g = sde.f_and_g(t0, y0)
            check_2d("Drift", tuple(f.size()))
            check_2d_or_3d("Diffusion", tuple(g.size()))
        for name in ("g_prod", "f_and_g_prod"):
            if hasattr(sde, name):
                has_g = True
                has_f = has_f or name == "f_and_g_prod"
                if not sizes["Noise"]:
                    raise ValueError(
                        "Cannot infer noise size (i.e. number of Brownian motion channels). "
                        "Either pass `bm` explicitly, or specify one of the `g`, `f_and_g` "
                        "functions."
                    )
                m = sizes["Noise"][0][1]
                v = torch.randn(y0.size(0), m, dtype=y0.dtype, device=y0.device)
                out = getattr(sde, name)(t0, y0, v)
                if name == "f_and_g_prod":
                    check_2d("Drift", tuple(out[0].size()))
                    out = out[1]
                check_2d("Diffusion-vector product", tuple(out.size()))
    if not has_f:
        raise ValueError(
            "sde must define at least one of `f`, `f_and_g`, or `f_and_g_prod`. (Or possibly "
            "more depending on the method chosen.)"
        )
    if not has_g:
        raise ValueError(
            "sde must define at least one of `g`, `f_and_g`, `g_prod` or `f_and_g_prod`. (Or "
            "possibly more depending on the method chosen.)"
        )
    for what, found in sizes.items():
        if any(size != found[0][1] for _, size in found[1:]):
            sources = ", ".join(f"{source} {size}" for source, size in found)
            raise ValueError(
                f"{what} sizes not consistent: {[size for _, size in found]} ({sources}): make "
                "y0, the Brownian motion (size=(batch, noise channels)) and the SDE's outputs "
                "agree."
            )
    noise = sizes["Noise"][0][1]
    if sde.noise_type == NOISE_TYPES.scalar and noise != 1:
        raise ValueError(
            f"Scalar noise must have only one channel; the diffusion has {noise} noise channels."
        )
    if bm is not None:
        _check_brownian_fits(bm, y0, ts)
    return y0.size(0), noise


def default_method(sde) -> str:
    if sde.sde_type == SDE_TYPES.stratonovich:
        return METHODS.midpoint
    return METHODS.euler if sde.noise_type == NOISE_TYPES.general else METHODS.srk


def warn_adaptive_euler(method: str, noise_type: str) -> None:
    """Warn, as torchsde does, that adaptive Euler-Maruyama steps need not converge with
    non-additive noise (the warning points at the caller of ``sdeint`` or ``solve``)."""
    if method == METHODS.euler and noise_type != NOISE_TYPES.additive:
        warnings.warn(
            "Numerical solution is not guaranteed to converge to the correct solution when using "
            "adaptive time-stepping with the Euler--Maruyama method with non-additive noise.",
            stacklevel=4,
        )


def check_contract(sde, y0, ts, bm, method, adaptive, options, names, logqp) -> _Problem:
    """Validates the inputs as torchsde does (same error meanings) and wraps the SDE.

    Raises:
        ValueError: for a missing or unknown noise/SDE type or method, a ``y0`` that is not a
            2-D floating point tensor, ``ts`` that are not finite and strictly increasing,
            inconsistent batch, state or noise sizes, an SDE that lacks a drift or a
            diffusion, or a Brownian motion of another dtype or device than ``y0`` or whose
            interval does not cover ``ts``.
    """
    if names:
        unknown = set(names) - {
            "drift",
            "diffusion",
            "prior_drift",
            "diffusion_prod",
            "drift_and_diffusion",
            "drift_and_diffusion_prod",
        }
        if unknown:
            raise ValueError(
                f"Unknown keys {sorted(unknown)} in `names`; expected some of 'drift', "
                "'diffusion', 'prior_drift', 'diffusion_prod', 'drift_and_diffusion', "
                "'drift_and_diffusion_prod'."
            )
        sde = _Renamed(sde, names)
    check_sde_types(sde)
    check_y0(y0)
    if logqp:
        sde = _Logqp(sde)
        y0 = torch.cat((y0, y0.new_zeros(size=(y0.size(0), 1))), dim=1)
    if method is None:
        method = default_method(sde)
    if method not in METHODS:
        raise ValueError(f"Expected method in {METHODS}, but found {method}.")
    if method == METHODS.adjoint_reversible_heun:
        # torchsde's meaning: the backward pass of reversible Heun, not a method of its own
        raise ValueError(
            f"{METHODS.adjoint_reversible_heun} can only be used for adjoint_method: solve "
            f"with method={METHODS.reversible_heun!r} (sdeint_adjoint then uses "
            f"adjoint_method={METHODS.adjoint_reversible_heun!r} by default)."
        )
    if not torch.is_tensor(ts):
        if not isinstance(ts, (tuple, list)) or not all(isinstance(t, (float, int)) for t in ts):
            raise ValueError("Evaluation times `ts` must be a 1-D Tensor or list/tuple of floats.")
        ts = torch.tensor(ts, dtype=y0.dtype, device=y0.device)
    if ts.dim() != 1 or ts.numel() < 1:
        raise ValueError("Evaluation times `ts` must be a 1-D Tensor or list/tuple of floats.")
    ts_list = [float(t) for t in ts.detach().cpu()]
    check_output_times(ts_list)
    try:
        batch, noise = check_sde_fits(sde, y0, ts[0], ts_list, bm)
    except ValueError as error:
        noise_sizes = str(error).startswith("Noise sizes")
        if logqp and noise_sizes and bm is not None and sde.noise_type == NOISE_TYPES.diagonal:
            raise ValueError(
                f"{error} With logqp=True the state carries the log-ratio as one more channel, "
                "and diagonal noise one more noise channel: give the Brownian motion size=(batch, "
                f"{y0.size(1)}) (the state's channels plus one), or leave bm out."
            ) from None
        raise
    if bm is None:
        levy = {
            METHODS.srk: LEVY_AREA_APPROXIMATIONS.space_time,
            METHODS.log_ode_midpoint: LEVY_AREA_APPROXIMATIONS.foster,
        }.get(method, LEVY_AREA_APPROXIMATIONS.none)
        bm = BrownianInterval(
            t0=ts_list[0],
            t1=ts_list[-1],
            size=(batch, noise),
            dtype=y0.dtype,
            device=y0.device,
            levy_area_approximation=levy,
        )
    options = {} if options is None else dict(options)
    if adaptive:
        warn_adaptive_euler(method, sde.noise_type)
    return _Problem(_Forward(sde), sde, y0, ts, ts_list, bm, method, options)
