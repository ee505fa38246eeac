"""``FixedGrid``'s grids in the device loop (``_per_sample``): every row (a sample) on its
own grid, as the host loop's grid for the row alone, held as tensors."""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any

import torch

from ._grids import check_points
from ._ops import _EPS, indistinct, uniform_steps


class RowGrids:
    """The per-row grids of [`FixedGrid`][neuralode.controllers.FixedGrid], which sets the
    attributes read here (at most one of them not ``None``)."""

    step_size: Any
    grid: torch.Tensor | array | None
    constructor: Callable[[list[float]], torch.Tensor] | None

    def rows_grid(
        self,
        t0: torch.Tensor,
        t_end: torch.Tensor,
        ts: torch.Tensor,
        sign: float,
        eps: float = _EPS,
    ) -> torch.Tensor:
        """Every row's grid in the device loop (``_per_sample``), the controller's memory
        there: each row (a sample) steps on its own grid, as ``init`` builds it for the row
        alone.

        Arguments:
            t0: each row's start, (batch,) float64.
            t_end: each row's end, (batch,) float64 (infinite for an event search).
            ts: the output times, float64: (n,) shared by the rows or (batch, n) each its own.
            sign: the direction of integration, 1.0 or -1.0.
            eps: the resolution of the times' dtype (``uniform_steps``).

        Returns:
            With ``step_size``: (4, batch) float64, each row's t0, signed step, number of
                steps and end (``UniformGrid``'s numbers); else the grid points, (batch, m)
                float64, a row shorter than the longest repeating its end.

        Raises:
            ValueError: a grid that does not start at a row's t0 and end at its end or is
                not strictly monotonic in the direction of integration, or a step size or
                grid per sample whose rows are not one per sample.
        """
        batch, device = t0.shape[0], t0.device
        f64 = dict(dtype=torch.float64, device=device)
        if self.step_size is not None:
            h = torch.as_tensor(self.step_size, **f64)
            if h.ndim and h.shape != (batch,):
                raise ValueError(
                    f"a step_size per sample must have shape (batch,) = ({batch},), one step "
                    f"size per sample of y0, got shape {tuple(h.shape)}"
                )
            span, scale = t_end - t0, torch.maximum(t0.abs(), t_end.abs())
            n = uniform_steps(span, h, scale, eps)  # (as ``UniformGrid``; inf: unbounded)
            return torch.stack([t0, torch.copysign(h.expand(batch), span), n, t_end])
        if self.constructor is not None:
            rows = ts if ts.ndim == 2 else ts[None]
            made = []
            for row in rows.tolist():
                points = self.constructor(row)
                grid = [float(x) for x in torch.as_tensor(points).reshape(-1).tolist()]
                check_points(grid, row[0], row[-1])
                made.append(grid)
            longest = max(len(grid) for grid in made)
            padded = [grid + grid[-1:] * (longest - len(grid)) for grid in made]
            return torch.tensor(padded, **f64).expand(batch, -1)
        if self.grid is None:  # the output times
            return ts.to(**f64).expand(batch, -1)
        if isinstance(self.grid, array):
            points = torch.frombuffer(self.grid, dtype=torch.float64).to(device)
        else:
            points = torch.as_tensor(self.grid).detach().to(**f64)
        if points.ndim == 1:
            points = points[None]
        if points.ndim != 2 or points.shape[0] not in (1, batch) or points.shape[1] < 2:
            raise ValueError(
                f"per sample the step grid must be 1-D (every sample's) or (batch, m) = "
                f"({batch}, m) with m >= 2 (row i: sample i's), got shape {tuple(points.shape)}"
            )
        points = points.expand(batch, -1)
        wrong = (points[:, 0] != t0) | (points[:, -1] != t_end)
        if bool(wrong.any()):
            i = int(wrong.nonzero()[0])
            shared = "one grid for every sample" if self.grid.ndim == 1 else f"row {i}"
            fix = (
                ": the samples' spans differ, so give a (batch, m) grid (row i: sample i's) "
                "or a step_size"
                if self.grid.ndim == 1
                else ""
            )
            raise ValueError(
                f"the step grid ({shared}) must start at sample {i}'s t0={float(t0[i])} and "
                f"end at its t1={float(t_end[i])}; got {float(points[i, 0])} ... "
                f"{float(points[i, -1])}{fix}"
            )
        if not bool((sign * points.diff(dim=1) > 0).all()):
            raise ValueError("the step grid must be strictly monotonic, in the direction of t")
        return points

    def rows_after(self, grid: torch.Tensor, t: torch.Tensor, sign: float) -> torch.Tensor:
        """Each row's next grid point after ``t``, (batch,): ``adapt``'s proposal (the first
        point past t by more than round-off) computed for every row at once, on its grid
        from ``rows_grid``; a point within round-off short of the row's end is its end (the
        host loop lands there). A fixed number of corrections stands for ``UniformGrid``'s
        and ``Grid``'s loops, which make at most two on grids whose points are more than
        4 ulps apart.

        Arguments:
            grid: the rows' grids (``rows_grid``).
            t: each row's time, (batch,) float64.
            sign: the direction of integration.

        Returns:
            The end of each row's next step, (batch,) float64.
        """
        if self.step_size is not None:
            t0, step, n, t_end = grid.unbind(0)

            def point(i: torch.Tensor) -> torch.Tensor:
                return torch.where(i >= n, t_end, t0 + i * step)

            i = torch.floor((t - t0) / step).clamp(min=0)
            for _ in range(2):  # round-off in the division
                i = torch.where((i > 0) & (sign * (point(i) - t) > 0), i - 1, i)
            for _ in range(3):  # points up to t, or within round-off past it, are reached
                p = point(i)
                i = torch.where((i < n) & ((sign * (p - t) <= 0) | indistinct(t, p)), i + 1, i)
            p = point(i)
        else:
            last = grid.shape[1] - 1
            t_end = grid[:, last]
            keys = (sign * grid).contiguous()
            i = torch.searchsorted(keys, (sign * t)[:, None].contiguous(), right=True)
            for _ in range(3):  # a point within round-off of t is reached
                p = grid.gather(1, i.clamp(max=last))
                i = torch.where((i < last) & indistinct(t[:, None], p), i + 1, i)
            p = grid.gather(1, i.clamp(max=last))[:, 0]
        return torch.where(indistinct(p, t_end), t_end, p)
