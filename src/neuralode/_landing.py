"""Landing points: the times steps must end on (``step_t``, and ``jump_t`` where f jumps).

The host loop walks them as Python floats (``landings``); the device loop and the compiled
whole solve hold them as tensors (``LandingTimes``) and find each row's next one by a
``searchsorted`` per attempt (``next_landing``). A step that would cross a landing point, or
end within round-off short of it, ends on it (``land``); a step ending on a jump evaluates f
at its end one ulp inside the step (the left limit), and the next step starts from f one ulp
past the jump (the right limit, ``past_jump``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .controllers._ops import indistinct


def landings(
    ts: list[float], step_t: tuple[float, ...], jump_t: tuple[float, ...]
) -> list[tuple[float, bool]]:
    """Times steps must end on, in the direction of integration: (time, is_jump) pairs,
    those strictly inside the span and then its end (a jump when f jumps there: the last
    step evaluates f one ulp inside it)."""
    t0, t_end = ts[0], ts[-1]
    if not step_t and not jump_t:  # (the common case)
        return [(t_end, False)]
    sign = 1.0 if t_end >= t0 else -1.0
    inside = {}
    for t in step_t:
        if sign * (t - t0) > 0 and sign * (t_end - t) > 0:
            inside.setdefault(t, False)
    for t in jump_t:
        if sign * (t - t0) > 0 and sign * (t_end - t) > 0:
            inside[t] = True
    ordered = sorted(inside.items(), key=lambda item: sign * item[0])
    return ordered + [(t_end, t_end in jump_t)]


class LandingTimes(NamedTuple):
    """The landing points as tensors: ``signed`` (sign x time, ascending), ``times`` and
    ``jumps`` (whether f jumps there), each (m,)."""

    signed: torch.Tensor
    times: torch.Tensor
    jumps: torch.Tensor


def landing_times(
    sign: float, step_t: tuple[float, ...], jump_t: tuple[float, ...], device: torch.device
) -> LandingTimes | None:
    """The landing points of a device-loop solve in the direction ``sign`` (``None``:
    none). Not restricted to a span: each row's next landing is clipped to its own end."""
    if not step_t and not jump_t:
        return None
    kinds = dict.fromkeys(step_t, False)
    kinds.update(dict.fromkeys(jump_t, True))
    ordered = sorted(kinds.items(), key=lambda item: sign * item[0])
    times = torch.tensor([t for t, _ in ordered], dtype=torch.float64, device=device)
    jumps = torch.tensor([jump for _, jump in ordered], dtype=torch.bool, device=device)
    return LandingTimes(sign * times, times, jumps)


def next_landing(
    points: LandingTimes, sign: float, t: torch.Tensor, t_stop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's next landing point after ``t`` (its end ``t_stop`` when none comes
    first), and whether f jumps there (at its end too), (batch,) each."""
    index = torch.searchsorted(points.signed, (sign * t).contiguous(), right=True)
    inside = index < points.times.shape[0]
    index = index.clamp(max=points.times.shape[0] - 1)
    t_land = torch.where(inside, _take(points.times, index), t_stop)
    up_to_end = sign * (t_stop - t_land) >= 0
    t_land = torch.where(up_to_end, t_land, t_stop)
    return t_land, inside & up_to_end & _take(points.jumps, index)


def start_times(
    points: LandingTimes | None, sign: float, t: torch.Tensor, time_dtype: torch.dtype
) -> torch.Tensor:
    """Where each row evaluates f at its start ``t``: one ulp past it where f jumps there."""
    if points is None:
        return t
    on_jump = ((t[:, None] == points.times[None]) & points.jumps[None]).any(-1)
    return torch.where(on_jump, past_jump(sign, t, time_dtype), t)


def _take(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[index]`` by ``index_select``, which torch.compile traces and torch.func.vmap
    batches."""
    return torch.index_select(values, 0, index.reshape(-1)).reshape(index.shape)


def land(
    sign: float,
    proposal: torch.Tensor,
    t: torch.Tensor,
    t_land: torch.Tensor,
    jump: torch.Tensor,
    time_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each row's step end: its proposal, or its landing point when the proposal reaches it
    or ends within round-off short of it; the time f is evaluated at the end (one ulp of
    ``time_dtype``, the dtype f receives its times in, inside the step at a jump), and
    whether the step ends on a jump, (batch,) each."""
    landed = (sign * (proposal - t_land) >= 0) | indistinct(proposal, t_land)
    t1 = torch.where(landed, t_land, proposal)
    at_jump = landed & jump
    return t1, torch.where(at_jump, _ulp_towards(t1, t, time_dtype), t1), at_jump


def past_jump(sign: float, t: torch.Tensor, time_dtype: torch.dtype) -> torch.Tensor:
    """``t`` moved one ulp of ``time_dtype`` on, in the direction of integration: where a
    step that starts on a jump evaluates f (the right limit)."""
    return _ulp_towards(t, t + sign, time_dtype)


def _ulp_towards(t: torch.Tensor, towards: torch.Tensor, time_dtype: torch.dtype) -> torch.Tensor:
    """``t`` moved one ulp of ``time_dtype`` towards ``towards``, as a float64 tensor. The
    step is taken in the dtype f receives its times in (the host loop's ``ODETerm.time``):
    a float64 ulp would round back onto the jump when f's times are float32."""
    if time_dtype == t.dtype:
        return torch.nextafter(t, towards)
    return torch.nextafter(t.to(time_dtype), towards.to(time_dtype)).to(t.dtype)
